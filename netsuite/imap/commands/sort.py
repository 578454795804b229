"""
SORT (RFC 5256, SORT=DISPLAY RFC 5957, ESORT RFC 5267) and THREAD
(ORDEREDSUBJECT, REFERENCES).

The keys of a message (L{netsuite.imap.sorting.SortInfo}) come from its
header only, once: they are kept in the folder's message cache (field
L{SORT_FIELD}) and, decoded, in this process's memory by base name (a
message never changes), so a second SORT of a big folder reads no message
file and decodes nothing; the last few answers are kept too (L{_answers}).
Keys that must be read are read a batch per reactor turn, as SEARCH scans.

A SORT derives only the key groups its criteria need (L{sorting.NEEDS}): the
header fields of the others wait in the SortInfo and the cache until a SORT
or THREAD needs them, as Dovecot reads only the fields a sort key needs.  The
keys of the messages read are put into the cache once the answer is written.
Per message, a SORT keeps nothing but its SortInfo: columns of plain values
(L{_SortColumns}), no object the collector would have to walk.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from itertools import chain
from typing import TYPE_CHECKING, Any

from twisted.internet import task
from twisted.logger import Logger

from netsuite.imap import sorting, wire_sort
from netsuite.imap.commands import SessionBase
from netsuite.imap.commands.context import noupdate
from netsuite.imap.commands.fetch import FETCH_BATCH
from netsuite.imap.commands.search import then
from netsuite.imap.sorting import Item, SortInfo
from netsuite.store.cache import MessageCache
from netsuite.store.folder import Folder, Message

log = Logger(namespace="netsuite.imap")

#: Message-cache field of the sort keys; the version changes with what they hold.
SORT_FIELD = "sort2"
#: Header bytes read at a time while looking for the end of a header.
_HEADER_CHUNK = 8192
#: Keys put into the message cache per reactor turn after a first SORT.
_KEEP_BATCH = 2048
#: Cached (not read) messages whose keys are looked up per reactor turn.
_CACHED_BATCH = 8192

#: Answers by folder, the last few: (what was asked, UIDVALIDITY, a digest of the matched
#: (seq, uid) pairs, or of the UIDs for ALL) -> the order (two arrays) or the thread
#: rendering.  A message's keys never change, so the same messages asked the same way get
#: the same answer: a client that sorts its big folder again gets it without a sort.  Keys
#: and answers are a few objects each, not one per message: thousands of small objects
#: kept here would make each of the collector's full passes slower (and the hit path
#: builds none, so it does not bring such a pass on).
_answers: "weakref.WeakKeyDictionary[Folder, OrderedDict]" = weakref.WeakKeyDictionary()
ANSWERS_KEPT = 4

#: Decoded keys by folder and base name: what a second SORT uses.
_decoded: "weakref.WeakKeyDictionary[Folder, dict[str, SortInfo]]" = weakref.WeakKeyDictionary()


def _digest(numbers: Iterable[int]) -> bytes:
    """A 128-bit digest of a sequence of message numbers (what L{_answers} is keyed by)."""
    return hashlib.blake2b(array("Q", numbers).tobytes(), digest_size=16).digest()


class _Dirs:
    """
    The folder's cur/ and new/ opened once, so that each message file is opened
    relative to its directory (openat: no walk down the folder's whole path per
    message, a good part of a first SORT's time).
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.fds: dict[str, int] = {}

    def fd(self, sub: str) -> int:
        fd = self.fds.get(sub)
        if fd is None:
            try:
                fd = os.open(f"{self.directory}/{sub}", os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                fd = -1
            self.fds[sub] = fd
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            if fd >= 0:
                os.close(fd)
        self.fds.clear()


def read_header(mbox: Any, msg: Message, dirs: _Dirs | None = None) -> bytes:
    """
    The header block of a message as stored (LF or CRLF ends), without its body.
    C{dirs}: the folder's directories: the file is read with three system
    calls, no file object (this runs once per message of a big folder).
    """
    fd = -1
    if dirs is not None:
        at = dirs.fd(msg.sub)
        try:
            fd = os.open(msg.name, os.O_RDONLY, dir_fd=at) if at >= 0 else -1
        except FileNotFoundError:  # renamed by another program: the store finds it again
            fd = -1
    if fd < 0:
        with mbox.folder.open(msg) as f:
            fd = os.dup(f.fileno())
    try:
        data = os.read(fd, _HEADER_CHUNK)
        while True:
            lf = data.find(b"\n\n")
            crlf = data.find(b"\r\n\r\n")
            ends = [i for i in (lf, crlf) if i >= 0]
            if ends:
                end = min(ends)
                return data[:end + (2 if end == lf else 4)]
            more = os.read(fd, _HEADER_CHUNK * 4)
            if not more:
                return data
            data += more
    finally:
        os.close(fd)


def _keep_later(cache: MessageCache, memo: dict[str, SortInfo], fresh: list[str]) -> None:
    """
    Put the keys of the messages a SORT read into the message cache after its
    answer is written (a later reactor turn, then a batch per turn), so that the
    first SORT of a big folder does not wait for the encoding of what it read.
    Lost if the process stops first: the next one reads those headers again.
    """
    from twisted.internet import reactor  # (the one twistd installed; as netsuite.auth)

    def keep():
        for i, base in enumerate(fresh, 1):
            info = memo.get(base)
            if info is not None:
                cache.put(base, SORT_FIELD, info.encode())
            if i % _KEEP_BATCH == 0:
                yield None
        cache.flush()

    def start() -> None:
        task.cooperate(keep()).whenDone().addErrback(
            lambda f: log.failure("sort keys not cached", f))

    reactor.callLater(0, start)


class _SortColumns:
    """
    What SORT takes of each message: its numbers and one column of values per
    criterion (L{sorting.sort_order}), no object per message.
    """

    def __init__(self, criteria: list[tuple[str, bool]]):
        self.criteria = criteria
        self.seqs = array("Q")
        self.uids = array("Q")
        self.columns: list[list[Any]] = [[] for _ in criteria]
        self._keys = [(c.append, sorting.COLUMNS[n]) for c, (n, _) in
                      zip(self.columns, criteria, strict=True)]

    def take(self, num: int, seq: int, uid: int, info: SortInfo, arrival: float,
             size: int) -> None:
        self.seqs.append(seq)
        self.uids.append(uid)
        for add, key in self._keys:
            add(key(info, arrival, size))

    def finish(self) -> "_Order":
        order = sorting.sort_order([(c, reverse) for c, (_, reverse) in
                                    zip(self.columns, self.criteria, strict=True)],
                                   len(self.seqs))
        seqs, uids = self.seqs, self.uids
        return _Order(array("Q", [seqs[k] for k in order]), array("Q", [uids[k] for k in order]))


class _ThreadItems:
    """What THREAD takes of each message (an L{Item}), and its rendered answer."""

    def __init__(self, build: Callable[[list[Item]], list[sorting.Node]]):
        self.build = build
        self.items: list[Item] = []

    def take(self, num: int, seq: int, uid: int, info: SortInfo, arrival: float,
             size: int) -> None:
        self.items.append(Item(num, seq, uid, info, arrival, size))

    def finish(self) -> bytes:
        roots = self.build(self.items)
        try:
            return sorting.render_threads(roots)
        finally:
            sorting.release(roots)


class _Order:
    """A SORT answer as kept (L{_answers}): the order, and its C{* SORT} line once rendered."""

    __slots__ = ("seqs", "uids", "_lines")

    def __init__(self, seqs: array, uids: array):
        self.seqs = seqs
        self.uids = uids
        self._lines: dict[bool, bytes] = {}

    def nums(self, uid: bool) -> array:
        return self.uids if uid else self.seqs

    def line(self, uid: bool) -> bytes:
        """C{* SORT 3 1 2}, by UID or sequence number (rendered once: a kept answer)."""
        line = self._lines.get(uid)
        if line is None:
            nums = self.nums(uid)
            line = self._lines[uid] = b"* SORT " + " ".join(map(str, nums)).encode() \
                if nums else b"* SORT"
        return line


class SortCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    if TYPE_CHECKING:  # SearchCommands provides them
        def _search_pairs(self, keys: list) -> Any: ...
        def _parse_search_keys(self, cur: Any, options: Any) -> list: ...
        def _search_return(self, tag: bytes, uid: bool, options: Any, nums: list[int],
                           uids: list[int], extra: tuple[bytes, ...] = ()) -> None: ...

    def imap_SORT(self, tag, cur, uid=False):
        options = wire_sort.parse_return(cur)
        criteria = wire_sort.parse_sort_criteria(cur)
        cur.sp()

        def answer(ordered: _Order) -> None:
            if options is None:
                self.send(ordered.line(uid))
            else:
                self._search_return(tag, uid, options, list(ordered.nums(uid)),
                                    list(ordered.uids))

        names = {name for name, _ in criteria}
        need = 0
        for n in names:
            need |= sorting.NEEDS[n]
        return self._keyed(tag, cur, uid, b"SORT", options, ("SORT", tuple(criteria)),
                           lambda: _SortColumns(criteria), answer, need,
                           arrival="ARRIVAL" in names, size="SIZE" in names)

    def imap_THREAD(self, tag, cur, uid=False):
        algorithm = wire_sort.parse_thread_algorithm(cur)
        cur.sp()
        build = sorting.thread_references if algorithm == "REFERENCES" \
            else sorting.thread_ordered_subject

        def answer(threads: bytes) -> None:
            self.send(b"* THREAD " + threads if threads else b"* THREAD")

        return self._keyed(tag, cur, uid, b"THREAD", None, ("THREAD", algorithm, uid),
                           lambda: _ThreadItems(build), answer, sorting.NEEDS[algorithm])

    def _keyed(self, tag, cur, uid: bool, name: bytes, options, what: tuple, collector,
               answer, need: int, arrival: bool = False, size: bool = False):
        """
        The charset and search keys of SORT/THREAD; then a new C{collector()}
        (L{_SortColumns} or L{_ThreadItems}) takes the matching messages' keys
        and computes the answer (or the same answer is kept from before, see
        L{_answers}); C{answer} with it and the tagged OK.
        """
        charset = wire_sort.parse_charset(cur, b"UTF8=ACCEPT" in self.enabled)
        cur.sp()
        keys = self._parse_search_keys(cur, options)
        if charset not in wire_sort.CHARSETS:
            if options is not None and "SAVE" in options:
                self.mbox.saved = set()
            self._tagged(tag, b"NO", b"[BADCHARSET (US-ASCII UTF-8)] Unsupported charset",
                         allow_expunge=uid)
            return None
        folder = self.mbox.folder
        kept = _answers.setdefault(folder, OrderedDict())

        def lookup(key: tuple):
            found = kept.get(key)
            if found is not None:
                kept.move_to_end(key)
            return found

        def keyed(pairs: list[tuple[int, int]], key: tuple | None = None):
            if key is None:
                key = (what, folder.uidvalidity, _digest(chain.from_iterable(pairs)))
                found = lookup(key)
                if found is not None:
                    return found

            into = collector()

            def computed(_):
                value = into.finish()
                kept[key] = value
                while len(kept) > ANSWERS_KEPT:
                    kept.popitem(last=False)
                return value

            return then(self._sort_items(pairs, uid, need, into.take, arrival, size), computed)

        def done(value) -> None:
            answer(value)
            # CONTEXT=SORT: PARTIAL is answered, updates are not kept (RFC 5267 4.2).
            text = noupdate(tag, name) if options is not None and "UPDATE" in options \
                else name + b" completed"
            self._tagged(tag, b"OK", text, allow_expunge=uid)

        if keys == [("ALL",)] and self._all_present():
            # The usual SORT/THREAD ... ALL of an unchanged folder: its UIDs are the key,
            # nothing is built per message (see _answers).
            key = (what, folder.uidvalidity, b"ALL", _digest(self.mbox.uids))
            found = lookup(key)
            if found is not None:
                return done(found)
            return then(then(self._search_pairs(keys), lambda pairs: keyed(pairs, key)), done)
        return then(then(self._search_pairs(keys), keyed), done)

    def _all_present(self) -> bool:
        """Whether every message of the session's view is still in the folder."""
        mbox = self.mbox
        if mbox.uids == mbox.folder.uids:  # (the usual: one list comparison, no lookups)
            return True
        by_uid = mbox.message
        for u in mbox.uids:
            if by_uid(u) is None:
                return False
        return True

    def _sort_items(self, pairs: list[tuple[int, int]], uid: bool, need: int, take,
                    arrival: bool = False, size: bool = False):
        """
        C{take(num, seq, uid, keys, arrival, size)} for each of the matched (seq,
        uid) pairs still there, in their order, keys looked up (or read and
        remembered) a batch per reactor turn; None, or a Deferred when done.  Only
        the key groups of C{need} (L{sorting.NEEDS}) are derived: a message read
        the first time keeps the header fields of the others, in memory and in the
        cache, for the SORT that needs them.  The INTERNALDATE is looked up only if
        C{arrival} or a message's date is needed and it has no usable Date:, the
        size only if C{size} (either may need the file the first time).
        """
        mbox = self.mbox
        folder = mbox.folder
        memo = _decoded.setdefault(folder, {})
        dirs = _Dirs(str(folder.path))
        by_uid = folder.by_uid
        dated = bool(need & sorting.DATE)
        derive = sorting.derive
        cache = mbox.message_cache()
        #: Base names of the messages read: their keys cached once the answer is out.
        fresh: list[str] = []

        def work():
            read = 0
            looked = 0
            try:
                for seq, u in pairs:
                    msg = by_uid(u)
                    if msg is None:
                        continue
                    base = msg.base
                    info = memo.get(base)
                    if info is None:
                        raw = cache.get(base, SORT_FIELD)
                        info = SortInfo.decode(raw) if raw is not None else None
                        if info is None:
                            try:
                                info = sorting.header_fields(read_header(mbox, msg, dirs))
                            except KeyError:  # gone meanwhile: sorts as empty
                                info = SortInfo()
                            else:
                                fresh.append(base)
                            read += 1
                        memo[base] = info
                    if info.todo & need:
                        derive(info, need)
                        if not info.todo:  # every key derived: kept so, for the next process
                            cache.put(base, SORT_FIELD, info.encode())
                    take(u if uid else seq, seq, u, info,
                         mbox.date_of(msg) if arrival or (dated and info.date is None) else 0,
                         mbox.size_of(msg) if size else 0)
                    looked += 1
                    if read >= FETCH_BATCH or looked >= _CACHED_BATCH:
                        read = looked = 0  # (the cache writes itself past a size: no flush here)
                        yield None
            finally:
                dirs.close()
            if fresh:
                _keep_later(cache, memo, fresh)
            cache.flush()
            if len(memo) > 2 * len(folder.messages) + 1024:
                live = {m.base for m in folder.messages}
                for gone in [b for b in memo if b not in live]:
                    del memo[gone]

        def run(_=None):
            if len(pairs) <= FETCH_BATCH:
                for _ in work():
                    pass
                return None
            return self._cooperate(work())

        # Bodies at hand first (PostgreSQL: those not cached here fetched off the
        # reactor), so that no read in work() waits; a generator, which a store that
        # is always ready (Maildir) never walks.
        ready = mbox.bodies_ready(
            m for _seq, u in pairs if (m := by_uid(u)) is not None and m.base not in memo
        ) if need else None
        return run() if ready is None else ready.addCallback(run)

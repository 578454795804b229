"""
SORT (RFC 5256, SORT=DISPLAY RFC 5957, ESORT RFC 5267) and THREAD
(ORDEREDSUBJECT, REFERENCES).

The keys of a message (L{netsuite.imap.sorting.SortInfo}) come from its
header only, once: they are kept in the folder's message cache (field
L{SORT_FIELD}) and, decoded, in this process's memory by base name (a
message never changes), so a second SORT of a big folder reads no message
file and decodes nothing.  Keys that must be read are read a batch per
reactor turn, as SEARCH scans.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from netsuite.imap import sorting, wire_sort
from netsuite.imap.commands import SessionBase
from netsuite.imap.commands.fetch import FETCH_BATCH
from netsuite.imap.commands.search import then
from netsuite.imap.sorting import Item, SortInfo
from netsuite.store.folder import Folder, Message, to_wire

#: Message-cache field of the sort keys; the version changes with what they hold.
SORT_FIELD = "sort1"
#: Header bytes read at a time while looking for the end of a header.
_HEADER_CHUNK = 16384
#: Cached (not read) messages whose keys are looked up per reactor turn.
_CACHED_BATCH = 8192

#: Decoded keys by folder and base name: what a second SORT uses.
_decoded: "weakref.WeakKeyDictionary[Folder, dict[str, SortInfo]]" = weakref.WeakKeyDictionary()


def read_header(mbox: Any, msg: Message) -> bytes:
    """The header block of a message (CRLF ends), without reading its body."""
    with mbox.folder.open(msg) as f:
        data = f.read(_HEADER_CHUNK)
        while True:
            lf = data.find(b"\n\n")
            crlf = data.find(b"\r\n\r\n")
            ends = [i for i in (lf, crlf) if i >= 0]
            if ends:
                end = min(ends)
                data = data[:end + (2 if end == lf else 4)]
                break
            more = f.read(_HEADER_CHUNK * 4)
            if not more:
                break
            data += more
    return to_wire(data)


class SortCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    if TYPE_CHECKING:  # SearchCommands provides them
        def _search_pairs(self, keys: list) -> Any: ...
        def _parse_search_keys(self, cur: Any, options: Any) -> list: ...
        def _search_return(self, tag: bytes, uid: bool, options: Any, nums: list[int],
                           uids: list[int]) -> None: ...

    def imap_SORT(self, tag, cur, uid=False):
        options = wire_sort.parse_return(cur)
        criteria = wire_sort.parse_sort_criteria(cur)
        cur.sp()

        def answer(items: list[Item]) -> None:
            ordered = sorting.sort_items(items, criteria)
            if options is None:
                self.send(b"* SORT" + b"".join(b" %d" % i.num for i in ordered))
            else:
                self._search_return(tag, uid, options, [i.num for i in ordered],
                                    [i.uid for i in ordered])

        return self._keyed(tag, cur, uid, b"SORT", options, answer)

    def imap_THREAD(self, tag, cur, uid=False):
        algorithm = wire_sort.parse_thread_algorithm(cur)
        cur.sp()
        build = sorting.thread_references if algorithm == "REFERENCES" \
            else sorting.thread_ordered_subject

        def answer(items: list[Item]) -> None:
            self.send(b"* THREAD " + sorting.render_threads(build(items)) if items
                      else b"* THREAD")

        return self._keyed(tag, cur, uid, b"THREAD", None, answer)

    def _keyed(self, tag, cur, uid: bool, name: bytes, options, answer):
        """charset, search keys; then C{answer} the matching messages' L{Item}s, then OK."""
        charset = wire_sort.parse_charset(cur)
        cur.sp()
        keys = self._parse_search_keys(cur, options)
        if charset not in wire_sort.CHARSETS:
            self._tagged(tag, b"NO", b"[BADCHARSET (US-ASCII UTF-8)] Unsupported charset",
                         allow_expunge=uid)
            return None

        def done(items: list[Item]) -> None:
            answer(items)
            self._tagged(tag, b"OK", name + b" completed", allow_expunge=uid)

        return then(then(self._search_pairs(keys), lambda pairs: self._sort_items(pairs, uid)),
                    done)

    def _sort_items(self, pairs: list[tuple[int, int]], uid: bool):
        """
        The L{Item}s of the matched (seq, uid) pairs, keys looked up (or read and
        remembered) a batch per reactor turn; a list, or a Deferred of one.
        """
        mbox = self.mbox
        memo = _decoded.setdefault(mbox.folder, {})
        items: list[Item] = []

        def work():
            read = 0
            looked = 0
            for seq, u in pairs:
                msg = mbox.message(u)
                if msg is None:
                    continue
                base = msg.base
                info = memo.get(base)
                if info is None:
                    raw = mbox.cached(msg, SORT_FIELD)
                    info = SortInfo.decode(raw) if raw is not None else None
                    if info is None:
                        try:
                            info = sorting.sort_info(read_header(mbox, msg))
                        except KeyError:  # gone meanwhile: sorts as empty
                            info = SortInfo()
                        else:
                            mbox.remember(msg, SORT_FIELD, info.encode())
                        read += 1
                    memo[base] = info
                items.append(Item(u if uid else seq, seq, u, info, mbox.date_of(msg),
                                  mbox.size_of(msg)))
                looked += 1
                if read >= FETCH_BATCH or looked >= _CACHED_BATCH:
                    mbox.flush_cache()
                    read = looked = 0
                    yield None
            mbox.flush_cache()
            if len(memo) > 2 * len(mbox.folder.messages) + 1024:
                live = {m.base for m in mbox.folder.messages}
                for gone in [b for b in memo if b not in live]:
                    del memo[gone]

        if len(pairs) <= FETCH_BATCH:
            for _ in work():
                pass
            return items
        return self._cooperate(work()).addCallback(lambda _: items)

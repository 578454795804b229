"""
One Maildir folder with its index: UIDs, UIDVALIDITY, flags, sizes, dates.

The Maildir itself is the truth for which messages exist and which flags they
carry (flags live in file names, C{:2,DFRST}, as Dovecot and mutt write them).
The index, C{netsuite-index} in the folder, adds what Maildir cannot say:
stable UIDs, UIDVALIDITY, the next UID, the wire (CRLF) size, the internal
date and keywords.  Changes go into an append-only change log beside it
(L{netsuite.store.changelog}, Dovecot's C{dovecot.index.log}): a new UID,
a flag change or an expunge is one record, O(1); only new UIDs are fsynced.
When the log has grown past the index's size it is compacted: the index is
rewritten atomically (temporary file, fsync, rename), the old one kept as
C{netsuite-index.backup} and the old log as C{.log.2}, so a lost or corrupt
index is recovered with the same UIDs (backup + logs), whenever a crash hit.

Opening a folder reads the index and then looks at the disk only if C{new/} or
C{cur/} changed since the index was written (their mtimes are recorded): one
C{listdir} per changed directory, and a C{stat} only for files the index does
not know.  Only if the backup is gone too is the index rebuilt from the
files, with a new UIDVALIDITY.

Several processes may share a folder (two netsuite daemons, netsuite and
the CLI, a Maildir writer such as mutt that does not lock): every UID
allocation and every index write happens under an exclusive flock on
C{netsuite-index.lock} (Dovecot's C{dovecot-uidlist.lock}), after taking in
what the others wrote since (the index header's generation tells, one read;
outside the lock a stat of the index notices it).  A UID is given once, to
one file, and the others adopt it; a rename that fails because another
program renamed the file first is retried on the new name, so no flag is lost.

All methods run in the reactor thread, except that a folder may be read
(made) in a thread before anyone else sees it
(L{netsuite.store.maildir.MaildirStore.open_folder}: a first open of a big
folder).  What would block it for long is done in threads, with the state
touched only on the reactor: L{Folder.append_many} writes and fsyncs there
(the tagged OK waits for it), L{Folder.learn_sizes} reads files there, and a
compaction due in the daemon writes and fsyncs its files there, carries over
the records logged meanwhile, and puts them in place under the lock.  A L{Folder} is
shared by every session of the process on that folder (see
L{netsuite.store.maildir.MaildirStore.folder}), and listeners hear about every
change, whoever made it.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import functools
import gc
import itertools
import operator
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from netsuite import metrics
from netsuite.durable import fsync_dir
from netsuite.store import IMailFolder, IMessage, changelog, vanished
from netsuite.store.keywords import LETTERS as KEYWORD_LETTERS
from netsuite.store.keywords import KeywordLetters
from netsuite.store.layout import ensure_maildir, unique_name

log = Logger(namespace="netsuite.store")

INDEX_NAME = "netsuite-index"
INDEX_MAGIC = "netsuite-index 1"
#: Held (flock, exclusive) around every UID allocation and index write, by every
#: netsuite process on the folder: Dovecot's C{dovecot-uidlist.lock}.
LOCK_NAME = "netsuite-index.lock"
#: The change log (see L{netsuite.store.changelog}); C{.2} is the one before the
#: last compaction, C{INDEX_NAME.backup} the index before it: together they
#: rebuild a lost or corrupt index with the same UIDs (Dovecot's
#: C{dovecot.index.log.2}).
LOG_NAME = "netsuite-index.log"
LOG2_NAME = "netsuite-index.log.2"
BACKUP_NAME = "netsuite-index.backup"
#: The log is compacted into the index when it outgrows this, or this many
#: bytes per message: amortised O(1) per change.
COMPACT_MIN_BYTES = 256 * 1024
COMPACT_BYTES_PER_MESSAGE = 50
#: Compactions written in a thread and given up (another process compacted
#: meanwhile) before one is done on the reactor, under the lock throughout; and
#: rounds of carrying the records logged meanwhile into a job's fresh log in a
#: thread, before the last few are carried on the reactor (a small write).
COMPACT_TRIES = 3
_job_counter = itertools.count()
#: The name of an L{_IndexJob}'s file: the pid of the process that wrote it.
_JOB_FILE = re.compile(r"^netsuite-index(?:\.log\.new|\.tmp|\.backup\.tmp)\.(\d+)\.\d+(?:\.tmp)?$")


class _IndexJob:
    """
    One index rewrite: made under the folder lock (L{Folder._index_job}),
    written by L{write} (blocking: a thread may do it, its files have names of
    their own), put in place under the lock (L{Folder._install_index}).
    """

    def __init__(self, path: Path, text: str, generation: int, log_id: str, log_size: int,
                 backup: bool, snapshot: tuple):
        self.text = text
        self.generation = generation
        self.log_id = log_id
        self.log_size = log_size
        #: What the folder was when the text was made (see L{Folder._job_current}):
        #: index file, generation's log id, offset in that log the text holds, the
        #: pending list and how many of its records the text holds, UIDVALIDITY.
        self.snapshot = snapshot
        #: How far the old log is carried into the fresh one (L{append_tail}):
        #: the records written after the snapshot survive the compaction.
        self.copied: int = snapshot[2]
        #: The fresh log's size: its header, then the records carried over.
        self.fresh_size = log_size
        #: Rounds of carrying records over in a thread (see L{Folder._compacted}).
        self.rounds = 0
        suffix = f"{os.getpid()}.{next(_job_counter)}"
        self.tmp = path / f"{INDEX_NAME}.tmp.{suffix}"
        self.fresh_log = path / f"{LOG_NAME}.new.{suffix}"
        self.backup_tmp = path / f"{BACKUP_NAME}.tmp.{suffix}" if backup else None
        self.sig: tuple[int, int, int] | None = None

    def write(self, durable: bool = True) -> None:
        """The fresh log, the backup copy (first index only) and the index, fsynced."""
        changelog.create(self.fresh_log, self.log_id, durable)
        for target in (self.backup_tmp, self.tmp):
            if target is None:
                continue
            with open(target, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(self.text)
                f.flush()
                if durable:
                    os.fsync(f.fileno())
                self.sig = _file_sig(os.fstat(f.fileno()))

    def append_tail(self, data: bytes, durable: bool = True) -> None:
        """Records the old log got after the snapshot, onto the fresh log (a thread may)."""
        self.fresh_size = changelog.append(self.fresh_log, self.fresh_size, [data], durable)

    def discard(self) -> None:
        for path in (self.tmp, self.fresh_log, self.backup_tmp):
            if path is not None:
                _unlink(path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class _Index(NamedTuple):
    """An index file as read: the header, then (uid, size, date, sub, name, keywords)."""

    uidvalidity: int
    next_uid: int
    first_recent: int
    mtimes: tuple[int, int]
    generation: int
    #: The log this index was compacted with, and how far it had read it.
    log_id: str | None
    log_offset: int
    highest_modseq: int
    #: (uid, size, date, sub, name, keywords, modseq)
    entries: list[tuple[int, int, int, str, str, tuple[str, ...], int]]


def _parse_header(line: str) -> tuple[int, int, int, int, int, int]:
    """uidvalidity, next UID, first recent, mtime new, mtime cur, generation."""
    return _parse_header_log(line)[:6]


def _parse_header_log(line: str) -> tuple:
    """L{_parse_header} and then the log id (None) and offset."""
    head = line.rstrip("\n").split(" ")
    if " ".join(head[:2]) != INDEX_MAGIC:
        raise ValueError("bad header")
    uidvalidity, next_uid, first_recent, m_new, m_cur = (int(x) for x in head[2:7])
    # Written by every process after it read the others' changes: it only grows.
    generation = int(head[7]) if len(head) > 7 else 0
    log_id, log_offset = (head[8], int(head[9])) if len(head) > 9 else (None, 0)
    highest_modseq = int(head[10]) if len(head) > 10 else 0
    return (uidvalidity, next_uid, first_recent, m_new, m_cur, generation, log_id, log_offset,
            highest_modseq)


def _parse_index(text: str) -> _Index:
    lines = text.split("\n")
    if lines[-1] != "":
        raise ValueError("truncated")
    (uidvalidity, next_uid, first_recent, m_new, m_cur, generation, log_id,
     log_offset, highest_modseq) = _parse_header_log(lines[0])
    entries = []
    last = 0
    for line in lines[1:-1]:
        fields = line.split("\t")
        if len(fields) == 6:
            fields.append("0")  # written before MODSEQ
        uid_s, size_s, date_s, sub, name, kw, modseq_s = fields
        uid = int(uid_s)
        if uid <= last or sub not in ("new", "cur"):
            raise ValueError(f"bad entry for UID {uid}")
        last = uid
        entries.append((uid, int(size_s), int(date_s), sub, name,
                        tuple(kw.split(" ")) if kw else (), int(modseq_s)))
    if last >= next_uid or uidvalidity <= 0:
        raise ValueError("UIDs beyond next UID")
    return _Index(uidvalidity, next_uid, first_recent, (m_new, m_cur), generation, log_id,
                  log_offset, highest_modseq, entries)


def _file_sig(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_mtime_ns, st.st_size)

#: Maildir info letters <-> IMAP system flags.
LETTER_TO_FLAG = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen",
                  "T": "\\Deleted"}
FLAG_TO_LETTER = {v.lower(): k for k, v in LETTER_TO_FLAG.items()}
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")

#: A directory whose mtime is this close to the scan is scanned again next
#: time: a change within the same timestamp tick would not move the mtime.
_UNSURE_NS = 1_000_000_000


def split_name(name: str) -> tuple[str, str]:
    """C{base:2,FS} -> (C{base}, C{FS}); a name without info has no letters."""
    base, sep, info = name.partition(":2,")
    if not sep:
        base = name.partition(":")[0]
        return base, ""
    return base, info


@functools.lru_cache(maxsize=256)
def _letters_to_flags(letters: str) -> tuple[str, ...]:
    return tuple(LETTER_TO_FLAG[c] for c in sorted(letters) if c in LETTER_TO_FLAG)


def letters_to_flags(letters: str) -> list[str]:
    return list(_letters_to_flags(letters))


def flags_to_letters(flags: Iterable[str], keep: str = "") -> str:
    """System flags as sorted letters, plus letters we do not map (P, a-z) kept."""
    letters = {FLAG_TO_LETTER[f.lower()] for f in flags if f.lower() in FLAG_TO_LETTER}
    letters.update(c for c in keep if c not in LETTER_TO_FLAG)
    return "".join(sorted(letters))


def _size_hint(base: str) -> int:
    """The wire size from a C{,W=} field in the name (Dovecot writes it), else -1."""
    for field_ in base.split(",")[1:]:
        if field_.startswith("W=") and field_[2:].isdigit():
            return int(field_[2:])
    return -1


_UNIQUE = re.compile(r"(\d+)\.(?:[^.]*?M(\d+))?(?:[^.]*?Q(\d+))?")


def _arrival(base: str) -> tuple[int, int, int, str]:
    """Sort key from a Maildir name: seconds, microseconds, delivery counter."""
    m = _UNIQUE.match(base)
    if m is None:
        return (0, 0, 0, base)
    return (int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0), base)


def _arrival_sorted(bases: Iterable[str]) -> list[str]:
    """C{sorted(bases, key=_arrival)}, as L{_arrival_order} finds it."""
    bases = list(bases)
    return list(map(bases.__getitem__, _arrival_order(bases)))


def _arrival_order(bases: list[str]) -> list[int]:
    """
    The positions of C{bases} in arrival order (C{sorted(range(len(bases)),
    key=lambda i: _arrival(bases[i]))}): the string order, then
    L{_arrival_fixups}.
    """
    order = sorted(range(len(bases)), key=bases.__getitem__)
    fixups = _arrival_fixups(list(map(bases.__getitem__, order)))
    return order if fixups is None else list(map(order.__getitem__, fixups))


def _arrival_fixups(bases: list[str]) -> list[int] | None:
    """
    For bases in string order (or the order of their names: the same where it
    matters), None when that is already their arrival order, else the
    positions in arrival order; without a regex per name when it can, since a
    big folder's first open sorts every name.  When every name starts with
    ASCII digits of one width and a dot (every Maildir writer's seconds), the
    string order orders them by second; only names that share a second are
    sorted again by the full key.
    """
    count = len(bases)
    if count < 2:
        return None
    width = bases[0].find(".") + 1
    # Each name's first C{width} characters, the dot last: checked on one
    # string, so that no Python code runs per name.
    seconds = list(map(operator.itemgetter(slice(0, width)), bases))
    joined = "".join(seconds)
    digits = joined.replace(".", "")
    if (width < 2 or len(joined) != count * width or joined.count(".") != count
            or joined[width - 1::width] != "." * count
            or not (digits.isascii() and digits.isdigit())):
        return sorted(range(count), key=lambda i: _arrival(bases[i]))
    if len(set(seconds)) == count:
        return None
    out: list[int] = []
    start = 0
    for _second, run in itertools.groupby(seconds):
        end = start + sum(1 for _ in run)
        if end - start > 1:
            out.extend(sorted(range(start, end), key=lambda i: _arrival(bases[i])))
        else:
            out.append(start)
        start = end
    return out


def _base_names(names: list[str]) -> list[str]:
    """
    L{split_name}'s base of each name.  When every colon in the names starts
    a C{:2,} (every name a Maildir writer makes), the base is what precedes
    C{:2,}, or the whole name: the infos are cut out of the names joined
    with '/' (in no file name) by one regex substitution, checked for all
    names at once, and no Python code runs per name.
    """
    joined = "/".join(names)
    if names and joined.count(":") == joined.count(":2,"):
        bases = _INFO_TAIL.sub("", joined).split("/")
        if len(bases) == len(names):
            return bases
    return [split_name(n)[0] for n in names]


#: A name's C{:2,} info, to its end, in names joined with '/'.
_INFO_TAIL = re.compile(r":2,[^/]*")


def _first_listing(disk: dict[str, set[str]]) -> tuple[list[str], list[str], list[str]] | None:
    """
    A folder's first listing (nothing indexed yet) as three parallel lists in
    arrival order: bases, names, directories; built by whole-list operations
    and one sort, with neither a dict nor a tuple per file.  None when two
    files share a base (a copy in new/ and cur/): L{Folder._scan_locked}'s
    general path decides which one counts.
    """
    names = list(disk["cur"])
    names += disk["new"]
    # Sorted as names, not bases: L{_arrival_fixups} needs only the names of
    # one second together, and that holds for both.
    names.sort()
    bases = _base_names(names)
    if len(set(bases)) != len(bases):
        return None
    fixups = _arrival_fixups(bases)
    if fixups is not None:
        bases = list(map(bases.__getitem__, fixups))
        names = list(map(names.__getitem__, fixups))
    new = disk["new"]
    subs = ["new" if n in new else "cur" for n in names] if new else ["cur"] * len(names)
    return bases, names, subs


def _message_names(names: list[str]) -> set[str]:
    """
    The names in a listing that can be messages: dot files are not, names
    with tabs or newlines cannot be indexed (no Maildir writer makes them)
    and are left alone.  Checked on the joined listing first ('/' is in no
    file name), so a clean directory costs no Python code per name.
    """
    joined = "/" + "/".join(names)
    if "/." not in joined and "\t" not in joined and "\n" not in joined:
        return set(names)
    return {n for n in names if n[:1] != "." and "\t" not in n and "\n" not in n}


def _by_base_name(sub: str, names: list[str]) -> Iterable[tuple[str, tuple[str, str]]]:
    """
    (base, (C{sub}, name)) for each name, the base as L{split_name} says.
    When every colon in the names starts a C{:2,} (every name a Maildir
    writer makes), the base is what precedes C{:2,}, or the whole name: one
    string operation per name, checked for all names at once.
    """
    return zip(_base_names(names), zip(itertools.repeat(sub), names), strict=True)


#: Some name's info holds a letter a-z (a keyword, see store.keywords), in
#: names joined with '/'.
_KEYWORD_INFO_RE = re.compile(r":2,[^/]*[a-z]")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """
    No cyclic garbage collection while a big folder's index is made: its
    100,000 new objects (none in a cycle) would trigger several full
    collections of the whole process for nothing.  Nests; restores.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


#: Info letters -> whether they hold keyword letters (a-z), for the few
#: distinct info strings of a folder.
_KEYWORD_INFO: dict[str, bool] = {}


def _has_keyword_letters(letters: str) -> bool:
    found = _KEYWORD_INFO.get(letters)
    if found is None:
        found = any(c in KEYWORD_LETTERS for c in letters)
        if len(_KEYWORD_INFO) < 4096:
            _KEYWORD_INFO[letters] = found
    return found


def wire_size(data: bytes) -> int:
    """Size of C{data} with every bare LF sent as CRLF."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def to_wire(data: bytes) -> bytes:
    """Bare LF -> CRLF (lines already ending in CRLF are left alone)."""
    if b"\r" not in data:
        return data.replace(b"\n", b"\r\n")
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def to_disk(data: bytes) -> bytes:
    """CRLF -> LF, the Maildir convention."""
    return data.replace(b"\r\n", b"\n")


@implementer(IMessage)
@dataclass(slots=True, eq=False)
class Message:
    """One message as the index knows it."""

    uid: int
    #: File name in C{sub}, with its C{:2,} info.
    name: str
    #: C{"new"} or C{"cur"}.
    sub: str
    #: Size on the wire (CRLF line ends), what RFC822.SIZE and POP3 LIST say.
    size: int
    #: Internal date, Unix seconds.
    date: int
    keywords: tuple[str, ...] = ()
    #: The folder's modification sequence when this message last changed
    #: (arrived, or its flags did): RFC 7162's per-message MODSEQ.
    modseq: int = 0

    @property
    def base(self) -> str:
        return split_name(self.name)[0]

    @property
    def letters(self) -> str:
        return split_name(self.name)[1]

    @property
    def flags(self) -> list[str]:
        """System flags (from the file name) then keywords."""
        flags = _letters_to_flags(split_name(self.name)[1])
        return list(flags + self.keywords) if self.keywords else list(flags)

    def has(self, flag: str) -> bool:
        letter = FLAG_TO_LETTER.get(flag.lower())
        if letter is not None:
            return letter in self.letters
        return flag.lower() in (k.lower() for k in self.keywords)


@dataclass
class Changes:
    """What one refresh or one operation changed, for listeners."""

    expunged: list[int] = field(default_factory=list)
    added: list[Message] = field(default_factory=list)
    #: Messages whose flags changed.
    flags: list[Message] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.expunged or self.added or self.flags)


def _rec_add(m: Message) -> bytes:
    return changelog.encode(["A", str(m.uid), str(m.size), str(m.date), m.sub, m.name,
                             " ".join(m.keywords), str(m.modseq)])


def _rec_flags(m: Message) -> bytes:
    return changelog.encode(["F", str(m.uid), m.sub, m.name, " ".join(m.keywords),
                             str(m.modseq)])


def _rec_gone(uid: int, modseq: int) -> bytes:
    return changelog.encode(["X", str(uid), str(modseq)])


def _rec_meta(m: Message) -> bytes:
    return changelog.encode(["S", str(m.uid), str(m.size), str(m.date)])


def _reactor_running() -> bool:
    """
    Whether a reactor runs (a daemon) and this is its thread, so that blocking
    work should go to its threads.  Off the reactor's thread (a folder read by
    L{netsuite.store.maildir.MaildirStore.open_folder}) it is done there and then.
    """
    import sys

    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or not getattr(reactor, "running", False):
        return False
    from twisted.python import threadable

    return threadable.isInIOThread()


def _off_reactor(f: Callable, *args) -> defer.Deferred:
    """C{f(*args)} in a thread when a reactor runs here (L{_reactor_running}), else now."""
    if _reactor_running():
        return threads.deferToThread(f, *args)
    return defer.maybeDeferred(f, *args)


def _file_wire_size(path: Path) -> int | None:
    """L{wire_size} of a file, read in pieces (blocking: for a thread); None if gone."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    size = 0
    last = b""
    with f:
        while chunk := f.read(1 << 20):
            # A CRLF split between two pieces is one CRLF, not a bare LF.
            size += (len(chunk) + chunk.count(b"\n") - chunk.count(b"\r\n")
                     - (last == b"\r" and chunk[:1] == b"\n"))
            last = chunk[-1:]
    return size


def _fsync_path(path: Path) -> None:
    """fsync the file at C{path} (blocking: for a thread)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_placed(cur: Path, log_fd: int) -> None:
    """In a thread: the renames into C{cur} and the change log made durable; closes C{log_fd}."""
    try:
        fsync_dir(cur)
        os.fsync(log_fd)
    finally:
        os.close(log_fd)


def _tidy(changes: Changes) -> None:
    """
    One report per message: a message both added and expunged in one round
    (another process's, already gone) is neither; flags once, and not for
    messages added or expunged.
    """
    if changes.added and changes.expunged:
        both = {m.uid for m in changes.added} & set(changes.expunged)
        if both:
            changes.added = [m for m in changes.added if m.uid not in both]
            changes.expunged = [u for u in changes.expunged if u not in both]
    if changes.flags:
        skip = {id(m) for m in changes.added}
        gone = set(changes.expunged)
        seen: set[int] = set()
        flags = []
        for m in changes.flags:
            if id(m) in skip or m.uid in gone or id(m) in seen:
                continue
            seen.add(id(m))
            flags.append(m)
        changes.flags = flags


class FolderGone(Exception):
    """The folder was deleted or renamed underneath."""


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        log.failure("could not remove {path}", path=str(path))


class IncomingMessage:
    """
    A message written into a folder's C{tmp/} as its bytes arrive (an IMAP
    APPEND literal), CRLF turned into LF on the way exactly as L{to_disk} does,
    so memory stays flat whatever the size.  A write error (a full disk) is
    kept in L{error} and the file removed at once; later bytes are counted away.
    """

    def __init__(self, tmpdir: Path):
        self.name = unique_name()
        self.tmp: Path | None = tmpdir / self.name
        self.error: OSError | None = None
        self.finished = False
        #: Bytes on disk (LF line ends).
        self.size = 0
        self._lf = self._crlf = 0
        self._last = b""
        self._held_cr = False
        self._f: BinaryIO | None = None
        try:
            self._f = open(self.tmp, "xb")
        except OSError as e:
            self._fail(e)

    @property
    def wire_size(self) -> int:
        """What L{wire_size} says of the whole file."""
        return self.size + self._lf - self._crlf

    def write(self, data: bytes) -> None:
        if self._f is None:
            return
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if data.endswith(b"\r"):  # perhaps half of a CRLF: wait for the next byte
            data = data[:-1]
            self._held_cr = True
        self._put(data.replace(b"\r\n", b"\n"))

    def _put(self, out: bytes) -> None:
        if not out:
            return
        self._lf += out.count(b"\n")
        self._crlf += out.count(b"\r\n") + (self._last == b"\r" and out[:1] == b"\n")
        self._last = out[-1:]
        self.size += len(out)
        if self._f is None:
            return
        try:
            self._f.write(out)
        except OSError as e:
            self._fail(e)

    def finish(self) -> None:
        """
        All bytes are in: flush and close.  No fsync here, on the reactor (the
        framer calls this): L{Folder.append_many} fsyncs the file in a thread,
        L{Folder.append_incoming} before its rename.
        """
        if self._f is None:
            return
        if self._held_cr:
            self._held_cr = False
            self._put(b"\r")
        if self._f is None:
            return
        try:
            self._f.flush()
            self._f.close()
        except OSError as e:
            self._fail(e)
            return
        self._f = None
        self.finished = True

    def _fail(self, error: OSError) -> None:
        self.error = error
        self.abort()

    def abort(self) -> None:
        """Forget the message: close and remove the temporary file."""
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass  # the unflushed rest of a full disk
        tmp, self.tmp = self.tmp, None
        if tmp is not None:
            _unlink(tmp)


@implementer(IMailFolder)
class Folder:
    """A Maildir folder and its index; see the module docstring."""

    def __init__(self, path: Path, name: str = "INBOX",
                 clock: Callable[[], float] = time.time,
                 new_uidvalidity: Callable[[], int] | None = None):
        self.path = Path(path)
        self._path_str = os.fspath(self.path)
        self.name = name
        self.clock = clock
        #: Gives a UIDVALIDITY never used before for this mailbox name (a
        #: folder deleted and created again must not reuse one; RFC 3501 2.3.1.1).
        self.new_uidvalidity = new_uidvalidity
        self.uidvalidity = 0
        self.next_uid = 1
        #: UIDs at or above this are \Recent for the next session that claims them.
        self.first_recent = 1
        #: The highest MODSEQ given in this folder (RFC 7162 HIGHESTMODSEQ): every
        #: arrival, flag change and expunge takes the next one.
        self.highest_modseq = 0
        self.messages: list[Message] = []
        self._uids: list[int] = []
        self._by_base: dict[str, Message] = {}
        self._names: dict[str, set[str]] | None = None
        self._mtimes: tuple[int, int] = (-1, -1)
        self._unsure = True
        self.listeners: list[Callable[["Folder", Changes], None]] = []
        self.keywords: set[str] = set()
        #: Keywords as Dovecot's letters in file names (C{dovecot-keywords}).
        self.keyword_letters = KeywordLetters(self.path)
        self._dirty = False
        self._save_failing = False
        #: The index file as this process last read or wrote it (inode, mtime,
        #: size), and its generation: another process's write changes both.
        self._index_sig: tuple[int, int, int] | None = None
        self._generation = 0
        self._lock_depth = 0
        self._lock_fd: int | None = None
        self._lock_failing = False
        self._scanned_changes = self._allocated = False
        #: The change log this process follows: its id, the end of the last
        #: record read or written, its (inode, size) then.
        self._log_id: str | None = None
        self._log_good = 0
        self._log_sig: tuple[int, int] | None = None
        self._log_missing = False
        #: Records (sizes, dates, \\Recent) not worth a write of their own.
        self._pending: list[bytes] = []
        #: Expunges (uid, modseq) for C{netsuite-vanished}, written with their log records.
        self._vanished: list[tuple[int, int]] = []
        self._compact_scheduled = False
        #: A compaction's files are being written in a thread; and how many
        #: were given up since the last that was put in place (a change came).
        self._compacting = False
        self._compact_tries = 0
        ensure_maildir(self.path)
        with self._lock():
            self._load()

    # -- locking between processes ----------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """
        Hold the folder's lock file (flock: it excludes other processes and other
        L{Folder} objects on the same path alike).  Re-entrant.  Held only for
        the short synchronous work of reading the others' changes, giving UIDs
        and writing the index; never across a Deferred.  If the lock file cannot
        be made (a read-only or full disk) the work goes on unlocked.
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        fd = None
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if fd is not None:
                os.close(fd)
                fd = None
            if not self._lock_failing:
                self._lock_failing = True
                log.warn("cannot lock {path} ({error}); going on unlocked",
                         path=str(self.path), error=e)
        self._lock_fd = fd
        self._lock_depth = 1
        try:
            yield
        finally:
            self._lock_depth = 0
            self._lock_fd = None
            if fd is not None:
                os.close(fd)  # releases the flock

    def _index_stat(self) -> tuple[int, int, int] | None:
        try:
            return _file_sig(os.stat(self.index_path))
        except FileNotFoundError:
            return None

    def _sync_locked(self, changes: Changes) -> None:
        """
        Under the lock: adopt what other processes wrote into the index since
        this one last read or wrote it (UIDs they gave, keywords, expunges), so
        that a UID is never given twice.  Costs one header read when nobody
        else wrote; a missing or unreadable index is written again from memory,
        with the same UIDs.
        """
        try:
            f = open(self.index_path, encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            self._dirty = True
            return
        with f:
            sig = _file_sig(os.fstat(f.fileno()))
            head = f.readline()
            try:
                uidvalidity, *_, generation = _parse_header(head)
            except (ValueError, IndexError):
                self._dirty = True
                return
            if (uidvalidity, generation) == (self.uidvalidity, self._generation):
                self._index_sig = sig
                self._sync_log(changes)
                return
            text = head + f.read()
        try:
            index = _parse_index(text)
        except (ValueError, IndexError) as e:
            log.warn("index of {path} unreadable ({why}); writing it again from memory",
                     path=str(self.path), why=e)
            self._dirty = True
            return
        self._merge(index, changes)
        self._index_sig = sig
        self._sync_log(changes)

    def _merge(self, index: _Index, changes: Changes) -> None:
        """Take in another process's index: its new UIDs, keywords, expunges."""
        if index.uidvalidity != self.uidvalidity:
            log.warn("index of {path} was rebuilt by another process (UIDVALIDITY {old} "
                     "-> {new})", path=str(self.path), old=self.uidvalidity,
                     new=index.uidvalidity)
            changes.expunged.extend(self._uids)
            self.messages, self._uids, self._by_base = [], [], {}
            self.uidvalidity, self.next_uid = index.uidvalidity, 1
        mine = {m.uid: m for m in self.messages}
        known_next = self.next_uid
        merged: list[Message] = []
        for uid, size, date, sub, name, kw, modseq in index.entries:
            msg = mine.pop(uid, None)
            if msg is None:
                if uid < known_next:
                    continue  # this process saw it go (an expunge not yet written)
                msg = Message(uid, name, sub, size, date, kw, modseq)
                changes.added.append(msg)
                self.keywords.update(kw)
            else:
                if msg.keywords != kw:
                    msg.keywords = kw
                    self.keywords.update(kw)
                    changes.flags.append(msg)
                if msg.size < 0:
                    msg.size = size
                if msg.date < 0:
                    msg.date = date
                msg.modseq = max(msg.modseq, modseq)
            merged.append(msg)
        unwritten = []
        for uid, msg in mine.items():
            if uid < index.next_uid:
                changes.expunged.append(uid)  # the other process saw its file go
            else:
                unwritten.append(msg)  # given here, not yet written (a failed save)
        if unwritten:
            merged.extend(unwritten)
            merged.sort(key=lambda m: m.uid)
        changes.expunged.sort()
        self.messages = merged
        self._uids = [m.uid for m in merged]
        self._by_base = {m.base: m for m in merged}
        self._names = None
        self.next_uid = max(self.next_uid, index.next_uid)
        self.first_recent = max(self.first_recent, index.first_recent)
        self.highest_modseq = max(self.highest_modseq, index.highest_modseq)
        self._generation = index.generation
        self._log_id, self._log_good = index.log_id, index.log_offset
        # The names in the other's index may be older than the files: look.
        self._unsure = True

    # -- the change log ---------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.path / LOG_NAME

    def _log_stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.log_path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size)

    def _sync_log(self, changes: Changes) -> None:
        """Under the lock: apply the records others appended since this process read."""
        if self._log_id is None:
            self._log_missing = True
            return
        got = changelog.read_records(self.log_path, self._log_id, self._log_good)
        missing = got is None
        if got is None:
            # A compaction stopped (kill -9) after it moved the old log aside and
            # before its index was in place: the index's log is C{.2} now.  Else
            # the index holds everything.  Either way the next write starts the
            # log again (the index whole).
            got = changelog.read_records(self.path / LOG2_NAME, self._log_id, self._log_good)
            if got is None:
                self._log_missing = True
                return
        records, good, _size = got
        self._log_missing = missing
        if records:
            self._apply(records, changes)
        self._log_good = good
        self._log_sig = self._log_stat()

    def _apply(self, records: list[list[str]], changes: Changes) -> None:
        """Records another process wrote: O(records), a stat per new name."""
        gone: set[int] = set()
        msg: Message | None
        for r in records:
            try:
                op = r[0]
                if op == "A":
                    uid = int(r[1])
                    if uid < self.next_uid:
                        continue  # known already (or expunged here)
                    kw = tuple(r[6].split(" ")) if r[6] else ()
                    msg = Message(uid, r[5], r[4], int(r[2]), int(r[3]), kw,
                                  int(r[7]) if len(r) > 7 else 0)
                    self.highest_modseq = max(self.highest_modseq, msg.modseq)
                    self.next_uid = uid + 1
                    self._add(msg)
                    if not os.path.exists(self.file_path(msg)):
                        self._unsure = True  # renamed since: the next scan finds it
                    changes.added.append(msg)
                elif op == "F":
                    msg = self.by_uid(int(r[1]))
                    if msg is None or msg.uid in gone:
                        continue
                    old = (msg.letters, msg.keywords)
                    sub, name = r[2], r[3]
                    if (sub, name) != (msg.sub, msg.name):
                        if os.path.exists(self.path / sub / name):
                            if self._names is not None:
                                self._names[msg.sub].discard(msg.name)
                                self._names[sub].add(name)
                            msg.sub, msg.name = sub, name
                        elif not os.path.exists(self.file_path(msg)):
                            self._unsure = True
                    msg.keywords = tuple(r[4].split(" ")) if r[4] else ()
                    self.keywords.update(msg.keywords)
                    if len(r) > 5:
                        msg.modseq = int(r[5])
                        self.highest_modseq = max(self.highest_modseq, msg.modseq)
                    if (msg.letters, msg.keywords) != old:
                        changes.flags.append(msg)
                elif op == "X":
                    uid = int(r[1])
                    if len(r) > 2:
                        self.highest_modseq = max(self.highest_modseq, int(r[2]))
                    if uid not in gone and self.by_uid(uid) is not None:
                        gone.add(uid)
                        changes.expunged.append(uid)
                elif op == "S":
                    msg = self.by_uid(int(r[1]))
                    if msg is not None:
                        if msg.size < 0:
                            msg.size = int(r[2])
                        if msg.date < 0:
                            msg.date = int(r[3])
                elif op == "R":
                    self.first_recent = max(self.first_recent, int(r[1]))
            except (IndexError, ValueError):
                log.warn("bad record in the change log of {path}: {r!r}",
                         path=str(self.path), r=r)
        if gone:
            self._drop(gone)
            changes.expunged.sort()

    def _bump(self, msg: Message | None = None) -> int:
        """Under the lock: the next MODSEQ, given to C{msg} if any."""
        self.highest_modseq += 1
        if msg is not None:
            msg.modseq = self.highest_modseq
        return self.highest_modseq

    def _gone(self, uid: int) -> bytes:
        """Under the lock: the next MODSEQ for an expunge of C{uid}; its log record."""
        modseq = self._bump()
        self._vanished.append((uid, modseq))
        return _rec_gone(uid, modseq)

    def _write_vanished(self) -> None:
        """Under the lock: the expunges of this round into C{netsuite-vanished} (QRESYNC)."""
        pairs, self._vanished = self._vanished, []
        try:
            vanished.record(self.path / vanished.NAME, self.uidvalidity, pairs)
        except OSError as e:
            # Soft: without it a resynchronising client is told every missing UID.
            log.warn("cannot record expunges in {path}: {error}", path=str(self.path), error=e)
            (self.path / vanished.NAME).unlink(missing_ok=True)

    def expunged_since(self, modseq: int) -> list[int] | None:
        """UIDs expunged after MODSEQ C{modseq}; None when that is too far back to know."""
        return vanished.since(self.path / vanished.NAME, self.uidvalidity, modseq)

    def _drop(self, gone: set[int]) -> None:
        for m in self.messages:
            if m.uid in gone:
                self._by_base.pop(m.base, None)
                if self._names is not None:
                    self._names[m.sub].discard(m.name)
        self.messages = [m for m in self.messages if m.uid not in gone]
        self._uids = [m.uid for m in self.messages]

    def _log(self, lines: list[bytes], durable: bool = False, strict: bool = False) -> bool:
        """
        Under the lock, after L{_sync_locked}: append records (with any pending
        ones), fsynced when C{durable} (new UIDs).  Without a log to append to,
        the whole index is written instead (it starts one).  A failure is soft
        (the index is written whole later) unless C{strict}.
        """
        lines = self._pending + lines
        if self._log_id is None or self._log_missing or self._dirty:
            return self._store_index(durable=True, strict=strict)
        if not lines:
            return True
        try:
            self._log_good = changelog.append(self.log_path, self._log_good, lines, durable)
        except OSError as e:
            if strict:
                raise
            self._dirty = True
            if not self._save_failing:
                self._save_failing = True
                log.warn("cannot save the index of {path} (its change log: {error}); "
                         "serving from memory, will retry", path=str(self.path), error=e)
            return False
        self._pending = []
        self._log_sig = self._log_stat()
        if self._compact_due():
            self._compact_soon()
        return True

    def _fsync_log_in_thread(self) -> None:
        from twisted.internet import threads

        def fsync(path: Path) -> None:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        threads.deferToThread(fsync, self.log_path).addErrback(
            lambda f: log.failure("fsync of {path}", f, path=str(self.log_path)))

    def _compact_soon(self) -> None:
        """Compact once the current command is answered (off its path)."""
        if self._compact_scheduled:
            return
        if not _reactor_running():  # a command-line tool: now, it will not wait
            self._store_index(durable=True)
            return
        from twisted.internet import reactor

        self._compact_scheduled = True
        reactor.callLater(0, self._compact_in_background)

    def _compact_due(self) -> bool:
        return self._log_good > max(COMPACT_MIN_BYTES,
                                    COMPACT_BYTES_PER_MESSAGE * len(self.messages))

    def _compact_in_background(self) -> None:
        """
        L{compact} with the index written and fsynced in a thread, while the
        reactor serves.  The folder lock is not held meanwhile (it is never held
        across a Deferred): the job is a snapshot taken under the lock, its
        files are written under names of their own, and the records logged
        since the snapshot are carried into its fresh log (L{_compacted}) before
        it is put in place under the lock.  Only a job that cannot follow
        (another process compacted meanwhile) is given up and tried again,
        and done at once, on the reactor, after L{COMPACT_TRIES} such tries.
        """
        self._compact_scheduled = False
        if self._compacting:
            return
        changes = Changes()
        job = None
        try:
            with self._lock():
                self._sync_locked(changes)
                if self._dirty or self._log_id is None or self._log_missing:
                    self._store_index(durable=True)
                elif not self._compact_due():
                    pass  # another process compacted meanwhile
                elif self._compact_tries >= COMPACT_TRIES:
                    self._compact_tries = 0
                    if self._store_index(durable=True):
                        metrics.store_index_compactions.inc()
                else:
                    self._clean_job_leftovers()
                    job = self._index_job()
        except FolderGone:
            return
        _tidy(changes)
        if changes:
            self._notify(changes)
        if job is None:
            return
        self._compacting = True
        d = threads.deferToThread(job.write, True)
        d.addCallbacks(self._compacted, self._compaction_failed, callbackArgs=(job,),
                       errbackArgs=(job,))
        d.addErrback(lambda f: log.failure("compacting {path}", f, path=str(self.path)))

    def _clean_job_leftovers(self) -> None:
        """Under the lock: files of compactions whose process died before it put them in place."""
        try:
            names = os.listdir(self.path)
        except OSError:
            return
        for name in names:
            m = _JOB_FILE.match(name)
            if m is not None and not _process_alive(int(m.group(1))):
                _unlink(self.path / name)

    def _compacted(self, _result, job: "_IndexJob") -> None:
        """
        The job's files are durable: under the lock, carry over the records
        the old log got since the snapshot (this process's and others'), and
        put the files in place.  The records are appended to the fresh log and
        fsynced in a thread, then this runs again for what came meanwhile; after
        L{COMPACT_TRIES} rounds the last few are appended here, unfsynced (they
        are fsynced in a thread right after, as the ones they follow were).
        Given up only when the job cannot follow any more (another process
        compacted, the folder was rebuilt, the log went away).
        """
        changes = Changes()
        try:
            with self._lock():
                self._sync_locked(changes)
                if not self._job_current(job):
                    self._compacting = False
                    job.discard()
                    self._compact_tries += 1
                    if self._compact_due():
                        self._compact_soon()
                    return
                fsync_after = False
                if self._log_good > job.copied:
                    tail = self._read_log(job.copied, self._log_good)
                    job.copied = self._log_good
                    if job.rounds < COMPACT_TRIES and _reactor_running():
                        job.rounds += 1
                        d = threads.deferToThread(job.append_tail, tail, True)
                        d.addCallbacks(self._compacted, self._compaction_failed,
                                       callbackArgs=(job,), errbackArgs=(job,))
                        d.addErrback(lambda f: log.failure("compacting {path}", f,
                                                           path=str(self.path)))
                        return
                    fsync_after = _reactor_running()
                    job.append_tail(tail, durable=not fsync_after)
                self._compacting = False
                self._install_index(job)
                metrics.store_index_compactions.inc()
                self._compact_tries = 0
                self._saved()
                if fsync_after:
                    self._fsync_log_in_thread()
        except FolderGone:
            self._compacting = False
            job.discard()
            return
        except OSError as e:
            self._compacting = False
            job.discard()
            self._save_failed(e)
            return
        finally:
            _tidy(changes)
            if changes:
                self._notify(changes)

    def _read_log(self, start: int, end: int) -> bytes:
        """Under the lock: the log's records between two good offsets (a small read)."""
        with open(self.log_path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        if len(data) != end - start:
            raise OSError(f"{self.log_path} is shorter than its records")
        return data

    def _compaction_failed(self, failure, job: "_IndexJob") -> None:
        self._compacting = False
        job.discard()
        failure.trap(OSError)
        self._save_failed(failure.value)

    def compact(self) -> None:
        """Write the index whole and start a fresh log: O(messages), rare."""
        self._compact_scheduled = False
        try:
            if self.save(durable=True):
                metrics.store_index_compactions.inc()
        except FolderGone:
            pass

    # -- index ------------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.path / INDEX_NAME

    def _load(self) -> None:
        try:
            with open(self.index_path, encoding="utf-8", errors="surrogateescape") as f:
                sig = _file_sig(os.fstat(f.fileno()))
                index = _parse_index(f.read())
        except FileNotFoundError:
            if not self._recover("no index"):
                self._rebuild("no index")
        except (ValueError, IndexError) as e:
            if not self._recover(f"corrupt index ({e})"):
                self._rebuild(f"corrupt index ({e})")
        else:
            self._adopt(index, sig)
            self._sync_log(Changes())
            self.refresh(notify=False)

    def _recover(self, why: str) -> bool:
        """
        The index is lost or corrupt: take the backup (the index before the
        last compaction) and replay the logs written since (C{.2}, then the
        current one), so every UID stays what it was.  False if there is no
        backup either (then the folder is rebuilt with a new UIDVALIDITY).
        """
        try:
            with open(self.path / BACKUP_NAME, encoding="utf-8",
                      errors="surrogateescape") as f:
                sig = _file_sig(os.fstat(f.fileno()))
                index = _parse_index(f.read())
        except (OSError, ValueError, IndexError):
            return False
        self._adopt(index, sig)
        changes = Changes()
        for path in (self.path / LOG2_NAME, self.log_path):
            got = (changelog.read_records(path, self._log_id, self._log_good)
                   if self._log_id else None)
            if got is None:
                continue
            self._apply(got[0], changes)
            if path == self.log_path:
                break
            # The log after .2 is the current one, from its start.
            ident = changelog.read_id(self.log_path)
            if ident is None:
                break
            self._log_id, self._log_good = ident[0], 0
        else:
            # The backup's log is gone: the current one still holds the latest changes.
            ident = changelog.read_id(self.log_path)
            if ident is not None and ident[0] != self._log_id:
                got = changelog.read_records(self.log_path, ident[0], 0)
                if got is not None:
                    self._apply(got[0], changes)
        log.warn("index of {path} recovered from its backup and change logs ({why}); "
                 "UIDs kept", path=str(self.path), why=why)
        self._unsure = True
        self._scan_locked(Changes(), force=True, log=False)
        # Neither the bad index nor the old backup is kept: the recovered state
        # is written as both (the backup must match the logs that follow it).
        _unlink(self.index_path)
        _unlink(self.path / BACKUP_NAME)
        self._store_index(durable=True)
        return True

    def _adopt(self, index: _Index, sig: tuple[int, int, int]) -> None:
        messages = []
        by_base = {}
        for uid, size, date, sub, name, kw, modseq in index.entries:
            msg = Message(uid, name, sub, size, date, kw, modseq)
            messages.append(msg)
            by_base[split_name(name)[0]] = msg
        self.uidvalidity, self.next_uid = index.uidvalidity, index.next_uid
        self.first_recent = index.first_recent
        self.highest_modseq = index.highest_modseq
        self.messages = messages
        self._uids = [m.uid for m in messages]
        self._by_base = by_base
        self._names = None
        self._mtimes = index.mtimes
        self._unsure = False
        self._generation = index.generation
        self._log_id, self._log_good = index.log_id, index.log_offset
        self._index_sig = sig
        for m in messages:
            self.keywords.update(m.keywords)

    def _rebuild(self, why: str) -> None:
        metrics.store_index_rebuilds.labels("missing" if why == "no index" else "corrupt").inc()
        if why != "no index":
            log.warn("rebuilding index of {path}: {why}", path=str(self.path), why=why)
        fresh = self.new_uidvalidity() if self.new_uidvalidity else int(self.clock())
        self.uidvalidity = max(fresh, self.uidvalidity + 1)
        self.next_uid = 1
        self.first_recent = 1
        self.messages, self._uids, self._by_base = [], [], {}
        self._names = None
        self._mtimes = (-1, -1)
        self._unsure = True
        with _gc_paused():
            self._scan_locked(Changes(), force=True, log=False)
        self._store_index(durable=True)

    def save(self, durable: bool = False, strict: bool = False) -> bool:
        """
        Write the index atomically (under the folder lock, after taking in what
        other processes wrote); C{durable} fsyncs it (new UIDs were given).

        On a full disk (or any write error) this fails soft: reads go on from
        memory, the error is logged once, and the next save (the next refresh
        or poll) tries again.  False when the index could not be written.
        C{strict} raises instead, for a caller that must undo what it did (an
        APPEND whose UID would otherwise not be durable).
        """
        changes = Changes()
        with self._lock():
            self._sync_locked(changes)
            ok = self._store_index(durable, strict)
        if changes:
            self._notify(changes)
        return ok

    def _store_index(self, durable: bool = False, strict: bool = False) -> bool:
        """L{save} under the lock already held."""
        try:
            self._write_index(durable)
        except OSError as e:
            if strict:
                raise
            self._save_failed(e)
            return False
        self._saved()
        return True

    def _save_failed(self, error: OSError) -> None:
        self._dirty = True
        if not self._save_failing:
            self._save_failing = True
            log.warn("cannot save the index of {path} ({error}); serving from "
                     "memory, will retry", path=str(self.path), error=error)

    def _saved(self) -> None:
        if self._save_failing:
            self._save_failing = False
            log.info("index of {path} saved again", path=str(self.path))

    def _write_index(self, durable: bool = True) -> None:
        """
        Compaction: the whole state into a fresh index, fsynced, beside a fresh
        empty log.  The old index becomes the backup and the old log C{.2}, so
        that whatever moment a crash (kill -9) picks, one index and the logs it
        names still hold every UID and flag.  Under the lock, all of it here;
        L{_compact_in_background} writes the job in a thread instead.
        """
        self._dirty = False
        job = self._index_job()
        try:
            job.write(durable)
            self._install_index(job)
        except BaseException:
            self._dirty = True
            job.discard()
            raise

    def _index_job(self) -> "_IndexJob":
        """Under the lock: the whole state as index text, to be written by L{_IndexJob.write}."""
        generation = self._generation + 1
        log_id = changelog.new_log_id()
        log_size = len(changelog.header(log_id))
        out = [f"{INDEX_MAGIC} {self.uidvalidity} {self.next_uid} {self.first_recent} "
               f"{self._mtimes[0]} {self._mtimes[1]} {generation} {log_id} {log_size} "
               f"{self.highest_modseq}\n"]
        out.extend(f"{m.uid}\t{m.size}\t{m.date}\t{m.sub}\t{m.name}\t"
                   f"{' '.join(m.keywords)}\t{m.modseq}\n" for m in self.messages)
        backup = not os.path.exists(self.path / BACKUP_NAME)
        return _IndexJob(self.path, "".join(out), generation, log_id, log_size, backup,
                         (self._index_sig, self._log_id, self._log_good, self._pending,
                          len(self._pending), self.uidvalidity))

    def _install_index(self, job: "_IndexJob") -> None:
        """
        Under the lock: the written job's files put in place, in crash-safe
        order.  The logs first: until the new index is in place the old one
        holds, reading its log from C{.2} (L{_sync_log}); the fresh log may
        hold records the new index does not (L{_compacted}), so the index must
        never be in place before it.  Between the two, with no index, the
        backup (the old index) and both logs recover everything (L{_recover}).
        """
        if self.log_path.exists():
            os.replace(self.log_path, self.path / LOG2_NAME)
        os.replace(job.fresh_log, self.log_path)
        if job.backup_tmp is not None:
            # The first index is its own backup (a copy: later ones are renamed).
            if os.path.exists(self.path / BACKUP_NAME):
                _unlink(job.backup_tmp)
            else:
                os.replace(job.backup_tmp, self.path / BACKUP_NAME)
        if self.index_path.exists():
            os.replace(self.index_path, self.path / BACKUP_NAME)
        os.replace(job.tmp, self.index_path)
        self._generation = job.generation
        # The rename keeps the inode; the mtime is the last write's.
        self._index_sig = job.sig
        self._log_id, self._log_good, self._log_missing = job.log_id, job.fresh_size, False
        self._log_sig = self._log_stat()
        _sig, _log_id, _good, pending, count, _uidvalidity = job.snapshot
        if self._pending is pending:  # else they were written to the log, and carried over
            self._pending = self._pending[count:]

    def _job_current(self, job: "_IndexJob") -> bool:
        """
        Under the lock, after L{_sync_locked}: the job still follows the
        folder: nobody wrote the index since (another compaction, a rebuild)
        and the log it was made from is still the one, only grown.
        """
        index_sig, log_id, log_good, _pending, _count, uidvalidity = job.snapshot
        return (not self._dirty and not self._log_missing
                and self._generation + 1 == job.generation
                and self.uidvalidity == uidvalidity and self._log_id == log_id
                and self._log_good >= job.copied and self._index_stat() == index_sig)

    # -- reading the disk -----------------------------------------------------------

    def _dir_mtimes(self) -> tuple[int, int]:
        try:
            return (os.stat(self.path / "new").st_mtime_ns,
                    os.stat(self.path / "cur").st_mtime_ns)
        except FileNotFoundError:
            raise FolderGone(self.name) from None

    def refresh(self, notify: bool = True, force: bool = False) -> Changes:
        """
        Bring the index up to date with the disk and with what other processes
        wrote: cheap (three stats) when nothing changed; otherwise, under the
        folder lock, the other processes' index changes, one listdir per
        directory and new UIDs for unknown files.  Listeners hear what changed.
        """
        mtimes = self._dir_mtimes()
        if (mtimes == self._mtimes and not self._unsure and not force
                and self._log_stat() == self._log_sig
                and self._index_stat() == self._index_sig):
            if self._dirty or self._pending:
                self.save_if_dirty()
            return Changes()
        changes = Changes()
        with self._lock():
            self._sync_locked(changes)
            records = self._scan_locked(changes, force)
            # What came from the others' log is written already.  UIDs given
            # to files already durable in new/ or cur/ (a delivery, another
            # program) are not fsynced here, on the reactor, but in a thread.
            allocated = self._allocated
            if records or self._dirty or self._pending:
                if self._log(records, durable=allocated and not _reactor_running()):
                    if allocated and _reactor_running():
                        self._fsync_log_in_thread()
        _tidy(changes)
        if changes and notify:
            self._notify(changes)
        return changes

    def _scan_locked(self, changes: Changes, force: bool = False,
                     log: bool = True) -> list[bytes]:
        """
        Under the lock: compare the directories with the index (skipped when
        their mtimes did not move), give UIDs to unknown files.  The records
        for the log (none unless C{log}: a caller that writes the whole index
        next needs none); sets C{_allocated} when UIDs were given.
        """
        self._scanned_changes = self._allocated = False
        mtimes = self._dir_mtimes()
        if mtimes == self._mtimes and not self._unsure and not force:
            return []
        records: list[bytes] = []
        now_ns = int(self.clock() * 1e9)
        disk = {sub: _message_names(os.listdir(self.path / sub)) for sub in ("new", "cur")}
        known = self._known()
        # A first open (nothing indexed) takes every file in one batch.
        listing = None if self._by_base else _first_listing(disk)
        # Set differences (in C) find what changed; Python looks only at those.
        appeared: dict[str, tuple[str, str]] = {}
        vanished: list[tuple[str, str]] = []
        for sub in ("new", "cur") if listing is None else ():
            appeared.update(_by_base_name(sub, list(disk[sub] - known[sub])))
            vanished.extend((sub, name) for name in known[sub] - disk[sub])
        before = (len(changes.added), len(changes.expunged), len(changes.flags))
        # Nothing indexed yet (a first open): every file that appeared is new.
        on_disk: dict[str, tuple[str, str]] = {} if self._by_base else appeared
        for base, where in appeared.items() if self._by_base else ():
            msg = self._by_base.get(base)
            if msg is None:
                on_disk[base] = where
                continue
            old = msg.letters
            msg.sub, msg.name = where
            if msg.letters != old:
                self._bump(msg)
                msg.keywords = self._name_keywords(msg.letters, msg.keywords)
                changes.flags.append(msg)
            records.append(_rec_flags(msg))
        for sub, name in vanished:
            msg = self._by_base.get(split_name(name)[0])
            if msg is not None and (msg.sub, msg.name) == (sub, name):
                changes.expunged.append(msg.uid)
                records.append(self._gone(msg.uid))
        self._names = disk
        if self._vanished:
            self._write_vanished()
        if changes.expunged:
            gone = set(changes.expunged)
            self.messages = [m for m in self.messages if m.uid not in gone]
            self._uids = [m.uid for m in self.messages]
            self._by_base = {m.base: m for m in self.messages}
            changes.expunged.sort()
        # New files in arrival order as their names tell it (Maildir names
        # start with the delivery time); neither stat nor read here: the
        # internal date and the wire size are looked up when first needed.
        fresh = self._allocate(on_disk) if listing is None else self._allocate_sorted(*listing)
        changes.added.extend(fresh)
        if log:
            records.extend([_rec_add(m) for m in fresh])
        self._mtimes = mtimes
        self._unsure = any(now_ns - m < _UNSURE_NS for m in mtimes)
        self._allocated = bool(fresh)
        self._scanned_changes = before != (len(changes.added), len(changes.expunged),
                                           len(changes.flags))
        return records

    def _allocate(self, on_disk: dict[str, tuple[str, str]]) -> list[Message]:
        """
        Under the lock, once L{_scan_locked} set C{_names} to the names it
        listed (these among them): UIDs and MODSEQs for new files (base ->
        (sub, name)), in arrival order, in one batch.  A first open of a big
        folder meets every file here: the messages are made by C{map}, and
        names are looked at one by one only if some say a keyword or a size.
        """
        if not on_disk:
            return []
        order = _arrival_sorted(on_disk)
        where = [on_disk[b] for b in order]
        return self._allocate_sorted(order, [w[1] for w in where], [w[0] for w in where])

    def _allocate_sorted(self, order: list[str], names: list[str],
                         subs: list[str]) -> list[Message]:
        """L{_allocate} for files already in arrival order: bases, names, directories."""
        count = len(order)
        if not count:
            return []
        joined = "/".join(names)
        keywords: Iterable[tuple[str, ...]] = itertools.repeat(())
        if _KEYWORD_INFO_RE.search(joined):
            #: info letters -> keywords (a folder has few distinct info strings)
            named: dict[str, tuple[str, ...]] = {"": ()}
            keywords = []
            for name in names:
                letters = name.partition(":2,")[2]
                found = named.get(letters)
                if found is None:
                    found = named[letters] = self._name_keywords(letters, ())
                keywords.append(found)
        sizes: Iterable[int] = itertools.repeat(-1)
        if ",W=" in joined:
            sizes = [_size_hint(b) if ",W=" in b else -1 for b in order]
        first, modseq = self.next_uid, self.highest_modseq
        with _gc_paused():
            made = list(map(Message, range(first, first + count), names,
                            subs, sizes, itertools.repeat(-1), keywords,
                            range(modseq + 1, modseq + 1 + count)))
        self.next_uid, self.highest_modseq = first + count, modseq + count
        self._by_base.update(zip(order, made, strict=True))
        self.messages.extend(made)
        self._uids.extend(range(first, first + count))
        return made

    def size_of(self, msg: Message) -> int:
        """The wire (CRLF) size, read from the file the first time it is needed."""
        if msg.size < 0:
            msg.size = wire_size(self.read(msg))
            self._pending.append(_rec_meta(msg))
        return msg.size

    def learn_sizes(self) -> defer.Deferred:
        """
        Learn every wire size not known yet (files other programs put there),
        reading the files in a thread: before a POP3 login's LIST or a STATUS
        SIZE of a big folder, which would read them all one by one on the
        reactor.  A Deferred of None; a file renamed meanwhile is left to
        L{size_of}.  Refreshes first, so that files that just arrived count.
        """
        self.refresh()
        unknown = [(m, self.file_path(m)) for m in self.messages if m.size < 0]
        if not unknown:
            return defer.succeed(None)

        def measure() -> list[int | None]:
            return [_file_wire_size(path) for _m, path in unknown]

        def learnt(sizes: list[int | None]) -> None:
            for (msg, _path), size in zip(unknown, sizes, strict=True):
                if size is not None and msg.size < 0:
                    msg.size = size
                    self._pending.append(_rec_meta(msg))

        return _off_reactor(measure).addCallback(learnt)

    def date_of(self, msg: Message) -> int:
        """The internal date (the file's mtime, as Dovecot uses), looked up once."""
        if msg.date < 0:
            try:
                msg.date = int(os.stat(self.file_path(msg)).st_mtime)
            except FileNotFoundError:
                self.refresh()
                try:
                    msg.date = int(os.stat(self.file_path(msg)).st_mtime)
                except FileNotFoundError:
                    return 0
            self._pending.append(_rec_meta(msg))
        return msg.date

    def save_if_dirty(self) -> None:
        """Write what is only in memory: pending records, or the whole index if due."""
        if not (self._dirty or self._pending):
            return
        changes = Changes()
        with self._lock():
            self._sync_locked(changes)
            self._log([])
        _tidy(changes)
        if changes:
            self._notify(changes)

    def _known(self) -> dict[str, set[str]]:
        """File names the index knows, per directory (rebuilt after bulk changes)."""
        if self._names is None:
            names: dict[str, set[str]] = {"new": set(), "cur": set()}
            for m in self.messages:
                names[m.sub].add(m.name)
            self._names = names
        return self._names

    def _add(self, msg: Message) -> None:
        if self._names is not None:
            self._names[msg.sub].add(msg.name)
        self.messages.append(msg)
        self._uids.append(msg.uid)
        self._by_base[msg.base] = msg
        self.keywords.update(msg.keywords)

    def _name_keywords(self, letters: str, keywords: tuple[str, ...]) -> tuple[str, ...]:
        """
        A message's keywords once its file name says C{letters}: the name is
        the truth for keywords that have a Dovecot letter, the index for the rest.
        """
        if not keywords and not _has_keyword_letters(letters):
            return keywords
        kl = self.keyword_letters
        kept = tuple(k for k in keywords if kl.letter(k) is None)
        seen = {k.lower() for k in kept}
        named = tuple(k for k in kl.keywords_of(letters) if k.lower() not in seen)
        self.keywords.update(named)
        return kept + named

    def _keyword_letters(self, keywords: Iterable[str], letters: str) -> str:
        """C{letters} with their keyword letters replaced by those of C{keywords}."""
        if not keywords and not any(c in KEYWORD_LETTERS for c in letters):
            return letters
        kl = self.keyword_letters
        keep = "".join(c for c in letters
                       if c not in KEYWORD_LETTERS or kl.keyword(c) is None)
        return keep + "".join(c for k in keywords if (c := kl.letter(k, create=True)))

    def _notify(self, changes: Changes) -> None:
        for listener in list(self.listeners):
            try:
                listener(self, changes)
            except Exception:
                log.failure("folder listener failed")

    # -- lookups ----------------------------------------------------------------------

    @property
    def uids(self) -> list[int]:
        """The UIDs in ascending order (the folder's own list: do not change it)."""
        return self._uids

    def by_uid(self, uid: int) -> Message | None:
        i = bisect.bisect_left(self._uids, uid)
        if i < len(self._uids) and self._uids[i] == uid:
            return self.messages[i]
        return None

    def file_path(self, msg: Message) -> Path:
        return self.path / msg.sub / msg.name

    def _open_fd(self, msg: Message) -> int:
        """
        The message file's descriptor, open for reading; follows a rename by
        another program.  A plain string path and C{os.open}: POP3 RETR and IMAP
        FETCH open one file per message, and pathlib's joins cost more than the
        open itself.
        """
        for _ in range(3):
            try:
                return os.open(f"{self._path_str}/{msg.sub}/{msg.name}",
                               os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self.refresh()
                if self.by_uid(msg.uid) is None:
                    break
        raise KeyError(msg.uid)

    def bodies_ready(self, msgs: Iterable[Message]) -> None:
        """Every message is a local file: readable now."""
        return None

    def open(self, msg: Message) -> BinaryIO:
        """The message file, open for reading; follows a rename by another program."""
        fd = self._open_fd(msg)
        try:
            return open(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def read(self, msg: Message) -> bytes:
        """
        The message as stored (LF line ends, usually): C{os.read} straight into
        bytes, sized by the known wire size (never smaller than the file), so
        most mail takes one read and the one that finds the end.
        """
        fd = self._open_fd(msg)
        try:
            data = os.read(fd, msg.size + 1 if msg.size >= 0 else 65536)
            if not data:
                return data
            parts = [data]
            while chunk := os.read(fd, max(len(data), 65536)):
                parts.append(chunk)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            os.close(fd)

    def read_upto(self, msg: Message, limit: int) -> bytes | BinaryIO:
        """
        The message as stored if the file holds at most C{limit} bytes (read as
        L{read} does), else the file, open at its start, to be streamed: a
        wrong size in the index (a C{,W=} in a name written by another
        program) never loads a large message into memory.
        """
        fd = self._open_fd(msg)
        try:
            parts: list[bytes] = []
            got = 0
            want = (msg.size if 0 <= msg.size < limit else limit) + 1
            while got <= limit:
                chunk = os.read(fd, want)
                if not chunk:
                    return parts[0] if len(parts) == 1 else b"".join(parts)
                parts.append(chunk)
                got += len(chunk)
                want = limit + 1 - got
            os.lseek(fd, 0, os.SEEK_SET)
            f = open(fd, "rb")
            fd = -1  # the file object owns it now
            return f
        finally:
            if fd >= 0:
                os.close(fd)

    def read_wire(self, msg: Message) -> bytes:
        return to_wire(self.read(msg))

    def claim_recent(self) -> set[int]:
        """
        UIDs that are \\Recent for the caller; nobody else will see them as
        recent, in this process or another.  Inside a locked change the claim
        goes out with that change's records; otherwise it is made under the
        lock, after the others' claims are read, and written at once (a pending
        record let a second process claim the same UIDs).  Only the UIDs this
        process knew before are claimed: ones the lock's read brings in stay
        for whoever is told of them.
        """
        uids = self._uids
        if self._lock_depth:
            recent = set(uids[bisect.bisect_left(uids, self.first_recent):])
            if self.first_recent != self.next_uid:
                self.first_recent = self.next_uid
                self._pending.append(changelog.encode(["R", str(self.first_recent)]))
            return recent
        if not uids or uids[-1] < self.first_recent:
            return set()
        upto = uids[-1]
        others = Changes()
        with self._lock():
            self._sync_locked(others)
            uids = self._uids
            recent = set(uids[bisect.bisect_left(uids, self.first_recent):
                              bisect.bisect_right(uids, upto)])
            if self.first_recent <= upto:
                self.first_recent = upto + 1
                self._log([changelog.encode(["R", str(self.first_recent)])])
        _tidy(others)
        if others:
            self._notify(others)
        return recent

    # -- changing -------------------------------------------------------------------

    def set_flags(self, msgs: Iterable[Message], flags: Iterable[str], mode: int,
                  unchanged_since: int | None = None) -> list[Message]:
        """
        Replace (mode 0), add (1) or remove (-1) C{flags}: system flags by
        renaming the file into C{cur/}, keywords in the index.  Returns the
        messages whose flags changed.  With C{unchanged_since}, a message whose
        MODSEQ is above it (changed since, by anyone) is left alone (RFC 7162
        STORE UNCHANGEDSINCE: the test and the change under one lock).

        Under the folder lock, after taking in the other processes' changes;
        a file renamed meanwhile by a program that does not lock (mutt) is
        looked up again, so no one's flag is lost.
        """
        flags = [f for f in flags if f.lower() != "\\recent"]
        system = {f.lower() for f in flags if f.lower() in FLAG_TO_LETTER}
        keywords = [f for f in flags if f.lower() not in FLAG_TO_LETTER]
        changed = []
        others = Changes()
        allocated = False
        records: list[bytes] = []
        with self._lock():
            self._sync_locked(others)
            for msg in msgs:
                if unchanged_since is not None and msg.modseq > unchanged_since:
                    continue
                for _attempt in range(3):
                    try:
                        result = self._flag_one(msg, system, keywords, mode)
                    except FileNotFoundError:
                        # Renamed or removed by another program: look again.
                        records.extend(self._scan_locked(others, force=True))
                        allocated = allocated or self._allocated
                        if self._by_base.get(msg.base) is not msg:
                            result = None
                            break
                        continue
                    break
                else:
                    result = None
                if result is None:
                    continue
                sys_changed, kw_changed = result
                if sys_changed or kw_changed:
                    changed.append(msg)
                    self._bump(msg)
                    records.append(_rec_flags(msg))
            # One record per message, not fsynced (Dovecot's mail_fsync=optimized):
            # a crash may lose the last flag changes, never a UID.
            if records:
                self._log(records, durable=allocated)
        _tidy(others)
        if others:
            self._notify(others)
        if changed:
            self._notify(Changes(flags=changed))
        return changed

    def _flag_one(self, msg: Message, system: set[str], keywords: list[str],
                  mode: int) -> tuple[bool, bool] | None:
        """One message's new flags; (system changed, keywords changed) or None."""
        current = {f.lower() for f in letters_to_flags(msg.letters)}
        kws = list(msg.keywords)
        if mode == 0:
            new_sys, new_kw = system, keywords
        elif mode > 0:
            new_sys = current | system
            new_kw = kws + [k for k in keywords if k.lower() not in {x.lower() for x in kws}]
        else:
            new_sys = current - system
            new_kw = [k for k in kws if k.lower() not in {x.lower() for x in keywords}]
        letters = flags_to_letters(new_sys, keep=self._keyword_letters(new_kw, msg.letters))
        kw_changed = tuple(new_kw) != msg.keywords
        if letters == msg.letters and msg.sub == "cur" and not kw_changed:
            return None
        if letters != msg.letters or msg.sub != "cur":
            new_name = f"{msg.base}:2,{letters}"
            os.rename(self.file_path(msg), self.path / "cur" / new_name)
            sys_changed = letters != msg.letters
            if self._names is not None:
                self._names[msg.sub].discard(msg.name)
                self._names["cur"].add(new_name)
            msg.sub, msg.name = "cur", new_name
        else:
            sys_changed = False
        msg.keywords = tuple(new_kw)
        self.keywords.update(new_kw)
        return sys_changed, kw_changed

    def expunge(self, uids: Iterable[int]) -> list[int]:
        """
        Remove these messages' files; returns the UIDs actually removed.  One
        log record each, not fsynced (the files are gone: a restart sees it).
        """
        gone = []
        others = Changes()
        #: What a second look at the directories found (UIDs it gave among it):
        #: logged with the expunges, or another process could give those UIDs again.
        scanned: list[bytes] = []
        allocated = False
        with self._lock():
            self._sync_locked(others)
            for uid in sorted(set(uids)):
                msg = self.by_uid(uid)
                if msg is None:
                    continue
                try:
                    os.unlink(self.file_path(msg))
                except FileNotFoundError:
                    # Renamed by another program (a flag change)? Look again.
                    scanned.extend(self._scan_locked(others, force=True))
                    allocated = allocated or self._allocated
                    if self._by_base.get(msg.base) is msg:
                        _unlink(self.file_path(msg))
                if self._names is not None:
                    self._names[msg.sub].discard(msg.name)
                gone.append(uid)
            if gone:
                self._drop(set(gone))
            if gone or scanned:
                records = [self._gone(uid) for uid in gone]
                self._write_vanished()
                self._log(scanned + records, durable=allocated)
        _tidy(others)
        if others:
            self._notify(others)
        if gone:
            self._notify(Changes(expunged=gone))
        return gone

    def append(self, data: bytes, flags: Iterable[str] = (), date: float | None = None,
               notify: bool = True) -> int:
        """
        Store a new message durably (tmp, fsync, rename, fsync dir); returns its UID.
        On an OSError (a full disk) nothing is left behind.
        """
        data = to_disk(data)
        name = unique_name()
        tmp = self.path / "tmp" / name
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            _unlink(tmp)
            raise
        return self._commit(tmp, name, len(data), wire_size(data), flags, date, notify)

    def incoming(self) -> "IncomingMessage":
        """A message to be written into C{tmp/} as it arrives; then L{append_incoming}."""
        return IncomingMessage(self.path / "tmp")

    def append_incoming(self, incoming: "IncomingMessage", flags: Iterable[str] = (),
                        date: float | None = None, notify: bool = True) -> int:
        """Deliver a finished L{IncomingMessage} by rename (never read back); its UID."""
        if incoming.error is not None:
            incoming.abort()
            raise incoming.error
        if incoming.tmp is None or not incoming.finished:
            raise ValueError("the incoming message is not complete")
        tmp, incoming.tmp = incoming.tmp, None  # from here on, ours to clean up
        try:
            _fsync_path(tmp)
        except BaseException:
            _unlink(tmp)
            raise
        return self._commit(tmp, incoming.name, incoming.size, incoming.wire_size, flags,
                            date, notify)

    def append_many(self, items: list[tuple[object, list[str], float | None]],
                    notify: bool = True) -> defer.Deferred:
        """
        Store messages, all or none, without blocking the reactor; a Deferred
        of their UIDs that fires once they are durable.  C{items}: (data,
        flags, date), data bytes or a finished L{IncomingMessage}.

        The files are written and fsynced in a thread; then, on the reactor
        and under the folder lock, renamed into C{cur/} and given UIDs with one
        change-log append (cheap: a rename each and one write); then C{cur/}
        and the log are fsynced in a thread.  On an OSError nothing stays:
        files not placed yet are removed, placed ones expunged again.
        """
        staged: list[tuple[Path, str, int, int]] = []
        payloads: list[bytes | None] = []

        def discard(failure=None):
            for tmp, *_ in staged:
                _unlink(tmp)
            for data, _flags, _date in items:
                if isinstance(data, IncomingMessage):
                    data.abort()
            return failure

        try:
            for data, _flags, _date in items:
                if isinstance(data, IncomingMessage):
                    if data.error is not None:
                        raise data.error
                    if data.tmp is None or not data.finished:
                        raise ValueError("the incoming message is not complete")
                    tmp, data.tmp = data.tmp, None  # from here on, ours to clean up
                    staged.append((tmp, data.name, data.size, data.wire_size))
                    payloads.append(None)
                else:
                    disk = to_disk(data)  # type: ignore[arg-type]
                    name = unique_name()
                    staged.append((self.path / "tmp" / name, name, len(disk),
                                   wire_size(disk)))
                    payloads.append(disk)
        except BaseException:
            return defer.fail().addErrback(discard)

        def write() -> None:
            """In a thread: every file's data on disk."""
            for (tmp, *_), disk in zip(staged, payloads, strict=True):
                if disk is None:
                    _fsync_path(tmp)
                    continue
                with open(tmp, "xb") as f:
                    f.write(disk)
                    f.flush()
                    os.fsync(f.fileno())

        def place(_):
            placed, fd = self._place(staged, items)
            staged.clear()  # renamed: no longer in tmp/
            d = _off_reactor(_fsync_placed, self.path / "cur", fd)
            d.addCallbacks(lambda _: durable(placed), undo, errbackArgs=(placed,))
            return d

        def undo(failure, placed: list[Message]):
            # The client hears NO: the messages must not stay.
            self.expunge([m.uid for m in placed])
            return failure

        def durable(placed: list[Message]) -> list[int]:
            here = [m for m in placed if self.by_uid(m.uid) is m]
            if notify and here:
                self._notify(Changes(added=here))
            return [m.uid for m in placed]

        d = _off_reactor(write)
        d.addCallbacks(place, discard)
        return d

    def _place(self, staged: list[tuple[Path, str, int, int]],
               items: list[tuple[object, list[str], float | None]]) -> tuple[list[Message], int]:
        """
        L{append_many} on the reactor, under the lock: rename the fsynced files
        into C{cur/}, give UIDs, append their records (not fsynced yet).  The
        messages, and a descriptor of the log for the fsync that follows.  On
        an error nothing of it stays and the UIDs are not spent.
        """
        others = Changes()
        placed: list[Message] = []
        targets: list[Path] = []
        with self._lock():
            self._sync_locked(others)
            try:
                for (tmp, name, disk_size, size), (_data, flags, date) in zip(
                        staged, items, strict=True):
                    flags = list(flags)
                    keywords = tuple(f for f in flags if f.lower() not in FLAG_TO_LETTER
                                     and f.lower() != "\\recent")
                    letters = flags_to_letters(flags,
                                               keep=self._keyword_letters(keywords, ""))
                    final = f"{name},S={disk_size}:2,{letters}"
                    target = self.path / "cur" / final
                    if date is not None:
                        os.utime(tmp, (date, date))
                    os.rename(tmp, target)
                    targets.append(target)
                    msg = Message(self.next_uid, final, "cur", size,
                                  int(date if date is not None else self.clock()), keywords)
                    self.next_uid += 1
                    self._bump(msg)
                    self._add(msg)
                    placed.append(msg)
                self._log([_rec_add(m) for m in placed], durable=False, strict=True)
                fd = os.open(self.log_path, os.O_RDONLY | os.O_CLOEXEC)
            except BaseException:
                for msg in reversed(placed):
                    self._forget_last(msg)
                for target in targets:
                    _unlink(target)
                raise
        _tidy(others)
        if others:
            self._notify(others)
        return placed, fd

    def _commit(self, tmp: Path, name: str, disk_size: int, size: int,
                flags: Iterable[str], date: float | None, notify: bool) -> int:
        flags = list(flags)
        keywords = tuple(f for f in flags if f.lower() not in FLAG_TO_LETTER
                         and f.lower() != "\\recent")
        letters = flags_to_letters(flags, keep=self._keyword_letters(keywords, ""))
        final = f"{name},S={disk_size}:2,{letters}"
        target = self.path / "cur" / final
        others = Changes()
        with self._lock():
            # The UID is given under the lock, after the others' UIDs are known.
            self._sync_locked(others)
            try:
                if date is not None:
                    os.utime(tmp, (date, date))
                os.rename(tmp, target)
            except BaseException:
                _unlink(tmp)
                raise
            msg = Message(self.next_uid, final, "cur", size,
                          int(date if date is not None else self.clock()), keywords)
            self.next_uid += 1
            self._bump(msg)
            self._add(msg)
            try:
                fsync_dir(self.path / "cur")
                self._log([_rec_add(msg)], durable=True, strict=True)
            except BaseException:
                # The client hears NO: the message must not stay, nor its UID be spent.
                self._forget_last(msg)
                _unlink(target)
                raise
        _tidy(others)
        if others:
            self._notify(others)
        if notify:
            self._notify(Changes(added=[msg]))
        return msg.uid

    def _forget_last(self, msg: Message) -> None:
        """Undo the L{_add} of the newest message (its index write failed)."""
        if self.messages and self.messages[-1] is msg:
            self.messages.pop()
            self._uids.pop()
        self._by_base.pop(msg.base, None)
        if self._names is not None:
            self._names[msg.sub].discard(msg.name)
        self.next_uid = msg.uid

    def copy_to(self, msgs: Iterable[Message], dest: "Folder") -> list[tuple[int, int]]:
        """Copy messages (hard links when possible) with their flags; (src UID, dest UID)."""
        added, pairs, _fd = self._link_copies(msgs, dest, durable=True)
        if added:
            dest._notify(Changes(added=added))
        return pairs

    def copy_many(self, msgs: Iterable[Message], dest: "Folder") -> defer.Deferred:
        """
        L{copy_to} without an fsync on the reactor (IMAP COPY and MOVE): the
        links are made and given UIDs here, under C{dest}'s lock, with one log
        append; C{cur/} and the log are then fsynced in a thread.  A Deferred
        of the (src UID, dest UID) pairs, fired once they are durable; on an
        error the copies are expunged again (the client hears NO).
        """
        try:
            added, pairs, fd = self._link_copies(msgs, dest, durable=False)
        except BaseException:
            return defer.fail()
        if fd is None:
            return defer.succeed(pairs)

        def durable(_) -> list[tuple[int, int]]:
            here = [m for m in added if dest.by_uid(m.uid) is m]
            if here:
                dest._notify(Changes(added=here))
            return pairs

        def undo(failure):
            dest.expunge([m.uid for m in added])
            return failure

        return _off_reactor(_fsync_placed, dest.path / "cur", fd).addCallbacks(durable, undo)

    def _link_copies(self, msgs: Iterable[Message], dest: "Folder", durable: bool
                     ) -> tuple[list[Message], list[tuple[int, int]], int | None]:
        """
        Under C{dest}'s lock: a link (or, across filesystems, a copy) in its
        C{cur/} per message, UIDs and one log append; fsynced here when
        C{durable}, else (strict: undone on an error) the log's descriptor for
        the caller's fsync.  The new messages, the UID pairs, the descriptor.
        """
        pairs = []
        added: list[Message] = []
        targets: list[Path] = []
        others = Changes()
        fd = None
        with dest._lock():
            dest._sync_locked(others)
            try:
                for msg in msgs:
                    name = unique_name()
                    try:
                        # S= is the file's own size (Dovecot trusts it), not the wire size.
                        physical = os.stat(self.file_path(msg)).st_size
                    except FileNotFoundError:
                        continue
                    # Keyword letters are per folder (its dovecot-keywords): mapped afresh.
                    letters = "".join(sorted(
                        "".join(c for c in msg.letters if c not in KEYWORD_LETTERS)
                        + dest._keyword_letters(msg.keywords, "")))
                    final = f"{name},S={physical}:2,{letters}"
                    target = dest.path / "cur" / final
                    try:
                        os.link(self.file_path(msg), target)
                    except FileNotFoundError:
                        continue
                    except OSError:
                        tmp = dest.path / "tmp" / name
                        tmp.write_bytes(self.read(msg))
                        date = self.date_of(msg)
                        os.utime(tmp, (date, date))
                        os.rename(tmp, target)
                    targets.append(target)
                    new = Message(dest.next_uid, final, "cur", msg.size, self.date_of(msg),
                                  msg.keywords)
                    dest.next_uid += 1
                    dest._bump(new)
                    dest._add(new)
                    added.append(new)
                    pairs.append((msg.uid, new.uid))
                if added and durable:
                    fsync_dir(dest.path / "cur")
                    dest._log([_rec_add(m) for m in added], durable=True)
                elif added:
                    dest._log([_rec_add(m) for m in added], durable=False, strict=True)
                    fd = os.open(dest.log_path, os.O_RDONLY | os.O_CLOEXEC)
            except BaseException:
                if durable:
                    raise
                for new in reversed(added):
                    dest._forget_last(new)
                for target in targets:
                    _unlink(target)
                raise
        _tidy(others)
        if others:
            dest._notify(others)
        return added, pairs, fd

"""
One Maildir folder with its index: UIDs, UIDVALIDITY, flags, sizes, dates.

The Maildir itself is the truth for which messages exist and which flags they
carry (flags live in file names, C{:2,DFRST}, as Dovecot and mutt write them).
The index, C{netsuite-index} in the folder, adds what Maildir cannot say:
stable UIDs, UIDVALIDITY, the next UID, the wire (CRLF) size, the internal
date and keywords.  It is rewritten atomically (temporary file, rename).

Opening a folder reads the index and then looks at the disk only if C{new/} or
C{cur/} changed since the index was written (their mtimes are recorded): one
C{listdir} per changed directory, and a C{stat} only for files the index does
not know.  A missing or corrupt index is rebuilt from the files, with a new
UIDVALIDITY.

All methods are synchronous and run in the reactor thread; a L{Folder} is
shared by every session of the process on that folder (see
L{netsuite.store.maildir.MaildirStore.folder}), and listeners hear about every
change, whoever made it.
"""

from __future__ import annotations

import bisect
import functools
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from twisted.logger import Logger

from netsuite.store.keywords import LETTERS as KEYWORD_LETTERS
from netsuite.store.keywords import KeywordLetters
from netsuite.store.maildir import ensure_maildir, fsync_dir, unique_name

log = Logger(namespace="netsuite.store")

INDEX_NAME = "netsuite-index"
INDEX_MAGIC = "netsuite-index 1"

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
        """All bytes are in: flush and fsync (the rename comes in L{Folder.append_incoming})."""
        if self._f is None:
            return
        if self._held_cr:
            self._held_cr = False
            self._put(b"\r")
        if self._f is None:
            return
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
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


class Folder:
    """A Maildir folder and its index; see the module docstring."""

    def __init__(self, path: Path, name: str = "INBOX",
                 clock: Callable[[], float] = time.time,
                 new_uidvalidity: Callable[[], int] | None = None):
        self.path = Path(path)
        self.name = name
        self.clock = clock
        #: Gives a UIDVALIDITY never used before for this mailbox name (a
        #: folder deleted and created again must not reuse one; RFC 3501 2.3.1.1).
        self.new_uidvalidity = new_uidvalidity
        self.uidvalidity = 0
        self.next_uid = 1
        #: UIDs at or above this are \Recent for the next session that claims them.
        self.first_recent = 1
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
        ensure_maildir(self.path)
        self._load()

    # -- index ------------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.path / INDEX_NAME

    def _load(self) -> None:
        try:
            text = self.index_path.read_text("utf-8", errors="surrogateescape")
            self._parse(text)
        except FileNotFoundError:
            self._rebuild("no index")
        except (ValueError, IndexError) as e:
            self._rebuild(f"corrupt index ({e})")
        else:
            self.refresh(notify=False)

    def _parse(self, text: str) -> None:
        lines = text.split("\n")
        head = lines[0].split(" ")
        if " ".join(head[:2]) != INDEX_MAGIC or lines[-1] != "":
            raise ValueError("bad header or truncated")
        uidvalidity, next_uid, first_recent, m_new, m_cur = (int(x) for x in head[2:7])
        messages = []
        by_base = {}
        last = 0
        for line in lines[1:-1]:
            uid_s, size_s, date_s, sub, name, kw = line.split("\t")
            uid = int(uid_s)
            if uid <= last or sub not in ("new", "cur"):
                raise ValueError(f"bad entry for UID {uid}")
            last = uid
            msg = Message(uid, name, sub, int(size_s), int(date_s),
                          tuple(kw.split(" ")) if kw else ())
            messages.append(msg)
            by_base[split_name(name)[0]] = msg
        if last >= next_uid or uidvalidity <= 0:
            raise ValueError("UIDs beyond next UID")
        self.uidvalidity, self.next_uid, self.first_recent = uidvalidity, next_uid, first_recent
        self.messages = messages
        self._uids = [m.uid for m in messages]
        self._by_base = by_base
        self._names = None
        self._mtimes = (m_new, m_cur)
        self._unsure = False
        for m in messages:
            self.keywords.update(m.keywords)

    def _rebuild(self, why: str) -> None:
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
        self.refresh(notify=False, force=True)
        self.save(durable=True)

    def save(self, durable: bool = False, strict: bool = False) -> bool:
        """
        Write the index atomically; C{durable} fsyncs it (new UIDs were given).

        On a full disk (or any write error) this fails soft: reads go on from
        memory, the error is logged once, and the next save (the next refresh
        or poll) tries again.  False when the index could not be written.
        C{strict} raises instead, for a caller that must undo what it did (an
        APPEND whose UID would otherwise not be durable).
        """
        try:
            self._write_index(durable)
        except OSError as e:
            self._dirty = True
            (self.path / f"{INDEX_NAME}.tmp").unlink(missing_ok=True)
            if strict:
                raise
            if not self._save_failing:
                self._save_failing = True
                log.warn("cannot save the index of {path} ({error}); serving from "
                         "memory, will retry", path=str(self.path), error=e)
            return False
        if self._save_failing:
            self._save_failing = False
            log.info("index of {path} saved again", path=str(self.path))
        return True

    def _write_index(self, durable: bool) -> None:
        self._dirty = False
        out = [f"{INDEX_MAGIC} {self.uidvalidity} {self.next_uid} {self.first_recent} "
               f"{self._mtimes[0]} {self._mtimes[1]}\n"]
        out.extend(f"{m.uid}\t{m.size}\t{m.date}\t{m.sub}\t{m.name}\t{' '.join(m.keywords)}\n"
                   for m in self.messages)
        tmp = self.path / f"{INDEX_NAME}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write("".join(out))
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self.index_path)
        except BaseException:
            self._dirty = True
            _unlink(tmp)
            raise

    # -- reading the disk -----------------------------------------------------------

    def _dir_mtimes(self) -> tuple[int, int]:
        try:
            return (os.stat(self.path / "new").st_mtime_ns,
                    os.stat(self.path / "cur").st_mtime_ns)
        except FileNotFoundError:
            raise FolderGone(self.name) from None

    def refresh(self, notify: bool = True, force: bool = False) -> Changes:
        """
        Bring the index up to date with the disk: cheap (two stats) when
        nothing changed; otherwise one listdir per directory and a stat per
        unknown file.  Listeners hear what changed.
        """
        mtimes = self._dir_mtimes()
        if mtimes == self._mtimes and not self._unsure and not force:
            if self._dirty:
                self.save()
            return Changes()
        now_ns = int(self.clock() * 1e9)
        # Dot files are not messages; names with tabs or newlines cannot be
        # indexed (no Maildir writer makes them) and are left alone.
        disk = {sub: {n for n in os.listdir(self.path / sub)
                      if n[:1] != "." and "\t" not in n and "\n" not in n}
                for sub in ("new", "cur")}
        known = self._known()
        # Set differences (in C) find what changed; Python looks only at those.
        appeared: dict[str, tuple[str, str]] = {}
        vanished: list[tuple[str, str]] = []
        for sub in ("new", "cur"):
            for name in disk[sub] - known[sub]:
                appeared[split_name(name)[0]] = (sub, name)
            vanished.extend((sub, name) for name in known[sub] - disk[sub])
        changes = Changes()
        on_disk: dict[str, tuple[str, str]] = {}
        for base, where in appeared.items():
            msg = self._by_base.get(base)
            if msg is None:
                on_disk[base] = where
                continue
            old = msg.letters
            msg.sub, msg.name = where
            if msg.letters != old:
                msg.keywords = self._name_keywords(msg.letters, msg.keywords)
                changes.flags.append(msg)
        for sub, name in vanished:
            msg = self._by_base.get(split_name(name)[0])
            if msg is not None and (msg.sub, msg.name) == (sub, name):
                changes.expunged.append(msg.uid)
        self._names = disk
        if changes.expunged:
            gone = set(changes.expunged)
            self.messages = [m for m in self.messages if m.uid not in gone]
            self._uids = [m.uid for m in self.messages]
            self._by_base = {m.base: m for m in self.messages}
            changes.expunged.sort()
        # New files in arrival order as their names tell it (Maildir names
        # start with the delivery time); neither stat nor read here: the
        # internal date and the wire size are looked up when first needed.
        fresh = sorted(on_disk.items(), key=lambda item: _arrival(item[0]))
        for base, (sub, name) in fresh:
            msg = Message(self.next_uid, name, sub, _size_hint(base), -1,
                          self._name_keywords(split_name(name)[1], ()))
            self.next_uid += 1
            self._add(msg)
            changes.added.append(msg)
        self._mtimes = mtimes
        self._unsure = any(now_ns - m < _UNSURE_NS for m in mtimes)
        if changes:
            self.save(durable=bool(changes.added))
            if notify:
                self._notify(changes)
        elif force or self._dirty:
            self.save()
        return changes

    def size_of(self, msg: Message) -> int:
        """The wire (CRLF) size, read from the file the first time it is needed."""
        if msg.size < 0:
            msg.size = wire_size(self.read(msg))
            self._dirty = True
        return msg.size

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
            self._dirty = True
        return msg.date

    def save_if_dirty(self) -> None:
        if self._dirty:
            self.save()

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
        if not keywords and not any(c in KEYWORD_LETTERS for c in letters):
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

    def by_uid(self, uid: int) -> Message | None:
        i = bisect.bisect_left(self._uids, uid)
        if i < len(self._uids) and self._uids[i] == uid:
            return self.messages[i]
        return None

    def file_path(self, msg: Message) -> Path:
        return self.path / msg.sub / msg.name

    def open(self, msg: Message) -> BinaryIO:
        """The message file, open for reading; follows a rename by another program."""
        for _ in range(3):
            try:
                return open(self.file_path(msg), "rb")
            except FileNotFoundError:
                self.refresh()
                if self.by_uid(msg.uid) is None:
                    break
        raise KeyError(msg.uid)

    def read(self, msg: Message) -> bytes:
        """The message as stored (LF line ends, usually)."""
        with self.open(msg) as f:
            return f.read()

    def read_wire(self, msg: Message) -> bytes:
        return to_wire(self.read(msg))

    def claim_recent(self) -> set[int]:
        """UIDs that are \\Recent for the caller; nobody else will see them as recent."""
        recent = {m.uid for m in self.messages[bisect.bisect_left(self._uids, self.first_recent):]}
        if self.first_recent != self.next_uid:
            self.first_recent = self.next_uid
            self._dirty = True
        return recent

    # -- changing -------------------------------------------------------------------

    def set_flags(self, msgs: Iterable[Message], flags: Iterable[str], mode: int) -> list[Message]:
        """
        Replace (mode 0), add (1) or remove (-1) C{flags}: system flags by
        renaming the file into C{cur/}, keywords in the index.  Returns the
        messages whose flags changed.
        """
        flags = [f for f in flags if f.lower() != "\\recent"]
        system = {f.lower() for f in flags if f.lower() in FLAG_TO_LETTER}
        keywords = [f for f in flags if f.lower() not in FLAG_TO_LETTER]
        changed = []
        any_keyword = False
        for msg in msgs:
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
                continue
            if letters != msg.letters or msg.sub != "cur":
                new_name = f"{msg.base}:2,{letters}"
                try:
                    os.rename(self.file_path(msg), self.path / "cur" / new_name)
                except FileNotFoundError:
                    continue
                sys_changed = letters != msg.letters
                if self._names is not None:
                    self._names[msg.sub].discard(msg.name)
                    self._names["cur"].add(new_name)
                msg.sub, msg.name = "cur", new_name
            else:
                sys_changed = False
            msg.keywords = tuple(new_kw)
            self.keywords.update(new_kw)
            if sys_changed or kw_changed:
                changed.append(msg)
                any_keyword = any_keyword or kw_changed
        if changed:
            # System flags live in the file names, which a restart reads back;
            # keywords live only in the index, so they are written at once.
            if any_keyword:
                self.save()
            else:
                self._dirty = True
            self._notify(Changes(flags=changed))
        return changed

    def expunge(self, uids: Iterable[int]) -> list[int]:
        """Remove these messages' files; returns the UIDs actually removed."""
        gone = []
        for uid in sorted(set(uids)):
            msg = self.by_uid(uid)
            if msg is None:
                continue
            try:
                os.unlink(self.file_path(msg))
            except FileNotFoundError:
                pass
            if self._names is not None:
                self._names[msg.sub].discard(msg.name)
            gone.append(uid)
        if gone:
            drop = set(gone)
            self.messages = [m for m in self.messages if m.uid not in drop]
            self._uids = [m.uid for m in self.messages]
            self._by_base = {m.base: m for m in self.messages}
            # The files are gone: a restart finds that out without the index.
            self._dirty = True
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
        return self._commit(tmp, incoming.name, incoming.size, incoming.wire_size, flags,
                            date, notify)

    def _commit(self, tmp: Path, name: str, disk_size: int, size: int,
                flags: Iterable[str], date: float | None, notify: bool) -> int:
        flags = list(flags)
        keywords = tuple(f for f in flags if f.lower() not in FLAG_TO_LETTER
                         and f.lower() != "\\recent")
        letters = flags_to_letters(flags, keep=self._keyword_letters(keywords, ""))
        final = f"{name},S={disk_size}:2,{letters}"
        target = self.path / "cur" / final
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
        self._add(msg)
        try:
            fsync_dir(self.path / "cur")
            self.save(durable=True, strict=True)
        except BaseException:
            # The client hears NO: the message must not stay, nor its UID be spent.
            self._forget_last(msg)
            _unlink(target)
            raise
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
        pairs = []
        added = []
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
            new = Message(dest.next_uid, final, "cur", msg.size, self.date_of(msg), msg.keywords)
            dest.next_uid += 1
            dest._add(new)
            added.append(new)
            pairs.append((msg.uid, new.uid))
        if added:
            fsync_dir(dest.path / "cur")
            dest.save(durable=True)
            dest._notify(Changes(added=added))
        return pairs

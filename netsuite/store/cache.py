"""
A per-folder cache of data computed from message files, kept beside the folder.

Messages in a Maildir never change (a flag change renames, it does not
rewrite), and a message's base name (the file name before C{:2,}) never
changes either, so whatever a protocol derives from a message's bytes can be
kept for as long as the message exists: no invalidation beyond expunge.
Dovecot keeps the same kind of data in C{dovecot.index.cache}.

The values are opaque: a protocol names a field (IMAP uses C{"envelope"},
C{"bodystructure"}, ...) and stores bytes it rendered itself.  The store
neither parses nor interprets them, so it still never knows which protocol
called it (DESIGN.md), and the MIME parser stays in one place (the IMAP
package) instead of a second, store-level copy of it.  Field names are
versioned by their users: a renderer that changes its output changes its
field name.

On disk, C{netsuite-cache} in the folder's directory: a magic line then
append-only records, each C{magic, lengths, CRC-32} and the base name,
field name and value.  It is written with one C{os.write} per batch on an
C{O_APPEND} descriptor and never fsynced: a lost or torn cache costs only a
re-parse.  Reading stops trusting a record whose CRC does not match and
resynchronises at the next record magic; a file with a bad header is
ignored and rewritten.  Growth is bounded: when the file holds more than
twice as many records as there are live entries (duplicates from another
process, expunged messages), it is rewritten with the live entries only
(temporary file, then rename).
"""

from __future__ import annotations

import os
import struct
import weakref
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from twisted.logger import Logger

log = Logger(namespace="netsuite.store")

CACHE_NAME = "netsuite-cache"
HEADER = b"netsuite-cache 1\n"
RECORD = b"\x00NC1"
_LENGTHS = struct.Struct(">HHII")  # base, field, value lengths; CRC-32 of the three
#: Values larger than this are not cached (they would bloat the file for little gain).
MAX_VALUE = 1 << 20
#: Pending bytes at which a batch is written without waiting for flush().
FLUSH_ABOVE = 1 << 18


class MessageCache:
    """
    Opaque per-message fields of one folder, in memory and in C{netsuite-cache}.

    Costs: L{get} is a dict lookup (the file is read once, at the first use
    in this process); L{put} appends to a buffer; L{flush} is one write.
    """

    def __init__(self, directory: Path, live: Callable[[], Iterable[str]]):
        self.path = Path(directory) / CACHE_NAME
        #: Base names of the messages the folder holds now (for compaction).
        self._live = live
        #: (base name, field) -> value: flat, so that no dict per message is kept (the
        #: key tuples are not tracked by the collector; 10k dicts would be, and each
        #: of its full passes would walk them).
        self._entries: dict[tuple[str, str], bytes] | None = None
        self._pending = bytearray()
        #: Records in the file (good ones, duplicates and dead ones alike).
        self._records = 0

    # -- reading -------------------------------------------------------------------

    def _load(self) -> dict[tuple[str, str], bytes]:
        entries: dict[tuple[str, str], bytes] = {}
        self._entries = entries
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return entries
        except OSError as e:
            log.warn("cache {path} unreadable, ignored: {error}", path=str(self.path), error=e)
            return entries
        if not data.startswith(HEADER):
            log.info("cache {path} has no valid header, rebuilt", path=str(self.path))
            self._rewrite({})
            return entries
        records, bad = parse(data, entries)
        self._records = records
        if bad:
            log.info("cache {path}: {bad} damaged record(s) skipped", path=str(self.path),
                     bad=bad)
        self._maybe_compact(force=bad > 0, at_load=True)
        return entries

    def get(self, base: str, field: str) -> bytes | None:
        entries = self._entries if self._entries is not None else self._load()
        return entries.get((base, field))

    # -- writing -------------------------------------------------------------------

    def put(self, base: str, field: str, value: bytes) -> None:
        entries = self._entries if self._entries is not None else self._load()
        if len(value) > MAX_VALUE:
            return
        entries[base, field] = value
        self._pending += record(base, field, value)
        self._records += 1
        if len(self._pending) >= FLUSH_ABOVE:
            self.flush()

    def flush(self) -> None:
        """Write what L{put} buffered, in one append; compact if the file grew too much."""
        if not self._pending:
            return
        data = bytes(self._pending)
        self._pending.clear()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size == 0:
                    data = HEADER + data
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:  # a cache that cannot be written is only slower
            log.warn("cache {path} not written: {error}", path=str(self.path), error=e)
            return
        self._maybe_compact()

    def _maybe_compact(self, force: bool = False, at_load: bool = False) -> None:
        """
        Drop expunged messages' entries (always when the file is first read,
        else only once the file holds twice what is live) and rewrite the file
        when a quarter or more of it is waste.
        """
        if self._entries is None:
            return
        if not (force or at_load or self._records > 2 * self._count() + 64):
            return
        live = set(self._live())
        for key in [k for k in self._entries if k[0] not in live]:
            del self._entries[key]
        if force or self._records > self._count() * 4 // 3:
            self._rewrite(self._entries)

    def _count(self) -> int:
        return len(self._entries) if self._entries else 0

    def _rewrite(self, entries: dict[tuple[str, str], bytes]) -> None:
        tmp = self.path.with_name(CACHE_NAME + ".tmp")
        out = [HEADER]
        n = 0
        for (base, field), value in entries.items():
            out.append(record(base, field, value))
            n += 1
        try:
            with open(tmp, "wb") as f:
                f.write(b"".join(out))
            os.replace(tmp, self.path)
        except OSError as e:
            log.warn("cache {path} not compacted: {error}", path=str(self.path), error=e)
            tmp.unlink(missing_ok=True)
            return
        self._records = n


def record(base: str, field: str, value: bytes) -> bytes:
    b = base.encode("utf-8", "surrogateescape")
    f = field.encode("ascii")
    body = b + f + value
    return RECORD + _LENGTHS.pack(len(b), len(f), len(value), zlib.crc32(body)) + body


def parse(data: bytes, entries: dict[tuple[str, str], bytes]) -> tuple[int, int]:
    """Records of a cache file into C{entries}; (records read, damaged ones skipped)."""
    pos = len(HEADER)
    end = len(data)
    head = len(RECORD) + _LENGTHS.size
    count = bad = 0
    while pos < end:
        if data.startswith(RECORD, pos) and pos + head <= end:
            lb, lf, lv, crc = _LENGTHS.unpack_from(data, pos + len(RECORD))
            start = pos + head
            stop = start + lb + lf + lv
            if stop <= end and zlib.crc32(data[start:stop]) == crc:
                base = data[start:start + lb].decode("utf-8", "surrogateescape")
                field = data[start + lb:start + lb + lf].decode("ascii", "replace")
                entries[base, field] = data[start + lb + lf:stop]
                count += 1
                pos = stop
                continue
        # Damaged or torn: skip to the next record magic.
        bad += 1
        nxt = data.find(RECORD, pos + 1)
        if nxt < 0:
            break
        pos = nxt
    return count, bad


_caches: "weakref.WeakKeyDictionary[object, MessageCache]" = weakref.WeakKeyDictionary()


def cache_for(folder) -> MessageCache:
    """The one cache of a folder object (a L{netsuite.store.folder.Folder}) in this process."""
    cache = _caches.get(folder)
    if cache is None or cache.path.parent != Path(folder.path):
        ref = weakref.ref(folder)  # the cache must not keep its folder alive

        def live() -> Iterable[str]:
            f = ref()
            return () if f is None else (m.base for m in f.messages)

        cache = MessageCache(folder.path, live)
        _caches[folder] = cache
    return cache

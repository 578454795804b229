"""
A folder's append-only change log, C{netsuite-index.log} beside the compacted
index (Dovecot's C{dovecot.index.log} beside C{dovecot.index}).

A flag change, an expunge or a new UID appends one line; nothing else is
rewritten.  The first line names the log (a random id the index refers to);
every record carries a CRC32 so a torn or garbled tail left by a crash is seen
and ignored (and cut off by the next writer, who holds the folder lock).

Records (tab separated after the CRC):
  - C{A uid size date sub name keywords}: a new message and its UID
  - C{F uid sub name keywords}: its file name (system flags) and keywords now
  - C{X uid}: expunged
  - C{S uid size date}: its wire size and internal date, once learned
  - C{R first_recent}: UIDs below it are no longer \\Recent
"""

from __future__ import annotations

import os
import secrets
import zlib
from pathlib import Path

LOG_MAGIC = "netsuite-log 1"


def new_log_id() -> str:
    return secrets.token_hex(8)


def header(log_id: str) -> bytes:
    return f"{LOG_MAGIC} {log_id}\n".encode()


def encode(fields: list[str]) -> bytes:
    """One record line: C{crc32hex TAB fields...}."""
    payload = "\t".join(fields).encode("utf-8", "surrogateescape")
    return b"%08x\t%s\n" % (zlib.crc32(payload), payload)


def read_id(path: Path) -> tuple[str, int] | None:
    """(log id, size) of the log at C{path}, or None when missing or not a log."""
    try:
        with open(path, "rb") as f:
            first = f.readline(200)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return None
    parts = first.decode("ascii", "replace").rstrip("\n").split(" ")
    if not first.endswith(b"\n") or " ".join(parts[:2]) != LOG_MAGIC or len(parts) != 3:
        return None
    return parts[2], size


def read_records(path: Path, log_id: str, offset: int) -> tuple[list[list[str]], int, int] | None:
    """
    The records from byte C{offset} on: (records, offset just after the last
    good one, file size).  Stops at a torn or garbled record.  None if the
    file is not the log C{log_id}.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    with f:
        first = f.readline(200)
        if first != header(log_id):
            return None
        offset = max(offset, len(first))
        f.seek(offset)
        data = f.read()
        size = offset + len(data)
    records = []
    good = offset
    for line in data.split(b"\n")[:-1]:  # the piece after the last \n is torn
        crc, sep, payload = line.partition(b"\t")
        try:
            ok = sep and int(crc, 16) == zlib.crc32(payload)
        except ValueError:
            ok = False
        if not ok:
            break
        records.append(payload.decode("utf-8", "surrogateescape").split("\t"))
        good += len(line) + 1
    return records, good, size


def create(path: Path, log_id: str, durable: bool = True) -> int:
    """Write a fresh, empty log (atomically); its size."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header(log_id))
        f.flush()
        if durable:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(header(log_id))


def append(path: Path, good: int, lines: list[bytes], durable: bool) -> int:
    """
    Append records after byte C{good} (a torn tail beyond it is cut off
    first); fsync when C{durable}.  The new size.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size != good:
            os.ftruncate(fd, good)
        os.lseek(fd, good, os.SEEK_SET)
        data = b"".join(lines)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if durable:
                os.fsync(fd)
        except BaseException:
            # The caller undoes what the records say (an APPEND answered NO): so do we.
            try:
                os.ftruncate(fd, good)
            except OSError:
                pass  # a torn tail: readers stop before it, the next writer cuts it
            raise
        return good + len(data)
    finally:
        os.close(fd)

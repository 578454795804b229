"""
Which UIDs a folder expunged and at which MODSEQ: C{netsuite-vanished} beside the index.

QRESYNC (RFC 7162 3.2.5) asks for the UIDs expunged since a MODSEQ the client
saw.  The change log holds the same facts (C{X uid modseq}) but starts afresh at
every compaction, so this file keeps them apart, bounded (Dovecot keeps them in
its index for the same reason).  Written under the folder lock by whoever
expunges (or notices that another program removed a file); read whole when a
client resynchronises.

Format: a header C{netsuite-vanished 1 UIDVALIDITY FLOOR}, then one C{uid modseq}
line per expunge in MODSEQ order.  FLOOR says how far back the file knows:
every expunge with a MODSEQ above it is listed; below it (before the file
existed, or records dropped to keep it small) nothing is known, and the caller
falls back on what RFC 7162 allows (every UID not in the folder).  A torn last
line (a crash) is ignored.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

NAME = "netsuite-vanished"
MAGIC = "netsuite-vanished 1"
#: Past this size the oldest half of the records is dropped (and FLOOR raised).
MAX_BYTES = 1 << 20


def _read(path: Path) -> tuple[int, int, list[tuple[int, int]]] | None:
    """(uidvalidity, floor, [(uid, modseq)]) or None when missing or unreadable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    lines = data.split(b"\n")
    head = lines[0].decode("ascii", "replace").split(" ")
    if " ".join(head[:2]) != MAGIC or len(head) != 4 or len(lines) < 2:
        return None
    try:
        uidvalidity, floor = int(head[2]), int(head[3])
    except ValueError:
        return None
    pairs = []
    for line in lines[1:-1]:  # the piece after the last newline is torn (or empty)
        uid, _, modseq = line.partition(b" ")
        try:
            pairs.append((int(uid), int(modseq)))
        except ValueError:
            break
    return uidvalidity, floor, pairs


def _write(path: Path, uidvalidity: int, floor: int, pairs: Iterable[tuple[int, int]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    body = b"".join(b"%d %d\n" % p for p in pairs)
    tmp.write_bytes(f"{MAGIC} {uidvalidity} {floor}\n".encode() + body)
    os.replace(tmp, path)


def _header(f) -> tuple[int, int] | None:
    head = f.readline(200).decode("ascii", "replace").rstrip("\n").split(" ")
    if " ".join(head[:2]) != MAGIC or len(head) != 4:
        return None
    try:
        return int(head[2]), int(head[3])
    except ValueError:
        return None


def record(path: Path, uidvalidity: int, pairs: list[tuple[int, int]]) -> None:
    """
    Under the folder lock: add expunges (uid, modseq), MODSEQs ascending.  A new
    file (or one of another UIDVALIDITY) knows nothing before the first of them.
    Reads only the header, except to drop old records or a torn tail.
    """
    if not pairs:
        return
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        _write(path, uidvalidity, pairs[0][1] - 1, pairs)
        return
    with f:
        head = _header(f)
        if head is None or head[0] != uidvalidity:
            f.close()
            _write(path, uidvalidity, pairs[0][1] - 1, pairs)
            return
        size = f.seek(0, os.SEEK_END)
        f.seek(size - 1)
        too_big = size > MAX_BYTES
        if not too_big and f.read(1) == b"\n":
            f.write(b"".join(b"%d %d\n" % p for p in pairs))
            return
    _, floor, old = _read(path) or (uidvalidity, head[1], [])
    if too_big and len(old) > 1:  # the oldest half goes
        dropped, old = old[:len(old) // 2], old[len(old) // 2:]
        floor = max(floor, dropped[-1][1])
    _write(path, uidvalidity, floor, old + pairs)


def since(path: Path, uidvalidity: int, modseq: int) -> list[int] | None:
    """UIDs expunged with a MODSEQ above C{modseq}, ascending; None if not known that far."""
    known = _read(path)
    if known is None or known[0] != uidvalidity or modseq < known[1]:
        return None
    return sorted({uid for uid, m in known[2] if m > modseq})

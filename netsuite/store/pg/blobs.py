"""
Message bodies, stored once per content: the SHA-256 of the body (as stored,
LF line ends) is the key, a message row names it, and a reference count says
how many rows do.  Identical copies (one message to many recipients, COPY)
share one row.

L{IBlobStore} is the small interface the rest of the PostgreSQL store uses, so
that an object store could hold bodies later; L{PgBlobs} keeps them in the
C{blobs} table, in the same transaction as the message rows that name them.
L{LocalBodies} is each host's cache of bodies on its own disk: bodies are
immutable, so it never needs invalidating, and it lets the synchronous read
calls of L{netsuite.store.IMailFolder} (FETCH, RETR) read a local file as the
Maildir store does instead of waiting for the database on the reactor.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import psycopg
from zope.interface import Interface, implementer

#: Bodies up to this size are sent with their reference (one statement), known or not.
SMALL = 64 * 1024
#: Bytes of a file read (hashed, sent) at a time: a big body is never whole in memory.
CHUNK = 1 << 20


def content_hash(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


def file_hash(path: Path) -> tuple[bytes, int]:
    """L{content_hash} of a file's bytes, read a chunk at a time, and its size."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.digest(), size


class IBlobStore(Interface):
    """Bodies by content hash; every method runs in a database transaction (C{conn})."""

    def put(conn, digest: bytes, body: bytes) -> None:
        """One more reference to C{body} (stored if new)."""

    def put_file(conn, digest: bytes, size: int, path) -> None:
        """L{put} of a body in a file, sent a chunk at a time (a streamed IMAP APPEND)."""

    def ref(conn, digests) -> None:
        """One more reference to each of C{digests} (a list, repeats counted), bodies known."""

    def release(conn, digests) -> None:
        """One reference fewer to each; a body nobody references is deleted."""

    def get(conn, digests) -> dict:
        """digest -> body for those that exist."""


@implementer(IBlobStore)
class PgBlobs:
    """The C{blobs} table (bytea): see the module docstring."""

    def put(self, conn, digest: bytes, body: bytes) -> None:
        if len(body) <= SMALL:  # one round trip: sent even if it is there already
            conn.execute("INSERT INTO blobs (hash, size, body, refcount) VALUES (%s, %s, %s, 1) "
                         "ON CONFLICT (hash) DO UPDATE SET refcount = blobs.refcount + 1",
                         (digest, len(body), body))
            return
        # A bigger body crosses the network only when it is new.
        cur = conn.execute("UPDATE blobs SET refcount = refcount + 1 WHERE hash = %s",
                           (digest,))
        if cur.rowcount:
            return
        conn.execute("INSERT INTO blobs (hash, size, body, refcount) VALUES (%s, %s, %s, 1) "
                     "ON CONFLICT (hash) DO UPDATE SET refcount = blobs.refcount + 1",
                     (digest, len(body), body))

    def put_file(self, conn, digest: bytes, size: int, path: Path) -> None:
        cur = conn.execute("UPDATE blobs SET refcount = refcount + 1 WHERE hash = %s",
                           (digest,))
        if cur.rowcount:
            return
        try:
            with conn.transaction():  # a savepoint: another host may store it meanwhile
                self._copy_in(conn, digest, size, path)
        except psycopg.errors.UniqueViolation:
            conn.execute("UPDATE blobs SET refcount = refcount + 1 WHERE hash = %s", (digest,))

    @staticmethod
    def _copy_in(conn, digest: bytes, size: int, path: Path) -> None:
        """One row by COPY in PostgreSQL's binary format, the body written in chunks."""
        row = (b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)  # signature, flags, ext
               + struct.pack("!h", 4)  # four fields
               + struct.pack("!i", len(digest)) + digest
               + struct.pack("!iq", 8, size)
               + struct.pack("!i", size))
        with conn.cursor() as cur, cur.copy(
                "COPY blobs (hash, size, body, refcount) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(row)
            sent = 0
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    copy.write(chunk)
                    sent += len(chunk)
            if sent != size:
                raise OSError(f"{path} changed while it was stored ({sent} of {size} bytes)")
            copy.write(struct.pack("!iq", 8, 1) + struct.pack("!h", -1))  # refcount, trailer

    def ref(self, conn, digests: Iterable[bytes]) -> None:
        counts: dict[bytes, int] = {}
        for d in digests:
            counts[d] = counts.get(d, 0) + 1
        for d, n in sorted(counts.items()):  # one order: no deadlock between hosts
            conn.execute("UPDATE blobs SET refcount = refcount + %s WHERE hash = %s", (n, d))

    def release(self, conn, digests: Iterable[bytes]) -> None:
        counts: dict[bytes, int] = {}
        for d in digests:
            counts[d] = counts.get(d, 0) + 1
        for d, n in sorted(counts.items()):
            conn.execute("UPDATE blobs SET refcount = refcount - %s WHERE hash = %s", (n, d))
        if counts:
            conn.execute("DELETE FROM blobs WHERE hash = ANY(%s) AND refcount <= 0",
                         (sorted(counts),))

    def get(self, conn, digests: Iterable[bytes]) -> dict[bytes, bytes]:
        wanted = sorted(set(digests))
        if not wanted:
            return {}
        rows = conn.execute("SELECT hash, body FROM blobs WHERE hash = ANY(%s)",
                            (wanted,)).fetchall()
        return {bytes(h): bytes(b) for h, b in rows}


class LocalBodies:
    """Bodies cached under C{root} (one file per hash); safe from any thread."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._root = os.fspath(self.root)
        #: Digests known to be here (bodies never change nor go): no stat for them again.
        self._known: set[bytes] = set()

    def path(self, digest: bytes) -> Path:
        name = digest.hex()
        return self.root / name[:2] / name

    def has(self, digest: bytes) -> bool:
        if digest in self._known:
            return True
        if os.path.exists(self.path(digest)):
            self._known.add(digest)
            return True
        return False

    def read(self, digest: bytes, size: int = -1) -> bytes | None:
        """
        The body, or None if it is not here.  C{os.read} straight into bytes
        (no file object), sized by C{size} when the caller knows about how big
        it is (the wire size, never smaller): FETCH reads one on the reactor.
        """
        name = digest.hex()
        try:
            fd = os.open(f"{self._root}/{name[:2]}/{name}", os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            data = os.read(fd, size + 1 if size >= 0 else 65536)
            parts = [data]
            while data and (chunk := os.read(fd, max(len(data), 65536))):
                parts.append(chunk)
            return data if len(parts) == 1 else b"".join(parts)
        finally:
            os.close(fd)

    def write(self, digest: bytes, body: bytes) -> None:
        """Written to a temporary name and renamed: a reader never sees half a body."""
        if self.has(digest):
            return
        path = self.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{id(body)}.tmp")
        with open(tmp, "wb") as f:
            f.write(body)
        os.replace(tmp, path)
        self._known.add(digest)

    def adopt(self, digest: bytes, source: Path) -> None:
        """A file holding the body moved in (renamed: same file system), or dropped if known."""
        if self.has(digest):
            os.unlink(source)
            return
        path = self.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, path)
        self._known.add(digest)

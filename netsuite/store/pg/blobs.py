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
from collections.abc import Iterable
from pathlib import Path

from zope.interface import Interface, implementer


def content_hash(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


class IBlobStore(Interface):
    """Bodies by content hash; every method runs in a database transaction (C{conn})."""

    def put(conn, digest: bytes, body: bytes) -> None:
        """One more reference to C{body} (stored if new)."""

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
        # The body crosses the network only when it is new.
        cur = conn.execute("UPDATE blobs SET refcount = refcount + 1 WHERE hash = %s",
                           (digest,))
        if cur.rowcount:
            return
        conn.execute("INSERT INTO blobs (hash, size, body, refcount) VALUES (%s, %s, %s, 1) "
                     "ON CONFLICT (hash) DO UPDATE SET refcount = blobs.refcount + 1",
                     (digest, len(body), body))

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

    def read(self, digest: bytes) -> bytes | None:
        try:
            with open(self.path(digest), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

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

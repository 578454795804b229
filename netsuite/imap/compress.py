"""
COMPRESS=DEFLATE (RFC 4978): raw deflate both ways after the tagged OK.

Input is inflated in bounded pieces (L{Inflater.next}), so a small
compressed burst can never expand into an unbounded buffer: the session
takes one piece at a time and stops while a command is busy, as it stops
reading the socket.  Output is flushed with C{Z_SYNC_FLUSH} on every write,
so each response leaves at once, as Dovecot's imap_zlib does.
"""

from __future__ import annotations

import zlib
from typing import Any

#: Most bytes one inflate step gives: what one socket read would at most hand the reader.
PIECE = 65536

#: zlib level for responses: Dovecot's imap_zlib_compress_level default.
LEVEL = 6


class Inflater:
    """Compressed input not yet inflated, given out a bounded piece at a time."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pending = b""

    def feed(self, data: bytes) -> None:
        self._pending = self._pending + data if self._pending else data

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def next(self) -> bytes:
        """Up to L{PIECE} inflated bytes; raises C{zlib.error} on a corrupt stream."""
        data = self._z.decompress(self._pending, PIECE)
        self._pending = self._z.unconsumed_tail
        if self._z.eof:  # the client ended its deflate stream: nothing more can follow
            raise zlib.error("deflate stream ended")
        return data


class DeflatingTransport:
    """
    The session's transport once compression is on: writes are deflated and
    sync-flushed; everything else (producers, closing, peer, TLS state) is
    the wrapped transport's.
    """

    def __init__(self, transport: Any) -> None:
        self.wrapped = transport
        self._z = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)

    def write(self, data: bytes) -> None:
        if data:
            z = self._z
            self.wrapped.write(z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH))

    def writeSequence(self, seq) -> None:
        self.write(b"".join(seq))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

"""
COMPRESS (RFC 4978): switch the session to deflate in both directions.
"""

from __future__ import annotations

from twisted.logger import Logger

from netsuite.imap.commands import SessionBase
from netsuite.imap.compress import DeflatingTransport, Inflater

log = Logger(namespace="netsuite.imap")


class CompressCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    def imap_COMPRESS(self, tag, cur):
        mech = cur.atom().upper()
        cur.end()
        if self._inflater is not None:
            self._tagged(tag, b"NO", b"[COMPRESSIONACTIVE] DEFLATE active already")
            return
        if mech != b"DEFLATE":
            self._tagged(tag, b"BAD", b"Unknown compression mechanism")
            return
        self._tagged(tag, b"OK", b"DEFLATE active")
        # Everything after the command's CRLF is compressed, also what the client
        # pipelined behind it and the reader already holds (RFC 4978 section 3).
        inflater = Inflater()
        inflater.feed(self._framer.lines.take())
        self._inflater = inflater
        self.transport = DeflatingTransport(self.transport)
        log.info("compression on: address={address}", address=self.peer)

"""
APPEND, with big literals streamed into the folder's tmp/ by the reader.
"""

from __future__ import annotations

from twisted.logger import Logger

from netsuite.durable import disk_full
from netsuite.framer import DiscardSink
from netsuite.imap import wire
from netsuite.imap.account import NoSuchFolder
from netsuite.imap.binary import to_7bit
from netsuite.imap.commands import SessionBase
from netsuite.imap.wire import Cursor, ParseError

log = Logger(namespace="netsuite.imap")

#: APPEND literals from this size on are streamed into the folder's tmp/.
STREAM_ABOVE = 65536


class AppendCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    def _literal_sink(self, text: bytes, literals: list, size: int):
        """Where a big literal goes: an APPEND's into the target folder's tmp/."""
        try:
            _tag, cmd, rest = wire.split_tag(text)
        except ParseError:
            return None
        if cmd != b"APPEND":
            return None
        if self.state not in ("auth", "select"):
            return DiscardSink(b"APPEND not allowed now")
        try:
            folder = self.account.folder(self._mailbox_name(Cursor(rest, literals)))
        except Exception:
            return DiscardSink()  # the command fails when it runs; keep nothing
        incoming = getattr(folder, "incoming", None)
        return incoming() if incoming is not None else None

    def imap_APPEND(self, tag, cur):
        name = self._mailbox_name(cur)
        cur.sp()
        flags: list[str] = []
        date = None
        if cur.peek() == 0x28:
            flags = cur.flag_list()
            cur.sp()
        if cur.peek() == 0x22:
            date = wire.parse_datetime(cur.quoted())
            cur.sp()
        binary = cur.maybe(b"~")  # literal8 (RFC 3516)
        if cur.peek() != wire.LITERAL_MARK:
            raise ParseError("APPEND needs the message as a literal")
        data = cur.string()
        if binary and isinstance(data, bytes):
            data = to_7bit(data)  # binary parts stored as base64; BINARY[] undoes it
        cur.end()
        if any(f.lower() == "\\recent" for f in flags):
            raise ParseError("\\Recent cannot be set")
        try:
            folder = self.account.folder(name)
        except NoSuchFolder:
            self._tagged(tag, b"NO", b"[TRYCREATE] No such mailbox")
            return
        if isinstance(data, DiscardSink):
            self._tagged(tag, b"NO", data.why or b"[TRYCREATE] No such mailbox")
            return
        streamed = not isinstance(data, bytes)
        if not (data.wire_size if streamed and data.error is None else data):
            self._tagged(tag, b"NO", b"Empty message")
            return
        try:
            if streamed:  # already in tmp/: delivered by rename, never read back
                uid = folder.append_incoming(data, flags, date)
            else:
                uid = folder.append(data, flags, date)
        except OSError as e:
            log.warn("IMAP APPEND to {folder} failed: {error}", folder=name, error=e)
            if disk_full(e):  # APPEND says OVERQUOTA (RFC 5530)
                self._tagged(tag, b"NO", b"[OVERQUOTA] Mailbox is full")
            else:
                self._tagged(tag, b"NO", b"[SERVERBUG] Could not store the message")
            return
        self._tagged(tag, b"OK", b"[APPENDUID %d %d] APPEND completed" % (folder.uidvalidity, uid))

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
        if b" CATENATE " in rest.upper():
            return None  # its parts are joined in memory (bounded by the literal limits)
        if self.state not in ("auth", "select"):
            return DiscardSink(b"APPEND not allowed now")
        try:
            # Into the folder's tmp/ without reading the folder (APPEND opens it off
            # the reactor when it runs).
            return self.account.incoming(self._mailbox_name(Cursor(rest, literals)))
        except Exception:
            return DiscardSink()  # the command fails when it runs; keep nothing

    def imap_APPEND(self, tag, cur):
        """
        APPEND of one message, or of several (MULTIAPPEND, RFC 3502): all are
        stored or none is (the ones already stored are expunged again), and
        APPENDUID names their UIDs as a set.
        """
        name = self._mailbox_name(cur)
        items = []
        while True:
            cur.sp()
            flags: list[str] = []
            date = None
            if cur.peek() == 0x28:
                flags = cur.flag_list()
                cur.sp()
            if cur.peek() == 0x22:
                date = wire.parse_datetime(cur.quoted())
                cur.sp()
            data: object
            if cur.text[cur.pos:cur.pos + 9].upper() == b"CATENATE ":
                cur.pos += 9
                # resolved once the whole command is read
                data = _catenate_parts(cur, b"UTF8=ACCEPT" in self.enabled)
            elif cur.text[cur.pos:cur.pos + 6].upper() == b"UTF8 (":
                data = self._utf8_data(cur)
            else:
                binary = cur.maybe(b"~")  # literal8 (RFC 3516)
                if cur.peek() != wire.LITERAL_MARK:
                    raise ParseError("APPEND needs the message as a literal")
                data = cur.string()
                if binary and isinstance(data, bytes):
                    data = to_7bit(data)  # binary parts stored as base64; BINARY[] undoes it
            if any(f.lower() == "\\recent" for f in flags):
                raise ParseError("\\Recent cannot be set")
            items.append((flags, date, data))
            if cur.at_end():
                break
        # A folder not in memory is read off the reactor (a big one's first open).
        d = self.account.folder_deferred(name)

        def no_such(f) -> None:
            f.trap(NoSuchFolder)  # a streamed literal's file is removed by the session
            if not self._lost:
                self._tagged(tag, b"NO", b"[TRYCREATE] No such mailbox")

        return d.addCallbacks(self._append_into, no_such, callbackArgs=(tag, name, items))

    def _append_into(self, folder, tag, name: str, items: list):
        """L{imap_APPEND} once its folder is open: CATENATE resolved, then stored."""
        if self._lost:
            return None
        for i, (flags, date, data) in enumerate(items):
            if isinstance(data, Catenate):
                joined = []
                for kind, value in data:
                    piece = value if kind == "TEXT" else self._catenate_url(value)
                    if piece is None:  # RFC 4469 6: the URL that could not be used
                        self._tagged(tag, b"NO", b"[BADURL " + wire.string(value) +
                                     b"] URL cannot be used")
                        return
                    joined.append(piece)
                items[i] = (flags, date, b"".join(joined))
        total = 0
        for _flags, _date, data in items:
            if isinstance(data, DiscardSink):
                self._tagged(tag, b"NO", data.why or b"[TRYCREATE] No such mailbox")
                return
            streamed = not isinstance(data, bytes)
            size = data.wire_size if streamed else len(data)
            if not size and (not streamed or data.error is None):
                self._tagged(tag, b"NO", b"Empty message")
                return
            total += size
        if self._refuse_over_quota(tag, total):
            return
        # Written and fsynced off the reactor; the tagged OK only once durable.
        d = folder.append_many([(data, flags, date) for flags, date, data in items])

        def stored(uids: list[int]) -> None:
            if self._lost:
                return
            self._tagged(tag, b"OK", b"[APPENDUID %d %s] APPEND completed"
                         % (folder.uidvalidity, wire.sequence_set(uids)))

        def failed(f) -> None:
            f.trap(OSError)
            e = f.value
            log.warn("IMAP APPEND to {folder} failed: {error}", folder=name, error=e)
            if self._lost:
                return None
            if disk_full(e):  # APPEND says OVERQUOTA (RFC 5530)
                self._tagged(tag, b"NO", b"[OVERQUOTA] Mailbox is full")
            else:
                self._tagged(tag, b"NO", b"[SERVERBUG] Could not store the message")
            return None

        return d.addCallbacks(stored, failed)

    def _utf8_data(self, cur: Cursor):
        """
        C{UTF8 (~{n}...)}: a message with UTF-8 headers (RFC 6855 4, RFC 6532),
        stored as it comes; only after ENABLE UTF8=ACCEPT (else BAD, as for
        QRESYNC before its ENABLE).
        """
        if b"UTF8=ACCEPT" not in self.enabled:
            raise ParseError("APPEND UTF8 needs ENABLE UTF8=ACCEPT first (RFC 6855 4)")
        cur.pos += 6
        binary = cur.maybe(b"~")  # literal8; a plain literal is taken too
        if cur.peek() != wire.LITERAL_MARK:
            raise ParseError("APPEND UTF8 needs the message as a literal8")
        data = cur.string()
        cur.expect(b")")
        if binary and isinstance(data, bytes):
            data = to_7bit(data)
        return data


class Catenate(list):
    """An APPEND's CATENATE list (RFC 4469): ("TEXT", bytes) and ("URL", str) parts."""


def _catenate_parts(cur: Cursor, utf8: bool = False) -> Catenate:
    """
    C{(TEXT {n} URL "/box/;UID=1" ...)}: the parts, in order; C{UTF8 (~{n})}
    parts (RFC 6855 4) too when C{utf8} (ENABLE UTF8=ACCEPT), else BAD.
    """
    cur.expect(b"(")
    parts = Catenate()
    while True:
        kind = cur.atom().upper()
        cur.sp()
        if kind == b"TEXT":
            cur.maybe(b"~")  # literal8 allowed (RFC 4469 with BINARY)
            if cur.peek() != wire.LITERAL_MARK:
                raise ParseError("CATENATE TEXT needs a literal")
            value = cur.string()
            if not isinstance(value, bytes):
                raise ParseError("CATENATE TEXT too large")
            parts.append(("TEXT", value))
        elif kind == b"URL":
            parts.append(("URL", cur.astring().decode("utf-8", "replace")))
        elif kind == b"UTF8":  # cat-part =/ utf8-literal
            if not utf8:
                raise ParseError("CATENATE UTF8 needs ENABLE UTF8=ACCEPT first (RFC 6855 4)")
            cur.expect(b"(")
            cur.maybe(b"~")
            if cur.peek() != wire.LITERAL_MARK:
                raise ParseError("CATENATE UTF8 needs a literal8")
            value = cur.string()
            if not isinstance(value, bytes):
                raise ParseError("CATENATE UTF8 too large")
            cur.expect(b")")
            parts.append(("TEXT", value))
        else:
            raise ParseError("CATENATE parts are TEXT, URL or UTF8")
        if cur.maybe(b")"):
            return parts
        cur.sp()

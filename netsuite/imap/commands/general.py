"""
Commands valid in any state, and the session-wide ones: CAPABILITY, NOOP, LOGOUT, ID,
ENABLE, NAMESPACE, IDLE, CHECK.
"""

from __future__ import annotations

from netsuite.imap.commands import SessionBase
from netsuite.imap.wire import ParseError


class GeneralCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    def imap_CAPABILITY(self, tag, cur):
        cur.end()
        self.send(b"* CAPABILITY " + b" ".join(self.capability_list()))
        self._tagged(tag, b"OK", b"CAPABILITY completed")

    def imap_NOOP(self, tag, cur):
        cur.end()
        if self.mbox is not None:
            self.mbox.refresh()
        self._tagged(tag, b"OK", b"NOOP completed")

    def imap_LOGOUT(self, tag, cur):
        cur.end()
        self.send(b"* BYE Logging out")
        self.send(tag + b" OK LOGOUT completed")
        self._deselect()
        self.state = "logout"
        self.transport.loseConnection()

    def imap_ID(self, tag, cur):
        if cur.maybe(b"NIL") or cur.maybe(b"nil"):
            pass
        else:
            params = cur.plist()
            if len(params) % 2 or len(params) > 60:
                raise ParseError("ID takes field/value pairs")
        cur.end()
        self.send(b'* ID ("name" "netsuite" "vendor" "netsuite")')
        self._tagged(tag, b"OK", b"ID completed")

    def imap_ENABLE(self, tag, cur):
        cur.atom()
        while cur.maybe(b" "):
            cur.atom()
        cur.end()
        # No extension that needs enabling (CONDSTORE, UTF8=ACCEPT) is offered.
        self.send(b"* ENABLED")
        self._tagged(tag, b"OK", b"ENABLE completed")

    def imap_NAMESPACE(self, tag, cur):
        cur.end()
        self.send(b'* NAMESPACE (("" ".")) NIL NIL')
        self._tagged(tag, b"OK", b"NAMESPACE completed")

    def imap_IDLE(self, tag, cur):
        cur.end()
        self._mode = "idle"
        self._idle_tag = tag
        self.send(b"+ idling")
        self._push_updates()

    def _idle_line(self, line: bytes) -> None:
        if line.strip().upper() != b"DONE":
            self.send(b"* BAD Expected DONE")
            return
        tag, self._idle_tag = self._idle_tag or b"*", None
        self._mode = "line"
        self._tagged(tag, b"OK", b"IDLE terminated")

    def _mailbox_changed(self) -> None:
        if self._mode == "idle":
            self._push_updates()

    def _push_updates(self) -> None:
        if self.mbox is not None:
            for line in self.mbox.updates(True):
                self.send(line)

    def imap_CHECK(self, tag, cur):
        cur.end()
        self.mbox.refresh()
        self._tagged(tag, b"OK", b"CHECK completed")

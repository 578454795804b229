"""
Commands valid in any state, and the session-wide ones: CAPABILITY, NOOP, LOGOUT, ID,
ENABLE, NAMESPACE, IDLE, CHECK.
"""

from __future__ import annotations

from collections.abc import Callable

from netsuite.imap.commands import SessionBase
from netsuite.imap.wire import ParseError

#: ENABLE (RFC 5161): each extension it knows, and what enabling it does to the
#: session besides adding its name to C{session.enabled} (None: nothing more).
ENABLERS: dict[bytes, Callable[["GeneralCommands"], None] | None] = {
    b"CONDSTORE": lambda s: s._condstore_used(),
    b"QRESYNC": lambda s: s._enable_qresync(),  # implies CONDSTORE (RFC 7162 3.2.3)
    b"UTF8=ACCEPT": lambda s: _refuse_utf8_when_selected(s),  # RFC 6855, names: names.py
    b"IMAP4REV2": lambda s: s._enable_imap4rev2(),  # RFC 9051 (commands/rev2.py)
}
#: How ENABLED names an extension whose name is not all capitals.
ENABLED_AS = {b"IMAP4REV2": b"IMAP4rev2"}


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
        names = [cur.atom().upper()]
        while cur.maybe(b" "):
            names.append(cur.atom().upper())
        cur.end()
        before = set(self.enabled)
        done: list[bytes] = []
        for name in names:
            if name not in ENABLERS or name in before or name in done:
                continue  # unknown, or on already: not listed (RFC 5161 3.1)
            action = ENABLERS[name]
            if action is not None:
                action(self)
            self.enabled.add(name)
            done.append(ENABLED_AS.get(name, name))
        self.send(b" ".join([b"* ENABLED", *done]))
        self._tagged(tag, b"OK", b"ENABLE completed")

    def _condstore_used(self) -> None:
        """
        A CONDSTORE-enabling command (RFC 7162 3.1): from now on FETCH responses
        carry MODSEQ and SELECT tells HIGHESTMODSEQ; with a mailbox selected, its
        HIGHESTMODSEQ is told at once.
        """
        if b"CONDSTORE" in self.enabled:
            return
        self.enabled.add(b"CONDSTORE")
        if self.mbox is not None:
            self.mbox.condstore = True
            self._send_highestmodseq()

    def _enable_qresync(self) -> None:
        self._condstore_used()
        self.enabled.add(b"QRESYNC")
        if self.mbox is not None:
            self.mbox.qresync = True

    def _send_highestmodseq(self) -> None:
        highest = self.mbox.highest_modseq
        if highest is None:
            self.send(b"* OK [NOMODSEQ] No permanent modsequences")
        else:
            self.send(b"* OK [HIGHESTMODSEQ %d] Highest" % highest)

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
        if self._mode == "idle" or self._notify_selected_changed():
            self._push_updates()

    def _push_updates(self) -> None:
        if self.mbox is not None:
            for line in self.mbox.updates(True):
                self.send(line)

    def imap_CHECK(self, tag, cur):
        cur.end()
        self.mbox.refresh()
        self._tagged(tag, b"OK", b"CHECK completed")


def _refuse_utf8_when_selected(session: SessionBase) -> None:
    """
    ENABLE UTF8=ACCEPT "is only valid in the authenticated state" (RFC 6855 3):
    the selected mailbox's name would change meaning under the client, so the
    command is BAD while a mailbox is selected.  Once on, names are UTF-8
    (L{SessionBase.utf8_names}, L{netsuite.imap.names}).
    """
    if session.state == "select":
        raise ParseError("ENABLE UTF8=ACCEPT is only valid in the authenticated state "
                         "(RFC 6855 3): CLOSE or UNSELECT first")

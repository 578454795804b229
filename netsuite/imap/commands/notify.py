"""
NOTIFY (RFC 5465): unsolicited responses pushed as they happen, also for
mailboxes that are not selected (as STATUS), instead of only at the end of
a command or during IDLE.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.mail import imap4

from netsuite.imap.account import canonical
from netsuite.imap.commands import SessionBase
from netsuite.imap.mailbox import status as folder_status
from netsuite.imap.names import from_wire as name_from_wire
from netsuite.imap.wire_notify import SUPPORTED, NotifySpec, parse_notify

log = Logger(namespace="netsuite.imap")

#: Most mailboxes one session's NOTIFY watches (beyond: NOTIFICATIONOVERFLOW).
MAX_WATCHED = 1000

#: STATUS items each event asks for (RFC 5465 5.1-5.3, as Dovecot sends them).
_ITEMS = {"MessageNew": ("MESSAGES", "UIDNEXT", "UIDVALIDITY"),
          "MessageExpunge": ("MESSAGES",),
          "FlagChange": ("UIDVALIDITY", "HIGHESTMODSEQ")}


class NotifyCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    #: folder -> (name, STATUS items) of the non-selected mailboxes watched.
    _notify_watched: dict
    #: Events for the selected mailbox (None: NOTIFY not in force).
    _notify_selected: list | None = None
    #: Mailbox names whose STATUS is due, with their items.
    _notify_due: dict

    def imap_NOTIFY(self, tag, cur):
        spec = parse_notify(cur)
        if spec is not None:
            bad = sorted({e for g in spec.groups for e in g.events if e not in SUPPORTED})
            if bad:
                self._tagged(tag, b"NO", b"[BADEVENT (" + " ".join(SUPPORTED).encode() +
                             b")] Unsupported event: " + bad[0].encode("ascii", "replace"))
                return
            try:
                watched = self._notify_mailboxes(spec)
            except OverflowError:
                self._tagged(tag, b"NO", b"[NOTIFICATIONOVERFLOW] Too many mailboxes")
                return
        self._notify_stop()
        if spec is None:
            self._tagged(tag, b"OK", b"NOTIFY completed")
            return
        self._notify_selected = []
        for g in spec.groups:
            if g.filter.startswith("SELECTED"):
                self._notify_selected = g.events
        self._notify_watched = {}
        self._notify_due = {}
        store = self.account.store
        for name, (folder, items) in watched.items():
            self._notify_watched[folder] = (name, items)
            store.watch(folder, self._notify_changed)
            if spec.status:
                self.send(self._notify_status(name, folder, items))
        self._tagged(tag, b"OK", b"NOTIFY completed")

    def _notify_mailboxes(self, spec: NotifySpec) -> dict:
        """Mailbox name -> (folder, STATUS items) of the groups about other mailboxes."""
        names = self.account.names()
        out: dict = {}
        for g in spec.groups:
            if g.filter.startswith("SELECTED") or not g.events:
                continue
            if g.filter == "INBOXES":
                chosen = ["INBOX"]
            elif g.filter == "PERSONAL":
                chosen = names
            elif g.filter == "SUBSCRIBED":
                subs = set(self.account.store.subscriptions(self.account.user))
                chosen = [n for n in names if n in subs]
            else:
                wanted = [canonical(name_from_wire(b, self.utf8_names())) for b in g.mailboxes]
                if g.filter == "MAILBOXES":
                    chosen = [n for n in wanted if n in names]
                else:
                    chosen = [n for n in names if any(n == w or n.startswith(w + ".")
                                                      for w in wanted)]
            items: list[str] = []
            for e in g.events:
                items += [i for i in _ITEMS.get(e, ()) if i not in items]
            for name in chosen:
                if len(out) >= MAX_WATCHED and name not in out:
                    raise OverflowError
                try:
                    folder = self.account.folder(name)
                except imap4.MailboxException:
                    continue
                prev = out.get(name, (folder, []))[1]
                out[name] = (folder, prev + [i for i in items if i not in prev])
        return out

    def _notify_status(self, name: str, folder, items) -> bytes:
        values = folder_status(folder, items)
        body = " ".join(f"{k} {values[k]}" for k in items).encode()
        return b"* STATUS " + self._wire_name(name) + b" (" + body + b")"

    def _notify_changed(self, folder, changes) -> None:
        """A watched mailbox changed: its STATUS is due (sent at once when idle)."""
        entry = self._notify_watched.get(folder)
        if entry is None or self._lost:
            return
        name, items = entry
        if self.mbox is not None and self.mbox.holds(folder):
            return  # the selected mailbox speaks for itself (EXISTS, EXPUNGE, FETCH)
        if (changes.added or changes.expunged or changes.flags) and name not in self._notify_due:
            self._notify_due[name] = (folder, items)
        self._notify_flush()

    def _notify_flush(self, ending: bool = False) -> None:
        """
        Send what is due, unless a command is running: then its end (C{ending},
        just before its tagged reply) sends it.
        """
        if self._lost or not getattr(self, "_notify_due", None):
            return
        if not ending and (self._busy or self._executing):
            return
        due, self._notify_due = self._notify_due, {}
        for name, (folder, items) in due.items():
            self.send(self._notify_status(name, folder, items))

    def _notify_selected_changed(self) -> bool:
        """Whether the selected mailbox's updates go out at once (NOTIFY SELECTED)."""
        return bool(self._notify_selected) and not (self._busy or self._executing)

    def _notify_stop(self) -> None:
        store = self.account.store if getattr(self, "account", None) is not None else None
        for folder in list(getattr(self, "_notify_watched", {}) or {}):
            if store is not None:
                store.unwatch(folder, self._notify_changed)
        self._notify_watched = {}
        self._notify_due = {}
        self._notify_selected = None

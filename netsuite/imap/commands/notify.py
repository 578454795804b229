"""
NOTIFY (RFC 5465): unsolicited responses pushed as they happen, also for
mailboxes that are not selected (as STATUS), instead of only at the end of
a command or during IDLE.  Mailbox names created, deleted or renamed and
subscriptions changed by the user's other sessions come as untagged LIST
(MailboxName, SubscriptionChange: RFC 5465 5.4, 5.5; heard through
L{netsuite.imap.account.ImapAccount.watch_names}); new messages of the
selected mailbox come with the FETCH that MessageNew asked for (5.2).
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.mail import imap4

from netsuite.imap.account import DELIMITER, NameChange, canonical
from netsuite.imap.binary import UnknownCTE
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
    #: The groups about other mailboxes asking for MailboxName or SubscriptionChange.
    _notify_names: list | None = None
    #: Untagged LIST lines due (MailboxName, SubscriptionChange).
    _notify_lines: list | None = None
    #: MessageNew's fetch attributes for the selected mailbox (RFC 5465 5.2).
    _notify_fetch: list | None = None
    #: (selected mailbox, the highest UID whose MessageNew FETCH is sent or not due).
    _notify_told: tuple | None = None
    #: The NOTIFY SET in force, if it has groups about other mailboxes.
    _notify_spec: NotifySpec | None = None

    if TYPE_CHECKING:  # FetchCommands provides it
        def _fetch_one(self, mbox: Any, seq: int, msg: Any, atts: Any,
                       add_flags: bool) -> bytes: ...

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
                self._notify_fetch = g.fetch if "MessageNew" in g.events else None
        self._notify_names = [g for g in spec.groups if not g.filter.startswith("SELECTED")
                              and {"MailboxName", "SubscriptionChange"} & set(g.events)]
        self._notify_lines = []
        if any(not g.filter.startswith("SELECTED") and g.events for g in spec.groups):
            # Names created, renamed or deleted (by any session) change what is watched.
            self._notify_spec = spec
            self.account.watch_names(self._notify_name_changed)
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
            if not items:  # MailboxName, SubscriptionChange only: no folder to watch
                continue
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

    def _notify_rewatch(self) -> None:
        """The mailboxes the filters name now, watched (a CREATE or RENAME may add one)."""
        if self._notify_spec is None or self._lost:
            return
        try:
            watched = self._notify_mailboxes(self._notify_spec)
        except OverflowError:  # past the limit: the ones watched already stay
            return
        store = self.account.store
        now = {folder: (name, items) for name, (folder, items) in watched.items()}
        for folder in [f for f in self._notify_watched if f not in now]:
            store.unwatch(folder, self._notify_changed)
        for folder in [f for f in now if f not in self._notify_watched]:
            store.watch(folder, self._notify_changed)
        self._notify_watched = now

    def _notify_name_changed(self, account, change: NameChange) -> None:
        """A session of this user (this one too) changed a mailbox name or subscription."""
        spec = self._notify_spec
        if self._lost or spec is None:
            return
        if change.kind in ("create", "delete", "rename") or any(
                g.filter == "SUBSCRIBED" for g in spec.groups):
            self._notify_rewatch()
        if account is self.account or not self._notify_names or self._notify_lines is None:
            return
        event = "SubscriptionChange" if change.kind in ("subscribe", "unsubscribe") \
            else "MailboxName"
        names = [change.name] + ([change.old] if change.old else [])
        subs = None
        for g in self._notify_names:
            if event not in g.events:
                continue
            if g.filter == "SUBSCRIBED" and subs is None:
                subs = set(self.account.store.subscriptions(self.account.user))
                if event == "SubscriptionChange":
                    subs.add(change.name)  # an unsubscribe is told too
            if any(_in_filter(g, n, subs) for n in names):
                break
        else:
            return
        self._notify_lines.append(self._notify_list(change))
        self._notify_flush()

    def _notify_list(self, change: NameChange) -> bytes:
        """The untagged LIST telling of C{change} (RFC 5465 5.4, 5.5)."""
        name = change.name
        names = self.account.names()
        if change.kind == "delete" or name not in names:
            attrs = ["\\NonExistent"]
        else:
            attrs = self.account.attributes(name, names)
        subscribed = name in self.account.store.subscriptions(self.account.user)
        if subscribed and change.kind != "delete":
            attrs.append("\\Subscribed")
        line = b"* LIST (" + " ".join(attrs).encode() + b') "' + DELIMITER.encode() + b'" ' + \
            self._wire_name(name)
        if change.old is not None:
            line += b' ("OLDNAME" (' + self._wire_name(change.old) + b"))"
        return line

    def _notify_flush(self, ending: bool = False) -> None:
        """
        Send what is due, unless a command is running: then its end (C{ending},
        just before its tagged reply) sends it.
        """
        if ending and self._notify_fetch:
            self._notify_new_messages()  # after the EXISTS the tagged reply's updates sent
        if self._lost or not (getattr(self, "_notify_due", None) or self._notify_lines):
            return
        if not ending and (self._busy or self._executing):
            return
        if self._notify_lines:
            lines, self._notify_lines = self._notify_lines, []
            for line in lines:
                self.send(line)
        due, self._notify_due = self._notify_due, {}
        for name, (folder, items) in due.items():
            self.send(self._notify_status(name, folder, items))

    def _notify_selected_changed(self) -> bool:
        """
        Whether the selected mailbox's updates go out at once (NOTIFY SELECTED).
        With MessageNew's fetch attributes they are sent here, each new
        message's FETCH after the EXISTS (RFC 5465 5.2), and the answer is no.
        """
        mbox = self.mbox
        if self._notify_fetch and mbox is not None and \
                (self._notify_told is None or self._notify_told[0] is not mbox):
            # The first change since this mailbox was selected, before any EXISTS for it:
            # what the session holds now is what the client was told at SELECT.
            self._notify_told = (mbox, mbox.uids[-1] if mbox.uids else 0)
        if not self._notify_selected or self._busy or self._executing:
            return False
        if not self._notify_fetch or mbox is None:
            return True
        for line in mbox.updates(True):
            self.send(line)
        self._notify_new_messages()
        return False

    def _notify_new_messages(self) -> None:
        """MessageNew's FETCH for the messages told by EXISTS since the last time."""
        mbox = self.mbox
        if mbox is None or self._notify_told is None or self._notify_told[0] is not mbox \
                or self._lost:
            return
        last = self._notify_told[1]
        uids = mbox.uids
        for seq in range(bisect.bisect_right(uids, last), len(uids)):
            msg = mbox.message(uids[seq])
            if msg is None:
                continue
            try:  # as FETCH; BODY[] does not set \Seen here: nothing was asked of it
                self.transport.write(self._fetch_one(mbox, seq + 1, msg, self._notify_fetch,
                                                     False))
            except (KeyError, UnknownCTE):  # gone meanwhile, or not decodable: skipped
                continue
        mbox.flush_cache()
        self._notify_told = (mbox, max(last, uids[-1] if uids else 0))

    def _notify_stop(self) -> None:
        store = self.account.store if getattr(self, "account", None) is not None else None
        for folder in list(getattr(self, "_notify_watched", {}) or {}):
            if store is not None:
                store.unwatch(folder, self._notify_changed)
        if self._notify_spec is not None and getattr(self, "account", None) is not None:
            self.account.unwatch_names(self._notify_name_changed)
        self._notify_spec = None
        self._notify_watched = {}
        self._notify_due = {}
        self._notify_selected = None
        self._notify_names = None
        self._notify_lines = None
        self._notify_fetch = None
        self._notify_told = None


def _in_filter(group, name: str, subscribed: set[str] | None) -> bool:
    """Whether mailbox C{name} is in a group's mailbox filter (RFC 5465 6)."""
    f = group.filter
    if f == "PERSONAL":
        return True
    if f == "INBOXES":
        return name == "INBOX"
    if f == "SUBSCRIBED":
        return subscribed is not None and name in subscribed
    wanted = [canonical(b.decode("ascii", "replace")) for b in group.mailboxes]
    if f == "MAILBOXES":
        return name in wanted
    return any(name == w or name.startswith(w + DELIMITER) for w in wanted)  # SUBTREE

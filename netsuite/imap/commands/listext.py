"""
LIST with the RFC 5258 (LIST-EXTENDED), RFC 5819 (LIST-STATUS) and RFC 6154
(SPECIAL-USE) options.  A LIST in the RFC 3501 syntax still goes to
L{netsuite.imap.commands.mailboxes.MailboxCommands._list}, unchanged.
"""

from __future__ import annotations

from netsuite.imap import wire
from netsuite.imap.account import NoSuchFolder
from netsuite.imap.commands import SessionBase
from netsuite.imap.commands.mailboxes import STATUS_ITEMS
from netsuite.imap.wire import ParseError
from netsuite.imap.wire_list import parse_list


class ListExtCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}, before L{MailboxCommands} in the MRO."""

    def imap_LIST(self, tag, cur):
        start = cur.pos
        lits = list(cur.literals)
        cmd = parse_list(cur, self.utf8_names())
        if not cmd.extended:
            cur.pos, cur.literals = start, lits
            self._list(tag, cur, False, b"LIST")
            return
        if cmd.status:
            self._check_status_items(cmd.status)
            cmd.status = self._rev2_status_items(cmd.status)
        if cmd.patterns == [""] and not cmd.select:
            self.send(b'* LIST (\\Noselect) "." ""')
            self._tagged(tag, b"OK", b"LIST completed")
            return
        subscribed = b"SUBSCRIBED" in cmd.select
        mark_subscribed = subscribed or b"SUBSCRIBED" in cmd.returns
        rows = self.account.extended_listing(
            cmd.ref, cmd.patterns, subscribed=subscribed,
            recursive=b"RECURSIVEMATCH" in cmd.select, special=b"SPECIAL-USE" in cmd.select)
        for name, attrs, childinfo in rows:
            if not mark_subscribed:
                attrs = [a for a in attrs if a != "\\Subscribed"]
            line = (b"* LIST (" + " ".join(attrs).encode() + b') "." ' + self._wire_name(name))
            if childinfo:
                line += (b' ("CHILDINFO" (' +
                         b" ".join(wire.string(c) for c in childinfo) + b"))")
            self.send(line)
            if cmd.status and not {"\\NonExistent", "\\Noselect"} & set(attrs):
                self._send_status(name, cmd.status)
        self._tagged(tag, b"OK", b"LIST completed")

    def _check_status_items(self, items: list[str]) -> None:
        """BAD for an item STATUS does not know (L{mailboxes.STATUS_ITEMS})."""
        if any(i not in STATUS_ITEMS for i in items):
            raise ParseError("Unknown STATUS item")

    def _send_status(self, name: str, items: list[str]) -> None:
        """One untagged STATUS; a mailbox gone meanwhile is left out (RFC 5819 2)."""
        try:
            values = self.account.status(name, items)
        except NoSuchFolder:
            return
        body = " ".join(f"{k} {values[k]}" for k in items).encode()
        self.send(b"* STATUS " + self._wire_name(name) + b" (" + body + b")")

"""
IMAP4rev2 (RFC 9051), offered beside IMAP4rev1: a session that sends
C{ENABLE IMAP4rev2} gets the rev2 answers from then on.

The extensions RFC 9051 folds in (ESEARCH, LIST-EXTENDED, LIST-STATUS,
STATUS=SIZE, BINARY, MOVE, UNSELECT, IDLE, NAMESPACE, UIDPLUS, SPECIAL-USE,
LITERAL-, SASL-IR, ENABLE, SEARCHRES) are offered to every session already;
what changes after ENABLE is what rev2 removed or answers differently:

  - no \\Recent flag and no RECENT response (SELECT, EXAMINE, new mail, FETCH
    FLAGS); STATUS RECENT is left out of the answer, as Dovecot does; the
    RECENT, NEW and OLD search keys are gone from rev2's grammar and get BAD;
  - SELECT/EXAMINE send no [UNSEEN n] but an untagged LIST of the mailbox
    (RFC 9051 6.3.2);
  - SEARCH answers with ESEARCH, a SEARCH without RETURN as RETURN (ALL)
    (RFC 9051 6.4.4, 7.3.4).

Mailbox names in UTF-8 (RFC 9051 5.1) are UTF8=ACCEPT's, elsewhere.
"""

from __future__ import annotations

from netsuite.imap.commands import SessionBase
from netsuite.imap.wire import ParseError

#: Search keys IMAP4rev2 removed with \\Recent (RFC 9051 6.4.4's search-key has none).
REMOVED_SEARCH_KEYS = {"RECENT", "NEW", "OLD"}


class Rev2Commands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    def _rev2(self) -> bool:
        """Whether this session enabled IMAP4rev2."""
        return b"IMAP4REV2" in self.enabled

    def _enable_imap4rev2(self) -> None:
        """ENABLE IMAP4rev2: the selected mailbox, if any, loses \\Recent at once."""
        self.enabled.add(b"IMAP4REV2")
        if self.mbox is not None:
            self.mbox.set_no_recent()

    def _rev2_selected(self, mbox) -> None:
        """The untagged LIST a rev2 SELECT/EXAMINE sends (RFC 9051 6.3.2)."""
        attrs = self.account.attributes(mbox.name, self.account.names())
        self.send(b"* LIST (" + " ".join(attrs).encode() + b') "." ' + self._wire_name(mbox.name))

    def _rev2_status_items(self, items: list[str]) -> list[str]:
        """STATUS items to answer: rev2 has no RECENT, which is left out (as Dovecot)."""
        if self._rev2():
            return [i for i in items if i != "RECENT"]
        return items

    def _rev2_check_keys(self, keys) -> None:
        """BAD for a search key rev2 removed, in a rev2 session."""
        if self._rev2():
            removed = _removed_key(keys)
            if removed is not None:
                raise ParseError(f"Search key {removed} is not in IMAP4rev2")


def _removed_key(keys) -> str | None:
    """The first key of REMOVED_SEARCH_KEYS anywhere in parsed search keys, or None."""
    for key in keys:
        op = key[0]
        if op in REMOVED_SEARCH_KEYS:
            return op
        if op == "AND":
            found = _removed_key(key[1])
        elif op in ("NOT", "OR"):
            found = _removed_key(key[1:])
        else:
            found = None
        if found is not None:
            return found
    return None

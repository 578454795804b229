"""
Changing flags and removing messages: STORE and (UID) EXPUNGE.
"""

from __future__ import annotations

from netsuite.imap.commands import EXPUNGE_ISSUED, SessionBase
from netsuite.imap.wire import ParseError


class FlagCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    def imap_STORE(self, tag, cur, uid=False):
        seqset = cur.seqset()
        cur.sp()
        item = cur.atom().upper()
        cur.sp()
        flags = cur.flag_list()
        cur.end()
        base, _, silent = item.partition(b".")
        if silent not in (b"", b"SILENT"):
            raise ParseError("Bad STORE item")
        mode = {b"FLAGS": 0, b"+FLAGS": 1, b"-FLAGS": -1}.get(base)
        if mode is None:
            raise ParseError("Bad STORE item")
        targets = self._targets(seqset, uid)
        if not self.mbox.writeable:
            self._tagged(tag, b"NO", b"[READ-ONLY] Mailbox is read-only", allow_expunge=uid)
            return
        mbox = self.mbox
        msgs = mbox.messages(targets)
        mbox.set_flags(msgs, flags, mode)
        if not silent:
            for m in msgs:
                seq = mbox.seq(m.uid)
                if seq:
                    uidpart = b" UID %d" % m.uid if uid else b""
                    self.send(b"* %d FETCH (FLAGS %s%s)" % (seq, mbox.flag_bytes(m), uidpart))
        if len(msgs) < len(targets):
            self._tagged(tag, b"OK", EXPUNGE_ISSUED, allow_expunge=uid)
        else:
            self._tagged(tag, b"OK", b"STORE completed", allow_expunge=uid)

    def imap_EXPUNGE(self, tag, cur, uid=False):
        which = None
        if uid:
            which = set(self._targets(cur.seqset(), True))
        cur.end()
        if not self.mbox.writeable:
            self._tagged(tag, b"NO", b"[READ-ONLY] Mailbox is read-only")
            return
        doomed = [u for u in self.mbox.deleted() if which is None or u in which]
        self.mbox.expunge_uids(doomed)
        self._tagged(tag, b"OK", b"EXPUNGE completed")

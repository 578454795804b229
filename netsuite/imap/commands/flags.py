"""
Changing flags and removing messages: STORE and (UID) EXPUNGE.
"""

from __future__ import annotations

from netsuite.imap import wire
from netsuite.imap.commands import EXPUNGE_ISSUED, SessionBase
from netsuite.imap.wire import ParseError


class FlagCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    def imap_STORE(self, tag, cur, uid=False):
        seqset = cur.seqset()
        cur.sp()
        unchanged = wire.parse_store_modifiers(cur)
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
        if unchanged is not None:
            self._condstore_used()
        msgs = mbox.messages(targets)
        found = len(msgs)
        failed: list = []
        if unchanged is None:
            changed = mbox.set_flags(msgs, flags, mode)
        else:
            # RFC 7162 3.1.3: a message changed since (MODSEQ above the number) is left
            # alone and named in MODIFIED; UNCHANGEDSINCE 0 leaves every message alone.
            changed = mbox.set_flags(msgs, flags, mode, unchanged) if unchanged else []
            done = {id(m) for m in changed}
            failed = [m for m in msgs if id(m) not in done and
                      (not unchanged or mbox.modseq_of(m) > unchanged)]
            bad = {id(m) for m in failed}
            msgs = [m for m in msgs if id(m) not in bad]
        for line in mbox.flags_update():  # a new keyword: FLAGS before the FETCHes
            self.send(line)
        condstore = mbox.condstore
        if not silent or (condstore and unchanged is not None):
            told = msgs if not silent else changed
            for m in told:
                seq = mbox.seq(m.uid)
                if not seq:
                    continue
                items = [] if silent else [b"FLAGS " + mbox.flag_bytes(m)]
                if uid or condstore:
                    items.append(b"UID %d" % m.uid)
                if condstore:
                    items.append(b"MODSEQ (%d)" % mbox.modseq_of(m))
                self.send(b"* %d FETCH (%s)" % (seq, b" ".join(items)))
        if failed:
            numbers = sorted(m.uid if uid else mbox.seq(m.uid) for m in failed)
            self._tagged(tag, b"OK", b"[MODIFIED %s] Conditional STORE failed" %
                         wire.sequence_set(n for n in numbers if n), allow_expunge=uid)
        elif found < len(targets):
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
        highest = self.mbox.highest_modseq if self.mbox.condstore else None
        code = b"" if highest is None else b"[HIGHESTMODSEQ %d] " % highest  # RFC 7162 3.2.7
        self._tagged(tag, b"OK", code + b"EXPUNGE completed")

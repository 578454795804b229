"""
Changing flags and removing messages: STORE and (UID) EXPUNGE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from netsuite.imap import wire
from netsuite.imap.commands import EXPUNGE_ISSUED, SessionBase
from netsuite.imap.commands.search import then
from netsuite.imap.wire import ParseError

#: Messages a STORE changes in one reactor turn (about 10 ms of renames).
PER_TURN = 500
#: Messages an EXPUNGE removes in one turn: more, as each call also rebuilds the
#: folder's list of messages (O(n)), which a batch per 500 would repeat too often
#: on a big folder.
EXPUNGE_PER_TURN = 1000


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

        def store(chunk: list) -> None:
            """One batch: changed, its FETCH answers sent, its conditional failures kept."""
            if unchanged is None:
                changed = mbox.set_flags(chunk, flags, mode)
            else:
                # RFC 7162 3.1.3: a message changed since (MODSEQ above the number) is
                # left alone and named in MODIFIED; UNCHANGEDSINCE 0 leaves them all alone.
                changed = mbox.set_flags(chunk, flags, mode, unchanged) if unchanged else []
                done = {id(m) for m in changed}
                bad = [m for m in chunk if id(m) not in done and
                       (not unchanged or mbox.modseq_of(m) > unchanged)]
                failed.extend(bad)
                worse = {id(m) for m in bad}
                chunk = [m for m in chunk if id(m) not in worse]
            for line in mbox.flags_update():  # a new keyword: FLAGS before the FETCHes
                self.send(line)
            condstore = mbox.condstore
            if not silent or (condstore and unchanged is not None):
                for m in chunk if not silent else changed:
                    seq = mbox.seq(m.uid)
                    if not seq:
                        continue
                    items = [] if silent else [b"FLAGS " + mbox.flag_bytes(m)]
                    if uid or condstore:
                        items.append(b"UID %d" % m.uid)
                    if condstore:
                        items.append(b"MODSEQ (%d)" % mbox.modseq_of(m))
                    self.send(b"* %d FETCH (%s)" % (seq, b" ".join(items)))

        def answer(_=None) -> None:
            if self._lost:
                return
            if failed:
                numbers = sorted(m.uid if uid else mbox.seq(m.uid) for m in failed)
                self._tagged(tag, b"OK", b"[MODIFIED %s] Conditional STORE failed" %
                             wire.sequence_set(n for n in numbers if n), allow_expunge=uid)
            elif found < len(targets):
                self._tagged(tag, b"OK", EXPUNGE_ISSUED, allow_expunge=uid)
            else:
                self._tagged(tag, b"OK", b"STORE completed", allow_expunge=uid)

        return then(self._in_batches(msgs, store), answer)

    def imap_EXPUNGE(self, tag, cur, uid=False):
        which = None
        if uid:
            which = set(self._targets(cur.seqset(), True))
        cur.end()
        if not self.mbox.writeable:
            self._tagged(tag, b"NO", b"[READ-ONLY] Mailbox is read-only")
            return
        mbox = self.mbox
        doomed = [u for u in mbox.deleted() if which is None or u in which]

        def answer(_=None) -> None:
            if self._lost:
                return
            highest = mbox.highest_modseq if mbox.condstore else None
            code = b"" if highest is None else b"[HIGHESTMODSEQ %d] " % highest  # RFC 7162 3.2.7
            self._tagged(tag, b"OK", code + b"EXPUNGE completed")

        return then(self._in_batches(doomed, mbox.expunge_uids, EXPUNGE_PER_TURN), answer)

    def _in_batches(self, items: list, work: Callable[[list], Any],
                    per_turn: int = PER_TURN) -> defer.Deferred | None:
        """
        C{work(batch)} over C{items}, C{per_turn} at a time: at once for a small
        command (None), otherwise a batch per reactor turn (a Deferred), so that a
        STORE or EXPUNGE of a whole big folder (a rename or unlink per message)
        does not hold up every other session of the process while it runs.
        """
        if len(items) <= per_turn:
            work(items)
            return None

        def batches():
            for i in range(0, len(items), per_turn):
                work(items[i:i + per_turn])
                yield None

        return self._cooperate(batches())

"""
COPY and MOVE, answered with COPYUID (UIDPLUS).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from netsuite.imap import wire
from netsuite.imap.account import NoSuchFolder
from netsuite.imap.commands import SessionBase

log = Logger(namespace="netsuite.imap")


class CopyCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    def _copy(self, tag, cur, uid: bool, move: bool):
        seqset = cur.seqset()
        cur.sp()
        name = self._mailbox_name(cur)
        cur.end()
        targets = self._targets(seqset, uid)
        if move and not self.mbox.writeable:
            self._tagged(tag, b"NO", b"[READ-ONLY] Mailbox is read-only")
            return
        try:
            dest = self.account.folder(name)
        except NoSuchFolder:
            self._tagged(tag, b"NO", b"[TRYCREATE] No such mailbox")
            return
        src = self.mbox
        msgs = src.messages(targets)
        if not move and self._refuse_over_quota(tag, sum(src.size_of(m) for m in msgs)):
            return
        # MOVE to the selected folder itself copies too: the messages get new UIDs
        # (what Dovecot does, and imaptest's move group expects).
        pairs = src.copy_to(msgs, dest)
        if isinstance(pairs, defer.Deferred):  # a store that copies off the reactor (PostgreSQL)
            return pairs.addCallbacks(self._copied, self._copy_failed,
                                      callbackArgs=(tag, uid, move, src, dest),
                                      errbackArgs=(tag,))
        self._copied(pairs, tag, uid, move, src, dest)
        return None

    def _copied(self, pairs, tag, uid: bool, move: bool, src, dest) -> None:
        if self._lost:
            return
        code = b""
        if pairs:
            code = b"[COPYUID %d %s %s] " % (dest.uidvalidity,
                                             wire.sequence_set([p[0] for p in pairs]),
                                             wire.sequence_set([p[1] for p in pairs]))
        if move:
            if code:
                self.send(b"* OK " + code + b"Moved")
            src.expunge_uids([p[0] for p in pairs])
            self._tagged(tag, b"OK", b"MOVE completed")
        else:
            self._tagged(tag, b"OK", code + b"COPY completed", allow_expunge=uid)

    def _copy_failed(self, failure, tag) -> None:
        log.failure("IMAP COPY failed", failure)
        if not self._lost:
            self._tagged(tag, b"NO", b"[UNAVAILABLE] Could not copy the messages; try again")

    def imap_COPY(self, tag, cur, uid=False):
        return self._copy(tag, cur, uid, move=False)

    def imap_MOVE(self, tag, cur, uid=False):
        return self._copy(tag, cur, uid, move=True)

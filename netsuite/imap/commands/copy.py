"""
COPY and MOVE, answered with COPYUID (UIDPLUS).
"""

from __future__ import annotations

from twisted.logger import Logger

from netsuite.durable import disk_full
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
        d = self.account.folder_deferred(name)

        def no_such(f) -> None:
            f.trap(NoSuchFolder)
            if not self._lost:
                self._tagged(tag, b"NO", b"[TRYCREATE] No such mailbox")

        return d.addCallbacks(self._copy_into, no_such, callbackArgs=(tag, name, targets, uid,
                                                                      move))

    def _copy_into(self, dest, tag, name: str, targets, uid: bool, move: bool):
        if self._lost:
            return None
        src = self.mbox
        msgs = src.messages(targets)
        if not move and self._refuse_over_quota(tag, sum(src.size_of(m) for m in msgs)):
            return
        # MOVE to the selected folder itself copies too: the messages get new UIDs
        # (what Dovecot does, and imaptest's move group expects).  The directory
        # and log fsyncs run in a thread; the tagged OK waits for them.
        d = src.copy_many(msgs, dest)

        def copied(pairs) -> None:
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
                if self.mbox is src:
                    src.expunge_uids([p[0] for p in pairs])
                self._tagged(tag, b"OK", b"MOVE completed")
            else:
                self._tagged(tag, b"OK", code + b"COPY completed", allow_expunge=uid)

        def failed(f) -> None:
            f.trap(OSError)
            log.warn("IMAP {command} to {folder} failed: {error}",
                     command="MOVE" if move else "COPY", folder=name, error=f.value)
            if self._lost:
                return
            if disk_full(f.value):
                self._tagged(tag, b"NO", b"[OVERQUOTA] Mailbox is full")
            else:
                self._tagged(tag, b"NO", b"[SERVERBUG] Could not copy the messages")

        return d.addCallbacks(copied, failed)

    def imap_COPY(self, tag, cur, uid=False):
        return self._copy(tag, cur, uid, move=False)

    def imap_MOVE(self, tag, cur, uid=False):
        return self._copy(tag, cur, uid, move=True)

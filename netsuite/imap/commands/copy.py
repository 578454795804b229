"""
COPY and MOVE, answered with COPYUID (UIDPLUS).
"""

from __future__ import annotations

from netsuite.imap.account import NoSuchFolder
from netsuite.imap.commands import SessionBase


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
        pairs = src.copy_to(msgs, dest) if not (move and src.holds(dest)) else []
        code = b""
        if pairs:
            code = b"[COPYUID %d %s %s] " % (dest.uidvalidity,
                                             compress([p[0] for p in pairs]),
                                             compress([p[1] for p in pairs]))
        if move:
            if code:
                self.send(b"* OK " + code + b"Moved")
            src.expunge_uids([p[0] for p in pairs])
            self._tagged(tag, b"OK", b"MOVE completed")
        else:
            self._tagged(tag, b"OK", code + b"COPY completed", allow_expunge=uid)

    def imap_COPY(self, tag, cur, uid=False):
        self._copy(tag, cur, uid, move=False)

    def imap_MOVE(self, tag, cur, uid=False):
        self._copy(tag, cur, uid, move=True)


def compress(numbers: list[int]) -> bytes:
    """[1, 2, 3, 5] -> b"1:3,5" (order kept: COPYUID pairs source and destination)."""
    out = []
    start = prev = None
    for n in numbers:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(f"{start}:{prev}" if start != prev else f"{start}")
        start = prev = n
    if start is not None:
        out.append(f"{start}:{prev}" if start != prev else f"{start}")
    return ",".join(out).encode()

"""
QUOTA (RFC 9208): one quota root, C{""}, per user over all its folders, with
the STORAGE resource in units of 1024 octets.  The limit comes from the realm
(C{[mail] quota}, C{[mail] quotas}, or a realm's own C{quota_for}); usage from
the folders' indexes (L{netsuite.store.quota}).  SETQUOTA is the
administrator's: users get NO.  APPEND and COPY that would pass the limit get
C{NO [OVERQUOTA]} (L{QuotaCommands._refuse_over_quota}); a MOVE inside the
account does not change its usage, so it is never refused for the quota.
"""

from __future__ import annotations

from netsuite.imap.account import NoSuchFolder
from netsuite.imap.commands import SessionBase
from netsuite.store.quota import over_quota

#: The one quota root of every account.
ROOT = ""


class QuotaCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    def _quota_line(self) -> bytes | None:
        limit = getattr(self.account, "quota", None)
        if limit is None:
            return None
        used, _ = self.account.store.usage(self.account.user)
        return b'* QUOTA "" (STORAGE %d %d)' % (used // 1024, limit // 1024)

    def imap_GETQUOTAROOT(self, tag, cur):
        name = self._mailbox_name(cur)
        cur.end()
        try:
            self.account.folder(name)
        except NoSuchFolder:
            self._tagged(tag, b"NO", b"[NONEXISTENT] No such mailbox")
            return
        line = self._quota_line()
        if line is None:  # no limit: no quota root (RFC 9208 4.3.2)
            self.send(b"* QUOTAROOT " + self._wire_name(name))
        else:
            self.send(b"* QUOTAROOT " + self._wire_name(name) + b' ""')
            self.send(line)
        self._tagged(tag, b"OK", b"GETQUOTAROOT completed")

    def imap_GETQUOTA(self, tag, cur):
        root = cur.astring().decode("ascii", "replace")
        cur.end()
        line = self._quota_line() if root == ROOT else None
        if line is None:
            self._tagged(tag, b"NO", b"[NONEXISTENT] No such quota root")
            return
        self.send(line)
        self._tagged(tag, b"OK", b"GETQUOTA completed")

    def imap_SETQUOTA(self, tag, cur):
        cur.astring()
        cur.sp()
        cur.plist()
        cur.end()
        self._tagged(tag, b"NO", b"[NOPERM] Quotas are set by the administrator")

    def _refuse_over_quota(self, tag: bytes, extra: int) -> bool:
        """Answer NO [OVERQUOTA] if C{extra} more bytes pass the limit; whether it did."""
        limit = getattr(self.account, "quota", None)
        if limit is not None and over_quota(self.account.store, self.account.user, limit, extra):
            self._tagged(tag, b"NO", b"[OVERQUOTA] Quota exceeded (mailbox is full)")
            return True
        return False

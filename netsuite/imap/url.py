"""
IMAP URLs (RFC 5092) with URLAUTH (RFC 4467), as pure functions: the
message-part URLs that GENURLAUTH signs, URLFETCH resolves and CATENATE
may name.

  imap://user@host[:port]/mailbox[;UIDVALIDITY=n]/;UID=n[/;SECTION=s]
      [/;PARTIAL=o[.l]][;EXPIRE=datetime];URLAUTH=access[:mech:token]

Only message and part URLs are accepted (no search or list URLs): those are
the ones URLAUTH can authorize.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote_to_bytes

#: Numbers are 32-bit (RFC 5092 nz-number, RFC 3501 number): at most 10 ASCII digits, so
#: that int() never meets thousands of them (Python refuses past 4300) or other scripts'.
_URL = re.compile(
    r"^imap://(?:(?P<user>[^@/;]+)(?:;AUTH=[^@/]*)?@)?(?P<host>[^/]+)/"
    r"(?P<mailbox>[^;]*?)(?:;UIDVALIDITY=(?P<uidvalidity>[0-9]{1,10}))?"
    r"/;UID=(?P<uid>[0-9]{1,10})"
    r"(?:/;SECTION=(?P<section>[^/;]+))?"
    r"(?:/;PARTIAL=(?P<pstart>[0-9]{1,10})(?:\.(?P<plen>[0-9]{1,10}))?)?"
    r"(?:;EXPIRE=(?P<expire>[^;]+))?"
    r"(?:;URLAUTH=(?P<access>[^:;]+)(?::(?P<mech>[^:;]+):(?P<token>[0-9A-Fa-f]+))?)?$",
    re.IGNORECASE)

_ACCESS = re.compile(r"^(anonymous|authuser|(?:user|submit)\+[^:;]+)$", re.IGNORECASE)


class BadURL(ValueError):
    """Not an IMAP message URL this server understands."""


@dataclass(frozen=True)
class ImapURL:
    text: str
    user: str | None
    host: str
    mailbox: str
    uidvalidity: int | None
    uid: int
    section: str | None
    partial: tuple[int, int | None] | None
    expire: datetime | None
    access: str | None
    mechanism: str | None
    token: str | None

    @property
    def rump(self) -> str:
        """The URL up to and including C{;URLAUTH=access}: what the token signs."""
        if self.token is None:
            return self.text
        return self.text[:len(self.text) - len(self.token) - len(self.mechanism or "") - 2]

    def expired(self, now: datetime) -> bool:
        return self.expire is not None and now >= self.expire

    def allows(self, session_user: str | None) -> bool:
        """RFC 4467 3: who may URLFETCH it (no submit server here: submit+ is nobody)."""
        access = (self.access or "").lower()
        if access == "anonymous":
            return True
        if access == "authuser":
            return session_user is not None
        if access.startswith("user+"):
            return session_user is not None and unquote(access[5:]) == session_user.lower()
        return False


def unquote(text: str) -> str:
    # (surrogatepass: a lone surrogate in the text is not this parser's to crash on)
    return unquote_to_bytes(text.encode("utf-8", "surrogatepass")).decode("utf-8", "replace")


def parse(text: str) -> ImapURL:
    m = _URL.match(text)
    if m is None:
        raise BadURL("not an IMAP message URL")
    access = m.group("access")
    if access is not None and not _ACCESS.match(access):
        raise BadURL("bad URLAUTH access identifier")
    expire = None
    if m.group("expire"):
        try:
            expire = datetime.fromisoformat(unquote(m.group("expire")).replace("Z", "+00:00"))
        except ValueError:
            raise BadURL("bad EXPIRE") from None
        if expire.tzinfo is None:
            raise BadURL("EXPIRE needs a time zone")
    partial = None
    if m.group("pstart") is not None:
        partial = (int(m.group("pstart")),
                   int(m.group("plen")) if m.group("plen") is not None else None)
    user = m.group("user")
    return ImapURL(
        text=text, user=unquote(user) if user else None, host=m.group("host"),
        mailbox=unquote(m.group("mailbox")) or "INBOX",
        uidvalidity=int(m.group("uidvalidity")) if m.group("uidvalidity") else None,
        uid=int(m.group("uid")),
        section=unquote(m.group("section")) if m.group("section") else None,
        partial=partial, expire=expire, access=access,
        mechanism=m.group("mech"), token=m.group("token"))

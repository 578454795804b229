"""
Mailbox names on the wire, both ways: modified UTF-7 (RFC 3501 5.1.3), or
UTF-8 once the client has sent C{ENABLE UTF8=ACCEPT} (RFC 6855 3) or
C{ENABLE IMAP4rev2} (RFC 9051 5.1).  Pure functions: bytes in, str out and back.

The store keeps every name in modified UTF-7 whichever way it came (as
Dovecot's Maildir++ layout does), so a session that enabled UTF-8 and one
that did not see the same folders: C{Entwürfe} is C{Entw&APw-rfe} on disk and
to the second session.
"""

from __future__ import annotations

from functools import lru_cache

from twisted.mail import imap4  # also registers the "imap4-utf-7" codec

from netsuite.imap import wire
from netsuite.imap.wire import ParseError

#: Not allowed in a UTF-8 mailbox name (RFC 6855 3, after RFC 5198 2): C0 and C1
#: controls, DEL, LINE SEPARATOR and PARAGRAPH SEPARATOR.
_FORBIDDEN = {chr(c) for c in range(0x20)} | {chr(c) for c in range(0x7F, 0xA0)} | \
    {"\u2028", "\u2029"}


def from_wire(raw: bytes, utf8: bool) -> str:
    """
    A mailbox name as the client sent it -> the stored (modified UTF-7) form.

    Without UTF-8 the name must be ASCII (modified UTF-7 is): else
    L{imap4.MailboxException} (NO), as before UTF8=ACCEPT existed.  With
    UTF-8, octets that are not UTF-8 are a L{ParseError} (BAD, RFC 6855 3
    "MUST reject, with a BAD response"); a control character is NO.
    """
    if not utf8:
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise imap4.MailboxException(
                "Mailbox names must be modified UTF-7 (RFC 3501 5.1.3)") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("Mailbox name is not valid UTF-8") from None
    if any(c in _FORBIDDEN for c in text):
        raise imap4.MailboxException("Mailbox name has a control character (RFC 6855 3)")
    return text.encode("imap4-utf-7").decode("ascii")


def pattern_from_wire(raw: bytes, utf8: bool) -> str:
    """
    A LIST/LSUB reference or pattern -> the stored form (wildcards are ASCII
    and pass through modified UTF-7 unchanged).  Without UTF-8, as before:
    non-ASCII octets match nothing.
    """
    if not utf8:
        return raw.decode("ascii", "replace")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("Mailbox pattern is not valid UTF-8") from None
    return text.encode("imap4-utf-7").decode("ascii")


def to_wire(name: str, utf8: bool) -> bytes:
    """
    A stored name -> an astring for a response (LIST, LSUB, STATUS, ...).

    With UTF-8 the modified UTF-7 is decoded and sent as UTF-8, in a quoted
    string when it can be one (RFC 6855 3); a stored name that is not
    modified UTF-7 as C{from_wire} would write it (made by another program)
    goes out as it is stored.
    """
    if not utf8:
        return wire.astring(name)
    return utf8_astring(to_unicode(name).encode("utf-8"))


@lru_cache(maxsize=4096)
def to_unicode(name: str) -> str:
    """
    A stored name as text: modified UTF-7 decoded, or the name as it is when
    it is not modified UTF-7 as L{from_wire} writes it (another program's).
    """
    try:
        decoded = name.encode("ascii").decode("imap4-utf-7")
    except UnicodeError:
        return name
    return decoded if decoded.encode("imap4-utf-7").decode("ascii") == name else name


def utf8_astring(data: bytes) -> bytes:
    """An atom, a quoted string that may hold UTF-8 (RFC 6855 3), or a literal."""
    if data and data.isascii():
        return wire.astring(data)
    if len(data) > 1024 or any(c < 0x20 or c == 0x7F for c in data):
        return wire.literal(data)
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def valid_utf8(data: bytes) -> bool:
    """Whether command text is UTF-8 (RFC 6855 3 quoted strings, RFC 3629)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True

"""
SASL mechanisms shared by SMTP AUTH, POP3 AUTH and IMAP AUTHENTICATE.

Built on Twisted's C{twisted.mail._cred} credentials, with two fixes: PLAIN
refuses an authorization identity other than the user's own (RFC 4616: we
offer no proxy authorization), and LOGIN prompts with the C{Username:} /
C{Password:} every client expects.
"""

from __future__ import annotations

import base64
import binascii

from twisted.mail._cred import LOGINCredentials, PLAINCredentials
from twisted.mail._except import IllegalClientResponse


class SASLError(ValueError):
    """A malformed SASL response; the text is fit for the client."""


def split_plain(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """RFC 4616: C{authzid NUL authcid NUL password} -> its three parts."""
    parts = raw.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise SASLError("Invalid PLAIN response")
    return parts[0], parts[1], parts[2]


def decode_plain(response: bytes) -> tuple[bytes, bytes, bytes]:
    """A base64 PLAIN response (POP3 AUTH, IMAP AUTHENTICATE) -> its three parts."""
    try:
        raw = base64.b64decode(response.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SASLError("Invalid base64")
    return split_plain(raw)


class PlainCredentials(PLAINCredentials):
    def setResponse(self, response: bytes) -> None:
        authzid, self.username, self.password = split_plain(response)
        if authzid and authzid != self.username:
            raise IllegalClientResponse("PLAIN: proxy authorization is not supported")


class LoginCredentials(LOGINCredentials):
    def __init__(self) -> None:
        super().__init__()
        self.challenges = [b"Password:", b"Username:"]


#: Mechanism name -> credentials class, in the order they are advertised.
MECHANISMS: dict[bytes, type] = {b"PLAIN": PlainCredentials, b"LOGIN": LoginCredentials}

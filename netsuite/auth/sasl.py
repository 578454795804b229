"""
SASL mechanisms shared by SMTP AUTH, POP3 AUTH and IMAP AUTHENTICATE.

The PLAIN and LOGIN credentials are netsuite's own, on public Twisted
interfaces only (C{twisted.cred}'s C{UsernamePassword}, declared as
C{IUsernameHashedPassword} too, so any checker of either takes them, and
C{twisted.mail.interfaces.IChallengeResponse}): Twisted's are in the private
C{twisted.mail._cred}.  Unlike those, PLAIN refuses an authorization identity
other than the user's own (RFC 4616: we offer no proxy authorization), and
LOGIN prompts with the C{Username:} / C{Password:} every client expects.
"""

from __future__ import annotations

import base64
import binascii

from twisted.cred import credentials
from twisted.mail.interfaces import IChallengeResponse
from zope.interface import implementer


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
        raise SASLError("Invalid base64") from None
    return split_plain(raw)


@implementer(IChallengeResponse, credentials.IUsernameHashedPassword)
class PlainCredentials(credentials.UsernamePassword):
    """SASL PLAIN (RFC 4616): one response, C{authzid NUL user NUL password}."""

    def __init__(self) -> None:
        super().__init__(b"", b"")  # filled in by setResponse

    def getChallenge(self) -> bytes:
        return b""

    def setResponse(self, response: bytes) -> None:
        """Raises L{SASLError} (a C{ValueError}) for a malformed response."""
        authzid, self.username, self.password = split_plain(response)
        if authzid and authzid != self.username:
            raise SASLError("PLAIN: proxy authorization is not supported")

    def moreChallenges(self) -> bool:
        return False


@implementer(IChallengeResponse, credentials.IUsernameHashedPassword)
class LoginCredentials(credentials.UsernamePassword):
    """SASL LOGIN: C{Username:}, then C{Password:}, one response to each."""

    def __init__(self) -> None:
        super().__init__(b"", b"")  # filled in by setResponse
        self.challenges = [b"Password:", b"Username:"]  # popped from the end
        self._fields = ["password", "username"]

    def getChallenge(self) -> bytes:
        return self.challenges.pop()

    def setResponse(self, response: bytes) -> None:
        setattr(self, self._fields.pop(), response)

    def moreChallenges(self) -> bool:
        return bool(self.challenges)


#: Mechanism name -> credentials class, in the order they are advertised.
MECHANISMS: dict[bytes, type] = {b"PLAIN": PlainCredentials, b"LOGIN": LoginCredentials}

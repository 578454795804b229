"""
SASL mechanisms shared by SMTP AUTH, POP3 AUTH and IMAP AUTHENTICATE.

Built on Twisted's C{twisted.mail._cred} credentials, with two fixes: PLAIN
refuses an authorization identity other than the user's own (RFC 4616: we
offer no proxy authorization), and LOGIN prompts with the C{Username:} /
C{Password:} every client expects.
"""

from __future__ import annotations

from twisted.mail._cred import LOGINCredentials, PLAINCredentials
from twisted.mail._except import IllegalClientResponse


class PlainCredentials(PLAINCredentials):
    def setResponse(self, response: bytes) -> None:
        parts = response.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            raise IllegalClientResponse("PLAIN: expected authzid NUL authcid NUL password")
        authzid, self.username, self.password = parts
        if authzid and authzid != self.username:
            raise IllegalClientResponse("PLAIN: proxy authorization is not supported")


class LoginCredentials(LOGINCredentials):
    def __init__(self) -> None:
        super().__init__()
        self.challenges = [b"Password:", b"Username:"]


#: Mechanism name -> credentials class, in the order they are advertised.
MECHANISMS: dict[bytes, type] = {b"PLAIN": PlainCredentials, b"LOGIN": LoginCredentials}

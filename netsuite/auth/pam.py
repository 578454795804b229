"""PAM for system accounts: the timesharing case, where users already exist."""

from __future__ import annotations

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer, threads
from zope.interface import implementer

from netsuite.auth import normalize_username, password_bytes


@implementer(ICredentialsChecker)
class PAMChecker:
    """Authenticates through a PAM service (C{login} by default), off the reactor."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, service: str = "login"):
        self.service = service or "login"

    def _authenticate(self, name: str, password: bytes) -> bool:
        import pam

        return bool(pam.pam().authenticate(name, password, service=self.service))

    @defer.inlineCallbacks
    def requestAvatarId(self, creds):
        name = normalize_username(creds.username)
        # Bytes as sent: python-pam would encode a str with surrogates and fail.
        password = password_bytes(creds.password)
        if not name or "\0" in name or name.startswith("-"):
            raise error.UnauthorizedLogin("bad user name")
        ok = yield threads.deferToThread(self._authenticate, name, password)
        if not ok:
            raise error.UnauthorizedLogin("PAM refused")
        return name

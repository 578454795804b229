"""
Several checkers for one kind of credentials.

A Portal keeps one checker per credentials interface, so C{auth = ["passwd",
"pam"]} would silently keep only the last.  L{FirstMatch} asks each in turn and
takes the first that accepts: a password-file user and a system account can
both log in.
"""

from __future__ import annotations

from twisted.cred import error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from zope.interface import implementer


@implementer(ICredentialsChecker)
class FirstMatch:
    def __init__(self, checkers: list, interfaces: tuple):
        self.checkers = checkers
        self.credentialInterfaces = interfaces

    @defer.inlineCallbacks
    def requestAvatarId(self, credentials):
        for checker in self.checkers:
            try:
                avatar_id = yield defer.maybeDeferred(checker.requestAvatarId, credentials)
            except error.UnauthorizedLogin:
                continue
            return avatar_id
        raise error.UnauthorizedLogin("no checker accepted these credentials")


def combine(checkers: list) -> list:
    """One checker per credentials interface, chaining where several share one."""
    by_iface: dict = {}
    for checker in checkers:
        for iface in checker.credentialInterfaces:
            by_iface.setdefault(iface, []).append(checker)
    combined = []
    for iface, group in by_iface.items():
        combined.append(group[0] if len(group) == 1 else FirstMatch(group, (iface,)))
    return combined

"""
The C{sql} checker: users and argon2id hashes in the PostgreSQL C{users} table
(L{netsuite.db.users}), shared by every host.

Same verification as the password file (L{netsuite.auth.passwdfile.verify} on
the argon2 threads, a dummy hash for unknown users so timing does not tell who
exists).  Its cache token (L{ICacheTokenSource}) is the row's version and hash,
asked from the database on every login: a password changed with C{netsuite user
passwd} on any host ends every host's cached success at once.  A database that
cannot be reached is L{DatabaseUnavailable} (a temporary failure), never a
wrong password.
"""

from __future__ import annotations

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from zope.interface import implementer

from netsuite.auth import normalize_username, verifier
from netsuite.auth.cache import ICacheTokenSource
from netsuite.auth.passwdfile import valid_name, verify
from netsuite.db import users
from netsuite.db.pool import Database


@implementer(ICredentialsChecker, ICacheTokenSource)
class SQLChecker:
    """C{IUsernamePassword} against the C{users} table of C{db}."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, db: Database):
        self.db = db

    def _user(self, name: str) -> defer.Deferred:
        if not valid_name(name):
            return defer.succeed(None)
        return self.db.run(users.lookup, name)

    def cache_token(self, username: str) -> defer.Deferred:
        """A Deferred: the user's token now, or None (no such user, or disabled)."""
        def token(user: users.User | None) -> bytes | None:
            return None if user is None or user.disabled else user.token

        return self._user(username).addCallback(token)

    @defer.inlineCallbacks
    def requestAvatarId(self, creds):
        name = normalize_username(creds.username)
        user = yield self._user(name)
        hashed = None if user is None or user.disabled else user.password_hash
        ok = yield verifier.run(verify, hashed, creds.password)
        if not ok:
            raise error.UnauthorizedLogin("bad user name or password")
        return name

"""
A cache of successful password verifications, in front of any checker.

argon2id is slow on purpose (~0.1 s and 64 MiB per check), and a mail client
logs in again every few minutes with the same password.  Like Dovecot's
C{auth_cache_size} / C{auth_cache_ttl}, a success is remembered for a while, so
the repeat costs a keyed hash and a dictionary look-up.

What is remembered, and why it is safe:

  - the key is an HMAC-SHA256, under a random key made when the process starts,
    of the user name, the password and the checker's I{token} for the user (see
    L{ICacheTokenSource}: for the password file, the user's current hash).  The
    password itself, or a plain hash of it that could be attacked offline, is
    never kept;
  - a checker that has a token is asked for it on every login: a changed
    password (a new salted hash), a deleted user (no token) or a rewritten file
    no longer matches, so the old entry is dead at once without any explicit
    invalidation;
  - only successes are cached; a wrong password is a miss and goes to the real
    checker (and to the throttle, which sits in front of the Portal: a locked
    address or user is refused before any checker, cached or not, is asked);
  - bounded: at most C{size} entries, least recently used out first, each
    valid for C{ttl} seconds after its verification.

Concurrent logins with the same credentials (a client opening several IMAP
connections at once) share one verification instead of running argon2 for each.

A checker without a token (PAM, a custom plugin) cannot say when a password
changed elsewhere, so it is wrapped only if the config asks for it
(C{[auth] cache_untracked = true}), and then a changed password still works for
up to C{ttl} seconds, as in Dovecot.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.cred import credentials as _creds
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from netsuite.auth import normalize_username, password_bytes

log = Logger(namespace="netsuite.auth")


class ICacheTokenSource(Interface):
    """A checker that can say what a cached success for a user must still match."""

    def cache_token(username: str) -> bytes | None | defer.Deferred:
        """
        Bytes that change whenever the user's credentials change (the stored
        password hash), or L{None} if the user does not exist now.  Cheap: it is
        asked on every login.  A checker whose users live in a database returns
        a Deferred of the same (never blocking the reactor for it).
        """


class VerificationCache:
    """
    Successful verifications: HMAC digest -> (avatar id, time verified), LRU-bounded.

    Pure bookkeeping (no Deferreds, an injectable clock), so bounds and expiry
    are tested with a fake clock.
    """

    def __init__(self, size: int, ttl: float, clock: Callable[[], float] = time.monotonic,
                 key: bytes | None = None):
        self.size = size
        self.ttl = ttl
        self.clock = clock
        self._key = key if key is not None else os.urandom(32)
        self._entries: OrderedDict[bytes, tuple[Any, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def digest(self, username: str, token: bytes, password: bytes) -> bytes:
        """The entry key; every field length-prefixed, so no two tuples collide."""
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (username.encode("utf-8", "surrogateescape"), token, password):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.digest()

    def get(self, digest: bytes) -> Any:
        """The avatar id of a live entry, or L{None}."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        avatar_id, verified = entry
        if self.clock() - verified >= self.ttl:
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return avatar_id

    def put(self, digest: bytes, avatar_id: Any) -> None:
        if self.size <= 0 or self.ttl <= 0:
            return
        self._entries[digest] = (avatar_id, self.clock())
        self._entries.move_to_end(digest)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class _Flight:
    """One verification in progress and the logins waiting for its answer."""

    def __init__(self, underlying: defer.Deferred):
        self.underlying = underlying
        self.waiters: list[defer.Deferred] = []


@implementer(ICredentialsChecker)
class CachingChecker:
    """
    Wraps a checker: a success is remembered (see the module docstring); the
    rest, and every credential that is not a plain username and password, goes
    to the wrapped checker unchanged.
    """

    def __init__(self, checker: Any, cache: VerificationCache):
        self.checker = checker
        self.cache = cache
        self.credentialInterfaces = checker.credentialInterfaces
        self._tracked = ICacheTokenSource.providedBy(checker)
        self._flights: dict[bytes, _Flight] = {}
        #: Verifications handed to the wrapped checker (what tests and metrics count).
        self.misses = 0
        self.hits = 0

    def requestAvatarId(self, creds) -> defer.Deferred:
        if not _creds.IUsernamePassword.providedBy(creds):
            return defer.maybeDeferred(self.checker.requestAvatarId, creds)

        name = normalize_username(creds.username)
        if not self._tracked:
            return self._lookup(b"", creds, name)
        token = self.checker.cache_token(name)
        if isinstance(token, defer.Deferred):  # a database look-up (the sql checker)
            return token.addCallback(self._lookup, creds, name)
        return self._lookup(token, creds, name)

    def _lookup(self, token: bytes | None, creds, name: str) -> defer.Deferred:
        if token is None:  # no such user now: nothing cached can apply
            return self._ask(creds, None)
        digest = self.cache.digest(name, token, password_bytes(creds.password))
        avatar_id = self.cache.get(digest)
        if avatar_id is not None:
            self.hits += 1
            log.debug("login verified from cache: user={user}", user=name)
            return defer.succeed(avatar_id)
        return self._ask(creds, digest)

    def _ask(self, creds, digest: bytes | None) -> defer.Deferred:
        """The wrapped checker's answer, one verification per digest at a time."""
        if digest is None:
            self.misses += 1
            return defer.maybeDeferred(self.checker.requestAvatarId, creds)
        flight = self._flights.get(digest)
        if flight is None:
            self.misses += 1
            flight = _Flight(defer.maybeDeferred(self.checker.requestAvatarId, creds))
            self._flights[digest] = flight
            flight.underlying.addBoth(self._landed, digest, flight)

        def cancel(d: defer.Deferred) -> None:
            # This login gave up; the others still want the answer.
            if d in flight.waiters:
                flight.waiters.remove(d)
            if not flight.waiters and self._flights.get(digest) is flight:
                del self._flights[digest]
                flight.underlying.cancel()

        waiter: defer.Deferred = defer.Deferred(cancel)
        flight.waiters.append(waiter)
        return waiter

    def _landed(self, result, digest: bytes, flight: _Flight) -> None:
        if self._flights.get(digest) is flight:
            del self._flights[digest]
        ok = not isinstance(result, Failure)
        if ok:
            self.cache.put(digest, result)
        waiters, flight.waiters = flight.waiters, []
        for d in waiters:
            if ok:
                d.callback(result)
            else:
                d.errback(result)
        return None  # a failure was handed to every waiter above


def cached(checker: Any, size: int, ttl: float, untracked: bool = False,
           cache: VerificationCache | None = None) -> Any:
    """
    C{checker} behind a L{CachingChecker}, if it can be cached: it tells when a
    user's credentials change (L{ICacheTokenSource}), or C{untracked} says to
    cache it anyway.  A size or ttl of 0 turns the cache off.
    """
    if size <= 0 or ttl <= 0:
        return checker
    if not (ICacheTokenSource.providedBy(checker) or untracked):
        return checker
    if _creds.IUsernamePassword not in checker.credentialInterfaces:
        return checker
    return CachingChecker(checker, cache or VerificationCache(size, ttl))

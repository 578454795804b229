"""
The shared Portal with a failed-login throttle in front of it.

Every protocol logs in through L{ThrottledPortal.bind}, which ties the login to
the client's address.  Failures are counted per address and per user name;
after C{free_failures} each further one is answered after a doubling delay,
and C{lock_after} failures within C{window} lock the address or user for
C{lock_seconds}.  Logins are logged with protocol, address and user, never the
password.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.cred import credentials as _creds
from twisted.cred import error
from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from netsuite import metrics
from netsuite.auth import AvatarInUse, normalize_username
from netsuite.config import ThrottleConfig
from netsuite.db.errors import DatabaseUnavailable

log = Logger(namespace="netsuite.auth")


@dataclass
class _Record:
    failures: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class LoginThrottle:
    """Counts failures per key (C{addr:...}, C{user:...}) over a sliding window."""

    def __init__(self, config: ThrottleConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self._records: dict[str, _Record] = {}

    def _record(self, key: str) -> _Record:
        now = self.clock()
        rec = self._records.setdefault(key, _Record())
        horizon = now - self.config.window
        rec.failures = [t for t in rec.failures if t > horizon]
        return rec

    def locked(self, *keys: str) -> bool:
        now = self.clock()
        return any(self._record(k).locked_until > now for k in keys)

    def fail(self, *keys: str) -> float:
        """Record a failure; return the delay before answering it."""
        now = self.clock()
        worst = 0
        for key in keys:
            rec = self._record(key)
            rec.failures.append(now)
            if len(rec.failures) >= self.config.lock_after:
                rec.locked_until = now + self.config.lock_seconds
            worst = max(worst, len(rec.failures))
        self._prune()
        extra = worst - self.config.free_failures
        if extra <= 0:
            return 0.0
        return min(self.config.base_delay * 2 ** (extra - 1), self.config.max_delay)

    def locks(self) -> dict[str, float]:
        """Keys (C{addr:...}, C{user:...}) locked now -> seconds the lock has left."""
        now = self.clock()
        return {k: r.locked_until - now for k, r in self._records.items()
                if r.locked_until > now}

    def succeed(self, *keys: str) -> None:
        for key in keys:
            rec = self._records.get(key)
            if rec is not None and rec.locked_until <= self.clock():
                del self._records[key]

    def _prune(self) -> None:
        """Keep memory bounded under a spray of distinct addresses or names."""
        if len(self._records) < 10000:
            return
        now = self.clock()
        for key in [k for k, r in self._records.items()
                    if r.locked_until <= now and not self._record(k).failures]:
            del self._records[key]


#: Credential classes -> the C{mechanism} label of C{netsuite_logins_total}.
_MECHANISMS = {"PlainCredentials": "plain", "LoginCredentials": "login",
               "UsernamePassword": "password", "SSHPrivateKey": "publickey"}


def mechanism_of(credentials: Any) -> str:
    """
    A bounded name for how a client logged in: SASL PLAIN or LOGIN (SMTP AUTH),
    a user name and password (IMAP LOGIN and AUTHENTICATE PLAIN, POP3, FTP,
    TELNET, SSH password and keyboard-interactive), an SSH public key.
    """
    for cls in type(credentials).__mro__:
        name = _MECHANISMS.get(cls.__name__)
        if name is not None:
            return name
    return "other"


class ThrottledPortal:
    """The one Portal, wrapped: C{bind(peer, protocol)} gives a per-connection view."""

    def __init__(self, portal: Portal, throttle: LoginThrottle, reactor: Any = None):
        if reactor is None:
            from twisted.internet import reactor
        self.portal = portal
        self.throttle = throttle
        self.reactor = reactor
        #: The latest failed logins of this process, newest last (the status page).
        self.recent_failures: deque[dict[str, Any]] = deque(maxlen=50)

    def bind(self, peer: str, protocol: str) -> "PeerPortal":
        return PeerPortal(self, peer, protocol)

    def listCredentialsInterfaces(self):
        return self.portal.listCredentialsInterfaces()

    def login(self, credentials, mind, *interfaces, peer: str = "?", protocol: str = "?"):
        if _creds.IAnonymous.providedBy(credentials):
            return self.portal.login(credentials, mind, *interfaces)
        user = normalize_username(getattr(credentials, "username", b"") or b"")
        keys = (f"addr:{peer}", f"user:{user.lower()}")
        mechanism = mechanism_of(credentials)
        result = _then(self.throttle.locked(*keys), self._login, credentials, mind, interfaces,
                       peer, protocol, user, keys, mechanism)
        return result if isinstance(result, defer.Deferred) else defer.succeed(result)

    def _login(self, locked: bool, credentials, mind, interfaces: tuple, peer: str,
               protocol: str, user: str, keys: tuple[str, ...], mechanism: str):
        if locked:
            return _then(self.throttle.fail(*keys), self._refuse_locked, protocol, peer, user,
                         mechanism)
        d = self.portal.login(credentials, mind, *interfaces)

        def ok(result):
            self.throttle.succeed(*keys)
            metrics.logins.labels(protocol, mechanism, "ok").inc()
            log.info("login: protocol={protocol} address={client} user={user}",
                     protocol=protocol, client=peer, user=user, event="login")
            return result

        def failed(reason):
            if reason.check(DatabaseUnavailable):
                # The user database is away: a temporary failure for the protocol to
                # say so, not a wrong password, and not counted against anyone.
                metrics.logins.labels(protocol, mechanism, "failed").inc()
                log.warn("login failed, database unavailable: protocol={protocol} "
                         "address={client} user={user}", protocol=protocol, client=peer,
                         user=user, event="login_failed", reason="db_unavailable")
                return reason
            if reason.check(AvatarInUse):  # right password, busy mailbox: the protocol says so
                log.info("login refused, in use: protocol={protocol} address={client} "
                         "user={user}", protocol=protocol, client=peer, user=user,
                         event="login_refused", reason="in_use")
                return reason
            if reason.check(defer.CancelledError):
                # The client left while its password was being checked.  Counted
                # all the same: hanging up after PASS must not buy unthrottled
                # argon2 work (a lock refuses before any verification).
                log.info("login abandoned: protocol={protocol} address={client} "
                         "user={user}", protocol=protocol, client=peer, user=user,
                         event="login_abandoned", reason="abandoned")
                why = "abandoned"
            elif not reason.check(error.UnauthorizedLogin, error.UnhandledCredentials):
                # A checker that broke on these credentials: a bug worth a critical
                # log line, and still a failed login for the throttle (every bad
                # credential counts, or breaking a checker would be a free retry).
                log.failure("credential check failed: protocol={protocol} address={client} "
                            "user={user}", reason, protocol=protocol, client=peer, user=user,
                            event="checker_error", reason="checker_error")
                why = "checker_error"
            else:
                why = "auth_failed"
            return self._failed(keys, reason, peer, protocol, user, mechanism, why)

        return d.addCallbacks(ok, failed)

    def _refuse_locked(self, delay: float, protocol: str, peer: str, user: str,
                       mechanism: str) -> defer.Deferred:
        self._remember(protocol, peer, user, "locked")
        metrics.logins.labels(protocol, mechanism, "failed").inc()
        metrics.login_locked_refusals.labels(protocol).inc()
        self._delayed(protocol, delay)
        log.warn("login refused, locked: protocol={protocol} address={client} user={user}",
                 protocol=protocol, client=peer, user=user, event="login_refused",
                 reason="locked")
        return task.deferLater(self.reactor, delay, self._refuse)

    def refuse(self, username: bytes | str, peer: str = "?", protocol: str = "?"
               ) -> defer.Deferred:
        """
        A login the protocol refuses itself (a malformed user name): counted and
        delayed by the throttle like any failed login, then failed.
        """
        user = normalize_username(username or b"")
        keys = (f"addr:{peer}", f"user:{user.lower()}")

        def counted(was_locked: bool):
            return self._failed(keys, Failure(error.UnauthorizedLogin("malformed user name")),
                                peer, protocol, user, why="bad_username",
                                was_locked=was_locked)

        result = _then(self.throttle.locked(*keys), counted)
        if isinstance(result, Failure):
            return defer.fail(result)
        return result if isinstance(result, defer.Deferred) else defer.succeed(result)

    def _failed(self, keys: tuple[str, ...], reason: Failure, peer: str, protocol: str,
                user: str, mechanism: str = "password", why: str = "auth_failed",
                was_locked: bool = False) -> Failure | defer.Deferred:
        """C{why}: the reason code of the log line (L{netsuite.logs.REASONS})."""
        return _then(self.throttle.fail(*keys), self._failure_counted, keys, reason, peer,
                     protocol, user, mechanism, why, was_locked)

    def _failure_counted(self, delay: float, keys: tuple[str, ...], reason: Failure, peer: str,
                         protocol: str, user: str, mechanism: str, why: str,
                         was_locked: bool) -> Failure | defer.Deferred:
        self._remember(protocol, peer, user, "failed")
        metrics.logins.labels(protocol, mechanism, "failed").inc()
        self._delayed(protocol, delay)
        if not was_locked:
            _then(self.throttle.locked(*keys), self._count_lock, protocol)
        log.warn("login failed: protocol={protocol} address={client} user={user}",
                 protocol=protocol, client=peer, user=user, event="login_failed",
                 reason=why, delay=delay)
        if not delay:
            return reason
        return task.deferLater(self.reactor, delay, lambda: reason)

    @staticmethod
    def _count_lock(locked: bool, protocol: str) -> None:
        if locked:  # this failure locked it
            metrics.login_locks.labels(protocol).inc()

    def _remember(self, protocol: str, peer: str, user: str, outcome: str) -> None:
        self.recent_failures.append({"time": time.time(), "protocol": protocol,
                                     "address": peer, "user": user, "outcome": outcome})

    @staticmethod
    def _delayed(protocol: str, delay: float) -> None:
        if delay > 0:
            metrics.login_throttle_delays.labels(protocol).inc()
            metrics.login_throttle_delay_seconds.labels(protocol).inc(delay)

    @staticmethod
    def _refuse():
        raise error.UnauthorizedLogin("too many failed logins; try again later")


def _then(value: Any, function: Callable[..., Any], *args: Any) -> Any:
    """
    C{function(value, *args)}, at once if the throttle answered at once (the
    in-memory and SQLite throttles), else when its Deferred fires (PostgreSQL's).
    """
    if isinstance(value, defer.Deferred):
        return value.addCallback(function, *args)
    return function(value, *args)


class PeerPortal:
    """Looks like a Portal to Twisted protocols; knows who is asking."""

    def __init__(self, portal: ThrottledPortal, peer: str, protocol: str):
        self._portal = portal
        self.peer = peer
        self.protocol = protocol

    @property
    def realm(self):
        return self._portal.portal.realm

    def listCredentialsInterfaces(self):
        return self._portal.listCredentialsInterfaces()

    def login(self, credentials, mind, *interfaces) -> defer.Deferred:
        return self._portal.login(credentials, mind, *interfaces,
                                  peer=self.peer, protocol=self.protocol)

    def refuse(self, username: bytes | str) -> defer.Deferred:
        """Fail a login without asking a checker, counted by the throttle."""
        return defer.maybeDeferred(self._portal.refuse, username, self.peer, self.protocol)

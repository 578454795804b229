"""
The failed-login throttle shared by every host, in PostgreSQL
(C{[store] backend = "postgresql"}).

Same rules as L{LoginThrottle} (this is a subclass; only the bookkeeping
moves, as in L{netsuite.auth.shared_throttle} for one host's workers), in the
C{throttle_failures} and C{throttle_locks} tables, on the database's clock
(one clock for all hosts).  Each call is one short transaction on a database
thread and answers with a Deferred (L{ThrottledPortal} waits for it), so the
reactor never waits on the database; the failures of one key are counted under
a transaction-level advisory lock on that key, so two hosts failing the same
user at once both count.  While the database is unavailable the throttle
counts in this process's memory, as the one-process throttle does, and says so
once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from netsuite.auth.throttle import LoginThrottle
from netsuite.config import ThrottleConfig
from netsuite.db.errors import DatabaseUnavailable
from netsuite.db.pool import Database

log = Logger(namespace="netsuite.auth")


def _locked(conn: psycopg.Connection, keys: tuple[str, ...]) -> bool:
    row = conn.execute("SELECT 1 FROM throttle_locks WHERE until > now() AND key = ANY(%s) "
                       "LIMIT 1", (list(keys),)).fetchone()
    return row is not None


def _locks(conn: psycopg.Connection) -> dict[str, float]:
    rows = conn.execute("SELECT key, extract(epoch FROM until - now()) FROM throttle_locks "
                        "WHERE until > now()").fetchall()
    return {key: float(left) for key, left in rows}


def _fail(conn: psycopg.Connection, keys: tuple[str, ...], config: ThrottleConfig,
          sweep: bool) -> int:
    """Record a failure of each key; the most failures any of them has in the window."""
    worst = 0
    with conn.transaction():
        for key in sorted(keys):  # one order for every host: no deadlock between two
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))
            conn.execute("DELETE FROM throttle_failures WHERE key = %s "
                         "AND at <= now() - make_interval(secs => %s)", (key, config.window))
            conn.execute("INSERT INTO throttle_failures (key, at) VALUES (%s, now())", (key,))
            row = conn.execute("SELECT count(*) FROM throttle_failures WHERE key = %s",
                               (key,)).fetchone()
            count = row[0] if row else 0
            if count >= config.lock_after:
                conn.execute("INSERT INTO throttle_locks (key, until) "
                             "VALUES (%s, now() + make_interval(secs => %s)) "
                             "ON CONFLICT (key) DO UPDATE SET until = EXCLUDED.until",
                             (key, config.lock_seconds))
            worst = max(worst, count)
        if sweep:
            conn.execute("DELETE FROM throttle_failures "
                         "WHERE at <= now() - make_interval(secs => %s)", (config.window,))
            conn.execute("DELETE FROM throttle_locks WHERE until <= now()")
    return worst


def _succeed(conn: psycopg.Connection, keys: tuple[str, ...]) -> None:
    """
    Forget the failures (and any expired lock) of each key not locked now: one
    statement, one round trip (every successful login pays it).
    """
    conn.execute("WITH expired AS (DELETE FROM throttle_locks WHERE key = ANY(%(keys)s) "
                 "AND until <= now()) "
                 "DELETE FROM throttle_failures f WHERE f.key = ANY(%(keys)s) AND NOT EXISTS "
                 "(SELECT 1 FROM throttle_locks l WHERE l.key = f.key AND l.until > now())",
                 {"keys": list(keys)})


class PgLoginThrottle(LoginThrottle):
    """L{LoginThrottle} whose counters are rows in C{db}; every call answers a Deferred."""

    #: Expired rows are swept every this many failures (by each host).
    sweep_every = 500

    def __init__(self, config: ThrottleConfig, db: Database,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(config, clock)
        self.db = db
        self._fails = 0
        self._snapshot: dict[str, float] = {}
        self._degraded = False

    def _fallback(self, failure: Failure, local: Callable[[], Any]) -> Any:
        """The database is away: this process's own count, meanwhile (said once)."""
        if not self._degraded:
            self._degraded = True
            if not failure.check(DatabaseUnavailable):
                log.failure("shared login throttle failed", failure)
            log.warn("shared login throttle unavailable ({error}); counting in this process "
                     "until the database is back", error=failure.getErrorMessage())
        return local()

    def _back(self, result: Any) -> Any:
        self._degraded = False
        return result

    def locked(self, *keys: str) -> defer.Deferred:  # type: ignore[override]
        return self.db.run(_locked, keys).addCallbacks(
            self._back, self._fallback, errbackArgs=(lambda: LoginThrottle.locked(self, *keys),))

    def fail(self, *keys: str) -> defer.Deferred:  # type: ignore[override]
        self._fails += 1
        sweep = self._fails % self.sweep_every == 0
        d = self.db.run(_fail, keys, self.config, sweep).addCallback(self._delay)
        return d.addCallbacks(self._back, self._fallback,
                              errbackArgs=(lambda: LoginThrottle.fail(self, *keys),))

    def _delay(self, worst: int) -> float:
        extra = worst - self.config.free_failures
        if extra <= 0:
            return 0.0
        return min(self.config.base_delay * 2 ** (extra - 1), self.config.max_delay)

    def succeed(self, *keys: str) -> defer.Deferred:  # type: ignore[override]
        LoginThrottle.succeed(self, *keys)  # what was counted here while the database was away
        return self.db.run(_succeed, keys).addErrback(self._fallback, lambda: None)

    def locks(self) -> dict[str, float]:
        """
        Locked keys -> seconds left, as last read (the status page asks this
        synchronously): each call reads them again in the background.
        """
        def keep(found: dict[str, float]) -> None:
            self._snapshot = found

        self.db.run(_locks).addCallbacks(keep, lambda f: None)
        return dict(self._snapshot) or LoginThrottle.locks(self)

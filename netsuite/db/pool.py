"""
Database work off the reactor thread.

A L{Database} is psycopg 3's C{ConnectionPool} driven from threads of its own
(C{deferToThreadPool}): the reactor thread never waits on the network to the
database.  Chosen over Twisted's C{adbapi.ConnectionPool} and over psycopg's
asyncio API with the figures of C{bench/db_bench.py} (docs/scale-out.md,
"Database access"): adbapi was about 10% faster per query on that
micro-benchmark (one connection per thread, no check-out), but this pool
bounds the wait for a connection (C{connect_timeout}), discards broken
connections and refills itself in the background: what turns an outage into a
prompt temporary failure and the database's return into service within a
second or two.  adbapi connects in the calling thread with no such bound, and
reconnects only after a call has failed on the lost connection.  The asyncio
API was the slowest, and would mean running the whole server on the asyncio
reactor.

A unit of work is a function C{work(conn, *args)} on an autocommit connection:
one statement is its own transaction (one round trip), several that must hold
together go in C{with conn.transaction():}.  When the connection is lost under
it (PostgreSQL restarted, a fail-over) it is run again on a fresh connection
after a doubling delay, C{[database] retries} times: so it must be safe to run
again, which one statement or one transaction is.  If the database stays away the
caller gets L{DatabaseUnavailable}.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python import threadable
from twisted.python.threadpool import ThreadPool

from netsuite.config import DatabaseConfig
from netsuite.db.errors import DatabaseUnavailable

log = Logger(namespace="netsuite.db")

T = TypeVar("T")

#: Seconds after a failure to reach the database during which further work
#: fails at once: logins get their temporary failure without waiting.
FAIL_FAST_SECONDS = 1.0


def safe_dsn(dsn: str) -> str:
    """The connection string without its password: what logs and errors may show."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(an invalid connection string)"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None})


def connect(config: DatabaseConfig, **kwargs: Any) -> psycopg.Connection:
    """
    One plain connection (the C{netsuite db} and C{netsuite user} commands);
    L{DatabaseUnavailable} if the database cannot be reached.
    """
    try:
        return psycopg.connect(config.dsn, connect_timeout=max(1, round(config.connect_timeout)),
                               **kwargs)
    except psycopg.OperationalError as e:
        raise DatabaseUnavailable(f"cannot connect to {safe_dsn(config.dsn)}: "
                                  f"{_first_line(e)}") from e


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _PoolLog(logging.Handler):
    """
    psycopg_pool's own messages ("error connecting", "discarding closed
    connection": one per attempt while the database is away) into the server's
    log at debug level, instead of raw lines on stderr; L{Database} says once
    per outage, as a warning, that the database is unavailable.
    """

    def emit(self, record: logging.LogRecord) -> None:
        log.debug("psycopg_pool: {message}", message=record.getMessage())


_pool_logger = logging.getLogger("psycopg.pool")
_pool_logger.addHandler(_PoolLog())
_pool_logger.propagate = False


class _DaemonThread(threading.Thread):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


class _DatabaseThreads(ThreadPool):
    """Never hold up the exit of a process whose reactor did not shut down cleanly."""

    threadFactory = _DaemonThread


class Database:
    """One process's connections to the database of C{config}."""

    def __init__(self, config: DatabaseConfig, reactor: Any = None):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.name = safe_dsn(config.dsn)
        self._pool = ConnectionPool(
            config.dsn, min_size=1, max_size=config.pool_size, open=False,
            timeout=config.connect_timeout, name="netsuite",
            # Autocommit: a one-statement unit of work is one round trip (no BEGIN
            # and COMMIT around it); a unit of several opens conn.transaction().
            kwargs={"connect_timeout": max(1, round(config.connect_timeout)),
                    "autocommit": True},
            # A slot that cannot connect retries with the pool's doubling backoff
            # (1, 2, 4 s ...) for this long, then gives up; the next request starts
            # a fresh attempt at once.  Kept short so that a database that comes
            # back is used within about a second or two, not after a long backoff.
            reconnect_timeout=max(2.0, 2 * config.connect_timeout))
        self._threads = _DatabaseThreads(0, config.pool_size, "netsuite-db")
        self._started = False
        self._unavailable = False
        #: While the database is known to be away, work fails at once (no wait
        #: for connect_timeout on every login) until this time, then one more try.
        self._probe_at = 0.0
        self._reason = ""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the pool (in the background: a database that is down is not an error yet)."""
        if self._started:
            return
        self._started = True
        self._pool.open(wait=False)
        self._threads.start()
        self.reactor.addSystemEventTrigger("after", "shutdown", self.close)

    def close(self) -> None:
        if not self._started:
            return
        self._started = False
        self._threads.stop()
        self._pool.close(timeout=1.0)

    # -- work --------------------------------------------------------------------------------

    def run(self, work: Callable[..., T], *args: Any) -> defer.Deferred:
        """C{work(conn, *args)} on a database thread: a Deferred of its result."""
        self.start()
        return threads.deferToThreadPool(self.reactor, self._threads, self.run_blocking,
                                         work, *args)

    def run_blocking(self, work: Callable[..., T], *args: Any) -> T:
        """The same in the calling thread (never the reactor's); L{DatabaseUnavailable}."""
        if threadable.isInIOThread():
            # Every session of the process waits meanwhile: a bug of the caller's, said.
            log.warn("a database call on the reactor thread: {work}",
                     work=getattr(work, "__qualname__", work))
        if self._unavailable and time.monotonic() < self._probe_at:
            raise DatabaseUnavailable(self._reason)
        delay = self.config.retry_delay
        attempt = 0
        while True:
            try:
                with self._pool.connection() as conn:
                    result = work(conn, *args)
            except PoolTimeout as e:
                # The pool already waited connect_timeout for a connection: no retry.
                raise self._down(e) from e
            except psycopg.OperationalError as e:
                if attempt >= self.config.retries:
                    raise self._down(e) from e
                attempt += 1
                time.sleep(delay)
                delay *= 2
                continue
            if self._unavailable:
                self._unavailable = False
                log.info("database {dsn} is back", dsn=self.name, event="db_available")
            return result

    def _down(self, error: BaseException) -> DatabaseUnavailable:
        self._reason = f"database {self.name} unavailable: {_first_line(error)}"
        self._probe_at = time.monotonic() + FAIL_FAST_SECONDS
        if not self._unavailable:  # once per outage, not once per login
            self._unavailable = True
            log.warn("database {dsn} unavailable: {error}", dsn=self.name,
                     error=_first_line(error), event="db_unavailable")
        return DatabaseUnavailable(self._reason)


#: One L{Database} per connection string in this process: the checker, the
#: throttle and the lock share its connections.
_databases: dict[str, Database] = {}


def database(config: DatabaseConfig, reactor: Any = None) -> Database:
    """This process's L{Database} for C{config.dsn}, made with C{config}'s settings on first use."""
    db = _databases.get(config.dsn)
    if db is None:
        db = _databases[config.dsn] = Database(config, reactor)
    return db


def for_dsn(dsn: str) -> Database:
    """The same by connection string alone (C{--auth sql:DSN}): default settings if new."""
    return database(_databases[dsn].config if dsn in _databases else DatabaseConfig(dsn=dsn))

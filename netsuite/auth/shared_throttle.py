"""
The failed-login throttle shared by every worker process (C{--workers N}).

Same rules as L{LoginThrottle} (this is a subclass, only the bookkeeping
moves), kept in one small SQLite file under C{DATA/run}: SQLite's own fcntl
locking serialises the workers, WAL with C{synchronous=OFF} keeps each
update a few microseconds of local I/O (the state need not survive a power
cut; the parent removes the file at start-up, as a restart clears the
in-memory throttle).  Times are C{time.monotonic()}, one clock for every
process on the host.  If the file cannot be used, the throttle falls back
to this process's memory and says so once.  The queue's per-user hourly
sending counts (L{netsuite.queue.sendlog}) live in the same file.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from twisted.logger import Logger

from netsuite.auth.throttle import LoginThrottle
from netsuite.config import ThrottleConfig

log = Logger(namespace="netsuite.auth")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS failures (key TEXT NOT NULL, t REAL NOT NULL);
CREATE INDEX IF NOT EXISTS failures_key ON failures (key);
CREATE TABLE IF NOT EXISTS locks (key TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sent (user TEXT NOT NULL, t REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sent_user ON sent (user, t);
"""


def connect(path: Path) -> sqlite3.Connection:
    """The shared file, opened and its tables made (also by L{netsuite.queue.sendlog})."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None,
                         check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.executescript(_SCHEMA)
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taken at once (IMMEDIATE: no upgrade deadlock between workers)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")

class SharedLoginThrottle(LoginThrottle):
    """L{LoginThrottle} whose counters live in C{path}, shared across processes."""

    #: Expired rows are swept every this many failures.
    sweep_every = 500

    def __init__(self, config: ThrottleConfig, path: Path,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(config, clock)
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._fails = 0
        self._broken = False

    def _conn(self) -> sqlite3.Connection | None:
        if self._db is None and not self._broken:
            try:
                self._db = connect(self.path)
            except sqlite3.Error:
                self._give_up()
        return self._db

    def _give_up(self) -> None:
        log.failure("shared login throttle {path} unusable; counting in this process only",
                    path=str(self.path))
        self._broken = True
        self._db = None

    def locked(self, *keys: str) -> bool:
        db = self._conn()
        if db is None:
            return super().locked(*keys)
        try:
            marks = ",".join("?" * len(keys))
            row = db.execute(f"SELECT 1 FROM locks WHERE until > ? AND key IN ({marks})",
                             (self.clock(), *keys)).fetchone()
        except sqlite3.Error:
            self._give_up()
            return super().locked(*keys)
        return row is not None

    def locks(self) -> dict[str, float]:
        db = self._conn()
        if db is None:
            return super().locks()
        now = self.clock()
        try:
            rows = db.execute("SELECT key, until FROM locks WHERE until > ?", (now,)).fetchall()
        except sqlite3.Error:
            self._give_up()
            return super().locks()
        return {key: until - now for key, until in rows}

    def fail(self, *keys: str) -> float:
        db = self._conn()
        if db is None:
            return super().fail(*keys)
        now = self.clock()
        horizon = now - self.config.window
        worst = 0
        try:
            with transaction(db):
                for key in keys:
                    db.execute("DELETE FROM failures WHERE key = ? AND t <= ?", (key, horizon))
                    db.execute("INSERT INTO failures (key, t) VALUES (?, ?)", (key, now))
                    (count,) = db.execute("SELECT count(*) FROM failures WHERE key = ?",
                                          (key,)).fetchone()
                    if count >= self.config.lock_after:
                        db.execute("INSERT OR REPLACE INTO locks (key, until) VALUES (?, ?)",
                                   (key, now + self.config.lock_seconds))
                    worst = max(worst, count)
                self._fails += 1
                if self._fails % self.sweep_every == 0:
                    db.execute("DELETE FROM failures WHERE t <= ?", (horizon,))
                    db.execute("DELETE FROM locks WHERE until <= ?", (now,))
        except sqlite3.Error:
            self._give_up()
            return super().fail(*keys)
        extra = worst - self.config.free_failures
        if extra <= 0:
            return 0.0
        return min(self.config.base_delay * 2 ** (extra - 1), self.config.max_delay)

    def succeed(self, *keys: str) -> None:
        db = self._conn()
        if db is None:
            return super().succeed(*keys)
        now = self.clock()
        try:
            with transaction(db):
                for key in keys:
                    if db.execute("SELECT 1 FROM locks WHERE key = ? AND until > ?",
                                  (key, now)).fetchone() is None:
                        db.execute("DELETE FROM failures WHERE key = ?", (key,))
                        db.execute("DELETE FROM locks WHERE key = ?", (key,))
        except sqlite3.Error:
            self._give_up()
            super().succeed(*keys)
        return None

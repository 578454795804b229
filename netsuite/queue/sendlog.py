"""
Per-user counts of messages sent in the last hour (C{queue.messages_per_hour}).

L{SendLog} counts in this process; with C{--workers N} each worker gets a
L{SharedSendLog} instead, whose times live in the failed-login throttle's
SQLite file (L{netsuite.auth.shared_throttle}, same connection and locking),
so a user cannot send N times the limit by landing on N workers.  If that file
cannot be used, the count falls back to this process and says so once.
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger

from netsuite.auth.shared_throttle import connect, transaction

log = Logger(namespace="netsuite.queue")

#: The window the limit counts over, in seconds.
WINDOW = 3600.0


class SendLog:
    """Times of each user's accepted messages over the last L{WINDOW} seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._sent: dict[str, deque] = {}

    def count(self, user: str) -> int:
        """How many messages C{user} had accepted in the last hour."""
        sent = self._sent.get(user)
        if sent is None:
            return 0
        horizon = self.clock() - WINDOW
        while sent and sent[0] <= horizon:
            sent.popleft()
        if not sent:
            del self._sent[user]
        return len(sent)

    def add(self, user: str) -> None:
        self._sent.setdefault(user, deque()).append(self.clock())

    def reserve(self, user: str, limit: int) -> defer.Deferred:
        """
        C{user}'s count before this message; the message is counted (L{add})
        when that count is under C{limit}, in one step, so that sessions
        racing for the last message cannot both have it.
        """
        n = self.count(user)
        if n < limit:
            self.add(user)
        return defer.succeed(n)


class SharedSendLog(SendLog):
    """L{SendLog} whose times live in C{path}, shared by every worker on the host."""

    #: Expired rows are swept every this many messages.
    sweep_every = 500

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic):
        super().__init__(clock)
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._broken = False
        self._added = 0

    def _conn(self) -> sqlite3.Connection | None:
        if self._db is None and not self._broken:
            try:
                self._db = connect(self.path)
            except sqlite3.Error:
                self._give_up()
        return self._db

    def _give_up(self) -> None:
        log.failure("shared sending counts {path} unusable; counting in this process only",
                    path=str(self.path))
        self._broken = True
        self._db = None

    def count(self, user: str) -> int:
        db = self._conn()
        if db is None:
            return super().count(user)
        try:
            (n,) = db.execute("SELECT count(*) FROM sent WHERE user = ? AND t > ?",
                              (user, self.clock() - WINDOW)).fetchone()
        except sqlite3.Error:
            self._give_up()
            return super().count(user)
        return n

    def add(self, user: str) -> None:
        db = self._conn()
        if db is None:
            return super().add(user)
        try:
            with transaction(db):
                self._insert(db, user, self.clock())
        except sqlite3.Error:
            self._give_up()
            super().add(user)
        return None

    def reserve(self, user: str, limit: int) -> defer.Deferred:
        db = self._conn()
        if db is None:
            return super().reserve(user, limit)
        now = self.clock()
        try:
            with transaction(db):  # IMMEDIATE: no other worker counts in between
                (n,) = db.execute("SELECT count(*) FROM sent WHERE user = ? AND t > ?",
                                  (user, now - WINDOW)).fetchone()
                if n < limit:
                    self._insert(db, user, now)
        except sqlite3.Error:
            self._give_up()
            return super().reserve(user, limit)
        return defer.succeed(n)

    def _insert(self, db: sqlite3.Connection, user: str, now: float) -> None:
        db.execute("INSERT INTO sent (user, t) VALUES (?, ?)", (user, now))
        self._added += 1
        if self._added % self.sweep_every == 0:
            db.execute("DELETE FROM sent WHERE t <= ?", (now - WINDOW,))

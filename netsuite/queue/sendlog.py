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
        now = self.clock()
        try:
            with transaction(db):
                db.execute("INSERT INTO sent (user, t) VALUES (?, ?)", (user, now))
                self._added += 1
                if self._added % self.sweep_every == 0:
                    db.execute("DELETE FROM sent WHERE t <= ?", (now - WINDOW,))
        except sqlite3.Error:
            self._give_up()
            super().add(user)
        return None

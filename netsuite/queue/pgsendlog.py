"""
The queue's hourly sending counts shared by every host, in PostgreSQL
(C{queue.messages_per_hour} with C{[store] backend = "postgresql"}).

A message is counted as it is committed (L{PgSendLog.reserve}): one
transaction under an advisory lock on the user counts the C{send_log} rows of
the last hour and adds one when under the limit, so sessions of one user on
several hosts racing for the last message cannot both have it.  The earlier,
synchronous check at C{DATA} (L{netsuite.queue.runner.QueueRunner.writer})
answers from this process's mirror, read on a database thread at every
submission login (L{PgSendLog.refresh}) and set by every reservation, so a user
already over the limit is mostly refused before sending the body.  While the
database is unavailable the mirror keeps counting this host's messages alone,
and says so once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from netsuite.db.errors import DatabaseUnavailable
from netsuite.queue.sendlog import WINDOW, SendLog

log = Logger(namespace="netsuite.queue")


def _count(conn: Any, user: str) -> int:
    row = conn.execute("SELECT count(*) FROM send_log WHERE user_name = %s "
                       "AND at > now() - make_interval(secs => %s)", (user, WINDOW)).fetchone()
    return int(row[0]) if row else 0


def _reserve(conn: Any, user: str, limit: int, sweep: bool) -> int:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                     ("send_log:" + user,))
        n = _count(conn, user)
        if n < limit:
            conn.execute("INSERT INTO send_log (user_name) VALUES (%s)", (user,))
    if sweep:
        conn.execute("DELETE FROM send_log WHERE at <= now() - make_interval(secs => %s)",
                     (WINDOW,))
    return n


class PgSendLog(SendLog):
    """L{SendLog} over the C{send_log} table of C{db} (a L{netsuite.db.pool.Database})."""

    #: Expired rows are swept every this many messages (by whichever host adds it).
    sweep_every = 500

    def __init__(self, db: Any, clock: Callable[[], float] = time.monotonic):
        super().__init__(clock)
        self.db = db
        #: user -> the database's count when last read or reserved
        self._known: dict[str, int] = {}
        self._reading: set[str] = set()
        self._added = 0
        self._failing = False

    def count(self, user: str) -> int:
        """From the mirror, at once (no database call): L{reserve} has the last word."""
        return max(super().count(user), self._known.get(user, 0))

    def reserve(self, user: str, limit: int) -> defer.Deferred:
        self._added += 1
        sweep = self._added % self.sweep_every == 0

        def counted(n: int) -> int:
            self._worked(None)
            if n < limit:
                SendLog.add(self, user)  # the local count, for a database that goes away
            self._known[user] = n + 1 if n < limit else n
            return n

        def away(failure: Failure) -> defer.Deferred:
            failure.trap(DatabaseUnavailable)
            self._failed(failure)
            return SendLog.reserve(self, user, limit)

        return self.db.run(_reserve, user, limit, sweep).addCallbacks(counted, away)

    def refresh(self, user: str) -> None:
        """Read C{user}'s count from the database into the mirror, in the background."""
        if user in self._reading:
            return
        self._reading.add(user)

        def got(n: int) -> None:
            self._reading.discard(user)
            self._worked(None)
            self._known[user] = n

        def failed(failure) -> None:
            self._reading.discard(user)
            self._failed(failure)

        self.db.run(_count, user).addCallbacks(got, failed)

    def _worked(self, _result: Any) -> None:
        if self._failing:
            self._failing = False
            log.info("shared sending counts: the database answers again")

    def _failed(self, failure: Any) -> None:
        if not self._failing:
            self._failing = True
            log.warn("shared sending counts unavailable ({error}); counting this host's "
                     "messages only until the database answers", error=failure.getErrorMessage())

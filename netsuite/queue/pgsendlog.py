"""
The queue's hourly sending counts shared by every host, in PostgreSQL
(C{queue.messages_per_hour} with C{[store] backend = "postgresql"}).

L{netsuite.queue.runner.QueueRunner.writer} asks for a user's count
synchronously, in the middle of an SMTP transaction, so the count is
answered from this process's mirror of the C{send_log} rows: every question
also reads that user's count again on a database thread, and every accepted
message is added to the mirror at once and written as one row.  The figure a
host answers with is therefore at most one question old: a user spread over
several hosts is held to the limit, with at most one message per host of
overshoot while the read is on its way (as C{usage()} checks quotas).  While
the database is unavailable the mirror keeps counting this host's messages
alone, and says so once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from netsuite.queue.sendlog import WINDOW, SendLog

log = Logger(namespace="netsuite.queue")


def _count(conn: Any, user: str) -> int:
    row = conn.execute("SELECT count(*) FROM send_log WHERE user_name = %s "
                       "AND at > now() - make_interval(secs => %s)", (user, WINDOW)).fetchone()
    return int(row[0]) if row else 0


def _add(conn: Any, user: str, sweep: bool) -> None:
    conn.execute("INSERT INTO send_log (user_name) VALUES (%s)", (user,))
    if sweep:
        conn.execute("DELETE FROM send_log WHERE at <= now() - make_interval(secs => %s)",
                     (WINDOW,))


class PgSendLog(SendLog):
    """L{SendLog} over the C{send_log} table of C{db} (a L{netsuite.db.pool.Database})."""

    #: Expired rows are swept every this many messages (by whichever host adds it).
    sweep_every = 500

    def __init__(self, db: Any, clock: Callable[[], float] = time.monotonic):
        super().__init__(clock)
        self.db = db
        #: user -> (the database's count when last read, this host's adds since then)
        self._known: dict[str, tuple[int, int]] = {}
        self._reading: set[str] = set()
        self._added = 0
        self._failing = False

    def count(self, user: str) -> int:
        local = super().count(user)
        self._read(user)
        known = self._known.get(user)
        if known is None:
            return local
        return max(local, known[0] + known[1])

    def add(self, user: str) -> None:
        super().add(user)
        base, since = self._known.get(user, (0, 0))
        self._known[user] = (base, since + 1)
        self._added += 1
        sweep = self._added % self.sweep_every == 0
        self.db.run(_add, user, sweep).addCallbacks(self._worked, self._failed)

    def _read(self, user: str) -> None:
        if user in self._reading:
            return
        self._reading.add(user)
        pending = self._known.get(user, (0, 0))[1]

        def got(n: int) -> None:
            self._reading.discard(user)
            self._worked(None)
            # Adds made while the read was on its way may not be in its answer yet.
            still = self._known.get(user, (0, 0))[1] - pending
            self._known[user] = (n, max(still, 0))

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

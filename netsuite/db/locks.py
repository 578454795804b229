"""
Leased locks shared by every host: the POP3 maildrop lock with
C{[store] backend = "postgresql"} (rows of C{session_locks}).

A session takes the lock with L{SessionLocks.acquire} and holds it for as long
as it lives: the row carries the holder (host, process, session) and an expiry
that a timer pushes forward every third of the lease (C{[database] lock_lease},
60 s by default), so a host that dies (or loses the database) leaves its locks
to expire within the lease, and a live one never loses them.  Taking a lock is one statement that
either inserts the row or takes over an expired one: two hosts racing for it
cannot both win.  Within one host the maildrop's C{flock} still holds too.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import psycopg
from twisted.internet import defer, task
from twisted.logger import Logger

from netsuite.db.pool import Database

log = Logger(namespace="netsuite.db")

#: Seconds a lock outlives its holder's last renewal (C{[database] lock_lease}).
LEASE = 60.0


def _acquire(conn: psycopg.Connection, name: str, holder: str, lease: float) -> bool:
    row = conn.execute(
        "INSERT INTO session_locks (name, holder, expires) "
        "VALUES (%s, %s, now() + make_interval(secs => %s)) "
        "ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires = EXCLUDED.expires "
        "WHERE session_locks.expires <= now() RETURNING 1", (name, holder, lease)).fetchone()
    return row is not None


def _renew(conn: psycopg.Connection, name: str, holder: str, lease: float) -> bool:
    row = conn.execute("UPDATE session_locks SET expires = now() + make_interval(secs => %s) "
                       "WHERE name = %s AND holder = %s RETURNING 1",
                       (lease, name, holder)).fetchone()
    return row is not None


def _release(conn: psycopg.Connection, name: str, holder: str) -> None:
    conn.execute("DELETE FROM session_locks WHERE name = %s AND holder = %s", (name, holder))


class Held:
    """One lock this process holds; L{release} gives it back (once)."""

    def __init__(self, locks: SessionLocks, name: str, holder: str):
        self.locks = locks
        self.name = name
        self.holder = holder
        self._renewal = task.LoopingCall(self._renew)
        self._renewal.clock = locks.db.reactor
        self._renewal.start(locks.lease / 3, now=False)

    def _renew(self) -> defer.Deferred:
        def renewed(still: bool) -> None:
            if not still:
                log.warn("shared lock {name} was lost (expired while the database was away)",
                         name=self.name)

        return self.locks.db.run(_renew, self.name, self.holder, self.locks.lease).addCallbacks(
            renewed, lambda f: None)  # the database is away: try again next time

    def release(self) -> defer.Deferred:
        """Give the lock back: a Deferred that fires (never fails) once it is free."""
        if not self._renewal.running:
            return defer.succeed(None)
        self._renewal.stop()
        return self.locks.db.run(_release, self.name, self.holder).addErrback(
            lambda f: None)  # it expires by itself


class SessionLocks:
    """Named leased locks in C{db}."""

    def __init__(self, db: Database, lease: float = LEASE):
        self.db = db
        self.lease = lease
        self._prefix = f"{socket.gethostname()}:{os.getpid()}"

    def acquire(self, name: str) -> defer.Deferred:
        """A L{Held} lock, or None if another session has it; errback L{DatabaseUnavailable}."""
        holder = f"{self._prefix}:{uuid.uuid4().hex[:12]}"

        def taken(ok: bool) -> Any:
            return Held(self, name, holder) if ok else None

        return self.db.run(_acquire, name, holder, self.lease).addCallback(taken)

"""
L{WriteQueue}: changes to the database in order, a batch at a time, each batch
one transaction.  An account's changes go through one (L{PgAccount}, so that
they reach the rows in the order the mirror made them), and a host's
deliveries through another (L{PgMailStore.deliveries}): twenty sessions'
messages to one folder then take its row lock and a commit (a WAL flush) once
between them, not once each.
"""

from __future__ import annotations

from typing import Any

import psycopg
from twisted.internet import defer
from twisted.python.failure import Failure

from netsuite.store.pg import sql


class WriteQueue:
    """Works run on a database thread in batches; see L{queue}."""

    def __init__(self, store: Any):
        self.store = store
        #: Work queued for the next batch (work, apply, Deferred, order key), and
        #: whether a batch is running.
        self._ops: list[tuple[Any, Any, defer.Deferred, Any]] = []
        self._running = False
        #: While a batch runs (on its database thread): the reads it will make at its end.
        self._later: list[sql.LaterDelta] | None = None
        #: Fired (and emptied) when the queue runs dry: L{drained}.
        self._drain_waiters: list[defer.Deferred] = []

    def queue(self, work, apply=None, key: Any = None) -> defer.Deferred:
        """
        C{work(conn)} on a database thread after every change queued before,
        then C{apply(result)} in the reactor; a Deferred of what C{apply}
        returns.  What is queued while a batch runs goes as the next batch: one
        thread hop, one transaction and one commit for them all, and one read
        of each folder's changes at its end (L{delta_later}).  If a C{work}
        fails, the batch is rolled back and run again with each C{work} in a
        savepoint of its own, so that the one that fails fails alone (a work
        must bear being run again: L{netsuite.db.pool.Database.run} retries a
        batch on a lost connection too).  Works with a C{key} may be run in
        the order of their keys within a batch (deliveries: by folder, so that
        two hosts take the folders' row locks in one order).
        """
        d: defer.Deferred = defer.Deferred()
        self._ops.append((work, apply, d, key))
        if not self._running:
            self._run_batch()
        return d

    def _run_batch(self) -> None:
        ops, self._ops = self._ops, []
        if not ops:
            self._running = False
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                d.callback(None)
            return
        self._running = True
        if any(key is not None for *_rest, key in ops):
            ops.sort(key=lambda op: (op[3] is not None, op[3] or ()))
        works = [work for work, _apply, _d, _key in ops]

        def done(results: list[tuple[bool, Any]]) -> None:
            for (_work, apply, d, _key), (ok, value) in zip(ops, results, strict=True):
                if not ok:
                    d.errback(Failure(value))
                    continue
                try:
                    d.callback(apply(value) if apply is not None else value)
                except Exception:
                    d.errback(Failure())

        def failed(failure: Failure) -> None:
            for _work, _apply, d, _key in ops:
                d.errback(failure)

        self.store.db.run(self.batch, works).addCallbacks(done, failed).addBoth(
            lambda _: self._run_batch())

    def batch(self, conn, works: list) -> list[tuple[bool, Any]]:
        """
        Run C{works} as one batch (see L{queue}); on the database thread.  Each
        one's (True, result) or (False, exception).
        """
        try:
            return self._together(conn, works)
        except psycopg.OperationalError:
            raise  # the connection: the whole batch again (Database.run)
        except Exception as e:
            if len(works) == 1:
                return [(False, e)]
        # (Works run again are safe to: Database.run already retries a batch.)
        return self._each(conn, works)

    def _together(self, conn, works: list) -> list[tuple[bool, Any]]:
        # The common case in as few round trips as can be: no savepoints, and one
        # read of each folder's changes for the whole batch (delta_later).
        later: list[sql.LaterDelta] = []
        self._later = later
        try:
            with conn.transaction():
                out = [(True, work(conn)) for work in works]
                sql.resolve_later(conn, later)
        finally:
            self._later = None
        self.store.covered(later)
        return out

    def _each(self, conn, works: list) -> list[tuple[bool, Any]]:
        # One failed: every work again in a savepoint of its own, so it fails alone.
        out: list[tuple[bool, Any]] = []
        later: list[sql.LaterDelta] = []
        with conn.transaction():
            for work in works:
                self._later = []
                try:
                    with conn.transaction():  # a savepoint
                        out.append((True, work(conn)))
                    later += self._later
                except psycopg.OperationalError:
                    raise
                except Exception as e:
                    out.append((False, e))
                finally:
                    self._later = None
            sql.resolve_later(conn, later)
        self.store.covered(later)
        return out

    def delta_later(self, conn, folder_id: int, since: int, rows: bool = True,
                    gone: bool = True, then=None) -> sql.LaterDelta:
        """
        A folder's changes after MODSEQ C{since}, read once for every work of
        the batch that asks (after the last of them): C{.delta} is set when the
        batch's works have run, C{then(conn, delta)} called then, on the same
        thread.  Outside a batch: read at once.
        """
        later = sql.LaterDelta(folder_id, since, rows, gone, then)
        if self._later is None:
            sql.resolve_later(conn, [later])
        else:
            self._later.append(later)
        return later

    @property
    def busy(self) -> bool:
        """A batch is running or work is queued."""
        return self._running or bool(self._ops)

    def drained(self) -> defer.Deferred:
        """Fired once everything queued so far, and what it queued meanwhile, is written."""
        if not self.busy:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._drain_waiters.append(d)
        return d

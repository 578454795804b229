"""
C{run/connections.json} written in a thread, one write at a time: a change
that comes while a write is under way is written after it, never lost, and a
write under way at shutdown does not bring the file back.  A fake clock and
a thread pool run by hand order the steps (the real daemon's file is tested
in test_connections.py).
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock

from netsuite.service import ConnectionStatus


class HandPool:
    """A thread pool whose jobs run when the test says so."""

    def __init__(self):
        self.jobs: list = []

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.jobs.append((on_result, f, args, kwargs))

    def run_one(self) -> None:
        on_result, f, args, kwargs = self.jobs.pop(0)
        on_result(True, f(*args, **kwargs))


class HandReactor(Clock):
    def __init__(self):
        super().__init__()
        self.pool = HandPool()

    def getThreadPool(self):
        return self.pool

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


class Listener:
    listener = "smtp"

    def __init__(self):
        self.total = 0
        self.on_change = None

    def counts(self):
        return {"total": self.total}


def shown(path) -> int:
    return json.loads(path.read_text())["listeners"]["smtp"]["total"]


def test_a_change_during_a_write_is_written_after_it(tmp_path):
    reactor = HandReactor()
    path = tmp_path / "run" / "connections.json"
    status = ConnectionStatus(path, reactor)
    limits = Listener()
    status.add(limits)
    status.startService()
    assert shown(path) == 0

    limits.total = 1
    limits.on_change()
    reactor.advance(status.delay)
    assert len(reactor.pool.jobs) == 1 and shown(path) == 0  # under way, not yet written
    limits.total = 2
    limits.on_change()
    reactor.advance(status.delay)
    assert len(reactor.pool.jobs) == 1  # one write at a time
    reactor.pool.run_one()
    assert shown(path) == 1
    reactor.advance(status.delay)
    assert len(reactor.pool.jobs) == 1  # the change that waited
    reactor.pool.run_one()
    assert shown(path) == 2
    reactor.advance(10 * status.delay)
    assert reactor.pool.jobs == []


def test_a_write_under_way_at_shutdown_does_not_leave_the_file(tmp_path):
    reactor = HandReactor()
    path = tmp_path / "run" / "connections.json"
    status = ConnectionStatus(path, reactor)
    limits = Listener()
    status.add(limits)
    status.startService()
    limits.total = 3
    limits.on_change()
    reactor.advance(status.delay)
    stopped = status.stopService()
    assert stopped is not None and not stopped.called
    reactor.pool.run_one()
    assert stopped.called and not path.exists()

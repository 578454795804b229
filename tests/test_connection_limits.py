"""
L{netsuite.service.ConnectionLimits} and its per-connection wrapper on a fake
clock: exact counters, the TLS handshake deadline and the close deadline.
The real-daemon side of the same behaviour is in test_connections.py.
"""

from __future__ import annotations

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from netsuite.service import ConnectionLimits, _Busy


class Recorder(Protocol):
    def __init__(self):
        self.lost = 0

    def connectionLost(self, reason=None):
        self.lost += 1


class AbortingTransport(StringTransport):
    """A StringTransport whose abortConnection is remembered (the test then loses it)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.aborted = False

    def abortConnection(self):
        self.aborted = True
        self.disconnecting = True


def limits(clock, total=10, per=2, changes=None):
    f = ConnectionLimits(Factory.forProtocol(Recorder), total, per, b"busy\r\n",
                         listener="test", reactor=clock, tls_handshake_timeout=30.0,
                         close_timeout=5.0)
    if changes is not None:
        f.on_change = lambda: changes.append(f.counts())
    return f


def connect(f, host="10.0.0.1"):
    p = f.buildProtocol(IPv4Address("TCP", host, 1234))
    t = AbortingTransport()
    p.makeConnection(t)
    return p, t


def test_counts_are_exact_and_a_busy_refusal_is_not_counted():
    clock = task.Clock()
    f = limits(clock)
    a, _ = connect(f)
    b, _ = connect(f)
    assert f.counts() == {"open": 2, "addresses": {"10.0.0.1": 2}}
    refused, t = connect(f)
    assert isinstance(refused, _Busy) and t.value() == b"busy\r\n"
    assert f.counts() == {"open": 2, "addresses": {"10.0.0.1": 2}}
    a.connectionLost(Failure(ConnectionDone()))
    b.connectionLost(Failure(ConnectionDone()))
    assert f.counts() == {"open": 0, "addresses": {}}


def test_a_busy_refusal_that_never_closes_is_aborted():
    clock = task.Clock()
    f = limits(clock, per=1)
    connect(f)
    refused, t = connect(f)
    clock.advance(34.9)
    assert not t.aborted
    clock.advance(0.2)
    assert t.aborted


def test_close_deadline_aborts_and_releases_the_slot():
    clock = task.Clock()
    changes: list = []
    f = limits(clock, changes=changes)
    p, t = connect(f)
    p.wrappedProtocol.transport.loseConnection()
    clock.advance(4.9)
    assert not t.aborted
    clock.advance(0.2)
    assert t.aborted
    p.connectionLost(Failure(ConnectionAborted()))
    assert f.counts() == {"open": 0, "addresses": {}}
    assert changes[-1] == {"open": 0, "addresses": {}}
    assert clock.getDelayedCalls() == []


def test_close_deadline_is_cancelled_by_a_clean_close():
    clock = task.Clock()
    f = limits(clock)
    p, t = connect(f)
    p.loseConnection()
    p.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []
    assert not t.aborted


def test_starttls_arms_the_handshake_deadline_and_completion_cancels_it():
    clock = task.Clock()
    f = limits(clock)
    p, t = connect(f)
    t.startTLS = lambda ctx, normal=True: None
    p.wrappedProtocol.transport.startTLS(object())
    assert len(clock.getDelayedCalls()) == 1
    p.handshakeCompleted()
    assert clock.getDelayedCalls() == []
    q, u = connect(f)
    u.startTLS = lambda ctx, normal=True: None
    q.startTLS(object())
    clock.advance(30.1)
    assert u.aborted


class TCPTransport(AbortingTransport):
    """A StringTransport with a TCP connection's Nagle switch."""

    nodelay = False

    def setTcpNoDelay(self, enabled):
        self.nodelay = enabled


def test_every_connection_turns_nagle_off():
    """
    A reply finished in a later reactor turn (a streamed body's end, an echo)
    must not wait out the client's delayed ACK: once cost POP3 RETR 44 ms each.
    """
    f = limits(task.Clock())
    p = f.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1234))
    t = TCPTransport()
    p.makeConnection(t)
    assert t.nodelay is True
    q = f.buildProtocol(IPv4Address("TCP", "10.0.0.2", 1234))
    q.makeConnection(AbortingTransport())  # no such switch (a unix: socket): no error

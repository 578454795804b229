"""TelnetServer on a StringTransport with a fake portal and a Clock (no daemon, no pty)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.cred import error
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from zope.interface import alsoProvides

from netsuite.telnet import wire
from netsuite.telnet.server import TelnetFactory
from netsuite.telnet.service import TelnetConfig


class FakePortal:
    def __init__(self):
        self.attempts: list[tuple[bytes, bytes]] = []
        self.result: defer.Deferred | None = None

    def bind(self, peer, protocol):
        return self

    def login(self, creds, mind, *interfaces):
        self.attempts.append((creds.username, creds.password))
        self.result = defer.Deferred()
        return self.result


def make(peer="127.0.0.1", tls=False, allow_plaintext=False, **telnet):
    clock = task.Clock()
    portal = FakePortal()
    config = SimpleNamespace(
        telnet=TelnetConfig(**telnet), path=None,
        server=SimpleNamespace(hostname="tn.test", allow_plaintext_auth=allow_plaintext))
    ctx = SimpleNamespace(config=config, reactor=clock, portal=portal)
    factory = TelnetFactory(ctx, "telnet")
    proto = factory.buildProtocol(IPv4Address("TCP", peer, 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
    if tls:
        alsoProvides(transport, ISSLTransport)
    proto.makeConnection(transport)
    return proto, transport, clock, portal


def take(transport) -> bytes:
    data = transport.value()
    transport.clear()
    return data


def test_greeting_negotiates_and_prompts():
    proto, t, clock, portal = make()
    out = take(t)
    assert out.startswith(wire.command(wire.WILL, wire.ECHO) + wire.command(wire.WILL, wire.SGA)
                          + wire.command(wire.DO, wire.NAWS) + wire.command(wire.DO, wire.TTYPE)
                          + wire.command(wire.DO, wire.NEW_ENVIRON))
    assert out.endswith(b"netsuite tn.test\r\n\r\nlogin: ")


@pytest.mark.parametrize("peer, tls, allow, refused", [
    ("192.0.2.7", False, False, True),
    ("192.0.2.7", True, False, False),
    ("192.0.2.7", False, True, False),
    ("127.0.0.1", False, False, False),
    ("::1", False, False, False),
])
def test_plaintext_policy(peer, tls, allow, refused):
    proto, t, clock, portal = make(peer, tls, allow)
    out = take(t)
    assert (b"disabled here" in out) == refused
    assert t.disconnecting == refused
    assert out.endswith(b"login: ") != refused


def test_three_failures_with_growing_delay_then_hangup():
    proto, t, clock, portal = make(fail_delay=1.0)
    take(t)
    delays = []
    for _attempt in range(3):
        proto.dataReceived(b"alice\r\nwrong\r\n")
        portal.result.errback(error.UnauthorizedLogin())
        waited = 0.0
        while b"Login incorrect" not in t.value():
            clock.advance(0.25)
            waited += 0.25
            assert waited < 60
        delays.append(waited)
        out = take(t)
    assert delays == [1.0, 2.0, 4.0]
    assert b"Maximum number of tries exceeded (3)" in out
    assert t.disconnecting
    assert portal.attempts == [(b"alice", b"wrong")] * 3


def test_login_timeout():
    proto, t, clock, portal = make(login_timeout=30)
    take(t)
    clock.advance(29)
    assert not t.disconnecting
    clock.advance(1)
    assert b"Login timed out after 30 seconds" in take(t)
    assert t.disconnecting


def test_commands_twisted_chokes_on_are_harmless():
    proto, t, clock, portal = make()
    take(t)
    for cmd in (wire.EOF, wire.SUSP, wire.ABORT, wire.BRK, wire.AO, wire.NOP, wire.DM, 7, 0):
        proto.dataReceived(bytes((255, cmd)))
    proto.dataReceived(wire.command(wire.AYT))
    assert b"[Yes]" in take(t)
    # IAC EOF on an empty login line hangs up, like ^D.
    proto.dataReceived(wire.command(wire.EOF))
    assert t.disconnecting


def test_line_editing_at_login():
    proto, t, clock, portal = make()
    take(t)
    proto.dataReceived(wire.command(wire.DO, wire.ECHO))  # client agrees: we echo
    proto.dataReceived(b"alx\x7fice\r\n")
    assert b"al" in t.value() and b"\b \b" in t.value()
    proto.dataReceived(b"pw" + wire.command(wire.EC) + b"ass\r\0")
    assert portal.attempts == [(b"alice", b"pass")]


def test_environment_whitelist_and_user_ignored():
    proto, t, clock, portal = make(env_whitelist=["LANG", "LC_*"])
    take(t)
    proto.dataReceived(wire.command(wire.WILL, wire.NEW_ENVIRON))
    assert wire.environ_send() in take(t)
    proto.dataReceived(wire.environ_is([("USER", "-f root"), ("LANG", "C.UTF-8"),
                                        ("LC_TIME", "C"), ("LD_PRELOAD", "x.so"),
                                        ("HOME", "/tmp"), ("TERM", "evil")]))
    assert proto.client_env == {"LANG": "C.UTF-8", "LC_TIME": "C"}
    assert b"Password" not in t.value()


def test_ttype_and_naws_are_taken_and_login_waits_for_them():
    proto, t, clock, portal = make()
    take(t)
    proto.dataReceived(wire.command(wire.WILL, wire.TTYPE) + wire.command(wire.WILL, wire.NAWS)
                       + wire.naws(100, 40) + wire.command(wire.WONT, wire.NEW_ENVIRON))
    assert wire.ttype_send() in take(t)
    assert proto.size == (100, 40)
    assert not proto._settled()  # the TTYPE answer is still to come
    proto.dataReceived(wire.ttype_is("VT220"))
    assert proto.term == "vt220"
    assert proto._settled()


def test_endless_subnegotiation_closes():
    proto, t, clock, portal = make()
    take(t)
    proto.dataReceived(bytes((255, 250, 24)))
    for _ in range(16):
        proto.dataReceived(b"x" * 1000)
    assert not t.disconnecting  # a large NEW-ENVIRON still fits
    for _ in range(4):
        proto.dataReceived(b"x" * 1000)
    assert t.disconnecting


def test_ctrl_c_and_ip_at_login_start_over():
    proto, t, clock, portal = make()
    take(t)
    proto.dataReceived(b"alice\r\npartial")
    proto.dataReceived(wire.command(wire.IP))
    assert take(t).endswith(b"^C\r\nlogin: ")
    proto.dataReceived(b"bob\r\nsecret\r\n")
    assert portal.attempts == [(b"bob", b"secret")]

"""
netsuite.proxyproto alone: the PROXY header parser on every way a header can
be split or broken, and the wrapper over StringTransport (trust, deadline,
what the wrapped protocol sees).  tests/test_proxy.py runs it behind HAProxy.
"""

from __future__ import annotations

import socket
import struct

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from netsuite import proxyproto
from netsuite.config import ConfigError, load
from netsuite.proxyproto import HeaderError, parse

V1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n"


def v2(command: int = 1, fam: int = 0x11, body: bytes | None = None, version: int = 2) -> bytes:
    if body is None:
        body = (socket.inet_pton(socket.AF_INET, "192.0.2.7")
                + socket.inet_pton(socket.AF_INET, "198.51.100.1") + struct.pack("!HH", 40000, 25))
    return (proxyproto.V2_SIGNATURE + bytes([(version << 4) | command, fam])
            + struct.pack("!H", len(body)) + body)


def test_v1_whole_and_byte_by_byte():
    header, size = parse(V1 + b"EHLO x\r\n")
    assert size == len(V1) and header.version == 1
    assert (header.source.host, header.source.port) == ("192.0.2.7", 40000)
    assert (header.destination.host, header.destination.port) == ("198.51.100.1", 25)
    # Twisted's wrapper drops a first read shorter than 8 bytes; every prefix here waits.
    for n in range(len(V1)):
        assert parse(V1[:n]) is None, n


def test_v1_tcp6_and_unknown():
    header, _ = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 993\r\n")
    assert isinstance(header.source, IPv6Address) and header.source.host == "2001:db8::7"
    header, size = parse(b"PROXY UNKNOWN whatever follows\r\nA1 CAPABILITY\r\n")
    assert header.source is None and size == len(b"PROXY UNKNOWN whatever follows\r\n")


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 evil 198.51.100.1 1 25\r\n",          # not an address (Twisted takes it)
    b"PROXY TCP4 2001:db8::1 198.51.100.1 1 25\r\n",   # IPv6 in TCP4
    b"PROXY TCP4 192.0.2.7 198.51.100.1 x 25\r\n",     # Twisted: an uncaught ValueError
    b"PROXY TCP4 192.0.2.7 198.51.100.1 70000 25\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 01 25\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 1\r\n",
    b"PROXY TCP4 192.0.2.7  198.51.100.1 1 25\r\n",
    b"PROXY UDP4 192.0.2.7 198.51.100.1 1 25\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 1 25\n",       # LF alone
    b"PROXY TCP4 192.0.2.7\r198.51.100.1 1 25\r\n",
    b"PROXY " + b"1" * 110,                             # no CRLF within 107 bytes
    b"EHLO example.org\r\n",
    b"GET / HTTP/1.0\r\n",
    b"\x16\x03\x01\x02\x00",                            # a TLS ClientHello, no header
])
def test_v1_and_garbage_refused(line):
    with pytest.raises(HeaderError):
        parse(line)


def test_v2_whole_split_and_rest():
    data = v2() + b"\x16\x03\x01"
    header, size = parse(data)
    assert size == len(data) - 3 and header.version == 2
    assert (header.source.host, header.source.port) == ("192.0.2.7", 40000)
    for n in range(len(data) - 3):
        assert parse(data[:n]) is None, n


def test_v2_ipv6_unix_tlvs_local_unspec():
    body6 = (socket.inet_pton(socket.AF_INET6, "2001:db8::7")
             + socket.inet_pton(socket.AF_INET6, "2001:db8::1") + struct.pack("!HH", 5, 6))
    header, _ = parse(v2(fam=0x21, body=body6))
    assert header.source.host == "2001:db8::7" and header.destination.port == 6
    # TLVs after the addresses (HAProxy's unique-id, ALPN, ...) are skipped.
    tlv = b"\x05\x00\x03abc"
    header, size = parse(v2(body=v2()[16:] + tlv) + b"rest")
    assert header.source.host == "192.0.2.7" and size == 16 + 12 + len(tlv)
    unix = b"/run/a".ljust(108, b"\0") + b"/run/b".ljust(108, b"\0")
    header, _ = parse(v2(fam=0x31, body=unix))
    assert header.source == UNIXAddress(b"/run/a")
    assert parse(v2(command=0, fam=0, body=b""))[0].source is None  # LOCAL (health check)
    assert parse(v2(fam=0x00, body=b""))[0].source is None  # UNSPEC


@pytest.mark.parametrize("data", [
    v2(version=1),
    v2(command=2),
    v2(fam=0x12),                   # UDP
    v2(fam=0x41),                   # no such family
    v2(body=b"\x01\x02\x03"),       # fewer address bytes than TCP4 needs
])
def test_v2_refused(data):
    with pytest.raises(HeaderError):
        parse(data)


# -- the wrapper --------------------------------------------------------------------


@implementer(IHandshakeListener)
class Recorder(Protocol):
    instances: list["Recorder"] = []

    def __init__(self, addr):
        self.addr = addr
        self.data = b""
        self.peer = None
        self.handshakes = 0
        self.lost = False
        Recorder.instances.append(self)

    def connectionMade(self):
        self.peer = self.transport.getPeer()
        self.transport.write(b"220 hello\r\n")

    def dataReceived(self, data):
        self.data += data

    def handshakeCompleted(self):
        self.handshakes += 1

    def connectionLost(self, reason=None):
        self.lost = True


class RecorderFactory(Factory):
    def buildProtocol(self, addr):
        return Recorder(addr)


def connect(peer: str = "10.0.0.5", timeout: float = 2.0):
    clock = Clock()
    Recorder.instances = []
    factory = proxyproto.ProxyHeaderFactory(
        RecorderFactory(), proxyproto.networks(["10.0.0.0/8", "2001:db8::/32"]), timeout,
        "smtp", clock)
    local = IPv4Address("TCP", "10.0.0.9", 25)
    transport = StringTransport(local, IPv4Address("TCP", peer, 5555))
    proto = factory.buildProtocol(transport.getPeer())
    proto.makeConnection(transport)
    return proto, transport, clock


def test_trusted_peer_header_then_protocol_with_client_address():
    proto, transport, clock = connect()
    assert not Recorder.instances and transport.value() == b""  # nothing before the header
    proto.dataReceived(V1[:3])
    proto.dataReceived(V1[3:] + b"EHLO a\r\n")
    (inner,) = Recorder.instances
    assert inner.addr.host == "192.0.2.7" and inner.peer.host == "192.0.2.7"
    assert inner.data == b"EHLO a\r\n" and transport.value() == b"220 hello\r\n"
    assert proto.getHost().host == "10.0.0.9"  # the socket's own (FTP listens on it)
    assert proto.destination.host == "198.51.100.1"
    clock.advance(10)
    assert not transport.disconnecting  # the header deadline was cancelled
    proto.handshakeCompleted()  # STARTTLS over the wrapper reaches the session
    assert inner.handshakes == 1
    proto.connectionLost(None)
    assert inner.lost


def test_untrusted_peer_refused_at_once():
    proto, transport, clock = connect(peer="192.0.2.99")
    assert transport.disconnected and transport.value() == b""
    proto.dataReceived(V1)
    assert not Recorder.instances


def test_garbage_refused():
    proto, transport, clock = connect()
    proto.dataReceived(b"EHLO mail.example.org\r\n")
    assert transport.disconnected and not Recorder.instances


def test_header_deadline():
    proto, transport, clock = connect(timeout=2.0)
    proto.dataReceived(V1[:10])  # trickling bytes do not extend it
    clock.advance(1.9)
    proto.dataReceived(V1[10:12])
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnected and not Recorder.instances


def test_local_keeps_the_socket_address():
    proto, transport, clock = connect()
    proto.dataReceived(v2(command=0, fam=0, body=b""))
    assert Recorder.instances[0].peer.host == "10.0.0.5"


def test_trust_rules():
    nets = proxyproto.networks(["10.0.0.0/8", "::1"])
    assert proxyproto.trusted(IPv4Address("TCP", "10.1.2.3", 1), nets)
    assert proxyproto.trusted(IPv6Address("TCP", "::ffff:10.1.2.3", 1), nets)
    assert proxyproto.trusted(IPv6Address("TCP", "::1", 1), nets)
    assert not proxyproto.trusted(IPv4Address("TCP", "11.0.0.1", 1), nets)
    assert proxyproto.trusted(UNIXAddress(b"/run/x"), [])


def test_config(tmp_path):
    path = tmp_path / "n.toml"
    path.write_text('[listen]\nsmtp = ["haproxy:tcp:0:interface=127.0.0.1"]\n')
    with pytest.raises(ConfigError, match=r"listen\.smtp\[0\].*proxy_trusted is empty"):
        load(path)
    path.write_text('[server]\nproxy_trusted = ["10.0.0.0/33"]\n')
    with pytest.raises(ConfigError, match=r"server\.proxy_trusted\[0\].*not an IP address"):
        load(path)
    path.write_text('[server]\nproxy_trusted = ["127.0.0.1"]\n'
                    '[listen]\nimaps = ["haproxy:ssl:993"]\n')
    with pytest.raises(ConfigError, match=r"listen\.imaps\[0\].*inside TLS"):
        load(path)
    path.write_text('[server]\nproxy_trusted = ["127.0.0.1", "10.0.0.0/8"]\n'
                    '[listen]\nimaps = ["haproxy:tcp:0:interface=127.0.0.1"]\n'
                    'lmtp = ["haproxy:unix:/tmp/x.sock"]\n')
    config = load(path)
    assert config.listen["imaps"] == ["haproxy:tcp:0:interface=127.0.0.1"]

"""
The PROXY protocol (HAProxy's, versions 1 and 2) in front of a listener: an
endpoint written C{haproxy:tcp:25} reads the header HAProxy sends
(C{send-proxy} / C{send-proxy-v2}) before anything else, so that the session
sees the client's address, not the balancer's: in its log lines, its
failed-login throttle key, SMTP's C{Received:}, the per-address connection
cap and FTP's data-channel checks.

Twisted has the parsers and a C{haproxy:} endpoint (L{twisted.protocols.haproxy}),
whose wrapper is not usable as it is (Twisted 26.10, read and tried):
  - it builds and connects the wrapped protocol at once, before the header
    has arrived: C{connectionMade} (where every netsuite session reads
    C{getPeer()}) and the factories' C{buildProtocol(addr)} (the connection
    caps) see the balancer's address, so nothing would change;
  - any peer may send a header: a client that reaches the port directly
    could claim any address (and escape the throttle);
  - a header that never comes is waited for as long as the wrapped
    protocol's idle timeout, minutes, with the session's banner already sent;
  - a first read shorter than 8 bytes (v1) or 16 (v2) drops the connection,
    even when the rest of a valid header follows in the next segment;
  - v1 addresses and ports are not checked (C{PROXY TCP4 evil 1.2.3.4 x 25}
    gives a host C{"evil"} or an uncaught C{ValueError});
  - C{haproxy:ssl:...} reads the header I{inside} TLS (the ssl: port wraps the
    whole factory), whereas HAProxy sends it before the handshake.

So netsuite parses the header itself (L{parse}, pure, with Twisted's
C{V1Parser.parse} / C{V2Parser.parse} for the fields) and wraps the
listener's factory, outermost (before any TLS), in L{ProxyHeaderFactory}:
  - the connection's own peer must be in C{[server] proxy_trusted} (a
    C{unix:} socket's peer is trusted: its file mode decides who connects);
    any other peer is refused at once, as Dovecot does with
    C{haproxy_trusted_networks};
  - the header must be complete within C{[server] proxy_timeout} seconds
    (Postfix's C{smtpd_upstream_proxy_timeout}, 5 s by default);
  - only then is the listener's protocol built, with the client's address,
    and the bytes after the header (a TLS ClientHello, pipelined commands)
    handed to it.  v2 C{LOCAL} and v1 C{UNKNOWN} (HAProxy's health checks)
    keep the connection's own addresses.
C{getHost()} stays the socket's own address (FTP listens for passive data
connections on it); the header's destination is kept in L{ProxiedConnection.destination}.

Refusals are logged with reason codes C{proxy_untrusted}, C{proxy_header_invalid},
C{proxy_header_timeout} and counted in C{netsuite_proxy_headers_total}.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress, IHandshakeListener
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from netsuite import metrics

log = Logger(namespace="netsuite")

#: v1: the whole line, CRLF included, is at most 107 bytes (the spec's bound).
V1_MAX = 107
V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = V2Parser.PREFIX
#: v2: the fixed part before the addresses and TLVs.
V2_FIXED = 16

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class HeaderError(ValueError):
    """Not a valid PROXY header; the message says what is wrong (for the log)."""


class Header:
    """A parsed header: the client's and the destination's address (None: keep the socket's)."""

    def __init__(self, version: int, source: IAddress | None, destination: IAddress | None):
        self.version = version
        self.source = source
        self.destination = destination


def _could_be(signature: bytes, data: bytes) -> bool:
    n = min(len(signature), len(data))
    return data[:n] == signature[:n]


def parse(data: bytes) -> tuple[Header, int] | None:
    """
    The header at the start of C{data} and its length in bytes, or None when
    more bytes are needed; raises L{HeaderError} as soon as C{data} cannot
    start a valid header.  Works on however the header was split into reads.
    """
    if _could_be(V2_SIGNATURE, data):
        if len(data) < V2_FIXED:
            return None
        if data[12] & 0xF0 != 0x20:
            raise HeaderError(f"v2: unknown version {data[12] >> 4}")
        size = V2_FIXED + struct.unpack("!H", data[14:16])[0]
        if len(data) < size:
            return None
        return _v2(data[:size]), size
    if _could_be(V1_SIGNATURE, data):
        end = data.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(data) >= V1_MAX:
                raise HeaderError(f"v1: no CRLF in the first {V1_MAX} bytes")
            if b"\n" in data or b"\r" in data[:-1]:
                raise HeaderError("v1: a line not ended by CRLF")
            return None
        return _v1(data[:end]), end + 2
    raise HeaderError("not a PROXY header (neither the v1 nor the v2 signature)")


def _address(family: int, host: str, port: int, what: str) -> IAddress:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise HeaderError(f"{what} address {host!r} is not an IP address") from None
    if ip.version != family:
        raise HeaderError(f"{what} address {host} is not IPv{family}")
    if not 0 <= port <= 65535:
        raise HeaderError(f"{what} port {port} out of range")
    cls = IPv4Address if family == 4 else IPv6Address
    return cls("TCP", str(ip), port)


def _v1(line: bytes) -> Header:
    fields = line.split(b" ")
    if fields[:2] == [b"PROXY", b"UNKNOWN"]:
        return Header(1, None, None)  # the spec: ignore the rest of the line
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise HeaderError(f"v1: malformed line {line[:V1_MAX]!r}")
    for port in fields[4:]:
        if not port.isdigit() or (len(port) > 1 and port.startswith(b"0")):
            raise HeaderError(f"v1: bad port {port[:8]!r}")
    try:
        info = V1Parser.parse(line)
    except (InvalidProxyHeader, ValueError, UnicodeDecodeError) as e:
        raise HeaderError(f"v1: malformed line {line[:V1_MAX]!r} ({type(e).__name__})") from e
    family = 4 if fields[1] == b"TCP4" else 6
    source, dest = info.source, info.destination
    return Header(1, _address(family, source.host, source.port, "source"),  # type: ignore
                  _address(family, dest.host, dest.port, "destination"))  # type: ignore


def _v2(header: bytes) -> Header:
    command = header[12] & 0x0F
    if command == 0:  # LOCAL: the proxy's own connection (a health check)
        return Header(2, None, None)
    if command != 1:
        raise HeaderError(f"v2: unknown command {command}")
    family, transport = header[13] >> 4, header[13] & 0x0F
    if family == 0 or transport == 0:  # UNSPEC: keep the socket's addresses
        return Header(2, None, None)
    if transport != 1:
        raise HeaderError("v2: not a stream (TCP) connection")
    need = {1: 12, 2: 36, 3: 216}.get(family)
    if need is None:
        raise HeaderError(f"v2: unknown address family {family}")
    if len(header) < V2_FIXED + need:
        raise HeaderError(f"v2: {len(header) - V2_FIXED} address bytes, {need} needed")
    try:
        info = V2Parser.parse(header)
    except (InvalidProxyHeader, ValueError, struct.error) as e:
        raise HeaderError(f"v2: malformed header ({type(e).__name__})") from e
    if family == 3:
        return Header(2, UNIXAddress(info.source.name), UNIXAddress(info.destination.name))  # type: ignore
    version = 4 if family == 1 else 6
    source, dest = info.source, info.destination
    return Header(2, _address(version, source.host, source.port, "source"),  # type: ignore
                  _address(version, dest.host, dest.port, "destination"))  # type: ignore


def networks(entries: Sequence[str]) -> list[Network]:
    """C{[server] proxy_trusted} as networks; raises C{ValueError} naming the bad entry."""
    out = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as e:
            raise ValueError(f"{entry!r} is not an address or network ({e})") from None
    return out


def trusted(peer: IAddress, allowed: Sequence[Network]) -> bool:
    """May C{peer} (the socket's own peer) send a PROXY header?"""
    if isinstance(peer, UNIXAddress):
        return True
    host = getattr(peer, "host", None)
    if not isinstance(host, str):
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in allowed)


@implementer(IHandshakeListener)
class ProxiedConnection(policies.ProtocolWrapper):
    """
    One connection of a L{ProxyHeaderFactory}: reads the header, then builds
    the listener's protocol and passes everything through, answering
    C{getPeer()} with the client's address.
    """

    factory: "ProxyHeaderFactory"
    #: The TCP (or unix:) connection.
    transport: Any
    #: The header's destination (what the client connected to), once read.
    destination: IAddress | None = None
    header: Header | None = None
    _source: IAddress | None = None
    _timer: Any = None
    _done = False  # refused, or lost

    def __init__(self, factory: "ProxyHeaderFactory"):
        super().__init__(factory, None)  # type: ignore[arg-type]
        self._buffer = b""

    def makeConnection(self, transport) -> None:
        # ProtocolWrapper's, without connecting the wrapped protocol: there is none yet.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        if not trusted(peer, self.factory.trusted):
            self._refuse("proxy_untrusted", "peer not in server.proxy_trusted")
            return
        self._timer = self.factory.reactor.callLater(self.factory.timeout, self._expired)

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._done:
            return
        self._buffer += data
        try:
            parsed = parse(self._buffer)
        except HeaderError as e:
            self._refuse("proxy_header_invalid", str(e))
            return
        if parsed is None:
            return
        header, size = parsed
        rest, self._buffer = self._buffer[size:], b""
        self._cancel()
        self.header = header
        self._source = header.source
        self.destination = header.destination
        metrics.proxy_headers.labels(self.factory.listener, "ok").inc()
        proto = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if proto is None:
            self._done = True
            self.transport.loseConnection()
            return
        self.wrappedProtocol = proto
        proto.makeConnection(self)
        if rest and not self._done:
            proto.dataReceived(rest)

    def getPeer(self) -> IAddress:
        return self._source if self._source is not None else self.transport.getPeer()

    def handshakeCompleted(self) -> None:
        """STARTTLS: the TLS layer put over this wrapper reports here; pass it on."""
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._done = True
        self._cancel()
        self.factory.unregisterProtocol(self)
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.connectionLost(reason)
            self.wrappedProtocol = None  # type: ignore[assignment]

    def _cancel(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _expired(self) -> None:
        self._timer = None
        self._refuse("proxy_header_timeout",
                     f"no complete PROXY header within {self.factory.timeout:g}s")

    def _refuse(self, reason: str, why: str) -> None:
        self._done = True
        self._cancel()
        peer = self.transport.getPeer()
        metrics.proxy_headers.labels(self.factory.listener, reason[len("proxy_"):]).inc()
        log.warn("PROXY protocol: connection from {client} refused: {why}",
                 client=getattr(peer, "host", str(peer)), why=why,
                 listener=self.factory.listener, event="connection_refused", reason=reason)
        self.transport.abortConnection()


class ProxyHeaderFactory(policies.WrappingFactory):
    """A listener's factory behind HAProxy: see the module docstring."""

    protocol = ProxiedConnection
    noisy = False

    def __init__(self, wrapped, trusted: Sequence[Network], timeout: float,
                 listener: str = "?", reactor: Any = None):
        super().__init__(wrapped)
        if reactor is None:
            from twisted.internet import reactor
        self.trusted = list(trusted)
        self.timeout = timeout
        self.listener = listener
        self.reactor = reactor
        for result in ("ok", "untrusted", "header_invalid", "header_timeout"):
            metrics.proxy_headers.labels(listener, result)

    def buildProtocol(self, addr) -> ProxiedConnection:
        return ProxiedConnection(self)

"""
The data channel: one connection per transfer, passive or active, plain or TLS.

Twisted's C{DTPFactory} listens on every interface, accepts whichever host
connects first and is hard-wired to plain TCP.  Here:

  - a passive port listens on the control connection's own address only and
    drops connections from any host but the control connection's peer;
  - an active connection goes only to the control connection's peer, never to
    a port below 1024 (no FTP bounce);
  - with PROT P the server is the TLS server on the data connection in both
    directions (RFC 4217 7), and the handshake must resume the control
    connection's TLS session (vsftpd's C{require_ssl_reuse}), so a stranger
    who guessed the port cannot take the transfer.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, error, protocol, tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IHandshakeListener, IReadDescriptor
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from netsuite.ftp.timer import SessionTimer
from netsuite.ftp.wire import same_host

log = Logger(namespace="netsuite.ftp")

#: Receive buffer per read on a data connection (Twisted's default is 64 KiB).
READ_SIZE = 256 * 1024
#: Bytes buffered from an early upload before reading pauses.
EARLY_LIMIT = 256 * 1024


def _global_reactor() -> Any:
    from twisted.internet import reactor
    return reactor


class DataChannelError(Exception):
    """The data connection could not be made or was refused."""

    def __init__(self, code: int, text: str):
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


def cap_tls_version(tls_transport, max_version: str) -> None:
    """
    Keep one TLS connection at TLS 1.2 at most (before its handshake).

    With TLS 1.3 the server sends session tickets after every handshake, data
    connections included; an uploading client never reads them, and when it
    closes a socket with unread data its kernel resets the connection and
    drops the unsent tail of the upload.  TLS 1.2 without tickets (the shared
    context sets C{SSL_OP_NO_TICKET}) sends nothing after the handshake.
    """
    if max_version == "1.2":
        tls_transport.getHandle().set_options(SSL.OP_NO_TLSv1_3)


def _keep_session(conn: SSL.Connection) -> None:
    """
    Mark a data connection's TLS as shut down, so that OpenSSL does not drop
    the shared session from its cache when the connection ends abruptly: every
    later data connection of the same control connection resumes it.
    """
    conn.set_shutdown(conn.get_shutdown() | SSL.SENT_SHUTDOWN)


class DataTLSProtocol(TLSMemoryBIOProtocol):
    """
    Server-side TLS for a data connection.

    An end without close_notify (a reset, or a bare FIN) is reported to the
    data connection as L{error.ConnectionLost}, since an upload may have been
    cut; and unlike Twisted's default, OpenSSL is not left to treat it as a
    fatal error, which would evict the control connection's session from the
    cache and fail every later data connection's session-reuse check.
    """

    def connectionLost(self, reason):
        conn = self.getHandle()
        if conn is not None and not conn.get_shutdown() & SSL.RECEIVED_SHUTDOWN:
            # (After a TLS error the session is gone already; these are then no-ops.)
            conn.set_options(SSL.OP_IGNORE_UNEXPECTED_EOF)
            _keep_session(conn)
            if not reason.check(error.ConnectionLost):
                reason = Failure(error.ConnectionLost("TLS data connection closed "
                                                      "without close_notify"))
        super().connectionLost(reason)


class _DataTLSFactory(TLSMemoryBIOFactory):
    protocol = DataTLSProtocol


class SessionReuseUnknown(Exception):
    """This pyOpenSSL cannot say whether a TLS handshake resumed a session."""


def _private_session_reused() -> Callable[[SSL.Connection], bool] | None:
    """
    pyOpenSSL (26.4) has no public C{Connection.session_reused()}: the only way
    to ask OpenSSL's C{SSL_session_reused} is its private cffi binding and the
    connection's private C{_ssl} pointer.  Both may go in an upgrade; then this
    returns None and L{check_session_reuse_available} stops start-up with a
    clear line instead of FTPS failing (or, worse, passing) every transfer.
    """
    try:
        from OpenSSL._util import lib  # private: no public equivalent (see above)
    except ImportError:
        return None
    reused = getattr(lib, "SSL_session_reused", None)
    if reused is None:
        return None

    def check(conn: SSL.Connection) -> bool:
        try:
            return bool(reused(conn._ssl))  # private: no public accessor
        except AttributeError:
            raise SessionReuseUnknown("pyOpenSSL Connection has no _ssl") from None

    return check


def _session_reuse_check() -> Callable[[SSL.Connection], bool] | None:
    """The best available way to ask whether a connection resumed its session."""
    public = getattr(SSL.Connection, "session_reused", None)
    if callable(public):  # a future pyOpenSSL with a public call: prefer it
        return lambda conn: bool(conn.session_reused())
    return _private_session_reused()


def check_session_reuse_available() -> None:
    """Raise L{SessionReuseUnknown} when no session-reuse check works here."""
    if _session_reuse_check() is None:
        import OpenSSL

        raise SessionReuseUnknown(f"pyOpenSSL {OpenSSL.__version__} cannot tell whether "
                                  "a TLS session was resumed")


def session_reused(tls_transport) -> bool:
    """Whether the TLS connection under C{tls_transport} resumed a session."""
    check = _session_reuse_check()
    if check is None:
        raise SessionReuseUnknown("no way to check TLS session reuse")
    return check(tls_transport.getHandle())


@implementer(IHandshakeListener)
class DataConnection(protocol.Protocol):
    """
    One data connection.  C{on_ready(f)} hears once it can carry a transfer
    (after the TLS handshake, when there is one); C{on_closed(f)} (or
    C{when_closed()}, a Deferred) when it goes away, C{close_reason} says why.
    Bytes that arrive before a consumer is attached are held and the socket
    is paused, so an eager client loses nothing.
    """

    # A tcp.Server/Client, or (PROT P) a DataTLSProtocol over one: getHandle,
    # pauseProducing, startWriting and abortConnection are used beyond ITransport.
    transport: Any

    def __init__(self, tls: bool, require_reuse: bool, idle_timeout: float,
                 tls_max_version: str = "1.3", timer: SessionTimer | None = None):
        #: The session's deadlines (L{netsuite.ftp.timer}): the idle timeout is one of them.
        self.timer = timer if timer is not None else SessionTimer(_global_reactor())
        self.tls = tls
        self.tls_max_version = tls_max_version
        self.require_reuse = require_reuse
        self.idle_timeout = idle_timeout
        #: Fires once TCP is connected (before any TLS handshake), if someone
        #: set it (L{ActiveChannel}; a passive channel waits for L{on_ready}).
        self.made: defer.Deferred | None = None
        self._ready_result: Any = None
        self._ready_waiters: list[Callable[[Any], None]] = []
        #: Why the connection went away, once it has.
        self.close_reason: Failure | None = None
        self._close_waiters: list[Callable[[], None]] = []
        self._sink: Callable[[bytes], None] | None = None
        self._early: list[bytes] = []
        self._early_size = 0
        self._paused = False
        self._is_ready = False
        self.sink_error: Failure | None = None
        self.timed_out = False
        #: Refused after the TLS handshake (no session reuse): closing on its own.
        self.refused = False

    # -- life cycle ------------------------------------------------------------

    @property
    def peer(self) -> IAddress | None:
        """The client's address (for log lines only: not asked for every transfer)."""
        return self.transport.getPeer() if self.transport is not None else None

    def connectionMade(self) -> None:
        self.timer.set(self, self.idle_timeout, self.timeoutConnection)
        if self.tls:
            cap_tls_version(self.transport, self.tls_max_version)
        made, self.made = self.made, None
        if made is not None:
            made.callback(self)
        if not self.tls:
            self._ready()

    def handshakeCompleted(self) -> None:
        if self.require_reuse and not self._resumed():
            log.warn("FTPS data connection from {peer} did not resume the control "
                     "session; refused", peer=self.peer)
            self._refuse()
            return
        _set_read_size(self.transport.transport)
        self._ready()

    def _resumed(self) -> bool:
        try:
            return session_reused(self.transport)
        except SessionReuseUnknown:
            log.failure("cannot check TLS session reuse; data connection refused")
            return False

    def _refuse(self) -> None:
        """
        Refuse the transfer on a data connection that did not resume the
        control session (vsftpd's C{require_ssl_reuse}), and say so on the
        control connection (RFC 4217's 522).  The data connection is closed
        cleanly (close_notify) and its bytes are read and dropped, not reset:
        a client such as C{ftplib} sends its whole upload before it reads the
        control reply, and a reset would surface there as C{ConnectionResetError}
        instead of the reply.  Nothing is read from or written to the file.
        """
        self.refused = True
        self._early = []
        self._set_ready(Failure(DataChannelError(
            522, "Data connection must resume the TLS session of the control "
                 "connection (require_tls_session_reuse, vsftpd's require_ssl_reuse).")))
        self.transport.loseConnection()

    def _ready(self) -> None:
        self._is_ready = True
        self._set_ready(self)

    def _set_ready(self, result) -> None:
        if self._ready_result is not None:
            return
        self._ready_result = result
        # Only those who asked (on_ready) hear it: a Deferred nobody waits on
        # would log its failure as unhandled (a refused active-mode connection did).
        waiters, self._ready_waiters = self._ready_waiters, []
        for w in waiters:
            w(result)

    def on_ready(self, f: Callable[[Any], None]) -> None:
        """Call C{f} with this connection (or a Failure) once it can carry data."""
        result = self._ready_result
        if result is not None:
            f(result)
        else:
            self._ready_waiters.append(f)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.timer.clear(self)
        made, self.made = self.made, None
        if made is not None:
            made.errback(DataChannelError(425, "Can't open data connection."))
        self._set_ready(Failure(DataChannelError(
            425, f"Can't open data connection: {reason.getErrorMessage()}")))
        self.close_reason = reason
        waiters, self._close_waiters = self._close_waiters, []
        for w in waiters:
            w()

    def on_closed(self, f: Callable[[], None]) -> None:
        """Call C{f()} once the connection is gone (at once if it is); see C{close_reason}."""
        if self.close_reason is not None:
            f()
        else:
            self._close_waiters.append(f)

    def when_closed(self) -> defer.Deferred:
        """Fires (with None) once the connection is gone; see C{close_reason}."""
        if self.close_reason is not None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._close_waiters.append(lambda: d.callback(None))
        return d

    def timeoutConnection(self) -> None:
        self.timed_out = True
        log.info("data connection from {peer} idle; closed", peer=self.peer)
        self.abort()

    # -- receiving (uploads) ---------------------------------------------------------

    def resetTimeout(self) -> None:
        """Activity: the idle timeout starts again."""
        self.timer.touch(self, self.idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        if self.refused:
            return
        if self._sink is None:
            self._early.append(data)
            self._early_size += len(data)
            if self._early_size >= EARLY_LIMIT and not self._paused:
                self._paused = True
                self.transport.pauseProducing()
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self.sink_error is not None:
            return
        assert self._sink is not None  # only called once receive_into() has set it
        try:
            self._sink(data)
        except Exception:
            self.sink_error = Failure()
            self.abort()

    def receive_into(self, sink: Callable[[bytes], None]) -> None:
        """Start handing received bytes to C{sink}, early ones first."""
        _set_read_size(self.transport)  # an upload: bigger reads (downloads read nothing)
        self._sink = sink
        early, self._early = self._early, []
        for chunk in early:
            self._write(chunk)
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()

    # -- sending (downloads) -----------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.resetTimeout()
        self.transport.write(data)

    def registerProducer(self, producer, streaming) -> None:
        self.transport.registerProducer(_Touching(producer, self), streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def sendfile_socket(self) -> socket.socket | None:
        """The raw socket, when file bytes may go to it directly (plain TCP, no TLS)."""
        if self.tls or self.transport is None:
            return None
        handle = self.transport.getHandle()
        return handle if isinstance(handle, socket.socket) else None

    def kick(self) -> None:
        """After writing to the socket behind the transport's back: ask it for more room."""
        self.resetTimeout()
        self.transport.startWriting()

    def finish(self) -> None:
        """All sent: close (a TLS close_notify goes first)."""
        self.transport.loseConnection()

    def abort(self) -> None:
        """Cut the connection now (ABOR, timeouts), keeping the TLS session resumable."""
        if self.refused and not self.timed_out:
            return  # closing cleanly already (see _refuse); only a stall cuts it
        if self.transport is not None and self.close_reason is None:
            if self.tls and self._is_ready:
                conn = self.transport.getHandle()
                conn.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
            self.transport.abortConnection()


class _Touching:
    """A producer proxy that keeps the data connection's idle timer fresh."""

    def __init__(self, producer, conn: DataConnection):
        self.producer = producer
        self.conn = conn

    def resumeProducing(self):
        self.conn.resetTimeout()
        self.producer.resumeProducing()

    def pauseProducing(self):
        self.producer.pauseProducing()

    def stopProducing(self):
        self.producer.stopProducing()


def _set_read_size(transport) -> None:
    """Bigger reads for bulk uploads (the TCP transport reads C{bufferSize} at once)."""
    while transport is not None:
        if hasattr(transport, "bufferSize") and hasattr(transport, "doRead"):
            transport.bufferSize = READ_SIZE
            return
        transport = getattr(transport, "transport", None)


class _Builder(protocol.Factory):
    """Hands a prepared protocol to a TLS wrapper."""

    def __init__(self, proto: protocol.Protocol):
        self.proto = proto

    def buildProtocol(self, addr):
        return self.proto


def _wrap(proto: DataConnection, tls_options, addr):
    """C{proto} itself, or C{proto} under a server-side TLS layer."""
    if not proto.tls:
        return proto
    return _DataTLSFactory(tls_options, False, _Builder(proto)).buildProtocol(addr)


class DataChannel:
    """What PASV/EPSV/PORT/EPRT set up: yields one L{DataConnection}."""

    def connect(self, make: Callable[[], DataConnection]) -> defer.Deferred:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class PassiveChannel(DataChannel, protocol.ServerFactory):
    """
    A listening port for one data connection, on the control connection's
    local address, that takes connections from the control peer only.
    """

    noisy = False

    def __init__(self, reactor: Any, peer_host: str, tls_options, timeout: float,
                 timer: SessionTimer | None = None):
        self.reactor = reactor
        #: The session's deadlines: the wait for the client to connect is one of them.
        self.timer = timer if timer is not None else SessionTimer(reactor)
        self.peer_host = peer_host
        self.tls_options = tls_options
        self.timeout = timeout
        #: The listening socket while listening.
        self.port: _PassivePort | None = None
        #: The port number once listening.
        self.number = 0
        self._make: Callable[[], DataConnection] | None = None
        self._waiting: defer.Deferred | None = None
        self._accepted: DataConnection | None = None
        self._closed = False
        self._result: DataConnection | Failure | None = None

    def listen(self, interface: str, low: int = 0, high: int = 0,
               reuse: "_PassivePort | None" = None) -> int:
        """
        Open the port; C{low}..C{high} is the configured range (0, 0: any).
        C{reuse}: the session's port of an earlier passive channel, listened on
        again (only without a range, where a session may keep its own port).
        """
        if not low and reuse is not None and reuse.resume(self, interface):
            self.port = reuse
            self.timer.set(self, self.timeout, self._timed_out)
            self.number = reuse.number
            return self.number
        if not low:
            candidates = [0]
        else:
            candidates = list(range(low, high + 1))
            random.shuffle(candidates)
            candidates = candidates[:200]
        last: Exception | None = None
        for number in candidates:
            try:
                self.port = _PassivePort(self.reactor, interface, number, self)
                break
            except OSError as e:
                last = e
        else:
            raise DataChannelError(425, f"Can't open passive connection: {last}")
        self.timer.set(self, self.timeout, self._timed_out)
        self.number = self.port.number
        return self.number

    def set_maker(self, make: Callable[[], DataConnection]) -> None:
        """How to build the connection's protocol (TLS or not is decided then)."""
        self._make = make

    def buildProtocol(self, addr):
        if self._closed or self._accepted is not None or self._make is None:
            return None
        if not same_host(addr.host, self.peer_host):
            log.warn("passive data connection from {host} dropped: the control "
                     "connection is from {peer}", host=addr.host, peer=self.peer_host)
            return None
        proto = self._make()
        self._accepted = proto
        self._stop_listening()
        proto.on_ready(self._deliver)
        return _wrap(proto, self.tls_options, addr)

    def _deliver(self, result) -> None:
        """The accepted connection is ready (or failed): hand it over, or keep it."""
        d, self._waiting = self._waiting, None
        if d is None:
            self._result = result
        elif isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
        return None

    def connect(self, make: Callable[[], DataConnection]) -> defer.Deferred:
        """The connection: the one already accepted, or the next one to come."""
        self._make = make
        result, self._result = self._result, None
        if result is not None:
            return defer.fail(result) if isinstance(result, Failure) else defer.succeed(result)
        if self._closed and self._accepted is None:
            return defer.fail(DataChannelError(425, "Failed to establish connection."))
        self._waiting = defer.Deferred()
        return self._waiting

    def _timed_out(self) -> None:
        if self._accepted is None:
            self._stop_listening()
            self._closed = True
            d, self._waiting = self._waiting, None
            if d is not None:
                d.errback(DataChannelError(425, "Failed to establish connection."))

    def _stop_listening(self) -> None:
        self.timer.clear(self)
        if self.port is not None:
            if self.port.keep:
                self.port.pause()  # the session listens on it again at its next PASV/EPSV
            else:
                self.port.close()
            self.port = None

    def close(self) -> None:
        self._closed = True
        self._stop_listening()
        d, self._waiting = self._waiting, None
        if self._accepted is not None:
            self._accepted.abort()
        if d is not None:
            d.errback(DataChannelError(425, "Data channel closed."))


@implementer(IReadDescriptor)
class _PassivePort:
    """
    The listening socket of one passive data channel.

    Not C{reactor.listenTCP}: a C{tcp.Port} logs two lines (starting on,
    closed) and defers its close by one timer, for every transfer.  Accepted
    connections become ordinary TCP transports (C{tcp.Server}, built as
    C{tcp.Port.doRead} and C{adoptStreamConnection} build it, from the socket
    and address C{accept} gave: C{adoptStreamConnection} would duplicate the
    descriptor and ask the kernel both addresses again, for every transfer);
    C{factory.buildProtocol} decides (the peer check), as with a Port.
    C{SO_REUSEADDR} only for a configured range, whose ports may still have
    TIME_WAIT connections; for an ephemeral port it only makes the kernel's
    search for one slower.

    An ephemeral port (no range configured) is kept by its session between
    transfers (L{keep}): not read while no passive channel uses it, listened
    on again by the next one.  Binding a new ephemeral port for every
    transfer makes the kernel search past every port that a finished
    transfer left in TIME_WAIT: that search was the larger part of the
    server's system time for many small transfers.  Whatever connected in
    between (a stray second connection, a stranger) is accepted and closed
    before the port is announced again, so it never becomes a transfer's
    data connection.
    """

    def __init__(self, reactor: Any, interface: str, number: int,
                 factory: protocol.ServerFactory):
        self.reactor = reactor
        self.factory = factory
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        self.family = family
        if family == socket.AF_INET:
            addr: Any = (interface, number)
        else:  # a scope (fe80::1%eth0) needs the resolver's parsing
            addr = socket.getaddrinfo(interface, number, family, socket.SOCK_STREAM, 0,
                                      socket.AI_NUMERICHOST)[0][4]
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK |
                             socket.SOCK_CLOEXEC)
        try:
            if number:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(5)
        except BaseException:
            sock.close()
            raise
        self.sock: socket.socket | None = sock
        self.number: int = sock.getsockname()[1]
        self.interface = interface
        #: An ephemeral port, kept by its session (see above).
        self.keep = not number
        self._reading = True
        reactor.addReader(self)

    def pause(self) -> None:
        """No passive channel uses the port for now: stop accepting."""
        if self._reading and self.sock is not None:
            self._reading = False
            self.reactor.removeReader(self)

    def resume(self, factory: protocol.ServerFactory, interface: str) -> bool:
        """
        Serve C{factory} again, after closing whatever connected meanwhile;
        False if the port cannot be reused (closed, another address).
        """
        sock = self.sock
        if sock is None or self._reading or interface != self.interface:
            return False
        while True:
            try:
                stale, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close()
                return False
            stale.close()
        self.factory = factory
        self._reading = True
        self.reactor.addReader(self)
        return True

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def logPrefix(self) -> str:
        return "PassiveChannel"

    def doRead(self) -> None:
        for _ in range(16):
            sock = self.sock
            if sock is None or not self._reading:
                return  # closed, or paused by the channel that took its connection
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # EMFILE, ENOBUFS, a connection reset before it was taken: nothing to hand over.
                log.info("passive data port {port}: accept failed: {error}",
                         port=self.number, error=e)
                return
            try:
                conn.setblocking(False)
                self._take(conn, addr)
            except OSError as e:
                log.info("passive data connection lost before it was taken: {error}", error=e)
                conn.close()

    def _take(self, conn: socket.socket, addr: tuple) -> None:
        """Hand an accepted socket to the factory's protocol as a TCP transport."""
        kind = IPv6Address if self.family == socket.AF_INET6 else IPv4Address
        proto = self.factory.buildProtocol(kind("TCP", *addr))
        if proto is None:
            conn.close()
            return
        # No Port behind it (as in Server._fromConnectedSocket, which passes None too).
        transport = tcp.Server(conn, proto, addr, None,  # type: ignore[arg-type]
                               addr[1], self.reactor)
        transport.repstr = f"<{proto.__class__.__name__} #{addr[1]} on {self.number}>"
        proto.makeConnection(transport)

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def release(self) -> None:
        """The session no longer keeps the port: close it now, or when its channel is done."""
        self.keep = False
        if not self._reading:
            self.close()

    def close(self) -> None:
        if self.sock is None:
            return
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)  # while fileno() still names the socket
        sock, self.sock = self.sock, None
        sock.close()


class ActiveChannel(DataChannel, protocol.ClientFactory):
    """PORT/EPRT: connect to the client when a transfer starts."""

    noisy = False

    def __init__(self, reactor: Any, host: str, port: int, bind_host: str | None,
                 tls_options, timeout: float):
        self.reactor = reactor
        self.host = host
        self.port = port
        self.bind_host = bind_host
        self.tls_options = tls_options
        self.timeout = timeout
        self._make: Callable[[], DataConnection] | None = None
        self._waiting: defer.Deferred | None = None
        self._connector = None
        self._proto: DataConnection | None = None

    def connect(self, make: Callable[[], DataConnection]) -> defer.Deferred:
        self._make = make
        self._waiting = defer.Deferred()
        bind = (self.bind_host, 0) if self.bind_host else None
        self._connector = self.reactor.connectTCP(self.host, self.port, self,
                                                  timeout=self.timeout, bindAddress=bind)
        return self._waiting

    def buildProtocol(self, addr):
        proto = self._make()
        self._proto = proto
        # The client may wait for 150 before its TLS handshake (ftplib does):
        # hand the connection over once TCP is up; the transfer then waits for
        # when_ready().
        proto.made = defer.Deferred()
        proto.made.addBoth(self._deliver)
        return _wrap(proto, self.tls_options, addr)

    def _deliver(self, result):
        d, self._waiting = self._waiting, None
        if d is not None:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    def clientConnectionFailed(self, connector, reason):
        d, self._waiting = self._waiting, None
        if d is not None:
            d.errback(DataChannelError(425, "Failed to establish connection."))

    def close(self) -> None:
        if self._proto is not None:
            self._proto.abort()
        elif self._connector is not None:
            self._connector.disconnect()
        d, self._waiting = self._waiting, None
        if d is not None:
            d.errback(DataChannelError(425, "Data channel closed."))

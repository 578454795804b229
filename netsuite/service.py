"""
Composition: one MultiService with a listener per configured endpoint, every
protocol over one Portal.

Building is split from listening: L{build} resolves the realm, the checkers
and TLS and builds every factory, so a configuration problem surfaces as a
L{ConfigError} before any port opens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.cred import strcred
from twisted.cred.portal import Portal
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import (
    IHandshakeListener,
    IProtocolFactory,
    IProtocolNegotiationFactory,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from netsuite import metrics, protocols, proxyproto, shutdown, systemd, tls
from netsuite.auth.cache import cached
from netsuite.auth.chain import combine
from netsuite.auth.throttle import LoginThrottle, ThrottledPortal
from netsuite.config import (
    ENDPOINT_HINT,
    LISTENERS,
    SYSTEMD_HINT,
    Config,
    ConfigError,
    split_proxy,
)
from netsuite.db.pool import database
from netsuite.realm import make_realm

log = Logger(namespace="netsuite")

#: The reason code (netsuite.logs.REASONS) of each deadline of L{TrackedConnection}.
_TIMEOUT_REASONS = {"tls handshake": "tls_handshake_timeout", "close": "close_timeout"}


@dataclass
class ServerContext:
    """What every protocol factory is built from."""

    config: Config
    portal: ThrottledPortal
    realm: Any
    #: Replaceable (a renewed certificate, a reload): ask it per connection.
    tls: tls.CurrentCertificate
    reactor: Any
    #: The top service, once built: what is listening now (L{listening_ports}).
    top: service.MultiService | None = None


def make_checkers(config: Config) -> list:
    """The checkers named in C{server.auth}; C{passwd} alone means the data dir's file."""
    result = []
    for i, name in enumerate(config.server.auth):
        if name == "passwd":
            name = f"passwd:{config.data_dir / 'passwd'}"
        elif name == "sql":  # the config's [database], with its pool settings
            if not config.database.dsn:
                raise ConfigError("'sql' needs [database] dsn", f"server.auth[{i}]",
                                  config.path)
            database(config.database)
            name = f"sql:{config.database.dsn}"
        try:
            result.append(strcred.makeChecker(name))
        except strcred.InvalidAuthType:
            known = ", ".join(sorted(f.authType for f in strcred.findCheckerFactories()))
            raise ConfigError(f"unknown checker {name!r} (known: {known})",
                              f"server.auth[{i}]", config.path) from None
        except Exception as e:
            raise ConfigError(f"checker {name!r}: {e}", f"server.auth[{i}]", config.path) from e
    return result


@implementer(IHandshakeListener)
class TrackedConnection(policies.ProtocolWrapper):
    """
    One connection of a L{ConnectionLimits} listener: arms the TLS handshake
    deadline and the close deadline (see there) around the wrapped protocol.
    """

    #: The TCP connection, or the TLS protocol over it (C{startTLS}, C{abortConnection}).
    transport: Any
    _netsuite_host: str | None = None
    _handshake_timer: Any = None
    _close_timer: Any = None
    _gone = False

    def makeConnection(self, transport):
        if isinstance(transport, TLSMemoryBIOProtocol):
            # Implicit TLS (our wrapping, or an ssl: endpoint): not yet negotiated.
            self._arm_handshake()
        # Every listener is request/response or interactive: a reply that ends
        # in a later reactor turn than it began (a streamed body's last piece, a
        # TELNET echo) must not wait for the client's delayed ACK (Nagle).
        set_nodelay = getattr(transport, "setTcpNoDelay", None)  # not on unix: sockets
        if set_nodelay is not None:
            try:
                set_nodelay(True)
            except OSError:
                pass
        super().makeConnection(transport)

    def startTLS(self, ctx, normal: bool = True) -> None:
        """STARTTLS, STLS, AUTH TLS: the handshake that follows has a deadline too."""
        self.transport.startTLS(ctx, normal)
        self._arm_handshake()

    def handshakeCompleted(self) -> None:
        if self._handshake_timer is not None:
            metrics.tls_handshakes.labels(self.factory.listener, "ok").inc()
        self._cancel("_handshake_timer")
        if not self._gone and IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def loseConnection(self) -> None:
        super().loseConnection()
        if self._close_timer is None and not self._gone:
            self._close_timer = self.factory.reactor.callLater(
                self.factory.close_timeout, self._expired, "close")

    def connectionLost(self, reason):
        self._gone = True
        if self._handshake_timer is not None:  # a TLS error, or gone during the handshake
            metrics.tls_handshakes.labels(self.factory.listener, "failed").inc()
        self._cancel("_handshake_timer")
        self._cancel("_close_timer")
        super().connectionLost(reason)

    def _arm_handshake(self) -> None:
        if self._handshake_timer is None:
            self._handshake_timer = self.factory.reactor.callLater(
                self.factory.tls_handshake_timeout, self._expired, "tls handshake")

    def _cancel(self, name: str) -> None:
        timer = getattr(self, name)
        setattr(self, name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _expired(self, what: str) -> None:
        if what == "close":
            self._close_timer = None
        else:
            self._handshake_timer = None
            metrics.tls_handshakes.labels(self.factory.listener, "failed").inc()
        log.info("{what} timeout: listener={listener} address={client}, connection aborted",
                 what=what, listener=self.factory.listener, client=self._netsuite_host,
                 event="connection_aborted", reason=_TIMEOUT_REASONS[what])
        self.transport.abortConnection()


@implementer(IProtocolNegotiationFactory, shutdown.IDrainable)
class ConnectionLimits(policies.WrappingFactory):
    """
    Caps connections in total and per client address; over the cap the client
    gets the protocol's own 'busy' line (SMTP 421, POP3 -ERR, IMAP BYE, FTP 421).

    Every listener's protocol goes through here, so this is also where a
    connection's life is bounded whatever the protocol does: a TLS handshake
    (implicit, or after STARTTLS/STLS/AUTH TLS) must finish within
    C{tls_handshake_timeout}, and a connection told to close is aborted if it
    has not gone C{close_timeout} seconds later (a peer that never answers
    close_notify, never sends FIN, or stops reading).  The counters are
    decremented exactly once, in L{unregisterProtocol}, however it ended.
    """

    noisy = False
    protocol = TrackedConnection

    def __init__(self, wrapped: IProtocolFactory, total: int, per_address: int, busy: bytes,
                 listener: str = "?", reactor: Any = None,
                 tls_handshake_timeout: float = 30.0, close_timeout: float = 10.0,
                 on_change: Callable[[], None] | None = None):
        super().__init__(wrapped)
        if reactor is None:
            from twisted.internet import reactor
        self.total = total
        self.per_address = per_address
        self.busy = busy
        self.listener = listener
        self.reactor = reactor
        self.tls_handshake_timeout = tls_handshake_timeout
        self.close_timeout = close_timeout
        self.on_change = on_change
        self.by_address: dict[str, int] = {}
        # Listed at 0 from the start, not only after a first connection; kept,
        # as labels() costs a lock and a look-up on every connection.
        self._open = metrics.connections_open.labels(listener)
        self._made = metrics.connections.labels(listener)
        self._refused = metrics.connections_refused.labels(listener)
        self._drain_waiters: list[defer.Deferred] = []

    def drained(self) -> defer.Deferred:
        """Fires once no connection is left (the graceful stop waits on it)."""
        if not self.protocols:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._drain_waiters.append(d)
        return d

    def acceptableProtocols(self) -> list[bytes]:
        """The wrapped factory's ALPN names (twisted.web's C{http/1.1}); none for the others."""
        negotiation = IProtocolNegotiationFactory(self.wrappedFactory, None)
        return list(negotiation.acceptableProtocols()) if negotiation is not None else []

    def buildProtocol(self, addr):
        host = getattr(addr, "host", str(addr))
        if len(self.protocols) >= self.total or self.by_address.get(host, 0) >= self.per_address:
            log.warn("connection refused, limit reached: address={client}", client=host,
                     listener=self.listener, event="connection_refused",
                     reason="connection_limit")
            self._refused.inc()
            return _Busy(self.busy, self.reactor,
                         self.tls_handshake_timeout + self.close_timeout)
        self.by_address[host] = self.by_address.get(host, 0) + 1
        proto = super().buildProtocol(addr)
        if proto is None:
            self._release(host)
        else:
            proto._netsuite_host = host
            self._made.inc()
            self._open.inc()
        self._changed()
        return proto

    def _release(self, host: str) -> None:
        left = self.by_address.get(host, 1) - 1
        if left <= 0:
            self.by_address.pop(host, None)
        else:
            self.by_address[host] = left

    def unregisterProtocol(self, p):
        super().unregisterProtocol(p)
        host = getattr(p, "_netsuite_host", None)
        if host is not None:
            p._netsuite_host = None  # released once, whatever calls us again
            self._release(host)
            self._open.dec()
            self._changed()
        if not self.protocols and self._drain_waiters:
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                d.callback(None)

    def counts(self) -> dict[str, Any]:
        """What C{run/connections.json} shows for this listener."""
        return {"open": len(self.protocols), "addresses": dict(self.by_address)}

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


class _Busy(Protocol):
    """Says the protocol's 'busy' line and hangs up, within a deadline even over TLS."""

    def __init__(self, line: bytes, reactor: Any, deadline: float):
        self.line = line
        self.reactor = reactor
        self.deadline = deadline
        self._timer: Any = None

    def makeConnection(self, transport):
        self.transport = transport
        transport.write(self.line)
        transport.loseConnection()
        # Over TLS the line waits for the handshake: a silent client must not keep the socket.
        self._timer = self.reactor.callLater(self.deadline, transport.abortConnection)

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason=None):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class ConnectionStatus(service.Service):
    """
    Writes C{run/connections.json}: per listener, open connections in total and
    per client address.  Changes are coalesced into at most one write per
    C{delay} seconds, so a connection burst costs a handful of small writes.
    The writes run in a thread, one at a time: creating and renaming a file
    waits for the filesystem's journal, which deliveries' fsyncs keep busy.
    """

    delay = 0.1

    def __init__(self, path, reactor: Any):
        self.path = path
        self.reactor = reactor
        self.listeners: dict[str, ConnectionLimits] = {}
        self._pending: Any = None
        #: The write in its thread, if one is under way.
        self._writing: defer.Deferred | None = None
        #: A change came while a write was under way: write again after it.
        self._again = False

    def add(self, limits: ConnectionLimits) -> None:
        self.listeners[limits.listener] = limits
        limits.on_change = self.changed

    def changed(self) -> None:
        if self._pending is None and self.running:
            self._pending = self.reactor.callLater(self.delay, self._flush)

    def _snapshot(self) -> str:
        import json
        import os

        return json.dumps({
            "pid": os.getpid(),
            "listeners": {name: limits.counts() for name, limits in self.listeners.items()},
        })

    def _store(self, text: str) -> None:
        """Blocking: replace the file with C{text}."""
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)

    def write(self) -> None:
        """Write now, in this thread (at start-up)."""
        self._pending = None
        self._store(self._snapshot())

    def _flush(self) -> None:
        from twisted.internet import threads

        self._pending = None
        if self._writing is not None:
            self._again = True
            return
        # The counts are read here, on the reactor; only the file work is in the thread.
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                      self._store, self._snapshot())
        self._writing = d

        def written(result):
            self._writing = None
            if isinstance(result, Failure):
                log.failure("writing {path}", result, path=str(self.path))
            if self._again:
                self._again = False
                self.changed()

        d.addBoth(written)

    def startService(self):
        super().startService()
        self.write()

    def stopService(self):
        super().stopService()
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        self._again = False

        def remove(_=None) -> None:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

        if self._writing is not None:
            # A write under way would bring the file back: remove it after that one.
            d = defer.Deferred()
            self._writing.addBoth(lambda _: d.callback(None))
            return d.addCallback(remove)
        remove()
        return None


def _limits_for(config: Config, name: str) -> tuple[int, int]:
    """Per-protocol C{max_connections} settings win over C{[limits]}."""
    total = config.limits.max_connections
    per = config.limits.max_connections_per_address
    for section_name in (name, _section_of(name)):
        sec = config.sections.get(section_name)
        if sec is not None:
            total = getattr(sec, "max_connections", total)
            per = getattr(sec, "max_connections_per_address", per)
    return total, per


def _section_of(listener: str) -> str:
    return {"submission": "smtp", "smtps": "smtp", "pop3s": "pop3", "imaps": "imap",
            "ftps": "ftp", "telnets": "telnet", "https": "http"}.get(listener, listener)


#: Listen backlog for endpoints that do not give one (Twisted's default is 50).
#: FTP, SMTP, POP3 and IMAP clients wait for the server to speak first: a
#: burst of connections beyond the accept queue has its handshakes completed
#: by SYN cookies and their final ACK dropped, and such a client then waits
#: for a banner that never comes (the server never heard of it) until its
#: own timeout.  The kernel caps the value at C{net.core.somaxconn}.
LISTEN_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """C{description} with L{LISTEN_BACKLOG} when it is a listening kind that takes one."""
    kind = split_proxy(description)[1].split(":", 1)[0]
    if kind in ("tcp", "tcp6", "ssl", "unix") and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


def server_endpoint(ctx: ServerContext, description: str, implicit_tls: bool):
    """
    The endpoint, and whether the factory must be wrapped in TLS by us: an
    implicit-TLS listener on a plain C{tcp:}/C{tcp6:}/C{unix:}/C{systemd:}
    endpoint is served with the configured certificate.
    """
    kind = description.split(":", 1)[0]
    if kind == "systemd":
        systemd.check_inherited(description)
    ep = endpoints.serverFromString(ctx.reactor, with_backlog(description))
    return ep, implicit_tls and kind != "ssl"


def build(config: Config, reactor: Any = None, worker: Any = None) -> shutdown.GracefulStop:
    """
    Build the whole server; raises L{ConfigError} before anything listens.
    C{worker}: a L{netsuite.workers.WorkerRole} when this process is one of
    C{--workers N} (listeners adopted from the parent, shared throttle).
    """
    try:
        return _build(config, reactor, worker)
    except ConfigError as e:
        if e.file is None and config.path is not None:
            e.file = str(config.path)
        raise
    except OSError as e:
        raise ConfigError(f"{e.filename or ''}: {e.strerror}".lstrip(": "), "server.data_dir",
                          config.path) from e


def _build(config: Config, reactor: Any, worker: Any = None) -> shutdown.GracefulStop:
    if reactor is None:
        from twisted.internet import reactor

    protocols.load_all()
    # Durable writes (fsync) and password hashing run in the reactor's threads;
    # Twisted's default of 10 would make the 11th concurrent delivery wait.
    reactor.suggestThreadPoolSize(64)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    realm = make_realm(config)
    auth = config.auth
    portal = Portal(realm, combine([cached(c, auth.cache_size, auth.cache_ttl,
                                           auth.cache_untracked)
                                    for c in make_checkers(config)]))
    throttle = LoginThrottle(config.throttle) if worker is None else worker.throttle(config)
    throttled = ThrottledPortal(portal, throttle, reactor)
    ctx = ServerContext(config, throttled, realm,
                        tls.CurrentCertificate(tls.context_factory(config)), reactor)

    top = shutdown.GracefulStop(config.server.shutdown_timeout, reactor)
    ctx.top = top
    status = ConnectionStatus(config.data_dir / "run" / (
        "connections.json" if worker is None else worker.connections_file), reactor)
    for hook in protocols.SERVICE_HOOKS:
        hook(ctx, top)
    if config.tls.acme is not None:
        from netsuite import tls_acme

        tls_acme.start(ctx, top)
    for name, endpoints_ in config.listen.items():
        if not endpoints_ or endpoints_ == ["off"] or name not in protocols.FACTORIES:
            continue
        limited = listener_limits(ctx, name)
        status.add(limited)
        top.factories.append(limited)
        for i, description in enumerate(endpoints_):
            svc = listener_service(ctx, name, i, description, limited, worker)
            svc.setName(f"{name}-{i}")
            svc.setServiceParent(top)
            top.listeners.append(svc)
    status.setServiceParent(top)
    if worker is None:  # with workers, the parent writes it
        ReadyFile(config.data_dir / "run" / "listening.json").setServiceParent(top)
    return top


def listener_limits(ctx: ServerContext, name: str) -> ConnectionLimits:
    """
    Listener C{name}'s protocol factory inside its L{ConnectionLimits}: one
    cap per listener, shared by its endpoints, and inside TLS so that a TLS
    client can read the busy line.
    """
    config = ctx.config
    kind = protocols.FACTORIES[name]
    total, per = _limits_for(config, name)
    return ConnectionLimits(kind.build(ctx, name), total, per, kind.busy,
                            listener=name, reactor=ctx.reactor,
                            tls_handshake_timeout=config.limits.tls_handshake_timeout,
                            close_timeout=config.limits.close_timeout)


def listener_service(ctx: ServerContext, name: str, i: int, description: str,
                     limited: ConnectionLimits, worker: Any = None) -> "ListenerService":
    """The (not yet started) L{ListenerService} of listener C{name}'s C{i}th endpoint."""
    implicit_tls = LISTENERS[name][1]
    tls_options: Any = ctx.tls
    proxied, inner = split_proxy(description)
    try:
        if worker is None:
            ep, wrap = server_endpoint(ctx, inner, implicit_tls)
        else:
            ep, wrap, tls_options = worker.endpoint(ctx, name, i, inner, implicit_tls)
    except (ValueError, TypeError, KeyError) as e:
        hint = SYSTEMD_HINT if inner.startswith("systemd:") else ENDPOINT_HINT
        raise ConfigError(f"bad endpoint {description!r}: {e}; {hint}",
                          f"listen.{name}[{i}]", ctx.config.path) from e
    f: IProtocolFactory = limited
    if wrap:
        f = TLSMemoryBIOFactory(tls_options, False, limited)
    if proxied:
        # Outermost: HAProxy's header comes before the TLS handshake.
        server = ctx.config.server
        f = proxyproto.ProxyHeaderFactory(f, proxyproto.networks(server.proxy_trusted),
                                          server.proxy_timeout, name, ctx.reactor)
    return ListenerService(name, description, ep, f)


class ListenerService(service.Service):
    """
    One endpoint listener.  Unlike Twisted's C{StreamServerEndpointService},
    a port that cannot be bound stops start-up at once with one line (which
    listener, which endpoint, why) instead of a logged traceback and a server
    running without it; and it remembers the bound port for C{listening.json}.
    """

    def __init__(self, listener: str, description: str, endpoint, factory):
        self.listener = listener
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port: Any = None
        self._listening: defer.Deferred | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self._listening is None:
            self._listen()

    def _listen(self) -> None:
        failed: list[Failure] = []

        def listening(port):
            self.port = port
            log.info("{listener} listening on {endpoint} ({address})",
                     listener=self.listener, endpoint=self.description,
                     address=str(port.getHost()))
            return port

        def cannot(failure: Failure) -> None:
            failed.append(failure)
            if self._listening is not None:  # an endpoint that answered later
                log.failure("listen.{listener}: cannot listen on {endpoint}", failure,
                            listener=self.listener, endpoint=self.description)

        d = self.endpoint.listen(self.factory)
        d.addCallbacks(listening, cannot)
        if failed:  # tcp:, ssl:, unix: and systemd: endpoints answer at once
            e = failed[0].value
            reason = getattr(e, "socketError", None) or e
            raise SystemExit(f"netsuite: listen.{self.listener}: cannot listen on "
                             f"{self.description}: {reason}")
        self._listening = d

    def stopService(self):
        super().stopService()
        d, self._listening = self._listening, None
        if d is None:
            return None
        d.cancel()  # still waiting for an endpoint: give up
        return d.addCallback(lambda port: port.stopListening() if port is not None else None)


def listening_ports(top: Any) -> dict[str, list[int | str]]:
    """Listener name -> its bound ports (a C{unix:} listener's path), from the running services."""
    import os

    ports: dict[str, list[int | str]] = {}
    for svc in top:
        if isinstance(svc, ListenerService) and svc.port is not None:
            host = svc.port.getHost()
            bound = getattr(host, "port", None)
            if bound is None:
                bound = os.fsdecode(getattr(host, "name", b"") or b"")
            ports.setdefault(svc.listener, []).append(bound)
    return ports


def ready_status(ports: Mapping[str, Sequence[int | str]]) -> str:
    """The C{STATUS=} sent with C{READY=1}: what C{systemctl status} shows."""
    return "serving " + ", ".join(
        f"{name} {' '.join(str(p) for p in bound)}" for name, bound in sorted(ports.items()))


class ReadyFile(service.Service):
    """
    Writes C{run/listening.json} (listener -> bound ports) once every listener
    is up: how scripts and tests learn ephemeral ports without racing; and
    tells systemd C{READY=1} then (C{STOPPING=1} when stopping).
    """

    def __init__(self, path):
        self.path = path

    def startService(self):
        super().startService()
        self.write()

    def write(self) -> None:
        """Write the file from the listeners running now (at start, and after a reload)."""
        import json
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        ports = listening_ports(self.parent)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "listen": ports}))
        os.replace(tmp, self.path)
        systemd.notifier().ready(ready_status(ports))

    def stopService(self):
        super().stopService()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

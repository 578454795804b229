"""
C{--workers N}: one parent process owns the listening sockets, N worker
processes serve them, each with its own reactor over the same data dir.

How the sockets are shared: the parent binds every configured endpoint
(through the same Twisted endpoint strings as a single process, so C{tcp:0},
C{tcp6:}, C{unix:}, C{ssl:} and C{systemd:} all work), never accepts on them
itself, and hands the listening descriptors to each worker with
C{spawnProcess(childFDs=...)}; a worker adopts them with
C{reactor.adoptStreamPort} and wraps implicit-TLS listeners in
C{TLSMemoryBIOFactory} exactly as a single process does.  Chosen over
C{SO_REUSEPORT} because:
  - the parent knows the real port of a C{tcp:0} listener before any worker
    exists (with C{SO_REUSEPORT} every worker would have to bind the port the
    first one was given, racing any other process that may take it);
  - all workers share one accept queue: connections waiting in the backlog of
    a worker that dies are served by the others, whereas C{SO_REUSEPORT}
    hashes each connection to one socket and a dead worker's backlog is reset;
  - C{unix:} and C{systemd:} endpoints need no special case.

What is shared between workers, and how (never one process's memory):
  - the outgoing queue is run by worker 0 alone.  Other workers accept
    submissions into the spool as before and leave a C{load-ID} request in
    C{queue/control/}; worker 0 picks it up on its next pass (and recovers the
    whole spool when it restarts), so each message has one sender;
  - the POP3 maildrop lock is an C{flock} in the maildrop
    (L{netsuite.pop3.mailbox});
  - the failed-login throttle is an SQLite file, C{run/throttle.db}
    (L{netsuite.auth.shared_throttle}), emptied when the parent starts;
    the queue's per-user hourly sending counts live there too
    (L{netsuite.queue.sendlog});
  - IMAP IDLE sees other workers' deliveries through the store's folder
    polling, whose interval is capped at L{POLL_INTERVAL} in a worker.
Connection caps (C{max_connections}...) are per worker, and each worker writes
its own C{run/connections-INDEX.json}; the parent writes C{run/listening.json}
(its pid and the bound ports) once every worker is serving, and
C{run/workers.json} (worker index -> pid) whenever that changes.

Workers log through the parent, so there is one log file: each renders its
lines in the parent's format (when the parent's observer is netsuite's) and
writes them to its stdout, and the parent's observer writes them as they are;
with another observer, workers send twisted.logger JSON events and the parent
re-emits them.  Either way the log system is the worker's index and pid.  A
worker that dies is started again (after a delay that grows if it keeps dying
at once); SIGTERM to the parent stops every worker cleanly, then the parent.  A
worker whose parent vanishes (kill -9) sees its stdin close and stops too.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from twisted.application import service
from twisted.internet import defer, endpoints, error, main, protocol
from twisted.internet.interfaces import IReadDescriptor, IStreamServerEndpoint
from twisted.logger import (
    ILogObserver,
    InvalidLogLevelError,
    Logger,
    LogLevel,
    eventFromJSON,
    globalLogPublisher,
    jsonFileLogObserver,
)
from zope.interface import implementer

from netsuite import logs, metrics, protocols, reload, systemd
from netsuite.auth.shared_throttle import SharedLoginThrottle
from netsuite.config import Config, ConfigError, split_proxy
from netsuite.queue.runner import QueueRunner
from netsuite.queue.sendlog import SharedSendLog
from netsuite.service import build, ready_status, with_backlog
from netsuite.shutdown import exit_cleanly

log = Logger(namespace="netsuite.workers")

#: Seconds between folder polls in a worker, the bound on how late IDLE hears
#: of another worker's delivery when the store has no change notification.
POLL_INTERVAL = 0.5
#: Seconds a worker gets to stop after SIGTERM, beyond C{[server] shutdown_timeout}
#: (its own bound on ending sessions), before it is killed.
STOP_GRACE = 5.0
#: The first listening descriptor's number in a worker.
FIRST_FD = 3


@dataclass
class Inherited:
    """One listening socket a worker adopts."""

    listener: str
    index: int
    description: str
    fd: int  # in the worker
    family: int


@dataclass
class WorkerSpec:
    """What the parent sends a worker on its stdin (pickled)."""

    index: int
    config: Config
    sockets: list[Inherited]
    #: The parent's log format when its observer is netsuite's (L{logs.installed_format}):
    #: the worker renders its lines in it and the parent writes them as they are.
    #: C{None}: the worker sends events, and the parent's observer renders them.
    log_format: str | None = None


# -- in the worker ----------------------------------------------------------------


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """An endpoint over a listening socket inherited from the parent."""

    def __init__(self, reactor: Any, fd: int, family: int):
        self.reactor = reactor
        self.fd = fd
        self.family = family

    def listen(self, factory) -> defer.Deferred:
        def adopt():
            port = self.reactor.adoptStreamPort(self.fd, self.family, factory)
            os.close(self.fd)  # adoptStreamPort works on its own duplicate
            return port

        return defer.execute(adopt)


class WorkerRole:
    """Passed to L{netsuite.service.build}: what differs in a worker process."""

    def __init__(self, spec: WorkerSpec):
        self.index = spec.index
        self.sockets = {(s.listener, s.index): s for s in spec.sockets}

    @property
    def connections_file(self) -> str:
        return f"connections-{self.index}.json"

    def adjust(self, config: Config) -> None:
        """What a worker changes in its configuration (at start and at a reload)."""
        store_cfg = config.sections.get("store")
        if store_cfg is not None and getattr(store_cfg, "poll_interval", 0) > POLL_INTERVAL:
            store_cfg.poll_interval = POLL_INTERVAL

    def throttle(self, config: Config):
        return SharedLoginThrottle(config.throttle, throttle_path(config))

    def send_log(self, config: Config) -> SharedSendLog:
        return SharedSendLog(throttle_path(config))

    def endpoint(self, ctx, name: str, i: int, description: str, implicit_tls: bool):
        """(endpoint, wrap in TLS?, TLS options) for listener C{name}'s C{i}th endpoint."""
        inherited = self.sockets[(name, i)]
        ep = AdoptedEndpoint(ctx.reactor, inherited.fd, inherited.family)
        if description.split(":", 1)[0] == "ssl":
            # The parent's ssl: port handed over the bare socket: TLS is ours,
            # with the certificate that endpoint string names.
            ssl_ep = endpoints.serverFromString(ctx.reactor, description)
            return ep, True, ssl_ep._sslContextFactory
        return ep, implicit_tls, ctx.tls


def throttle_path(config: Config) -> Path:
    return config.data_dir / "run" / "throttle.db"


def _submit_only_runner(runner):
    """Worker > 0: a queue that accepts into the spool and leaves the sending to worker 0."""
    class SubmitOnlyRunner(QueueRunner):
        def startService(self) -> None:
            service.Service.startService(self)
            self._pool.start()

        def stopService(self):
            service.Service.stopService(self)
            self._pool.stop()
            self.spool.sync()

        def attempt(self, env) -> None:
            """Hand the message (already durable in the spool) to worker 0."""
            self.envelopes.pop(env.id, None)
            self._fresh.pop(env.id, None)
            try:
                self.spool.request("load", env.id)
            except OSError:
                log.failure("queue: cannot notify the queue worker of {id}; it is "
                            "sent when that worker next recovers the spool", id=env.id)

    return SubmitOnlyRunner(runner.ctx, runner.settings)


@implementer(IReadDescriptor)
class _ParentWatch:
    """Stops the worker's reactor when its stdin (the parent's pipe) closes."""

    def __init__(self, reactor: Any):
        self.reactor = reactor
        os.set_blocking(0, False)

    def fileno(self) -> int:
        return 0

    def doRead(self):
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return None
        return None if data else main.CONNECTION_DONE

    def connectionLost(self, reason) -> None:
        if self.reactor.running:
            log.warn("worker: parent gone, stopping")
            _stop(self.reactor)

    def logPrefix(self) -> str:
        return "parent-watch"


def _stop(reactor: Any) -> None:
    try:
        reactor.stop()
    except error.ReactorNotRunning:
        pass  # already on its way down


def _read_spec() -> WorkerSpec:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = os.read(0, n - len(buf))
            if not chunk:
                raise SystemExit("netsuite worker: no spec from the parent")
            buf += chunk
        return buf

    (size,) = struct.unpack("!Q", exactly(8))
    return pickle.loads(exactly(size))


#: A line a worker rendered itself: this byte, then a JSON object with the
#: line (C{t}), its level's name (C{l}) and its namespace (C{n}), so that any
#: other observer in the parent still sees the real level.
RENDERED_MARK = b"\x1d"
_MARK = RENDERED_MARK.decode("ascii")


def _to_parent(out: Any, spec: WorkerSpec) -> ILogObserver:
    """
    The worker's log observer.  Rendering a line where it is logged, in
    parallel with the other workers, and sending it ready to write keeps the
    parent's one reactor out of every line (as a JSON event to parse and render
    again, the parent spent a quarter of a worker's CPU per SMTP message).
    Events the parent acts on (ready) and any log to another observer go as
    events.
    """
    as_event = jsonFileLogObserver(out)
    if spec.log_format is None:
        return as_event
    render = logs.renderer(spec.log_format)
    system = f"worker-{spec.index} {os.getpid()}"

    def observe(event: dict[str, Any]) -> None:
        if event.get("netsuite_worker_ready"):
            as_event(event)
            return
        text = render(dict(event, log_system=system, netsuite_worker=spec.index))
        if text:
            level = event.get("log_level")
            out.write(_MARK + json.dumps({
                "t": text, "l": getattr(level, "name", "info"),
                "n": event.get("log_namespace")}) + "\n")

    return cast(ILogObserver, observe)


def worker_main() -> int:
    """C{python -m netsuite.workers}: run one worker until SIGTERM or the parent goes."""
    import io

    from twisted.internet import reactor as _reactor
    from twisted.logger import globalLogBeginner

    reactor: Any = _reactor
    spec = _read_spec()
    out = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), encoding="utf-8",
                           line_buffering=True)
    globalLogBeginner.beginLoggingTo([_to_parent(out, spec)], redirectStandardIO=False)
    protocols.load_all()
    metrics.set_worker(spec.index)  # /metrics says which worker answered the scrape
    role = WorkerRole(spec)
    role.adjust(spec.config)
    top = build(spec.config, reactor, worker=role)
    top.getServiceNamed("reload").worker = role  # listeners stay as the parent bound them
    try:
        runner = top.getServiceNamed("queue")
    except KeyError:
        runner = None
    if runner is not None and spec.index != 0 and not runner.spool.shared:
        # (A shared spool, PostgreSQL: every worker claims and sends, as hosts do.)
        runner.disownServiceParent()
        replacement = _submit_only_runner(runner)
        replacement.setServiceParent(top)
        runner.realm.set_relay(replacement)
        runner = replacement
    if runner is not None and not runner.spool.shared:
        # (A shared spool's counts are in PostgreSQL already: netsuite.queue.pgsendlog.)
        runner.sends = role.send_log(spec.config)

    failed: list[bool] = []

    def start() -> None:
        # Ctrl-C in a terminal reaches the whole process group: the parent
        # decides, and stops the workers with SIGTERM.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

        def on_term(signum, frame) -> None:
            # A second SIGTERM (the parent's, and a process-group kill) is one request.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            log.info("worker {index}: SIGTERM, stopping", index=spec.index)
            reactor.callFromThread(_stop, reactor)

        signal.signal(signal.SIGTERM, on_term)
        try:
            top.privilegedStartService()
            top.startService()
        except BaseException:
            log.failure("worker {index}: start-up failed", index=spec.index)
            failed.append(True)
            _stop(reactor)
            return
        reactor.addReader(_ParentWatch(reactor))
        log.info("worker {index} serving, pid {pid}", index=spec.index, pid=os.getpid(),
                 netsuite_worker_ready=True)

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown",
                                  lambda: top.stopService() if top.running else None)
    reactor.run()
    return 1 if failed else 0


# -- in the parent ---------------------------------------------------------------


class _NoConnections(protocol.Factory):
    """The parent's listening ports never accept (L{WorkerParent} stops reading them)."""

    noisy = False

    def buildProtocol(self, addr):
        return None


class _WorkerProcess(protocol.ProcessProtocol):
    """One worker as the parent sees it: its log events, its exit."""

    def __init__(self, parent: "WorkerParent", index: int):
        self.parent = parent
        self.index = index
        self.pid: int | None = None
        self.ready = False
        self.started = time.monotonic()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._buf = {1: b"", 2: b""}

    @property
    def system(self) -> str:
        return f"worker-{self.index} {self.pid}"

    transport: Any

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, fd: int, data: bytes) -> None:
        buf = self._buf.get(fd, b"") + data
        *lines, self._buf[fd] = buf.split(b"\n")
        for line in lines:
            self._line(fd, line)

    def _line(self, fd: int, line: bytes) -> None:
        if fd == 1 and line.startswith(RENDERED_MARK) and self._rendered(line[1:]):
            return
        text = line.decode("utf-8", "replace").lstrip("\x1e").rstrip("\r")
        if not text:
            return
        if fd == 1:
            try:
                event = eventFromJSON(text)
            except ValueError:
                event = None
            if isinstance(event, dict):
                event["log_system"] = self.system
                event["netsuite_worker"] = self.index
                globalLogPublisher(event)
                if event.get("netsuite_worker_ready"):
                    self.ready = True
                    self.parent.worker_ready(self)
                return
        log.info("{text}", text=text, log_system=self.system)

    def _rendered(self, body: bytes) -> bool:
        """Publish a line the worker rendered (L{RENDERED_MARK}); C{False} if it is not one."""
        try:
            got = json.loads(body)
        except ValueError:
            return False
        if not isinstance(got, dict) or not isinstance(got.get("t"), str):
            return False
        try:
            level = LogLevel.levelWithName(str(got.get("l")))
        except InvalidLogLevelError:
            level = LogLevel.info
        namespace = got.get("n")
        globalLogPublisher({logs.RENDERED: got["t"], "log_time": time.time(),
                            "log_level": level, "log_system": self.system,
                            "log_namespace": namespace if isinstance(namespace, str)
                            else "netsuite.workers",
                            "netsuite_worker": self.index})
        return True

    def processEnded(self, reason) -> None:
        for fd, rest in self._buf.items():
            if rest:
                self._line(fd, rest)
        self.parent.worker_ended(self, reason)
        self.ended.callback(None)


class WorkerParent(service.Service):
    """The parent: binds, spawns, restarts and stops the workers (module docstring)."""

    #: Seconds before a dead worker is replaced; doubles while it dies young.
    restart_delay = 0.5
    max_restart_delay = 10.0

    def __init__(self, config: Config, reactor: Any = None):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.count = config.server.workers
        self.ports: list[tuple[str, int, str, Any]] = []
        self.workers: dict[int, _WorkerProcess] = {}
        self._delays: dict[int, float] = {}
        self._serving = False
        self._stopping = False
        #: A worker killed, or exiting non-zero, while stopping: no clean exit.
        self._unclean = False
        self.run_dir = config.data_dir / "run"
        self._previous_hup: Any = None

    # -- start ---------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._bind()

    def startService(self) -> None:
        super().startService()
        if not self.ports:
            self._bind()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in ("throttle.db", "throttle.db-wal", "throttle.db-shm"):
            (self.run_dir / name).unlink(missing_ok=True)
        for index in range(self.count):
            self._spawn(index)
        self._previous_hup = reload.install_sighup(self.reactor, self.reload)

    # -- reload ---------------------------------------------------------------------

    def reload(self) -> bool:
        """
        SIGHUP: check the file again and pass the signal on to every worker,
        which reloads itself (L{netsuite.reload}); listener changes need a
        restart, since the sockets are this process's.  False if refused.
        """
        if self._stopping:
            return False
        reload._hooks(reload.on_reload_start)
        try:
            log.info("reload: SIGHUP, reading {path}",
                     path=str(self.config.path or "embedded defaults"))
            try:
                new = self.config.reread()
            except ConfigError as e:
                log.error("netsuite: reload refused: {error}", error=str(e))
                return False
            old_listen = reload.wanted_listeners(self.config)
            new_listen = reload.wanted_listeners(new)
            for name in sorted(set(old_listen) | set(new_listen)):
                if old_listen.get(name, []) != new_listen.get(name, []):
                    log.warn("reload: listen.{name} changed; with --workers a listener "
                             "change takes effect at a restart (the running listeners "
                             "are kept)", name=name)
            # Kept for workers started from now on (one that died, restarted).
            new.listen = self.config.listen
            new.server = self.config.server
            self.config = new
            signalled = []
            for index, proc in sorted(self.workers.items()):
                if not proc.ready:
                    # Not serving yet (SIGHUP would end it): the next reload reaches it.
                    continue
                try:
                    proc.transport.signalProcess("HUP")
                    signalled.append(str(index))
                except error.ProcessExitedAlready:
                    pass
            log.info("reload: done (passed to workers {workers})",
                     workers=", ".join(signalled) or "none")
            return True
        finally:
            reload._hooks(reload.on_reload_done)

    def _bind(self) -> None:
        for name, descriptions in self.config.listen.items():
            if not descriptions or descriptions == ["off"] or name not in protocols.FACTORIES:
                continue
            for i, description in enumerate(descriptions):
                # The bare socket: a haproxy: listener's header is read in the workers.
                bare = with_backlog(split_proxy(description)[1])
                ep = endpoints.serverFromString(self.reactor, bare)
                result: list[Any] = []
                ep.listen(_NoConnections()).addBoth(result.append)
                port = result[0] if result else None
                if port is None or not hasattr(port, "getHost"):
                    e = getattr(port, "value", port)
                    reason = getattr(e, "socketError", None) or e or "no answer"
                    raise SystemExit(f"netsuite: listen.{name}: cannot listen on "
                                     f"{description}: {reason}")
                port.stopReading()  # the workers accept, never the parent
                log.info("{listener} listening on {endpoint} ({address})", listener=name,
                         endpoint=description, address=str(port.getHost()))
                self.ports.append((name, i, description, port))

    def _spawn(self, index: int) -> None:
        if self._stopping:
            return
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        inherited = []
        for n, (name, i, description, port) in enumerate(self.ports):
            fd = FIRST_FD + n
            child_fds[fd] = port.fileno()
            sock = getattr(port, "socket", None)
            family = sock.family if sock is not None else socket.AF_INET
            inherited.append(Inherited(name, i, description, fd, family))
        spec = pickle.dumps(WorkerSpec(index, self.config, inherited, logs.installed_format()))
        proc = _WorkerProcess(self, index)
        package_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in [package_root, env.get("PYTHONPATH", "")] if p)
        self.reactor.spawnProcess(proc, sys.executable,
                                  [sys.executable, "-m", "netsuite.workers"],
                                  env=env, childFDs=child_fds)
        proc.transport.write(struct.pack("!Q", len(spec)) + spec)
        self.workers[index] = proc
        log.info("worker {index} started, pid {pid}", index=index, pid=proc.pid)
        self._write_workers()

    # -- events from workers ----------------------------------------------------------

    def worker_ready(self, proc: _WorkerProcess) -> None:
        self._write_workers()
        if not self._serving and all(p.ready for p in self.workers.values()) \
                and len(self.workers) == self.count:
            self._serving = True
            self._write_listening()

    def worker_ended(self, proc: _WorkerProcess, reason) -> None:
        if self.workers.get(proc.index) is proc:
            del self.workers[proc.index]
        why = reason.value
        if isinstance(why, error.ProcessTerminated):
            what = (f"killed by signal {why.signal}" if why.signal is not None
                    else f"exit code {why.exitCode}")
        else:
            what = "exit code 0"
        if self._stopping:
            log.info("worker {index} (pid {pid}) stopped ({what})", index=proc.index,
                     pid=proc.pid, what=what)
            if what != "exit code 0":
                self._unclean = True
            return
        if not self._serving and not proc.ready:
            log.error("worker {index} (pid {pid}) failed to start ({what}); stopping",
                      index=proc.index, pid=proc.pid, what=what)
            if self.reactor.running:
                self.reactor.stop()
            return
        young = time.monotonic() - proc.started < 5.0
        delay = self._delays.get(proc.index, self.restart_delay)
        delay = min(delay * 2, self.max_restart_delay) if young else self.restart_delay
        self._delays[proc.index] = delay
        log.warn("worker {index} (pid {pid}) died ({what}); restarting it in {delay}s",
                 index=proc.index, pid=proc.pid, what=what, delay=delay)
        self._write_workers()
        self.reactor.callLater(delay, self._spawn, proc.index)

    # -- run/ files ---------------------------------------------------------------------

    def _write_json(self, name: str, data: dict) -> None:
        path = self.run_dir / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def _write_workers(self) -> None:
        self._write_json("workers.json", {
            "pid": os.getpid(),
            "workers": {str(i): p.pid for i, p in sorted(self.workers.items())},
            "ready": {str(i): p.ready for i, p in sorted(self.workers.items())},
        })

    def _write_listening(self) -> None:
        ports: dict[str, list[int]] = {}
        for name, _i, _description, port in self.ports:
            ports.setdefault(name, []).append(port.getHost().port)
        self._write_json("listening.json", {"pid": os.getpid(), "listen": ports,
                                            "workers": self.count})
        systemd.notifier().ready(ready_status(ports) + f" with {self.count} workers")

    # -- stop ---------------------------------------------------------------------------

    def stopService(self):
        systemd.notifier().stopping()
        super().stopService()
        self._stopping = True
        reload.restore_sighup(self._previous_hup)
        self._previous_hup = None
        waiting = [p.ended for p in self.workers.values()]
        for proc in list(self.workers.values()):
            try:
                proc.transport.signalProcess("TERM")
            except error.ProcessExitedAlready:
                pass
        timer = self.reactor.callLater(self.stop_timeout, self._kill_all)
        d = defer.DeferredList(waiting)

        def done(_):
            if timer.active():
                timer.cancel()
            for _name, _i, _description, port in self.ports:
                port.stopListening()
            self.ports = []
            for name in ("listening.json", "workers.json"):
                (self.run_dir / name).unlink(missing_ok=True)
            if not self._unclean:
                exit_cleanly(self.reactor)  # every worker stopped gracefully

        return d.addCallback(done)

    @property
    def stop_timeout(self) -> float:
        return self.config.server.shutdown_timeout + STOP_GRACE

    def _kill_all(self) -> None:
        for proc in list(self.workers.values()):
            log.warn("worker {index} (pid {pid}) did not stop in {t}s; killing it",
                     index=proc.index, pid=proc.pid, t=self.stop_timeout)
            try:
                proc.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass


if __name__ == "__main__":
    sys.exit(worker_main())

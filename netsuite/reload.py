"""
Reloading without a restart: SIGHUP, or C{netsuite reload}.

L{ReloadService} reads the configuration file again (with the command line's
overrides, kept on the L{Config}) and applies what can change while running;
sessions in progress are not touched:

  - the certificate: L{tls.context_factory} again, then
    L{tls.CurrentCertificate.replace}, so the next handshake on every listener
    and STARTTLS uses the file as it is now; one that cannot be loaded keeps
    the old certificate (and says why);
  - listeners: an endpoint no longer configured stops listening (its open
    connections go on), a new one is bound and served; C{run/listening.json}
    and C{run/connections.json} follow;
  - L{LIVE_SECTIONS}: the running L{Config} object gets the new section, read
    by the realm and the protocols on their next use (aliases and local
    domains, connection caps, IMAP and POP3 settings for new sessions, ...);
  - every other changed key is named in a warning and keeps its running
    value until a restart (objects built from it at start-up hold it).

The password file needs no reload: L{netsuite.auth.passwdfile.PasswordFile}
re-reads it whenever it changes.  An invalid new configuration changes
nothing: one line C{netsuite: reload refused: FILE: KEY: REASON}.

With C{--workers N} the parent (L{netsuite.workers.WorkerParent}) checks the
new file, refuses listener changes (it owns the sockets: they need a restart)
and passes SIGHUP on to every worker, each of which reloads the rest itself.

L{on_reload_start} and L{on_reload_done} are called around every reload of
the main process (systemd's C{RELOADING=1} / C{READY=1}).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from netsuite import protocols, systemd, tls
from netsuite.config import Config, ConfigError
from netsuite.service import (
    ConnectionStatus,
    ListenerService,
    ReadyFile,
    _limits_for,
    listener_limits,
    listener_service,
)
from netsuite.store.service import configure_store

log = Logger(namespace="netsuite.reload")

#: Called (no arguments) when a reload of the main process starts, and when it
#: has been applied or refused: where systemd's notify plugs in
#: (C{RELOADING=1} / C{READY=1}).
on_reload_start: list[Callable[[], object]] = [lambda: systemd.notifier().reloading()]
on_reload_done: list[Callable[[], object]] = [lambda: systemd.notifier().reloaded()]

#: Sections whose new values take effect at reload: everything that reads them
#: does so through the running L{Config} when it needs them (the realm per
#: address look-up, IMAP and POP3 per new connection, the connection caps and
#: deadlines here, the store settings through L{configure_store}).
#: C{tls} is applied through a new certificate context.
LIVE_SECTIONS = frozenset({"mail", "limits", "imap", "pop3", "store", "tls"})


def _hooks(hooks: list[Callable[[], object]]) -> None:
    for hook in list(hooks):
        try:
            hook()
        except Exception:
            log.failure("reload hook {hook!r} failed", hook=hook)


def changed_keys(old: Any, new: Any, prefix: str) -> list[str]:
    """The dotted names of the fields that differ between two section dataclasses."""
    if dataclasses.is_dataclass(old) and type(old) is type(new):
        return [f"{prefix}.{f.name}" for f in dataclasses.fields(old)
                if getattr(old, f.name) != getattr(new, f.name)]
    return [] if old == new else [prefix]


def wanted_listeners(config: Config) -> dict[str, list[str]]:
    """Listener name -> endpoints, for the listeners that are on and exist."""
    return {name: list(eps) for name, eps in config.listen.items()
            if eps and eps != ["off"] and name in protocols.FACTORIES}


def install_sighup(reactor: Any, handler: Callable[[], Any]) -> Any:
    """
    Run C{handler} on the reactor at every SIGHUP; returns the previous
    disposition (for L{restore_sighup}), or None when not in the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_hup(signum, frame) -> None:
        reactor.callFromThread(handler)

    return signal.signal(signal.SIGHUP, on_hup)


def restore_sighup(previous: Any) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, previous)


class ReloadService(service.Service):
    """
    Applies a re-read configuration to the running server (module docstring).

    C{top} is the server's MultiService, whose L{ListenerService} children are
    the listeners (beside its L{ConnectionStatus} and L{ReadyFile});
    C{worker} is set in a C{--workers} worker (L{netsuite.workers}), where
    listeners stay as the parent bound them.
    """

    def __init__(self, ctx: Any, top: service.MultiService, worker: Any = None):
        self.ctx = ctx
        self.top = top
        self.worker = worker
        self._previous: Any = None
        self._running: defer.Deferred | None = None
        self._again = False

    @property
    def status(self) -> ConnectionStatus:
        return next(svc for svc in self.top if isinstance(svc, ConnectionStatus))

    @property
    def ready(self) -> ReadyFile | None:
        return next((svc for svc in self.top if isinstance(svc, ReadyFile)), None)

    def startService(self) -> None:
        super().startService()
        self._previous = install_sighup(self.ctx.reactor, self.requested)

    def stopService(self):
        super().stopService()
        restore_sighup(self._previous)
        self._previous = None

    def requested(self) -> None:
        """SIGHUP: reload now, or once more after the reload under way."""
        if not self.running:
            return
        if self._running is not None:
            self._again = True
            return
        log.info("reload: SIGHUP, reading {path}",
                 path=str(self.ctx.config.path or "embedded defaults"))
        self._running = self.reload()

        def finished(_):
            self._running = None
            if self._again:
                self._again = False
                self.requested()

        self._running.addBoth(finished)

    @defer.inlineCallbacks
    def reload(self):
        """Re-read and apply; returns (a Deferred of) what changed, or None if refused."""
        main = self.worker is None
        if main:
            _hooks(on_reload_start)
        try:
            result = yield self._reload()
        except Exception:
            log.failure("reload: failed")
            result = None
        finally:
            if main:
                _hooks(on_reload_done)
        return result

    def _reload_certificate(self, running: Config, old_tls: Any, live: list[str],
                            done: list[str]) -> None:
        """The certificate files as they are now; one that cannot be loaded keeps the old."""
        ctx = self.ctx
        try:
            ctx.tls.replace(tls.context_factory(running))
            done.append("certificate reloaded")
        except Exception as e:  # a ConfigError naming the file, or what OpenSSL said
            if isinstance(e, ConfigError) and e.file is None and running.path is not None:
                e.file = str(running.path)
            log.error("reload: certificate not replaced, the old one stays: {error}",
                      error=str(e))
            if old_tls is not None:  # the settings of the certificate being served
                running.sections["tls"] = old_tls
            live[:] = [key for key in live if not key.startswith("tls.")]

    @defer.inlineCallbacks
    def _reload(self):
        ctx = self.ctx
        running: Config = ctx.config
        try:
            new = running.reread()
            if self.worker is not None:
                self.worker.adjust(new)
            self._check(new)
        except ConfigError as e:
            if e.file is None and running.path is not None:
                e.file = str(running.path)
            log.error("netsuite: reload refused: {error}", error=str(e))
            return None

        done: list[str] = []
        restart = changed_keys(running.server, new.server, "server")
        if running.realm_options != new.realm_options:
            restart.append("realm")
        live = []
        for name, section in new.sections.items():
            old = running.sections.get(name)
            keys = changed_keys(old, section, name)
            if not keys:
                continue
            if name in LIVE_SECTIONS:
                live.extend(keys)
            else:
                restart.extend(keys)
        if "store.backend" in live:  # the throttle and locks were built for the old one
            live.remove("store.backend")
            restart.append("store.backend")
            new.sections["store"] = dataclasses.replace(
                new.sections["store"], backend=running.sections["store"].backend)

        # The listeners to stop and to start, decided before anything changes.
        wanted = wanted_listeners(new)
        if self.worker is not None:
            wanted = wanted_listeners(running)  # the parent owns the sockets
        current = [svc for svc in self.top if isinstance(svc, ListenerService)]
        have = {(svc.listener, svc.description) for svc in current}
        gone = [svc for svc in current
                if svc.description not in wanted.get(svc.listener, [])]
        added = [(name, i, description) for name, eps in wanted.items()
                 for i, description in enumerate(eps) if (name, description) not in have]

        # Apply the settings first, so new listeners are built from them.
        old_tls = running.sections.get("tls")
        for name in LIVE_SECTIONS:
            if name in new.sections:
                running.sections[name] = new.sections[name]
        running.listen = {name: list(eps) for name, eps in
                          (new.listen if self.worker is None else running.listen).items()}
        configure_store(ctx)
        for limits in self.status.listeners.values():
            limits.total, limits.per_address = _limits_for(running, limits.listener)
            limits.tls_handshake_timeout = running.limits.tls_handshake_timeout
            limits.close_timeout = running.limits.close_timeout
        for key in restart:
            log.warn("reload: {key} changed; it takes effect at a restart "
                     "(the running value is kept)", key=key)

        acme_before = getattr(old_tls, "acme", None)
        if acme_before is not None or running.tls.acme is not None:
            # The ACME service owns the certificate (its saved file, its renewals):
            # a reload must not put the self-signed or configured one back.
            if acme_before != running.tls.acme:
                log.warn("reload: tls.acme changed; it takes effect at a restart "
                         "(the running ACME settings and certificate are kept)")
            if old_tls is not None:
                running.sections["tls"] = old_tls
            live = [key for key in live if not key.startswith("tls.")]
            done.append("certificate kept (managed by [tls] acme)")
        else:
            self._reload_certificate(running, old_tls, live, done)
        if live:
            done.insert(0, "applied " + ", ".join(live))

        stopping = []
        for svc in gone:
            log.info("reload: {listener} stops listening on {endpoint}; its open "
                     "connections go on", listener=svc.listener, endpoint=svc.description)
            stopping.append(defer.maybeDeferred(svc.disownServiceParent))
            if svc in getattr(self.top, "listeners", []):
                # Its factory stays in the graceful stop's care: its sessions go on.
                self.top.listeners.remove(svc)
            done.append(f"removed {svc.listener} {svc.description}")
        # Wait for the ports to close: a new listener may take the same address.
        yield defer.DeferredList(stopping)
        for name in {svc.listener for svc in gone} - set(wanted):
            self.status.listeners.pop(name, None)

        for name, i, description in added:
            limited = self.status.listeners.get(name)
            try:
                if limited is None:
                    limited = listener_limits(ctx, name)
                svc = listener_service(ctx, name, i, description, limited, self.worker)
            except ConfigError as e:
                log.error("reload: {listener} not started: {error}", listener=name,
                          error=str(e))
                continue
            svc.setName(self._free_name(f"{name}-{i}"))
            try:
                svc.setServiceParent(self.top)
            except SystemExit as e:  # cannot bind: said in one line, as at start-up
                log.error("reload: {reason}", reason=str(e).removeprefix("netsuite: "))
                svc.disownServiceParent()
                continue
            if name not in self.status.listeners:
                self.status.add(limited)
            graceful = getattr(self.top, "listeners", None)
            if graceful is not None:  # the graceful stop stops it and drains its sessions
                graceful.append(svc)
                if limited not in self.top.factories:
                    self.top.factories.append(limited)
            done.append(f"added {name} {description}")

        if self.ready is not None:
            self.ready.write()
        self.status.changed()
        summary = "; ".join(done) or "nothing changed"
        log.info("reload: done ({summary})", summary=summary)
        return done

    def _check(self, new: Config) -> None:
        """What start-up would refuse in the new [mail] (a postmaster that resolves nowhere)."""
        realm = self.ctx.realm
        check = getattr(realm, "check_postmaster", None)
        config = getattr(realm, "config", None)
        if check is None or config is not self.ctx.config or "mail" not in new.sections:
            return
        old = config.sections["mail"]
        config.sections["mail"] = new.sections["mail"]
        try:
            check()
        finally:
            config.sections["mail"] = old

    def _free_name(self, name: str) -> str:
        taken = {svc.name for svc in self.top}
        if name not in taken:
            return name
        n = 1
        while f"{name}.{n}" in taken:
            n += 1
        return f"{name}.{n}"


def add_reload_service(ctx: Any, top: service.MultiService) -> None:
    """SERVICE_HOOKS entry: every server built reloads at SIGHUP."""
    svc = ReloadService(ctx, top)
    svc.setName("reload")
    svc.setServiceParent(top)


protocols.SERVICE_HOOKS.append(add_reload_service)

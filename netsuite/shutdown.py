"""
Graceful stop on SIGTERM: stop accepting, let every live session end politely
(bounded by C{[server] shutdown_timeout}), abort what is left, then stop the
rest of the server (queue, status files) and exit 0.

A protocol takes part by providing L{IGracefulStop}; one that does not is
simply closed (C{loseConnection}).  Each protocol's C{shutdown()} lives in its
own package, next to the code that knows what "in progress" means for it.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from netsuite import systemd

log = Logger(namespace="netsuite.shutdown")


class IGracefulStop(Interface):
    """A live session that can be asked to end politely before the process stops."""

    def shutdown() -> defer.Deferred | None:
        """
        Say goodbye the protocol's way and close, or finish the command in
        progress first (then say goodbye and close).  The connection's loss is
        what the stop waits for; a returned Deferred only reports failures.
        Called once; the caller aborts the connection if it is still open
        C{shutdown_timeout} seconds later.
        """


class IDrainable(Interface):
    """A factory that knows its live connections (L{netsuite.service.ConnectionLimits})."""

    protocols = Attribute("The live connections (wrappers with C{wrappedProtocol}).")

    def drained() -> defer.Deferred:
        """Fires once no connection is left."""


class StopWhenIdle:
    """
    L{IGracefulStop} for a command/response session: C{shutdown} marks it,
    and the goodbye goes out at once if nothing is in progress, else when
    the protocol calls L{_stop_if_idle} after its command (or transfer) ends.
    A protocol gives L{_in_progress} and L{_goodbye}; it keeps C{_lost}.
    """

    _stopping = False
    _lost: bool
    transport: Any

    def _in_progress(self) -> bool:
        raise NotImplementedError

    def _goodbye(self) -> None:
        """Say the protocol's goodbye line and close (called once)."""
        raise NotImplementedError

    def shutdown(self) -> None:
        if self._lost or self.transport is None or self.transport.disconnecting:
            return
        self._stopping = True
        self._stop_if_idle()

    def _stop_if_idle(self) -> bool:
        """True if the session was stopping and said goodbye now."""
        if not self._stopping or self._lost or self.transport.disconnecting:
            return False
        if self._in_progress():
            return False
        self._goodbye()
        return True


def ask(conn: Any) -> None:
    """Ask one connection (a L{netsuite.service.TrackedConnection}) to end politely."""
    proto = getattr(conn, "wrappedProtocol", conn)
    stopper = IGracefulStop(proto, None)
    if stopper is None:
        conn.loseConnection()
        return

    def failed(failure: Failure) -> None:
        log.failure("shutdown of {proto!r} failed; closing it", failure, proto=proto)
        conn.loseConnection()

    defer.maybeDeferred(stopper.shutdown).addErrback(failed)


def exit_cleanly(reactor: Any) -> None:
    """
    After a completed SIGTERM stop, let the process exit 0: twistd re-raises
    the signal that stopped the reactor (C{reactor._exitSignal}, read by
    C{twisted.application.app} after C{run}) and would exit 143.
    """
    if getattr(reactor, "_exitSignal", None) == signal.SIGTERM:
        reactor._exitSignal = None


class GracefulStop(service.MultiService):
    """
    The top service: C{stopService} stops the L{listeners} first, drains the
    live sessions of every L{IDrainable} factory in L{listeners}' care, and
    only then stops every child (the queue syncs its spool after the last
    DATA was stored).
    """

    #: Seconds after the timeout's aborts for the aborted connections to go.
    abort_grace = 2.0

    def __init__(self, timeout: float, reactor: Any):
        super().__init__()
        self.timeout = timeout
        self.reactor = reactor
        #: Listener services (stopped first) and the factories whose sessions are drained.
        self.listeners: list[service.IService] = []
        self.factories: list[Any] = []

    def stopService(self) -> defer.Deferred:
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        systemd.notifier().stopping()
        # Stop accepting: no new session starts while the old ones end.
        await defer.DeferredList([defer.maybeDeferred(s.stopService)
                                  for s in self.listeners if s.running])
        conns = [c for f in self.factories for c in list(f.protocols)]
        if conns:
            log.info("shutdown: ending {n} session(s), at most {t}s", n=len(conns),
                     t=self.timeout)
            for c in conns:
                ask(c)
            drained = defer.DeferredList([f.drained() for f in self.factories])
            if not await self._within(drained, self.timeout):
                left = [c for f in self.factories for c in list(f.protocols)]
                log.warn("shutdown: {n} session(s) still open after {t}s; aborting them",
                         n=len(left), t=self.timeout)
                for c in left:
                    c.transport.abortConnection()
                await self._within(defer.DeferredList([f.drained() for f in self.factories]),
                                   self.abort_grace)
        await super().stopService()
        exit_cleanly(self.reactor)

    async def _within(self, d: defer.Deferred, seconds: float) -> bool:
        """True if C{d} fired within C{seconds} (C{d} is left alone either way)."""
        outcome: defer.Deferred[bool] = defer.Deferred()
        timer = self.reactor.callLater(seconds, outcome.callback, False)

        def fired(_: Any) -> None:
            if timer.active():
                timer.cancel()
                outcome.callback(True)

        d.addBoth(fired)
        return await outcome

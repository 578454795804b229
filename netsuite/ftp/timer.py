"""
The deadlines of one FTP session on one C{DelayedCall}.

A session has up to three at once: the control connection's idle timeout,
the passive port's wait for the client to connect, and the data
connection's idle timeout.  With a C{DelayedCall} (C{TimeoutMixin}) each, a
transfer of a small file created and cancelled three timers, and pushed
them through the reactor's heap, for a connection that lived a millisecond.
Here setting, moving or dropping a deadline is a dict update; the one call
is armed for the earliest deadline and, when it fires, runs what is due and
re-arms for the next (a deadline moved later or dropped meanwhile just
finds nothing due).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any


class SessionTimer:
    """Named deadlines (C{key}: seconds from now, then C{expired()}) on C{reactor}'s clock."""

    def __init__(self, reactor: Any, horizon: float | None = None):
        self.reactor = reactor
        self._seconds = reactor.seconds
        #: The call is never armed further ahead than this: a deadline set
        #: within it (a passive port's, after the idle one) then needs no
        #: move of the call in the reactor's heap.
        self.horizon = horizon
        self._due: dict[Hashable, tuple[float, Callable[[], None]]] = {}
        self._call: Any = None
        self._stopped = False

    def set(self, key: Hashable, seconds: float, expired: Callable[[], None]) -> None:
        """Call C{expired()} in C{seconds} unless L{touch}ed or L{clear}ed first."""
        if self._stopped:
            return
        when = self._seconds() + seconds
        self._due[key] = (when, expired)
        call = self._call
        if call is None:
            self._call = self.reactor.callLater(self._ahead(seconds), self._fire)
        elif call.getTime() > when:
            call.reset(seconds)

    def touch(self, key: Hashable, seconds: float) -> None:
        """Activity: C{key}'s deadline is C{seconds} from now again (if it is set)."""
        entry = self._due.get(key)
        if entry is not None:
            self._due[key] = (self._seconds() + seconds, entry[1])

    def clear(self, key: Hashable) -> None:
        self._due.pop(key, None)

    def pending(self, key: Hashable) -> bool:
        return key in self._due

    def stop(self) -> None:
        """The session is over: nothing fires any more."""
        self._stopped = True
        self._due.clear()
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _fire(self) -> None:
        self._call = None
        now = self._seconds()
        for key in [k for k, (when, _) in self._due.items() if when <= now]:
            entry = self._due.get(key)
            if entry is not None and entry[0] <= now:  # an earlier one's expiry may change it
                del self._due[key]
                entry[1]()
        if self._due and self._call is None and not self._stopped:
            earliest = min(when for when, _ in self._due.values())
            self._call = self.reactor.callLater(self._ahead(max(0.0, earliest - now)),
                                                self._fire)

    def _ahead(self, seconds: float) -> float:
        return seconds if self.horizon is None else min(seconds, self.horizon)

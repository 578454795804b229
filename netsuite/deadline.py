"""
The whole-line deadline of L{netsuite.framer}, on a session's clock.

The framer says when the unit it is reading must be complete; this mixin keeps
at most one C{DelayedCall} per session that checks it.  The idle timer
(C{TimeoutMixin}) keeps its meaning, no bytes at all; this one fires even
while bytes trickle in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import reactor

from netsuite.framer import LineFramer


def seconds_of(call_later) -> float:
    """The time on the clock C{call_later} belongs to (the reactor, or a test's Clock)."""
    clock: Any = getattr(call_later, "__self__", None)
    if not hasattr(clock, "seconds"):  # TimeoutMixin.callLater: the global reactor
        clock = reactor
    return clock.seconds()


class CommandDeadline:
    """
    Mixin for a session with C{callLater} (C{TimeoutMixin} gives one).

    The session calls L{armDeadline} after reading, L{cancelDeadline} when the
    connection is lost, and implements L{deadlineFramer}, L{deadlineWaiting}
    and L{deadlineExpired}.
    """

    _deadline_call: Any = None
    #: The session's C{callLater} (C{TimeoutMixin}'s, or a test's Clock).
    callLater: Callable[..., Any]

    def deadlineFramer(self) -> LineFramer | None:
        raise NotImplementedError

    def deadlineWaiting(self) -> bool:
        """The session itself is busy (a Deferred): buffered input is not late."""
        return False

    def deadlineExpired(self) -> None:
        raise NotImplementedError

    def deadlineNow(self) -> float:
        return seconds_of(self.callLater)

    def armDeadline(self) -> None:
        framer = self.deadlineFramer()
        when = framer.deadline() if framer is not None else None
        if when is None:
            return  # a pending call finds nothing late and lapses
        call = self._deadline_call
        delay = max(0.0, when - self.deadlineNow())
        if call is not None and call.active():
            if call.getTime() > when:
                call.reset(delay)
            return
        self._deadline_call = self.callLater(delay, self._deadline_check)

    def cancelDeadline(self) -> None:
        call, self._deadline_call = self._deadline_call, None
        if call is not None and call.active():
            call.cancel()

    def _deadline_check(self) -> None:
        self._deadline_call = None
        framer = self.deadlineFramer()
        if framer is None:
            return
        now = self.deadlineNow()
        if self.deadlineWaiting():
            framer.restart(now)
        elif framer.expired(now):
            self.deadlineExpired()
            return
        self.armDeadline()

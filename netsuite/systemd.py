"""
systemd integration without a dependency: C{sd_notify(3)} written by hand.

systemd (C{Type=notify}, C{Type=notify-reload}) hands the service the address
of a datagram socket in C{$NOTIFY_SOCKET} (a path, or an abstract name written
C{@name}) and reads newline-separated C{KEY=value} assignments from it:
C{READY=1} once every listener is bound, C{RELOADING=1} / C{READY=1} around a
reload, C{STOPPING=1} when stopping, and C{WATCHDOG=1} at least every
C{$WATCHDOG_USEC} microseconds when C{WatchdogSec=} is set.

The variables are read once, by L{notifier}, and removed from C{os.environ}
then, so that programs started by TELNET and SSH sessions and the
C{--workers} processes do not inherit them: only this process speaks to
systemd.  The watchdog is a L{LoopingCall} on the reactor, so a reactor that
is stuck stops the pings and systemd restarts the service, which is the point.

Sending never raises: without C{$NOTIFY_SOCKET} every call is a no-op, and a
socket that cannot be reached is logged once (until a send works again).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import MutableMapping
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="netsuite.systemd")

#: The variables systemd sets for the notification protocol and the watchdog.
VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def message(*fields: tuple[str, str | int]) -> bytes:
    """
    C{KEY=value} lines, as C{sd_notify} sends them.  A value may not hold a
    newline (it would start another assignment): newlines become spaces.
    """
    lines = []
    for key, value in fields:
        if not key or "=" in key or "\n" in key:
            raise ValueError(f"bad notify key {key!r}")
        text = str(value).replace("\r", " ").replace("\n", " ")
        lines.append(f"{key}={text}")
    return "\n".join(lines).encode("utf-8")


def socket_address(value: str) -> str | bytes | None:
    """
    The C{$NOTIFY_SOCKET} value as an C{AF_UNIX} address: a path, or for
    C{@name} the abstract-namespace name (a leading NUL byte).  None for
    what this module cannot speak to (empty, or C{vsock:} of a VM).
    """
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode("utf-8")
    if value.startswith("/"):
        return value
    return None


def monotonic_usec() -> int:
    """C{CLOCK_MONOTONIC} in microseconds, what C{MONOTONIC_USEC=} carries."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """This process's messages to systemd (all no-ops when C{address} is None)."""

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None,
                 reactor: Any = None):
        self.address = address
        #: Microseconds systemd waits for a ping; None: no watchdog.
        self.watchdog_usec = watchdog_usec
        self._reactor = reactor
        self._watchdog: LoopingCall | None = None
        self._failing = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None,
                     pid: int | None = None, reactor: Any = None) -> "Notifier":
        """
        Read the variables and remove them from C{environ} (C{os.environ}).
        The watchdog is ours when C{$WATCHDOG_PID} is unset or our pid.
        """
        if environ is None:
            environ = os.environ
        values = {name: environ.pop(name, None) for name in VARIABLES}
        address = socket_address(values["NOTIFY_SOCKET"] or "")
        usec = None
        try:
            usec = int(values["WATCHDOG_USEC"] or "0") or None
        except ValueError:
            usec = None
        if usec is not None and usec < 0:
            usec = None
        watchdog_pid = values["WATCHDOG_PID"]
        if watchdog_pid and watchdog_pid != str(os.getpid() if pid is None else pid):
            usec = None
        return cls(address, usec, reactor)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    # -- sending -----------------------------------------------------------------

    def send(self, *fields: tuple[str, str | int]) -> bool:
        """Send one message; True if it left (systemd reads it or nobody does)."""
        if self.address is None:
            return False
        data = message(*fields)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.setblocking(False)
                s.sendto(data, self.address)
        except OSError as e:
            if not self._failing:
                log.warn("systemd: cannot notify {address}: {reason}",
                         address=self._printable(), reason=e.strerror or e)
            self._failing = True
            return False
        self._failing = False
        return True

    def _printable(self) -> str:
        if isinstance(self.address, bytes):
            return "@" + self.address[1:].decode("utf-8", "replace")
        return str(self.address)

    def ready(self, status: str = "") -> bool:
        """Every listener is bound: C{READY=1}; the watchdog starts pinging."""
        fields: list[tuple[str, str | int]] = [("READY", 1)]
        if status:
            fields.append(("STATUS", status))
        sent = self.send(*fields)
        self.start_watchdog()
        return sent

    def reloading(self, status: str = "reloading") -> bool:
        """
        A reload begins: C{RELOADING=1} with C{MONOTONIC_USEC=}, which systemd
        253+ (C{Type=notify-reload}) requires to match the reload to its signal.
        """
        fields: list[tuple[str, str | int]] = [("RELOADING", 1),
                                              ("MONOTONIC_USEC", monotonic_usec())]
        if status:
            fields.append(("STATUS", status))
        return self.send(*fields)

    def reloaded(self, status: str = "") -> bool:
        """The reload is done (or refused, the old config serving): C{READY=1}."""
        fields: list[tuple[str, str | int]] = [("READY", 1)]
        if status:
            fields.append(("STATUS", status))
        return self.send(*fields)

    def stopping(self, status: str = "stopping") -> bool:
        """Shutdown begins: C{STOPPING=1}.  The watchdog keeps pinging until the reactor stops."""
        fields: list[tuple[str, str | int]] = [("STOPPING", 1)]
        if status:
            fields.append(("STATUS", status))
        return self.send(*fields)

    def status(self, text: str) -> bool:
        """Free-form C{STATUS=} (what C{systemctl status} shows)."""
        return self.send(("STATUS", text))

    # -- the watchdog --------------------------------------------------------------

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half of systemd's deadline, as sd_watchdog_enabled(3) advises."""
        if self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def start_watchdog(self) -> None:
        """Ping C{WATCHDOG=1} from the reactor every L{watchdog_interval} (once; idempotent)."""
        interval = self.watchdog_interval
        if interval is None or self.address is None or self._watchdog is not None:
            return
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        self._watchdog = LoopingCall(self.send, ("WATCHDOG", 1))
        self._watchdog.clock = reactor
        self._watchdog.start(interval, now=True)

    def stop_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None


_notifier: Notifier | None = None


def notifier() -> Notifier:
    """
    The process's L{Notifier}, made on first use from C{os.environ} (which
    loses the variables then).  C{twistd netsuite} calls it before it builds
    anything, so nothing started later inherits them.
    """
    global _notifier
    if _notifier is None:
        _notifier = Notifier.from_environ()
    return _notifier


def forget_listen_fds(environ: MutableMapping[str, str] | None = None) -> None:
    """
    Remove the socket-activation variables once Twisted has read them (when
    C{twisted.internet.endpoints} is imported; it unsets C{LISTEN_PID} and
    C{LISTEN_FDS} only, and only when they were meant for this process), so
    that no child sees C{LISTEN_FDNAMES} or another process's sockets.
    """
    import twisted.internet.endpoints  # noqa: F401  (reads them, once)

    if environ is None:
        environ = os.environ
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(name, None)


def check_inherited(description: str) -> None:
    """
    Raise C{ValueError} with a clear reason unless the socket that the
    C{systemd:} endpoint C{description} names was passed to this process
    (C{LISTEN_FDS}, C{LISTEN_PID}, C{LISTEN_FDNAMES}, which Twisted reads and
    unsets when C{twisted.internet.endpoints} is first imported).
    """
    from twisted.internet import endpoints

    args, kwargs = endpoints._parse(description)
    index = kwargs.get("index", args[2] if len(args) > 2 else None)
    name = kwargs.get("name", args[3] if len(args) > 3 else None)
    inherited = endpoints._SystemdParser._sddaemon
    fds = inherited.inheritedDescriptors()
    names = list(inherited.inheritedNamedDescriptors())
    if index is not None and 0 <= int(index) < len(fds):
        return
    if name is not None and name in names:
        return
    if not fds:
        passed = ("no socket was passed (LISTEN_FDS and LISTEN_PID for this process, "
                  "with LISTEN_FDNAMES, as systemd sets them)")
    else:
        passed = f"the {len(fds)} passed are " + ", ".join(
            f"index={i} name={n}" for i, n in enumerate(names))
    wanted = f"index={index}" if index is not None else f"name={name}"
    raise ValueError(f"no socket {wanted} from systemd: {passed}")

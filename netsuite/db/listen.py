"""
LISTEN/NOTIFY: what another host changed, told at once instead of polled.

One dedicated connection per process and database, in a thread of its own
(it waits in C{conn.notifies()}, which must not be the reactor), LISTENs on
every subscribed channel; each notification is handed to the subscribers on
the reactor thread.  A lost connection is made again with a doubling delay
(0.5 s up to 10 s); since notifications sent meanwhile are lost, every
subscriber is then called with C{None}: "re-read, anything may have changed".
The first connection counts as such a return too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from twisted.logger import Logger

from netsuite.config import DatabaseConfig

log = Logger(namespace="netsuite.db")

#: Seconds between looks at the stop flag while no notification comes.
POLL = 1.0


class Notifications:
    """Subscribers to channels of one database; see the module docstring."""

    def __init__(self, config: DatabaseConfig, reactor: Any = None):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self._subscribers: dict[str, list[Callable[[str | None], None]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: LISTEN is in place: every committed change is heard (False again on an error).
        self.connected = False

    def subscribe(self, channel: str, callback: Callable[[str | None], None]) -> None:
        """C{callback(payload)} on the reactor thread for each NOTIFY on C{channel}."""
        if self._thread is not None:
            raise RuntimeError("subscribe before start()")
        self._subscribers.setdefault(channel, []).append(callback)

    def start(self) -> None:
        if self._thread is not None or not self._subscribers:
            return
        self._thread = threading.Thread(target=self._run, name="netsuite-db-listen",
                                        daemon=True)
        self._thread.start()
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)

    def stop(self) -> None:
        self._stop.set()

    def _deliver(self, channel: str | None, payload: str | None) -> None:
        channels = [channel] if channel is not None else list(self._subscribers)
        for name in channels:
            for callback in self._subscribers.get(name, []):
                try:
                    callback(payload)
                except Exception:
                    log.failure("notification subscriber for {channel} failed", channel=name)

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.config.dsn, autocommit=True,
                                     connect_timeout=max(1, round(self.config.connect_timeout))
                                     ) as conn:
                    for channel in self._subscribers:
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self.connected = True
                    delay = 0.5
                    self.reactor.callFromThread(self._deliver, None, None)  # re-read all
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=POLL):
                            self.reactor.callFromThread(self._deliver, note.channel,
                                                        note.payload)
            except psycopg.Error:
                self.connected = False
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)


#: One L{Notifications} per connection string in this process.
_listeners: dict[str, Notifications] = {}


def notifications(config: DatabaseConfig, reactor: Any = None) -> Notifications:
    found = _listeners.get(config.dsn)
    if found is None:
        found = _listeners[config.dsn] = Notifications(config, reactor)
    return found

"""
LISTEN on L{netsuite.store.pg.sql.CHANNEL}, on a connection of its own in a
thread of its own (psycopg's C{notifies()} waits on the socket), each payload
handed to the reactor.  A lost connection is made again with a doubling delay;
once back, C{on_connected} runs (in the reactor) so that what was missed
meanwhile is read: a NOTIFY is not kept for a listener that was away.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from twisted.logger import Logger

from netsuite.store.pg.sql import CHANNEL

log = Logger(namespace="netsuite.store")


class Listener:
    def __init__(self, dsn: str, reactor: Any, on_notify: Callable[[str], None],
                 on_connected: Callable[[], None], connect_timeout: float = 5.0):
        self.dsn = dsn
        self.reactor = reactor
        self.on_notify = on_notify
        self.on_connected = on_connected
        self.connect_timeout = connect_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="netsuite-listen", daemon=True)
        self._thread.start()
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        delay = 0.25
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True,
                                     connect_timeout=max(1, round(self.connect_timeout))) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.25
                    self.reactor.callFromThread(self.on_connected)
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=1.0):
                            self.reactor.callFromThread(self.on_notify, n.payload)
            except psycopg.Error as e:
                if self._stop.is_set():
                    return
                log.debug("LISTEN connection lost ({error}); again in {delay}s",
                          error=str(e).strip().splitlines()[0] if str(e).strip() else e,
                          delay=delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
            except Exception:
                log.failure("LISTEN thread")
                time.sleep(1.0)

"""
A remote mail server for the queue tests: aiosmtpd on loopback, scripted per
recipient (C{script["x@remote.test"] = ["451 4.3.0 busy", "451 ...", ...]}:
each RCPT takes the next reply; when the list is empty, 250).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Handler:
    def __init__(self, no_8bitmime: bool = False):
        self.script: dict[str, list[str]] = {}
        self.messages: list = []  # (mail_from, rcpt_tos, content bytes, session facts)
        self.rcpt_calls: dict[str, int] = {}
        self.no_8bitmime = no_8bitmime
        self.ehlo_seen: list[str] = []
        self.lock = threading.Lock()
        #: Seconds DATA waits before its 250 (a slow remote: deliveries stay in flight).
        self.data_delay = 0.0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self.ehlo_seen.append(hostname)
        if self.no_8bitmime:
            responses = [r for r in responses if "8BITMIME" not in r]
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            self.rcpt_calls[address] = self.rcpt_calls.get(address, 0) + 1
            replies = self.script.get(address)
            if replies:
                return replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        with self.lock:
            self.messages.append({
                "from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                "content": envelope.original_content or envelope.content,
                "mail_options": list(envelope.mail_options),
                "tls": session.ssl is not None,
                "auth": session.authenticated,
                "login": getattr(session, "login_data", None),
                "helo": getattr(session, "host_name", None),
            })
        return "250 2.0.0 OK queued"

    def wait(self, n: int, timeout: float = 20.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.messages) < n:
            time.sleep(0.05)
        return self.messages


class Remote:
    """An aiosmtpd server on 127.0.0.1:port that can be stopped and started again."""

    def __init__(self, port: int | None = None, handler: Handler | None = None, **kw):
        self.port = port or free_port()
        self.handler = handler or Handler()
        self.kw = kw
        self.controller: Controller | None = None

    def start(self) -> "Remote":
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                     ready_timeout=10, **self.kw)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def messages(self) -> list:
        return self.handler.messages

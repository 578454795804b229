"""A raw SMTP client for the cases smtplib will not produce (pipelining, BDAT, injection)."""

from __future__ import annotations

import socket
import ssl


def insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RawSMTP:
    def __init__(self, port: int, host: str = "127.0.0.1", tls: bool = False, timeout: float = 10):
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls:
            sock = insecure_context().wrap_socket(sock)
        self.sock = sock
        self.buf = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; buffer {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, bytes]:
        """One (possibly multi-line) reply: code and the text lines joined by \\n."""
        lines = []
        while True:
            line = self.line()
            lines.append(line[4:])
            if line[3:4] != b"-":
                return int(line[:3]), b"\n".join(lines)

    def cmd(self, line: bytes) -> tuple[int, bytes]:
        self.send(line + b"\r\n")
        return self.reply()

    def starttls(self) -> None:
        self.sock = insecure_context().wrap_socket(self.sock)

    def closed(self) -> bool:
        """True once the server has closed the connection."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.sock.close()

"""
A small blocking TELNET client that does its own negotiation: for the tests
and the benchmark, where the real C{telnet} program cannot be told exactly
what to send (a hostile NEW-ENVIRON, garbage commands, BINARY).
"""

from __future__ import annotations

import re
import select
import socket
import ssl
import time

from netsuite.telnet import wire


class Closed(Exception):
    """The server closed the connection."""


class TelnetClient:
    """
    Connects and answers the server's option requests:

      - WILL ECHO / WILL SGA: agreed (character mode, the server echoes);
      - DO NAWS: agreed, with C{size}; DO TTYPE: agreed, answering C{ttype};
      - DO NEW-ENVIRON: agreed when C{environ} is given (sent as C{IS});
      - BINARY: agreed both ways when C{binary};
      - anything else refused.

    Every command received is kept in C{commands}; application data collects
    in C{buffer}, which L{expect} consumes.
    """

    def __init__(self, host: str, port: int, *, ttype: str | None = "xterm",
                 size: tuple[int, int] | None = (80, 24),
                 environ: list[tuple[str, str | None]] | None = None,
                 binary: bool = False, answer: bool = True, tls: bool = False,
                 timeout: float = 10.0):
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self.ttype = ttype
        self.size = size
        self.environ = environ
        self.binary = binary
        self.answer = answer
        self.timeout = timeout
        self.decoder = wire.Decoder()
        self.decoder.binary = True  # keep the server's CR LF / CR NUL as sent
        self.buffer = bytearray()
        self.commands: list[tuple[int, int | None]] = []
        self.subnegotiations: list[tuple[int, bytes]] = []
        self.raw = bytearray()
        self.closed = False
        #: Options in effect (or asked for): ("us" | "him", option) -> True
        self.state: dict[tuple[str, int], bool] = {}
        if binary:
            self.state[("us", wire.BINARY)] = self.state[("him", wire.BINARY)] = True
            self.send_raw(wire.command(wire.WILL, wire.BINARY) + wire.command(wire.DO, wire.BINARY))

    # -- sending --------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, data: bytes) -> None:
        """Application data: IAC doubled; CR sent as CR NUL outside BINARY."""
        data = data.replace(b"\xff", b"\xff\xff")
        if not self.state.get(("us", wire.BINARY)):
            data = re.sub(b"\r(?!\n)", b"\r\0", data)
        self.sock.sendall(data)

    def sendline(self, text: str | bytes) -> None:
        """A line and Enter: CR LF, or a bare CR in BINARY mode (as telnet(1) does)."""
        if isinstance(text, str):
            text = text.encode("utf-8")
        self.send(text + (b"\r" if self.state.get(("us", wire.BINARY)) else b"\r\n"))

    def command(self, cmd: int, option: int | None = None) -> None:
        self.send_raw(wire.command(cmd, option))

    def set_size(self, columns: int, rows: int) -> None:
        self.size = (columns, rows)
        self.send_raw(wire.naws(columns, rows))

    # -- receiving ---------------------------------------------------------------------

    def pump(self, timeout: float) -> bool:
        """Read what arrives within C{timeout}; False when nothing came."""
        if self.closed:
            raise Closed()
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready and not (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
            return False
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            raise Closed()
        self.raw += data
        for event in self.decoder.feed(data):
            if isinstance(event, wire.Data):
                self.buffer += event.data
            elif isinstance(event, wire.Command):
                self.commands.append((event.cmd, event.option))
                if event.option is not None and self.answer:
                    self._negotiate(event.cmd, event.option)
            elif isinstance(event, wire.Subnegotiation):
                self.subnegotiations.append((event.option, event.payload))
                if self.answer:
                    self._subnegotiate(event.option, event.payload)
        return True

    def _reply(self, cmd: int, option: int) -> None:
        self.send_raw(wire.command(cmd, option))

    def _negotiate(self, cmd: int, option: int) -> None:
        if cmd in (wire.WILL, wire.WONT):
            want = cmd == wire.WILL and option in self._remote_ok()
            key = ("him", option)
            if want != self.state.get(key, False):
                self.state[key] = want
                self._reply(wire.DO if want else wire.DONT, option)
            elif cmd == wire.WILL and not want:
                self._reply(wire.DONT, option)
        else:
            want = cmd == wire.DO and option in self._local_ok()
            key = ("us", option)
            if want != self.state.get(key, False):
                self.state[key] = want
                self._reply(wire.WILL if want else wire.WONT, option)
                if want and option == wire.NAWS and self.size:
                    self.send_raw(wire.naws(*self.size))
            elif cmd == wire.DO and not want:
                self._reply(wire.WONT, option)

    def _remote_ok(self) -> set[int]:
        ok = {wire.ECHO, wire.SGA}
        if self.binary:
            ok.add(wire.BINARY)
        return ok

    def _local_ok(self) -> set[int]:
        ok = {wire.SGA}
        if self.size:
            ok.add(wire.NAWS)
        if self.ttype:
            ok.add(wire.TTYPE)
        if self.environ is not None:
            ok.add(wire.NEW_ENVIRON)
        if self.binary:
            ok.add(wire.BINARY)
        return ok

    def _subnegotiate(self, option: int, payload: bytes) -> None:
        if option == wire.TTYPE and payload[:1] == bytes((wire.TTYPE_SEND,)) and self.ttype:
            self.send_raw(wire.ttype_is(self.ttype))
        elif option == wire.NEW_ENVIRON and payload[:1] == bytes((wire.ENV_SEND,)):
            self.send_raw(wire.environ_is(self.environ or []))

    def text(self) -> str:
        return bytes(self.buffer).replace(b"\r\0", b"\r").decode("utf-8", "replace")

    def expect(self, pattern: str | bytes, timeout: float | None = None) -> re.Match:
        """Wait for C{pattern} (a regex) in the received data; consume up to its end."""
        if isinstance(pattern, str):
            pattern = pattern.encode("utf-8")
        regex = re.compile(pattern)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            data = bytes(self.buffer).replace(b"\r\0", b"\r")
            m = regex.search(data)
            if m:
                self.buffer = bytearray(data[m.end():])
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{pattern!r} not seen; got {data[-500:]!r}")
            self.pump(min(left, 0.5))

    def settle(self, quiet: float = 0.2, limit: float = 5.0) -> None:
        """Read until nothing has arrived for C{quiet} seconds."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and self.pump(quiet):
            pass

    def wait_closed(self, timeout: float | None = None) -> bool:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while time.monotonic() < deadline:
                self.pump(0.2)
        except (Closed, OSError):  # OSError: answering a negotiation hit the closed socket
            self.closed = True
            return True
        return False

    def login(self, user: str, password: str, prompt: str = r"[$#] $") -> None:
        self.expect(b"login: ")
        self.sendline(user)
        self.expect(b"Password: ")
        self.sendline(password)
        if prompt:
            self.expect(prompt.encode())

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True

    def __enter__(self) -> "TelnetClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

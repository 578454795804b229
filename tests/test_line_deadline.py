"""
Slowloris against the real daemon: a client trickling one byte at a time keeps
resetting the idle timer, so a command line (and an IMAP literal) must be
complete within [limits] command_timeout of its first byte.
"""

from __future__ import annotations

import select
import socket
import time

import pytest

USERS = {"alice": "wonderland"}
#: The deadline in the test config, and how often the client sends one byte.
DEADLINE = 1
INTERVAL = 0.2
#: The client gives up (and the test fails) if the server has not hung up by then.
BOUND = 20.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    from harness import Daemon

    d = Daemon(tmp_path_factory.mktemp("deadline"),
               {"limits": {"command_timeout": DEADLINE},
                "server": {"allow_plaintext_auth": True}},
               ["smtp", "imap", "pop3", "ftp"])
    d.add_user("alice", USERS["alice"])
    d.start()
    yield d
    d.stop()


def connect(d, listener: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", d.port(listener)), timeout=10)
    greeting = sock.recv(4096)
    assert greeting
    return sock, greeting


def trickle_until_closed(sock: socket.socket, payload: bytes) -> bytes:
    """Send C{payload} one byte per INTERVAL (never a line end); what the server said."""
    assert b"\n" not in payload
    said = b""
    give_up = time.monotonic() + BOUND
    i = 0
    while time.monotonic() < give_up:
        try:
            sock.sendall(payload[i % len(payload):i % len(payload) + 1])
        except (BrokenPipeError, ConnectionResetError):
            return said
        i += 1
        # Pace the trickle by waiting for the server to speak (or close).
        readable, _, _ = select.select([sock], [], [], INTERVAL)
        if readable:
            try:
                data = sock.recv(4096)
            except ConnectionResetError:
                return said
            if not data:
                return said
            said += data
    raise AssertionError(f"still open after {BOUND} s of trickling ({i} bytes); said {said!r}")


def quiet_for(sock: socket.socket, seconds: float) -> bool:
    """True if the server neither speaks nor closes for C{seconds}."""
    readable, _, _ = select.select([sock], [], [], seconds)
    return not readable


def test_smtp_trickled_command_line_is_cut(daemon):
    sock, greeting = connect(daemon, "smtp")
    assert greeting.startswith(b"220")
    said = trickle_until_closed(sock, b"EHLO " + b"slow" * 500)
    assert said.startswith(b"421 4.4.2"), said
    sock.close()


def test_smtp_silence_between_commands_is_not_a_late_line(daemon):
    sock, _ = connect(daemon, "smtp")
    f = sock.makefile("rb")
    sock.sendall(b"EHLO client.test\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    # Longer than the deadline, shorter than the idle timeout: nothing happens.
    assert quiet_for(sock, DEADLINE * 2.5)
    sock.sendall(b"NOOP\r\n")
    assert f.readline().startswith(b"250")
    sock.close()


def test_imap_trickled_command_line_is_cut(daemon):
    sock, greeting = connect(daemon, "imap")
    assert greeting.startswith(b"* OK")
    said = trickle_until_closed(sock, b"a1 NOOP " + b"x" * 2000)
    assert said.startswith(b"* BYE"), said
    sock.close()


def test_imap_trickled_literal_is_cut(daemon):
    sock, _ = connect(daemon, "imap")
    f = sock.makefile("rb")
    sock.sendall(b'a1 LOGIN alice "wonderland"\r\n')
    assert f.readline().startswith(b"a1 OK")
    sock.sendall(b"a2 APPEND INBOX {1000}\r\n")
    assert f.readline().startswith(b"+")
    # A 1000-byte literal gets the deadline plus well under a second.
    said = trickle_until_closed(sock, b"y" * 1000)
    assert said.startswith(b"* BYE"), said
    sock.close()


def test_imap_silence_between_commands_is_not_a_late_line(daemon):
    sock, _ = connect(daemon, "imap")
    f = sock.makefile("rb")
    sock.sendall(b"a1 NOOP\r\n")
    assert f.readline().startswith(b"a1 OK")
    assert quiet_for(sock, DEADLINE * 2.5)
    sock.sendall(b"a2 NOOP\r\n")
    assert f.readline().startswith(b"a2 OK")
    sock.close()


@pytest.mark.parametrize("listener, expected", [("pop3", b"-ERR"), ("ftp", b"421")])
def test_pop3_and_ftp_trickled_line_is_cut(daemon, listener, expected):
    sock, _ = connect(daemon, listener)
    said = trickle_until_closed(sock, b"NOOP " + b"z" * 1000)
    assert said.startswith(expected), said
    sock.close()

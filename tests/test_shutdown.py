"""
Graceful stop (netsuite.shutdown) against the real daemon: SIGTERM while
sessions are live.  Each test sends SIGTERM itself, talks to the sessions
while the server stops, then reads the exit status.
"""

from __future__ import annotations

import ftplib
import imaplib
import os
import poplib
import signal
import smtplib
import socket

import pytest
from harness import Daemon
from test_telnet import PROMPT, run
from test_telnet import config as telnet_config
from test_workers import USERS as workers_users
from test_workers import connect_to, workers_of
from test_workers import imap as workers_imap
from test_workers import start as workers_start

from netsuite.telnet.client import TelnetClient

USERS = {"alice": "alice-pw", "bob": "bob-pw"}
PLAIN = {"server": {"allow_plaintext_auth": True},
         "ftp": {"require_tls": False},
         "throttle": {"base_delay": 0.01, "max_delay": 0.05}}


class Raw:
    """A line-oriented raw client: the test decides exactly what is sent when."""

    def __init__(self, port: int, timeout: float = 20.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def line(self) -> bytes:
        return self.file.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One SMTP reply, continuation lines included; its last line."""
        while True:
            line = self.line()
            if len(line) < 4 or line[3:4] != b"-":
                return line

    def rest(self) -> bytes:
        """Everything until the server closes (b'' if it closed at once)."""
        out = b""
        while True:
            try:
                chunk = self.sock.recv(4096)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk


def sigterm(d: Daemon) -> None:
    """SIGTERM, and wait until the server has begun ending sessions."""
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    d.wait_for(lambda: "shutdown: ending" in d.log(), timeout=15)


def exit_status(d: Daemon, timeout: float = 30.0) -> int | None:
    """The daemon's exit status once it has stopped by itself (no second SIGTERM)."""
    assert d.proc is not None
    d.proc.wait(timeout)
    return d.stop()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def smtp_in_data(d: Daemon, to: str = "alice@example.test") -> Raw:
    """An SMTP session on the MX, inside DATA, with the headers and half a body sent."""
    c = Raw(d.port("smtp"))
    assert c.reply().startswith(b"220")
    for command, code in ((b"EHLO client.test", b"250"), (b"MAIL FROM:<x@remote.test>", b"250"),
                          (f"RCPT TO:<{to}>".encode(), b"250"), (b"DATA", b"354")):
        c.send(command + b"\r\n")
        assert c.reply().startswith(code), command
    c.send(b"Subject: graceful\r\n\r\nfirst half\r\n")
    return c


def test_sigterm_finishes_smtp_data_then_421_and_ends_each_protocol_politely(make_daemon):
    d = make_daemon(listeners=["smtp", "imap", "pop3", "ftp"], users=USERS, config=PLAIN)
    # Two messages for bob, for POP3.
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=10) as s:
        for n in (1, 2):
            s.sendmail("x@remote.test", ["bob@example.test"], f"Subject: {n}\r\n\r\nbody\r\n")
    assert len(d.messages("bob")) == 2

    data = smtp_in_data(d)
    idle_smtp = Raw(d.port("smtp"))
    assert idle_smtp.reply().startswith(b"220")
    imap = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=20)
    imap.login("alice", USERS["alice"])
    pop = poplib.POP3("127.0.0.1", d.port("pop3"), timeout=20)
    pop.user("bob")
    pop.pass_(USERS["bob"])
    assert pop.dele(1).startswith(b"+OK")
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", d.port("ftp"), timeout=20)
    ftp.login("alice", USERS["alice"])
    imap_port = d.port("imap")

    sigterm(d)
    # Stopped accepting, while the sessions are still being ended.
    assert refused(imap_port)
    # Idle sessions get their protocol's goodbye at once.
    assert idle_smtp.line() == b"421 4.3.2 Service shutting down\r\n"
    assert idle_smtp.rest() == b""
    assert imap.readline() == b"* BYE Server shutting down\r\n"
    assert pop.file.readline() == b"-ERR [SYS/TEMP] Server shutting down\r\n"
    assert ftp.getline() == "421 Service shutting down"
    # The DATA in progress is allowed to finish, is stored, and only then 421.
    data.send(b"second half\r\n.\r\n")
    assert data.reply().startswith(b"250 2.0.0 Ok: queued as")
    assert data.line() == b"421 4.3.2 Service shutting down\r\n"
    assert data.rest() == b""

    assert exit_status(d) == 0
    [stored] = d.messages("alice")
    assert b"Subject: graceful" in stored and b"first half\r\nsecond half" in stored.replace(
        b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")
    # POP3 never entered UPDATE: the message marked with DELE is still there.
    assert len(d.messages("bob")) == 2
    log = d.log()
    assert "still open after" not in log  # nothing had to be aborted


def test_shutdown_timeout_aborts_a_client_that_never_finishes(make_daemon):
    d = make_daemon(listeners=["smtp", "imap"], users=USERS,
                    config={**PLAIN, "server": {**PLAIN["server"], "shutdown_timeout": 0.5}})
    stuck = smtp_in_data(d)  # and never sends the end of DATA
    imap = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=20)
    sigterm(d)
    assert imap.readline() == b"* BYE Server shutting down\r\n"
    assert stuck.rest() == b""  # aborted: no 250, no 421
    assert exit_status(d) == 0
    assert "1 session(s) still open after 0.5s; aborting them" in d.log()
    assert d.messages("alice") == []  # the cut message was not stored


def test_sigterm_sends_sighup_to_telnet_session_programs(make_daemon, tmp_path):
    d = make_daemon(listeners=["telnet"], users={"alice": "secret"}, config=telnet_config())
    c = TelnetClient("127.0.0.1", d.port("telnet"))
    c.login("alice", "secret", PROMPT)
    marker = tmp_path / "hup"
    shell_pid = int(run(c, "echo $$").strip())
    # The session's program: a shell that records the SIGHUP it gets.
    c.sendline(f"sh -c 'trap \"echo got-hup > {marker}; exit 0\" HUP; echo trap-set; "
               "while :; do sleep 0.1; done'")
    c.expect(rb"trap-set\r\n", 10)
    d.proc.send_signal(signal.SIGTERM)
    c.expect(rb"Server shutting down", 15)
    assert exit_status(d) == 0
    d.wait_for(marker.exists, timeout=10)
    assert marker.read_text() == "got-hup\n"
    with pytest.raises(ProcessLookupError):
        os.kill(shell_pid, 0)


def test_sigterm_with_workers_ends_sessions_in_every_worker_and_exits_0(make_daemon):
    d = workers_start(make_daemon, listeners=["smtp", "imap"])
    pids = sorted(workers_of(d).values())
    # One IMAP session in each worker (the workers share one accept queue).
    sessions = []
    for pid in pids:
        m, _ = connect_to(d, lambda: workers_imap(d), lambda c: c.sock, want_pid=pid)
        m.login("alice", workers_users["alice"])
        sessions.append(m)
    data = smtp_in_data(d)
    d.proc.send_signal(signal.SIGTERM)
    for m in sessions:
        assert m.readline() == b"* BYE Server shutting down\r\n"
    data.send(b"second half\r\n.\r\n")
    assert data.reply().startswith(b"250 2.0.0")
    assert data.line() == b"421 4.3.2 Service shutting down\r\n"
    assert exit_status(d) == 0
    assert len(d.messages("alice")) == 1
    log = d.log()
    assert log.count("shutdown: ending") == 2, log  # in each worker
    assert log.count("stopped (exit code 0)") == 2, log
    assert "killing it" not in log

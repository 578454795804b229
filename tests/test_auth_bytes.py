"""
Credentials that are not UTF-8 (a seeded fuzz found them): every protocol
answers them as a failed login, and every one counts in the failed-login
throttle, against the real daemon.
"""

from __future__ import annotations

import base64
import socket

import pytest

from netsuite.telnet.client import TelnetClient

#: Not UTF-8 (a lone continuation byte, a truncated sequence); no 0xff, which TELNET escapes.
BAD = b"\xc3\x28\x80pw"
BAD_USER = b"al\xe9ice"


class Lines:
    """A bare line client: send bytes, read CRLF-ended lines."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def line(self) -> bytes:
        return self.file.readline().rstrip(b"\r\n")

    def cmd(self, data: bytes) -> bytes:
        self.sock.sendall(data + b"\r\n")
        return self.line()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, mail_store):
    from harness import Daemon

    d = Daemon(tmp_path_factory.mktemp("authbytes"), config={
        "server": {"allow_plaintext_auth": True},
        "throttle": {"base_delay": 0.01, "max_delay": 0.02, "lock_after": 1000},
        "telnet": {"fail_delay": 0.01, "utmp": False},
    }, listeners=["submission", "pop3", "imap", "ftp", "telnet"])
    d.add_user("alice", "alice-pw")
    d.start()
    yield d
    d.stop()


def failures(d, protocol: str) -> int:
    """Failed logins the throttle recorded for C{protocol} (its log line per failure)."""
    return d.log().count(f"login failed: protocol={protocol} ")


def counted(d, protocol: str, before: int, n: int) -> None:
    assert d.wait_for(lambda: failures(d, protocol) >= before + n), \
        (protocol, failures(d, protocol) - before, n)
    log = d.log()
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]


def plain(user: bytes, password: bytes) -> bytes:
    return base64.b64encode(b"\0" + user + b"\0" + password)


def test_smtp_auth(daemon):
    before = failures(daemon, "smtp")
    c = Lines(daemon.port("submission"))
    assert c.line().startswith(b"220")
    c.sock.sendall(b"EHLO x\r\n")
    while not c.line().startswith(b"250 "):
        pass
    assert c.cmd(b"AUTH PLAIN " + plain(b"alice", BAD)).startswith(b"535")
    assert c.cmd(b"AUTH PLAIN " + plain(BAD_USER, BAD)).startswith(b"535")
    assert c.cmd(b"AUTH LOGIN").startswith(b"334")
    assert c.cmd(base64.b64encode(b"alice")).startswith(b"334")
    assert c.cmd(base64.b64encode(BAD)).startswith(b"535")
    assert c.cmd(b"AUTH PLAIN " + plain(b"alice", b"alice-pw")).startswith(b"235")
    c.close()
    counted(daemon, "smtp", before, 3)


def test_pop3(daemon):
    before = failures(daemon, "pop3")
    c = Lines(daemon.port("pop3"))
    assert c.line().startswith(b"+OK")
    for user in (b"alice", BAD_USER):
        assert c.cmd(b"USER " + user).startswith(b"+OK")
        assert c.cmd(b"PASS " + BAD).startswith(b"-ERR")
    assert c.cmd(b"AUTH PLAIN " + plain(b"alice", BAD)).startswith(b"-ERR")
    assert c.cmd(b"USER alice").startswith(b"+OK")
    assert c.cmd(b"PASS alice-pw").startswith(b"+OK")
    c.close()
    counted(daemon, "pop3", before, 3)


def test_imap(daemon):
    before = failures(daemon, "imap")
    c = Lines(daemon.port("imap"))
    assert c.line().startswith(b"* OK")
    assert c.cmd(b"a LOGIN alice {%d+}\r\n" % len(BAD) + BAD).startswith(b"a NO")
    assert c.cmd(b"b LOGIN {%d+}\r\n" % len(BAD_USER) + BAD_USER + b" x").startswith(b"b NO")
    assert c.cmd(b"c AUTHENTICATE PLAIN " + plain(b"alice", BAD)).startswith(b"c NO")
    assert c.cmd(b"d LOGIN alice alice-pw").startswith(b"d OK")
    c.close()
    counted(daemon, "imap", before, 3)


def test_ftp(daemon):
    before = failures(daemon, "ftp")
    c = Lines(daemon.port("ftp"))
    assert c.line().startswith(b"220")
    assert c.cmd(b"USER alice").startswith(b"331")
    assert c.cmd(b"PASS " + BAD).startswith(b"530")
    assert c.cmd(b"USER " + BAD_USER).startswith(b"331")
    assert c.cmd(b"PASS x").startswith(b"530")
    c.close()
    c = Lines(daemon.port("ftp"))
    assert c.line().startswith(b"220")
    assert c.cmd(b"USER alice").startswith(b"331")
    assert c.cmd(b"PASS alice-pw").startswith(b"230")
    c.close()
    counted(daemon, "ftp", before, 2)


def test_telnet(daemon):
    before = failures(daemon, "telnet")
    c = TelnetClient("127.0.0.1", daemon.port("telnet"))
    for user in (b"alice", BAD_USER):
        c.expect(b"login: ")
        c.sendline(user)
        c.expect(b"Password: ")
        c.sendline(BAD)
        c.expect(b"Login incorrect")
    c.close()
    counted(daemon, "telnet", before, 2)


def test_non_utf8_failures_lock_the_account(make_daemon):
    """
    The throttle's lock is reached by non-UTF-8 tries alone: then even the
    right password waits.
    """
    d = make_daemon(listeners=["telnet", "pop3"], users={"alice": "alice-pw"}, config={
        "server": {"allow_plaintext_auth": True},
        "throttle": {"base_delay": 0.01, "max_delay": 0.02, "lock_after": 2},
        "telnet": {"fail_delay": 0.01, "utmp": False, "max_tries": 5},
    })
    c = TelnetClient("127.0.0.1", d.port("telnet"))
    for _ in range(2):
        c.expect(b"login: ")
        c.sendline(b"alice")
        c.expect(b"Password: ")
        c.sendline(BAD)
        c.expect(b"Login incorrect")
    c.close()
    p = Lines(d.port("pop3"))
    assert p.line().startswith(b"+OK")
    assert p.cmd(b"USER alice").startswith(b"+OK")
    assert p.cmd(b"PASS alice-pw").startswith(b"-ERR")
    p.close()
    assert "login refused, locked: protocol=pop3" in d.log()

"""
Connection lifecycle on every listener, against the real daemon: the
per-listener counters in C{DATA/run/connections.json} return to zero after
any mix of sessions (plain, STARTTLS, implicit TLS, aborted handshakes,
resets); TLS handshakes have a deadline; a connection the server closed goes
away even if the peer never answers; and work that completes after the
client left (a login, a pipelined STLS) never acts on the dead connection.
"""

from __future__ import annotations

import ftplib
import http.client
import imaplib
import json
import poplib
import smtplib
import socket
import ssl
import struct
import time

import pexpect
import pytest
from harness import Daemon, all_listeners
from rawsmtp import insecure_context
from test_ftp_helpers import ImplicitFTPS

TLS_LISTENERS = {"smtps", "pop3s", "imaps", "ftps", "telnets", "https"}
#: Listener -> (the command that starts TLS, the start of its positive reply).
STARTTLS = {
    "smtp": (b"STARTTLS", b"220 "),
    "submission": (b"STARTTLS", b"220 "),
    "pop3": (b"STLS", b"+OK"),
    "imap": (b"a1 STARTTLS", b"a1 OK"),
    "ftp": (b"AUTH TLS", b"234 "),
}
#: Listener family -> how its greeting starts.
GREETING = {"smtp": b"220 ", "lmtp": b"220 ", "pop3": b"+OK", "imap": b"* OK", "ftp": b"220 ",
            "telnet": b"login: ", "ssh": b"SSH-2.0-", "http": b"HTTP/1.1 200 "}
PASSWORD = "alice-pw"

BASE = {
    "server": {"allow_plaintext_auth": True},
    "telnet": {"utmp": False, "fail_delay": 0.05},
}


def family(listener: str) -> str:
    return {"submission": "smtp", "smtps": "smtp", "pop3s": "pop3", "imaps": "imap",
            "ftps": "ftp", "telnets": "telnet", "https": "http"}.get(listener, listener)


def greet(sock, listener: str) -> bytes:
    """Read the greeting; HTTP has none, so a health check stands for it."""
    if family(listener) == "http":
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return read_until(sock, GREETING[family(listener)])


def counts(d: Daemon) -> dict:
    path = d.data_dir / "run" / "connections.json"
    info = json.loads(path.read_text())
    assert info["pid"] == d.proc.pid
    return info["listeners"]


def wait_idle(d: Daemon, listener: str, timeout: float) -> dict:
    """Wait until the listener has no open connection; return its counters."""
    def idle():
        c = counts(d)[listener]
        return c if c["open"] == 0 and c["addresses"] == {} else None

    c = d.wait_for(idle, timeout)
    assert c, f"{listener} counters did not return to zero: {counts(d)[listener]}"
    return c


def clean_log(d: Daemon, since: int = 0) -> None:
    """No traceback in the daemon's log (from offset C{since}: what this test caused)."""
    text = d.log()[since:]
    assert "Traceback" not in text and "Unhandled error" not in text, text[-4000:]


# -- raw sockets -----------------------------------------------------------------------


def connect(d: Daemon, listener: str, timeout: float = 15) -> socket.socket:
    return socket.create_connection(("127.0.0.1", d.port(listener)), timeout=timeout)


def read_until(sock, marker: bytes, limit: int = 65536) -> bytes:
    buf = b""
    while marker not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}: {buf!r}")
        buf += chunk
        assert len(buf) < limit
    return buf


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST, not FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed the TCP connection (FIN or RST)."""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def client_hello() -> bytes:
    """A real TLS ClientHello, as the first flight a client would send."""
    obj = insecure_context().wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO())
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


class BioTLS:
    """A TLS client over a raw socket, so the test decides every byte (and every non-byte)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = insecure_context().wrap_bio(self.incoming, self.outgoing)
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._pull()
        self._flush()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _pull(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed during TLS")
        self.incoming.write(data)

    def send(self, data: bytes) -> None:
        self.obj.write(data)
        self._flush()

    def read_until(self, marker: bytes) -> bytes:
        buf = b""
        while marker not in buf:
            try:
                buf += self.obj.read(65536)
            except ssl.SSLWantReadError:
                self._pull()
            except ssl.SSLZeroReturnError:
                raise ConnectionError(f"close_notify before {marker!r}: {buf!r}") from None
        return buf


# -- ordinary client sessions, per listener --------------------------------------------


def session(d: Daemon, listener: str, starttls: bool = False, login: bool = False) -> None:
    """One ordinary session that ends with the protocol's own quit."""
    port, ctx, fam = d.port(listener), insecure_context(), family(listener)
    if fam == "smtp":
        if listener == "smtps":
            s = smtplib.SMTP_SSL("127.0.0.1", port, timeout=15, context=ctx)
        else:
            s = smtplib.SMTP("127.0.0.1", port, timeout=15)
        s.ehlo()
        if starttls:
            s.starttls(context=ctx)
            s.ehlo()
        if login and listener == "smtp":  # the MX has no AUTH: deliver instead
            s.sendmail("bob@remote.test", ["alice@example.test"], b"Subject: hi\r\n\r\nhi\r\n")
        elif login:
            s.login("alice", PASSWORD)
        assert s.quit()[0] == 221
    elif fam == "lmtp":
        s = smtplib.LMTP("127.0.0.1", port, timeout=15)
        s.ehlo()  # LHLO
        if login:  # no AUTH on LMTP: deliver instead
            s.sendmail("bob@remote.test", ["alice@example.test"], b"Subject: hi\r\n\r\nhi\r\n")
        assert s.quit()[0] == 221
    elif fam == "pop3":
        if listener == "pop3s":
            p = poplib.POP3_SSL("127.0.0.1", port, timeout=15, context=ctx)
        else:
            p = poplib.POP3("127.0.0.1", port, timeout=15)
        if starttls:
            p.stls(ctx)
        if login:
            p.user("alice")
            p.pass_(PASSWORD)
        assert p.quit().startswith(b"+OK")
    elif fam == "imap":
        if listener == "imaps":
            m = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=15)
        else:
            m = imaplib.IMAP4("127.0.0.1", port, timeout=15)
        if starttls:
            m.starttls(ssl_context=ctx)
        if login:
            m.login("alice", PASSWORD)
        assert m.logout()[0] == "BYE"
    elif fam == "ftp":
        if listener == "ftps":
            f = ImplicitFTPS(context=ctx, timeout=15)
        else:
            f = ftplib.FTP_TLS(context=ctx, timeout=15) if starttls else ftplib.FTP(timeout=15)
        f.connect("127.0.0.1", port)
        if starttls:
            f.auth()
        if login:
            f.login("alice", PASSWORD)
        assert f.quit().startswith("221")
    elif fam == "ssh":
        if login:
            p = pexpect.spawn("ssh", ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
                                      "-o", "UserKnownHostsFile=/dev/null",
                                      "-o", "PubkeyAuthentication=no", "-p", str(port),
                                      "alice@127.0.0.1", "true"], timeout=15)
            p.expect("assword:")
            p.sendline(PASSWORD)
            p.expect(pexpect.EOF)
            p.close()
        else:
            sock = connect(d, listener)
            read_until(sock, GREETING["ssh"])
            sock.sendall(b"SSH-2.0-probe\r\n")
            sock.close()
    elif fam == "http":
        if listener == "https":
            c = http.client.HTTPSConnection("127.0.0.1", port, timeout=15, context=ctx)
        else:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        c.request("GET", "/healthz")
        response = c.getresponse()
        assert response.status == 200 and b'"ok"' in response.read()
        c.close()
    else:
        sock = connect(d, listener)
        if listener == "telnets":
            sock = ctx.wrap_socket(sock)
        read_until(sock, b"login: ")
        sock.sendall(b"\x04")  # Ctrl-D on an empty login line: goodbye
        assert closed_by_server(sock)
        sock.close()


def aborted_handshakes(d: Daemon, listener: str) -> None:
    """Garbage, half a ClientHello, a reset mid-handshake; each then closed by the client."""
    hello = client_hello()
    for payload, rst in ((b"\x16\x03\x01\x00\x05garbage\r\n", False),
                         (hello[: len(hello) // 2], False),
                         (hello[: len(hello) // 2], True)):
        sock = connect(d, listener)
        if listener in STARTTLS:
            command, ok = STARTTLS[listener]
            greet(sock, listener)
            sock.sendall(command + b"\r\n")
            read_until(sock, ok)
        sock.sendall(payload)
        if rst:
            reset(sock)
        else:
            sock.close()


def resets(d: Daemon, listener: str) -> None:
    """TCP resets: before the greeting, after it, and in the middle of a TLS session."""
    reset(connect(d, listener))
    sock = connect(d, listener)
    if listener in TLS_LISTENERS:
        sock = insecure_context().wrap_socket(sock)
    greet(sock, listener)
    reset(sock)
    if listener in STARTTLS:
        sock = connect(d, listener)
        command, ok = STARTTLS[listener]
        greet(sock, listener)
        sock.sendall(command + b"\r\n")
        read_until(sock, ok)
        tls = insecure_context().wrap_socket(sock)
        reset(tls)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    # Safety nets far beyond the wait below: zero must come from clean ends.
    config = dict(BASE, limits={"tls_handshake_timeout": 60.0, "close_timeout": 60.0})
    d = Daemon(tmp_path_factory.mktemp("conn"), config, all_listeners())
    d.add_user("alice", PASSWORD)
    d.start()
    yield d
    d.stop()


@pytest.mark.parametrize("listener", all_listeners())
def test_counters_return_to_zero(daemon, listener):
    d = daemon
    since = len(d.log())
    assert counts(d)[listener] == {"open": 0, "addresses": {}}
    # The counters see a held connection, so zero below means something.
    held = connect(d, listener)
    if listener in TLS_LISTENERS:
        held = insecure_context().wrap_socket(held)
    greet(held, listener)
    assert d.wait_for(lambda: counts(d)[listener] == {"open": 1,
                                                    "addresses": {"127.0.0.1": 1}}), counts(d)
    held.close()
    for _ in range(3):
        session(d, listener)
        if listener in STARTTLS:
            session(d, listener, starttls=True)
        if family(listener) != "telnet":
            session(d, listener, starttls=listener in STARTTLS, login=True)
    if listener in TLS_LISTENERS or listener in STARTTLS:
        aborted_handshakes(d, listener)
    else:
        sock = connect(d, listener)
        sock.sendall(b"\x16\x03\x01garbage\r\n")
        sock.close()
    resets(d, listener)
    wait_idle(d, listener, timeout=15)
    session(d, listener)  # a fresh connection is served
    wait_idle(d, listener, timeout=15)
    clean_log(d, since)


def test_starttls_sessions_do_not_lock_out_an_address(make_daemon):
    """The reported case: 20 x STARTTLS + QUIT to submission, cap 20, then 421 for everyone."""
    d = make_daemon(dict(BASE, smtp={"max_connections_per_address": 20},
                         limits={"close_timeout": 60.0}), listeners=["submission"])
    for _ in range(20):
        s = smtplib.SMTP("127.0.0.1", d.port("submission"), timeout=15)
        s.starttls(context=insecure_context())
        assert s.quit()[0] == 221
    # Every session's cleanup ran (the close_timeout safety net is 60 s away) ...
    assert d.wait_for(lambda: d.log().count("disconnect: address=127.0.0.1") == 20), \
        d.log()[-3000:]
    # ... so the address is not locked out.
    s = smtplib.SMTP("127.0.0.1", d.port("submission"), timeout=15)
    assert s.ehlo()[0] == 250
    assert s.quit()[0] == 221
    wait_idle(d, "submission", timeout=10)


# -- deadlines -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    config = dict(BASE, limits={"tls_handshake_timeout": 1.0, "close_timeout": 1.0})
    d = Daemon(tmp_path_factory.mktemp("quick"), config, all_listeners())
    d.add_user("alice", PASSWORD)
    d.start()
    yield d
    d.stop()


@pytest.mark.parametrize("listener", sorted(TLS_LISTENERS))
def test_silent_clients_on_implicit_tls_are_cut_off(quick, listener):
    d = quick
    since = len(d.log())
    before = d.log().count(f"tls handshake timeout: listener={listener} ")
    socks = [connect(d, listener) for _ in range(5)]
    socks[-1].sendall(client_hello()[:20])  # half a handshake, then silence
    assert d.wait_for(lambda: counts(d)[listener]["open"] == 5), counts(d)
    for sock in socks:
        assert closed_by_server(sock)
        sock.close()
    wait_idle(d, listener, timeout=10)
    assert d.log().count(f"tls handshake timeout: listener={listener} ") == before + 5
    session(d, listener)
    clean_log(d, since)


@pytest.mark.parametrize("listener", sorted(STARTTLS))
def test_silence_after_starttls_is_cut_off(quick, listener):
    d = quick
    since = len(d.log())
    sock = connect(d, listener)
    command, ok = STARTTLS[listener]
    greet(sock, listener)
    sock.sendall(command + b"\r\n")
    read_until(sock, ok)
    assert closed_by_server(sock)
    sock.close()
    wait_idle(d, listener, timeout=10)
    assert f"tls handshake timeout: listener={listener} " in d.log()
    session(d, listener, starttls=True)
    clean_log(d, since)


QUIT = {"smtp": (b"QUIT\r\n", b"221 "), "pop3": (b"QUIT\r\n", b"+OK"),
        "imap": (b"a LOGOUT\r\n", b"a OK"), "ftp": (b"QUIT\r\n", b"221 ")}


@pytest.mark.parametrize("listener", ["smtps", "pop3s", "imaps", "ftps"])
def test_peer_that_never_answers_close_notify_is_cut_off(quick, listener):
    """After QUIT the server's close_notify gets no answer and no FIN: it must not wait forever."""
    d = quick
    since = len(d.log())
    sock = connect(d, listener)
    tls = BioTLS(sock)
    tls.read_until(GREETING[family(listener)])
    command, reply = QUIT[family(listener)]
    tls.send(command)
    tls.read_until(reply)
    # Read the raw socket only: no close_notify and no FIN go back.
    assert closed_by_server(sock)
    sock.close()
    wait_idle(d, listener, timeout=10)
    assert f"close timeout: listener={listener} " in d.log()
    clean_log(d, since)


# -- work that completes after the client left -----------------------------------------


def pop3_login_works(d: Daemon, listener: str = "pop3", deadline: float = 5.0) -> None:
    """A normal login succeeds; C{[IN-USE]} is retried only until a short deadline."""
    end = time.monotonic() + deadline
    while True:
        if listener == "pop3s":
            p = poplib.POP3_SSL("127.0.0.1", d.port(listener), timeout=15,
                                context=insecure_context())
        else:
            p = poplib.POP3("127.0.0.1", d.port(listener), timeout=15)
        p.user("alice")
        try:
            p.pass_(PASSWORD)
        except poplib.error_proto as e:
            p.quit()
            if b"[IN-USE]" not in e.args[0] or time.monotonic() > end:
                raise
            time.sleep(0.1)
            continue
        p.quit()
        return


@pytest.mark.parametrize("how", ["close", "reset", "pipelined-stls", "tls-close"])
def test_pop3_disconnect_during_pass_releases_the_maildrop(daemon, how):
    d = daemon
    since = len(d.log())
    listener = "pop3s" if how == "tls-close" else "pop3"
    logins = d.log().count("login: protocol=pop3 ")
    sock = connect(d, listener)
    if listener == "pop3s":
        sock = insecure_context().wrap_socket(sock)
    read_until(sock, b"+OK")
    commands = b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\n"
    if how == "pipelined-stls":
        commands += b"STLS\r\n"
    sock.sendall(commands)
    if how == "reset":
        reset(sock)
    else:
        sock.close()
    # The abandoned login itself completed (the throttle logs it) ...
    assert d.wait_for(lambda: d.log().count("login: protocol=pop3 ") > logins)
    # ... and released the lock at once.
    pop3_login_works(d, listener)
    wait_idle(d, listener, timeout=10)
    clean_log(d, since)


def _login_then_leave(d: Daemon, listener: str, commands: bytes, logged: str) -> None:
    """Pipeline a login and more, leave before the answer; wait until the login was decided."""
    before = d.log().count(logged)
    sock = connect(d, listener)
    greet(sock, listener)
    sock.sendall(commands)
    sock.close()
    assert d.wait_for(lambda: d.log().count(logged) > before)
    wait_idle(d, listener, timeout=10)


@pytest.mark.parametrize("password, then", [
    (PASSWORD, b"b SELECT INBOX\r\nc FETCH 1:* (FLAGS)\r\n"),
    ("wrong", b"b STARTTLS\r\n"),
])
def test_imap_login_then_close(daemon, password, then):
    d = daemon
    since = len(d.log())
    logged = "login: protocol=imap " if password == PASSWORD else "login failed: protocol=imap "
    _login_then_leave(d, "imap", b"a LOGIN alice " + password.encode() + b"\r\n" + then, logged)
    session(d, "imap", login=True)
    clean_log(d, since)


@pytest.mark.parametrize("password, then", [
    (PASSWORD, b"MAIL FROM:<alice@example.test>\r\n"),
    ("wrong", b"STARTTLS\r\n"),
])
def test_smtp_auth_then_close(daemon, password, then):
    import base64

    d = daemon
    since = len(d.log())
    token = base64.b64encode(b"\0alice\0" + password.encode())
    logged = "login: protocol=smtp " if password == PASSWORD else "login failed: protocol=smtp "
    _login_then_leave(d, "submission", b"EHLO c\r\nAUTH PLAIN " + token + b"\r\n" + then,
                      logged)
    session(d, "submission", login=True)
    clean_log(d, since)


def test_ftp_user_pass_then_close(daemon):
    d = daemon
    since = len(d.log())
    _login_then_leave(d, "ftp", b"USER alice\r\nPASS " + PASSWORD.encode() +
                      b"\r\nPWD\r\nPASV\r\n", "login: protocol=ftp ")
    session(d, "ftp", login=True)
    clean_log(d, since)


def test_telnet_login_then_close(daemon):
    """
    Name and password, then gone while the password is checked: the pending
    login is cancelled, counted by the throttle as abandoned, and nothing
    is logged as an error (it once was: a CancelledError traceback).
    """
    d = daemon
    since = len(d.log())
    before = d.log().count("protocol=telnet ")
    sock = connect(d, "telnet")
    read_until(sock, GREETING["telnet"])
    sock.sendall(b"alice\r\n" + PASSWORD.encode() + b"\r\n")
    sock.close()
    # Decided one way or the other: abandoned (the usual case) or completed first.
    assert d.wait_for(lambda: d.log().count("protocol=telnet ") > before)
    wait_idle(d, "telnet", timeout=10)
    session(d, "telnet", login=True)
    clean_log(d, since)


@pytest.fixture(scope="module")
def short_idle(tmp_path_factory):
    config = dict(BASE, pop3={"idle_timeout": 1}, imap={"login_timeout": 1})
    d = Daemon(tmp_path_factory.mktemp("idle"), config, ["pop3", "imap"])
    d.add_user("alice", PASSWORD)
    d.start()
    yield d
    d.stop()


def test_pop3_idle_timeout_still_applies_after_login(short_idle):
    """The timer stopped while PASS was checked must run again: an idle session must end."""
    d = short_idle
    sock = connect(d, "pop3")
    read_until(sock, b"+OK")
    sock.sendall(b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\n")
    read_until(sock, b"Logged in")
    assert b"Idle for too long" in read_until(sock, b"closing connection")
    assert closed_by_server(sock)
    sock.close()
    wait_idle(d, "pop3", timeout=10)


def test_imap_login_timeout_still_applies_after_a_failed_login(short_idle):
    d = short_idle
    sock = connect(d, "imap")
    read_until(sock, b"* OK")
    sock.sendall(b"a LOGIN alice wrong\r\n")
    read_until(sock, b"a NO")
    assert b"Idle for too long" in read_until(sock, b"closing connection")
    assert closed_by_server(sock)
    sock.close()
    wait_idle(d, "imap", timeout=10)

"""POP3 against the real daemon: poplib, raw sockets, curl and fetchmail."""

from __future__ import annotations

import fcntl
import poplib
import shutil
import socket
import struct
import subprocess
import termios

import pytest
from harness import wait_steady
from rawsmtp import insecure_context as tls_context

from netsuite.auth import sasl
from netsuite.pop3 import wire

USERS = {"alice": "wonderland", "bob": "builder"}

MESSAGE = (b"From: bob@example.test\nTo: alice@example.test\nSubject: dots\n\n"
           b"first line\n.leading dot\n..two dots\n.\nlast line\n")




def put(d, user: str, data: bytes) -> str:
    """Deliver through the store's own delivery code, as SMTP does."""
    return d.deliver_local(user, data)


def crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(listeners=["pop3", "pop3s"], users=USERS)


def login(d, user="alice") -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", d.port("pop3"), timeout=10)
    p.stls(tls_context())
    p.user(user)
    p.pass_(USERS[user])
    return p


# -- unit: the wire ----------------------------------------------------------------------

def test_dot_stuffing_and_top():
    assert wire.dot_stuff(b".a\r\nb\r\n.\r\n") == b"..a\r\nb\r\n..\r\n.\r\n"
    assert wire.dot_stuff(b"no newline") == b"no newline\r\n.\r\n"
    msg = b"H: 1\r\n\r\nl1\r\nl2\r\nl3\r\n"
    assert wire.top(msg, 0) == b"H: 1\r\n\r\n"
    assert wire.top(msg, 2) == b"H: 1\r\n\r\nl1\r\nl2\r\n"
    assert wire.top(msg, 10) == msg
    with pytest.raises(wire.CommandError):
        wire.parse_command(b"RE\x00TR 1")
    with pytest.raises(wire.CommandError):
        wire.message_number(b"-1")
    assert sasl.decode_plain(b"AGFsaWNlAHB3") == (b"", b"alice", b"pw")
    for bad in (b"!!", b"YWxpY2U=", b"AABwdw=="):  # not base64; one part; empty authcid
        with pytest.raises(sasl.SASLError):
            sasl.decode_plain(bad)


# -- the daemon ---------------------------------------------------------------------------

def test_stls_login_list_retr_byte_exact(daemon):
    put(daemon, "alice", MESSAGE)
    put(daemon, "alice", b"Subject: two\n\nsecond\n")
    p = login(daemon)
    count, size = p.stat()
    assert count == 2
    assert size == len(crlf(MESSAGE)) + len(crlf(b"Subject: two\n\nsecond\n"))
    resp, listing, _ = p.list()
    second = b"Subject: two\r\n\r\nsecond\r\n"
    assert listing == [b"1 %d" % len(crlf(MESSAGE)), b"2 %d" % len(second)]
    resp, lines, octets = p.retr(1)
    # poplib un-stuffs dots and splits lines: join back and compare to the CRLF form.
    assert b"\r\n".join(lines) + b"\r\n" == crlf(MESSAGE)
    resp, lines, _ = p.top(1, 1)
    assert lines == [b"From: bob@example.test", b"To: alice@example.test", b"Subject: dots",
                     b"", b"first line"]
    p.quit()


def test_raw_retr_is_dot_stuffed(daemon):
    put(daemon, "alice", MESSAGE)
    ctx = tls_context()
    with socket.create_connection(("127.0.0.1", daemon.port("pop3s")), timeout=10) as raw:
        s = ctx.wrap_socket(raw)
        f = s.makefile("rb")
        assert f.readline().startswith(b"+OK")
        s.sendall(b"USER alice\r\nPASS wonderland\r\nRETR 1\r\n")
        assert f.readline().startswith(b"+OK")
        assert f.readline().startswith(b"+OK Logged in")
        assert f.readline().startswith(b"+OK")
        body = b""
        while not body.endswith(b"\r\n.\r\n"):
            chunk = f.readline()
            assert chunk
            body += chunk
        expected = crlf(MESSAGE).replace(b"\r\n.", b"\r\n..") + b".\r\n"
        assert body == expected


def test_plaintext_refused_before_tls(daemon):
    p = poplib.POP3("127.0.0.1", daemon.port("pop3"), timeout=10)
    caps = p.capa()
    assert "STLS" in caps and "USER" not in caps and "SASL" not in caps
    assert "PIPELINE" not in caps and "CELERITY" not in caps
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p._shortcmd("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=")
    p.stls(tls_context())
    caps = p.capa()
    assert "STLS" not in caps and "USER" in caps and caps["SASL"] == ["PLAIN"]
    p.quit()


def test_implicit_tls_and_auth_plain(daemon):
    put(daemon, "alice", b"Subject: s\n\nx\n")
    p = poplib.POP3_SSL("127.0.0.1", daemon.port("pop3s"), context=tls_context(), timeout=10)
    resp = p._shortcmd("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=")
    assert resp.startswith(b"+OK")
    assert p.stat()[0] == 1
    p.quit()
    # The two-step form, with a continuation.
    p = poplib.POP3_SSL("127.0.0.1", daemon.port("pop3s"), context=tls_context(), timeout=10)
    p._putcmd("AUTH PLAIN")
    assert p._getline()[0].startswith(b"+")
    assert p._shortcmd("AGFsaWNlAHdvbmRlcmxhbmQ=").startswith(b"+OK")
    p.quit()


def test_bad_password_is_auth_error(daemon):
    p = poplib.POP3_SSL("127.0.0.1", daemon.port("pop3s"), context=tls_context(), timeout=10)
    p.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_("wrong")
    p.user("alice")
    assert p.pass_("wonderland").startswith(b"+OK")
    p.quit()


def test_dele_happens_only_at_quit(daemon):
    for i in range(3):
        put(daemon, "alice", b"Subject: %d\n\nbody\n" % i)
    p = login(daemon)
    p.dele(1)
    with pytest.raises(poplib.error_proto):
        p.retr(1)
    assert p.stat()[0] == 2
    # Drop the connection without QUIT: nothing is deleted.
    p.file.close()
    p.sock.close()
    p = daemon.wait_for(lambda: _try_login(daemon))
    assert p.stat()[0] == 3
    p.dele(1)
    p.rset()
    assert p.stat()[0] == 3
    p.dele(2)
    p.quit()
    assert daemon.wait_for(lambda: len(daemon.messages("alice")) == 2)
    p = login(daemon)
    subjects = [p.top(i, 0)[1][0] for i in (1, 2)]
    assert subjects == [b"Subject: 0", b"Subject: 2"]
    p.quit()


def _try_login(d):
    try:
        return login(d)
    except poplib.error_proto:
        return None


def test_second_session_gets_in_use(daemon):
    p = login(daemon)
    q = poplib.POP3_SSL("127.0.0.1", daemon.port("pop3s"), context=tls_context(), timeout=10)
    q.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        q.pass_("wonderland")
    q.quit()
    p.quit()
    # Released at QUIT.
    r = daemon.wait_for(lambda: _try_login(daemon))
    assert r is not None
    r.quit()


def test_uidl_stable_across_sessions_and_flag_changes(daemon):
    put(daemon, "alice", b"Subject: a\n\nx\n")
    put(daemon, "alice", b"Subject: b\n\ny\n")
    p = login(daemon)
    first = p.uidl()[1]
    p.top(2, 0)  # TOP does not make a message \Seen
    p.retr(1)
    p.quit()  # RETR sets \Seen at QUIT (Maildir: the file renamed into cur/ with :2,S)
    # The first \Seen; the TOP one not (Maildir: still in new/).
    assert daemon.wait_for(lambda: sorted(daemon.system_flags("alice")) == ["", "S"])
    p = login(daemon)
    assert p.uidl()[1] == first
    assert len(set(first)) == 2
    p.quit()


def test_stls_injection_is_discarded(daemon):
    with socket.create_connection(("127.0.0.1", daemon.port("pop3")), timeout=10) as raw:
        f = raw.makefile("rb")
        assert f.readline().startswith(b"+OK")
        raw.sendall(b"STLS\r\nCAPA\r\n")
        assert f.readline().startswith(b"+OK Begin TLS")
        s = tls_context().wrap_socket(raw)
        s.sendall(b"NOOP\r\n")
        tf = s.makefile("rb")
        # The first reply inside TLS answers NOOP: the injected CAPA never ran.
        assert tf.readline() == b"+OK\r\n"
        s.sendall(b"QUIT\r\n")
        assert tf.readline().startswith(b"+OK")


def test_bad_input_keeps_session(daemon):
    with socket.create_connection(("127.0.0.1", daemon.port("pop3")), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"X" * 100_000 + b"\r\n")
        assert f.readline().startswith(b"-ERR Line too long")
        s.sendall(b"NO\x00OP\r\n")
        assert f.readline().startswith(b"-ERR")
        s.sendall(b"FROB\r\n")
        assert f.readline().startswith(b"-ERR")
        s.sendall(b"STAT\r\n")
        assert f.readline().startswith(b"-ERR")  # not logged in
        s.sendall(b"NOOP\r\n")
        assert f.readline() == b"+OK\r\n"
    p = login(daemon)
    for bad in ("RETR 0", "RETR 99", "RETR x", "TOP 1", "DELE -1", "LIST 1 2"):
        with pytest.raises(poplib.error_proto):
            p._shortcmd(bad)
    assert p.noop().startswith(b"+OK")
    p.quit()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_reads_message(daemon):
    put(daemon, "alice", MESSAGE)
    out = subprocess.run(
        ["curl", "-s", "--ssl-reqd", "-k", "--user", "alice:wonderland",
         f"pop3://127.0.0.1:{daemon.port('pop3')}/1"],
        capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == crlf(MESSAGE)
    out = subprocess.run(
        ["curl", "-s", "-k", "--user", "alice:wonderland",
         f"pop3s://127.0.0.1:{daemon.port('pop3s')}/"],
        capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"1 %d\r\n" % len(crlf(MESSAGE))


@pytest.mark.skipif(shutil.which("fetchmail") is None, reason="fetchmail not installed")
def test_fetchmail_downloads_and_deletes(daemon, tmp_path):
    put(daemon, "alice", MESSAGE)
    put(daemon, "alice", b"Subject: second\n\nhello\n")
    mbox = tmp_path / "mbox"
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f"poll 127.0.0.1 protocol pop3 port {daemon.port('pop3')}\n"
        f"  user alice password wonderland sslproto tls1.2+ no sslcertck\n"
        f"  mda \"/bin/sh -c 'cat >> {mbox}'\"\n")
    rc.chmod(0o600)
    out = subprocess.run(
        ["fetchmail", "-f", str(rc), "--nosyslog", "-v", "--idfile", str(tmp_path / "ids")],
        capture_output=True, timeout=60, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
    got = mbox.read_bytes()
    assert b".leading dot\n..two dots\n.\nlast line\n" in got
    assert b"Subject: second" in got
    assert daemon.wait_for(lambda: daemon.messages("alice") == [])


@pytest.mark.parametrize("policy", ["trash", "keep"])
def test_on_delete_policy(make_daemon, policy):
    d = make_daemon(listeners=["pop3s"], users=USERS, config={"pop3": {"on_delete": policy}})
    put(d, "alice", b"Subject: old\n\nx\n")
    p = poplib.POP3_SSL("127.0.0.1", d.port("pop3s"), context=tls_context(), timeout=10)
    p.user("alice")
    p.pass_(USERS["alice"])
    p.dele(1)
    p.quit()
    if policy == "trash":
        assert d.wait_for(lambda: d.messages("alice") == [])
        assert d.messages("alice", "Trash") == [b"Subject: old\n\nx\n"]
    else:
        assert d.messages("alice") == [b"Subject: old\n\nx\n"]
        assert d.wait_for(lambda: d.system_flags("alice") == ["ST"]), d.system_flags("alice")


def test_config_errors_name_key(make_daemon):
    d = make_daemon(users=USERS, start=False, listeners=["pop3"],
                    config={"pop3": {"on_delete": "shred"}})
    with pytest.raises(RuntimeError, match=r"pop3.on_delete: must be one of"):
        d.start(timeout=20)


def test_streaming_stuffer_equals_the_whole_message_rendering():
    """RETR streams in chunks; every split must give exactly the bytes of the one-shot path."""
    import random

    from netsuite.pop3.wire import Stuffer, dot_stuff
    from netsuite.store.folder import to_wire

    rng = random.Random(1939)
    alphabet = [b"a", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b".\n", b"\n.", b"x" * 7]
    for _ in range(3000):
        stored = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        s = Stuffer()
        out, pos = [], 0
        while pos < len(stored):
            step = rng.randrange(1, 8)
            out.append(s.feed(stored[pos:pos + step]))
            pos += step
        out.append(s.finish())
        assert b"".join(out) == dot_stuff(to_wire(stored)), stored


def _queued(sock: socket.socket) -> int:
    """Bytes waiting in our socket's kernel receive queue."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_large_retr_streams_exactly_and_keeps_pipelined_order(make_daemon):
    """A 24 MB message full of dot-lines: exact octets and bytes, NOOP answered after it."""
    d = make_daemon(listeners=["pop3s"], users=USERS)
    line = b".dot line that must be stuffed and a long tail " + b"x" * 60 + b"\n"
    stored = b"Subject: big\n\n" + line * (24_000_000 // len(line))
    put(d, "alice", stored)
    raw = socket.create_connection(("127.0.0.1", d.port("pop3s")), timeout=30)
    sock = tls_context().wrap_socket(raw)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"+OK")
    sock.sendall(b"USER alice\r\nPASS " + USERS["alice"].encode() + b"\r\n")
    assert f.readline().startswith(b"+OK") and f.readline().startswith(b"+OK")

    pid = d.proc.pid
    before = _rss_kib(pid)
    sock.sendall(b"RETR 1\r\nNOOP\r\n")
    status = f.readline()
    # A client that does not read yet: wait until the server has filled our socket
    # and stopped sending, then look at its memory.
    assert wait_steady(lambda: _queued(sock)), "the server never stopped sending"
    during = _rss_kib(pid)
    wire_form = stored.replace(b"\n", b"\r\n")
    assert status == b"+OK %d octets\r\n" % len(wire_form)
    body = []
    while (got := f.readline()) != b".\r\n":
        body.append(got[1:] if got.startswith(b"..") else got)
    assert b"".join(body) == wire_form
    assert f.readline().startswith(b"+OK")   # the pipelined NOOP, after the whole body
    sock.close()
    # Streaming keeps the server's memory flat; the old one-shot path held the
    # message and its stuffed copy (~50 MB) while the client was not reading.
    assert during - before < 16 * 1024, f"server RSS grew {during - before} KiB"


def test_retr_around_the_one_write_limit_is_exact_and_in_order(make_daemon):
    """
    Bodies just under, at and over the size sent in one write (and file sizes
    at the producer's chunk edges, where the end and the dot share a write):
    exact octets, dot-stuffed, each followed by its pipelined NOOP.
    """
    from netsuite.pop3.server import _Retrieval

    d = make_daemon(listeners=["pop3"], users=USERS, config={
        "server": {"allow_plaintext_auth": True}})
    chunk = _Retrieval.CHUNK
    head = b"Subject: edge\n\n"
    line = b".dotted line\n"  # 13 bytes on disk, 15 on the wire (CRLF, stuffed dot)
    stored = []
    for disk_size in (chunk - 1, chunk, chunk + 1, 2 * chunk, 2 * chunk + 7):
        body = line * ((disk_size - len(head)) // len(line))
        stored.append(head + body + b"x" * (disk_size - len(head) - len(body)))
    for wire_size in (chunk - 1, chunk, chunk + 1):  # the one-write limit is on the wire
        n = (wire_size - len(head) - 2) // 14
        msg = head + (b"b" * 12 + b"\n") * n
        msg += b"c" * (wire_size - len(crlf(msg)))
        stored.append(msg)
    for data in stored:
        put(d, "alice", data)
    with socket.create_connection(("127.0.0.1", d.port("pop3")), timeout=30) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"+OK")
        sock.sendall(b"USER alice\r\nPASS " + USERS["alice"].encode() + b"\r\n")
        assert f.readline().startswith(b"+OK") and f.readline().startswith(b"+OK")
        sock.sendall(b"".join(b"RETR %d\r\nNOOP\r\n" % (i + 1) for i in range(len(stored))))
        for data in stored:
            wire_form = crlf(data)
            assert f.readline() == b"+OK %d octets\r\n" % len(wire_form)
            body = []
            while (got := f.readline()) != b".\r\n":
                body.append(got[1:] if got.startswith(b"..") else got)
            expected = wire_form if wire_form.endswith(b"\r\n") else wire_form + b"\r\n"
            assert b"".join(body) == expected
            assert f.readline().startswith(b"+OK")  # the NOOP, after the whole body

"""
POP3 RETR and TOP against the real daemon, byte for byte, on every path the
reply can take: straight to a plain TCP socket, through STLS and implicit TLS,
pipelined, streamed (large or misnamed files), and when the client goes away.

Messages are written into the Maildir by hand, as another delivery agent
would: CRLF or LF on disk, no final newline, a lone CR, no header at all.
The expected wire form is computed here line by line (RFC 1939 3), not with
netsuite's own functions.
"""

from __future__ import annotations

import itertools
import os
import poplib
import socket

import pytest
from harness import wait_steady
from rawsmtp import insecure_context as tls_context
from test_pop3 import _queued, _rss_kib

USERS = {"alice": "wonderland"}
_names = itertools.count()


def store_raw(d, user: str, data: bytes, info: str = "") -> str:
    """
    A file in new/, as procmail or another MDA leaves it; its Maildir name.
    (With mail in PostgreSQL: rows holding exactly these bytes; their key.)
    """
    if d.in_postgresql:
        assert not info, "a Maildir name's info is a Maildir test's"
        return d.deliver_local(user, data, raw=True)
    new = d.data_dir / "mail" / user / "new"
    new.mkdir(parents=True, exist_ok=True)
    name = f"{1_700_000_000 + next(_names)}.M{next(_names)}P{os.getpid()}.test{info}"
    (new / name).write_bytes(data)
    return name


def wire_lines(stored: bytes) -> list[bytes]:
    """The stored message as wire lines, CRLF each: LF and CRLF end a line, a lone CR does not."""
    pieces = stored.split(b"\n")
    lines = [p[:-1] + b"\r\n" if p.endswith(b"\r") else p + b"\r\n" for p in pieces[:-1]]
    if pieces[-1]:
        lines.append(pieces[-1])  # no line end on disk
    return lines


def octets(stored: bytes) -> int:
    return sum(len(line) for line in wire_lines(stored))


def multiline(lines: list[bytes]) -> bytes:
    """A multi-line response body: dot-stuffed, the last line completed, then the dot."""
    out = [b"." + line if line.startswith(b".") else line for line in lines]
    if out and not out[-1].endswith(b"\r\n"):
        out[-1] += b"\r\n"
    return b"".join(out) + b".\r\n"


def top_lines(stored: bytes, n: int) -> list[bytes]:
    lines = wire_lines(stored)
    for i, line in enumerate(lines):
        if line == b"\r\n":
            return lines[:i + 1 + n]
    return lines


MESSAGES = [
    b".first line is a dot, and there is no header\n..two\n.\nend\n",
    b"Subject: no final newline\n\n.\n.\n..\nlast",
    b"Subject: crlf on disk\r\n\r\n.dot\r\nline\r\n.\r\n",
    b"Subject: mixed\n\r\n.a\r\nb\nc\r",
    b"",
    b"\n.body after an empty header\nsecond\n",
    b"Subject: lines of dots\n\n" + b".\n" * 50,
    b"Subject: large, streamed\n\n" + b".dotted line of a large message\n" * 9000,
    b"Subject: bare CR\n\nx\r.y\r\n\r.z\n",
]
TOPS = (0, 1, 2, 100)


def read_response(f) -> bytes:
    """One status line and, if +OK, the multi-line body up to and with the dot."""
    status = f.readline()
    if not status.startswith(b"+OK"):
        return status
    out = [status]
    while (line := f.readline()) != b".\r\n":
        assert line, "connection closed inside a response"
        out.append(line)
    return b"".join(out) + line


def expected_responses() -> list[bytes]:
    out = []
    for stored in MESSAGES:
        out.append(b"+OK %d octets\r\n" % octets(stored) + multiline(wire_lines(stored)))
        for lines in TOPS:  # TOP's status line gives the whole message's size too
            out.append(b"+OK %d octets\r\n" % octets(stored)
                       + multiline(top_lines(stored, lines)))
    return out


def commands() -> list[bytes]:
    out = []
    for n in range(1, len(MESSAGES) + 1):
        out.append(b"RETR %d\r\n" % n)
        out.extend(b"TOP %d %d\r\n" % (n, lines) for lines in TOPS)
    return out


def connect(d, how: str):
    if how == "pop3s":
        raw = socket.create_connection(("127.0.0.1", d.port("pop3s")), timeout=30)
        sock = tls_context().wrap_socket(raw)
        f = sock.makefile("rb")
        assert f.readline().startswith(b"+OK")
    else:
        sock = socket.create_connection(("127.0.0.1", d.port("pop3")), timeout=30)
        f = sock.makefile("rb")
        assert f.readline().startswith(b"+OK")
        if how == "stls":
            sock.sendall(b"STLS\r\n")
            assert f.readline().startswith(b"+OK")
            sock = tls_context().wrap_socket(sock)
            f = sock.makefile("rb")
    sock.sendall(b"USER alice\r\nPASS " + USERS["alice"].encode() + b"\r\n")
    assert f.readline().startswith(b"+OK")
    assert f.readline().startswith(b"+OK Logged in")
    return sock, f


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(listeners=["pop3", "pop3s"], users=USERS,
                       config={"server": {"allow_plaintext_auth": True}})


@pytest.mark.parametrize("how", ["plain", "stls", "pop3s"])
def test_retr_and_top_byte_exact_one_by_one_and_pipelined(daemon, how):
    for stored in MESSAGES:
        store_raw(daemon, "alice", stored)
    expected = expected_responses()
    sock, f = connect(daemon, how)
    with sock:
        got = []
        for cmd in commands():
            sock.sendall(cmd)
            got.append(read_response(f))
        assert got == expected
        # The same commands pipelined in one write: the same replies, in order.
        sock.sendall(b"".join(commands()) + b"NOOP\r\n")
        assert [read_response(f) for _ in commands()] == expected
        assert f.readline() == b"+OK\r\n"
        sock.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"+OK")


def test_poplib_reads_the_same_lines(daemon):
    for stored in MESSAGES:
        store_raw(daemon, "alice", stored)
    p = poplib.POP3("127.0.0.1", daemon.port("pop3"), timeout=30)
    p.user("alice")
    p.pass_(USERS["alice"])
    for n, stored in enumerate(MESSAGES, 1):
        resp, lines, size = p.retr(n)
        assert resp == b"+OK %d octets" % octets(stored)
        assert lines == [line.removesuffix(b"\r\n") for line in wire_lines(stored)]
        resp, lines, size = p.top(n, 0)
        assert lines == [line.removesuffix(b"\r\n") for line in top_lines(stored, 0)]
    p.quit()


def test_top_zero_of_a_message_without_header_is_the_blank_line(daemon):
    """The blank line is the message's first line: TOP 0 sends that line, not the body."""
    store_raw(daemon, "alice", b"\nbody line one\nbody line two\n")
    sock, f = connect(daemon, "plain")
    with sock:
        sock.sendall(b"TOP 1 0\r\nTOP 1 1\r\n")
        assert read_response(f).split(b"\r\n", 1)[1] == b"\r\n.\r\n"
        assert read_response(f).split(b"\r\n", 1)[1] == b"\r\nbody line one\r\n.\r\n"


@pytest.mark.maildir_only  # files renamed, or named wrongly, behind the server
def test_file_renamed_or_removed_after_login(daemon):
    """Another program moves a message to cur/ with a flag, and removes another."""
    moved = store_raw(daemon, "alice", b"Subject: moved\n\n.moved body\n")
    gone = store_raw(daemon, "alice", b"Subject: gone\n\nbody\n")
    sock, f = connect(daemon, "plain")
    box = daemon.data_dir / "mail" / "alice"
    with sock:
        # The login scan may already have moved them to cur/; find them where they are.
        def where(name):
            for sub in ("new", "cur"):
                for n in os.listdir(box / sub):
                    if n.split(":")[0] == name:
                        return box / sub / n
            raise AssertionError(name)

        os.rename(where(moved), box / "cur" / (moved + ":2,S"))
        os.unlink(where(gone))
        sock.sendall(b"RETR 1\r\nRETR 2\r\nNOOP\r\n")
        moved_body = b"Subject: moved\n\n.moved body\n"
        assert read_response(f) == (b"+OK %d octets\r\n" % octets(moved_body)
                                    + b"Subject: moved\r\n\r\n..moved body\r\n.\r\n")
        assert f.readline().startswith(b"-ERR")
        assert f.readline() == b"+OK\r\n"


@pytest.mark.maildir_only  # files renamed, or named wrongly, behind the server
def test_wrong_size_in_the_name_still_streams(make_daemon):
    """
    A name whose ,W= (the wire size another program wrote) says 100 octets for a
    24 MB file: the body is still streamed, so the server's memory stays flat
    while the client does not read, and every byte arrives.
    """
    d = make_daemon(listeners=["pop3"], users=USERS,
                    config={"server": {"allow_plaintext_auth": True}})
    line = b".a dot line of a message misnamed as small " + b"y" * 60 + b"\n"
    stored = b"Subject: misnamed\n\n" + line * (24_000_000 // len(line))
    store_raw(d, "alice", stored, info=",W=100")
    sock, f = connect(d, "plain")
    with sock:
        before = _rss_kib(d.proc.pid)
        sock.sendall(b"RETR 1\r\nNOOP\r\n")
        assert f.readline().startswith(b"+OK")
        assert wait_steady(lambda: _queued(sock)), "the server never stopped sending"
        during = _rss_kib(d.proc.pid)
        body = []
        while (got := f.readline()) != b".\r\n":
            body.append(got)
        assert b"".join(body) == multiline(wire_lines(stored))[:-3]
        assert f.readline() == b"+OK\r\n"
    assert during - before < 16 * 1024, f"server RSS grew {during - before} KiB"


def test_client_gone_with_replies_pending(daemon):
    """A client that pipelines RETRs and hangs up: the session ends, the lock is freed."""
    for stored in MESSAGES:
        store_raw(daemon, "alice", stored)
    for _ in range(3):
        # The lock goes with the previous (reset) connection: a new session gets in.
        sock = daemon.wait_for(lambda: _session(daemon), timeout=15)
        assert sock, "the maildrop stayed locked after the client went away"
        sock.sendall(b"".join(commands()) * 5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        sock.close()  # a reset, with the replies unread
    sock = daemon.wait_for(lambda: _session(daemon), timeout=15)
    assert sock, "the maildrop stayed locked after the client went away"
    with sock:
        f = sock.makefile("rb")
        sock.sendall(b"RETR 1\r\n")
        assert read_response(f) == (b"+OK %d octets\r\n" % octets(MESSAGES[0])
                                    + multiline(wire_lines(MESSAGES[0])))


def _session(d) -> socket.socket | None:
    """A logged-in plain connection, or None while the maildrop is locked."""
    sock = socket.create_connection(("127.0.0.1", d.port("pop3")), timeout=10)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(b"USER alice\r\nPASS " + USERS["alice"].encode() + b"\r\n")
    f.readline()
    reply = f.readline()
    if reply.startswith(b"+OK"):
        return sock
    assert b"IN-USE" in reply, reply
    sock.close()
    return None

"""
COMPRESS=DEFLATE (RFC 4978) against the real daemon: imaplib with a deflate
layer over TLS, raw pipelining right behind the command, a corrupt stream, a
deflate bomb, and mutt with C{imap_deflate}.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import socket
import ssl
import zlib
from types import SimpleNamespace

import pexpect
import pytest
from rawsmtp import insecure_context as tls_context
from twisted.internet import task
from twisted.internet.testing import StringTransport

from netsuite.imap.compress import PIECE
from netsuite.imap.server import IMAPServer
from netsuite.imap.service import IMAPConfig

USERS = {"alice": "wonderland"}

imaplib.Commands.setdefault("COMPRESS", ("AUTH", "SELECTED"))

#: Text that compresses well, so the wire figure says whether compression happened.
BODY = b"".join(b"line %d of a report that repeats itself\r\n" % (i % 50) for i in range(8000))


def message(n: int, body: bytes = b"hello\r\n") -> bytes:
    return (b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: compressed %d\r\n"
            b"Message-ID: <c%d@example.test>\r\n\r\n" % (n, n)) + body


class DeflateIMAP(imaplib.IMAP4_SSL):
    """imaplib, plus COMPRESS DEFLATE: after the OK every byte goes through zlib."""

    def __init__(self, *a, **kw):
        self._deflate = None
        self._inflate = None
        self._inbuf = b""
        self.wire_in = 0  # compressed bytes received after COMPRESS
        super().__init__(*a, **kw)

    def compress(self):
        typ, data = self._simple_command("COMPRESS", "DEFLATE")
        assert typ == "OK", data
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._inflate = zlib.decompressobj(-15)
        return typ, data

    def send(self, data):
        if self._deflate is not None:
            data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise imaplib.IMAP4.abort("socket closed")
        self.wire_in += len(chunk)
        self._inbuf += self._inflate.decompress(chunk)

    def read(self, size):
        if self._inflate is None:
            return super().read(size)
        while len(self._inbuf) < size:
            self._fill()
        data, self._inbuf = self._inbuf[:size], self._inbuf[size:]
        return data

    def readline(self):
        if self._inflate is None:
            return super().readline()
        while b"\n" not in self._inbuf:
            self._fill()
        line, _, self._inbuf = self._inbuf.partition(b"\n")
        return line + b"\n"


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(listeners=["imap", "imaps"], users=USERS)


def login(d, cls=imaplib.IMAP4_SSL):
    m = cls("127.0.0.1", d.port("imaps"), ssl_context=tls_context(), timeout=20)
    m.login("alice", USERS["alice"])
    return m


def fill(d, count: int = 5) -> None:
    m = login(d)
    for n in range(count):
        m.append("INBOX", "(\\Flagged)" if n % 2 else "", None,
                 message(n, BODY if n == 2 else b"hello %d\r\n" % n))
    m.logout()


def test_compressed_session_reads_the_same_bytes(daemon):
    fill(daemon)
    plain = login(daemon)
    plain.select("INBOX")
    typ, want = plain.fetch("1:*", "(UID RFC822.SIZE BODY.PEEK[])")
    assert typ == "OK"
    plain.logout()

    m = login(daemon, DeflateIMAP)
    typ, caps = m.capability()
    assert b"COMPRESS=DEFLATE" in caps[0].split()
    m.compress()
    typ, data = m.select("INBOX")
    assert typ == "OK" and data == [b"5"]
    typ, got = m.fetch("1:*", "(UID RFC822.SIZE BODY.PEEK[])")
    assert typ == "OK"
    assert got == want
    # The 320 KB report crossed the wire deflated (it compresses to a few KB).
    assert m.wire_in < len(BODY) // 10, m.wire_in
    typ, _ = m.noop()
    assert typ == "OK"
    m.logout()
    assert daemon.wait_for(lambda: "compression on" in daemon.log())


def test_second_compress_is_refused(daemon):
    m = login(daemon, DeflateIMAP)
    m.compress()
    typ, data = m._simple_command("COMPRESS", "DEFLATE")
    assert typ == "NO" and b"[COMPRESSIONACTIVE]" in data[0]
    m.select("INBOX")
    m.logout()


def test_unknown_mechanism_is_bad_and_nothing_changes(daemon):
    m = login(daemon)
    with pytest.raises(imaplib.IMAP4.error, match="Unknown compression"):
        m._simple_command("COMPRESS", "LZ4")
    assert m.noop()[0] == "OK"  # still plain text
    m.logout()


def test_compress_before_login_is_refused(daemon):
    s = socket.create_connection(("127.0.0.1", daemon.port("imap")), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"a COMPRESS DEFLATE\r\nb NOOP\r\n")
    assert f.readline().startswith(b"a BAD")
    assert f.readline().startswith(b"b OK")
    s.close()


def _raw_login(d) -> tuple[ssl.SSLSocket, object]:
    raw = socket.create_connection(("127.0.0.1", d.port("imaps")), timeout=20)
    s = tls_context().wrap_socket(raw)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"l LOGIN alice wonderland\r\n")
    while not f.readline().startswith(b"l OK"):
        pass
    return s, f


def _line(s) -> bytes:
    """One line, read a byte at a time: nothing after it (compressed) is read ahead."""
    out = b""
    while not out.endswith(b"\n"):
        b = s.recv(1)
        if not b:
            break
        out += b
    return out


def _recv_inflated(s, z, until: bytes) -> bytes:
    got = b""
    while until not in got:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += z.decompress(chunk)
    return got


def test_commands_pipelined_right_behind_compress_are_read_compressed(daemon):
    s, f = _raw_login(daemon)
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    # The client starts deflating with the very next octet after COMPRESS's CRLF.
    s.sendall(b"c1 COMPRESS DEFLATE\r\n" +
              c.compress(b"c2 NOOP\r\nc3 CAPABILITY\r\n") + c.flush(zlib.Z_SYNC_FLUSH))
    assert _line(s).startswith(b"c1 OK")
    got = _recv_inflated(s, zlib.decompressobj(-15), b"c3 OK")
    assert b"c2 OK" in got and b"* CAPABILITY" in got and b"c3 OK" in got
    s.close()


def test_corrupt_stream_ends_that_session_only(daemon):
    s, f = _raw_login(daemon)
    s.sendall(b"c1 COMPRESS DEFLATE\r\n")
    assert f.readline().startswith(b"c1 OK")
    s.sendall(b"\xff" * 64)  # not a deflate stream
    z = zlib.decompressobj(-15)
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += z.decompress(chunk)
    assert b"* BYE Compression error" in got
    s.close()
    other = login(daemon)
    assert other.select("INBOX")[0] == "OK"
    other.logout()
    assert "compression error" in daemon.log()


def test_deflate_bomb_is_refused_and_the_session_goes_on(daemon):
    """200 MiB of one endless line sent as ~200 KiB: refused as overlong, session goes on."""
    s, f = _raw_login(daemon)
    s.sendall(b"c1 COMPRESS DEFLATE\r\n")
    assert f.readline().startswith(b"c1 OK")
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = b"x" * (1 << 20)
    for _ in range(200):
        s.sendall(c.compress(block))
    s.sendall(c.compress(b"\r\nc2 NOOP\r\n") + c.flush(zlib.Z_SYNC_FLUSH))
    got = _recv_inflated(s, zlib.decompressobj(-15), b"c2 OK")
    assert b"BAD" in got and b"c2 OK" in got, got[-300:]
    s.close()


def test_inflated_input_reaches_the_reader_a_piece_at_a_time():
    """What one read expands to is never handed to the reader (or held) whole."""
    server, t = _session()
    fed: list[int] = []
    feed = server._framer.feed
    server._framer.feed = lambda data, now=0.0: (fed.append(len(data)), feed(data, now))
    server.dataReceived(b"c1 COMPRESS DEFLATE\r\n")
    assert t.value().startswith(b"c1 OK")
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = c.compress(b"x" * (64 << 20)) + c.compress(b"\r\nc2 NOOP\r\n") + \
        c.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 128 * 1024
    t.clear()
    server.dataReceived(bomb)  # one read: 64 MiB once inflated
    out = zlib.decompressobj(-15).decompress(t.value())
    assert b"BAD" in out and b"c2 OK" in out
    assert max(fed) <= PIECE and sum(fed) > 64 << 20


def test_nothing_more_is_inflated_while_a_command_runs():
    server, t = _session()
    server.dataReceived(b"c1 COMPRESS DEFLATE\r\n")
    server._busy = True  # as while a command's Deferred is pending
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    server.dataReceived(c.compress(b"c2 NOOP\r\n" * 20000) + c.flush(zlib.Z_SYNC_FLUSH))
    assert server._inflater.pending and server._framer.lines.buffered == 0
    server._busy = False
    t.clear()
    server._process()
    out = zlib.decompressobj(-15).decompress(t.value())
    assert out.count(b"c2 OK") == 20000 and not server._inflater.pending


def _session():
    portal = SimpleNamespace(bind=lambda peer, protocol: None)
    ctx = SimpleNamespace(portal=portal, tls=None, config=SimpleNamespace(
        server=SimpleNamespace(allow_plaintext_auth=True)))
    server = IMAPServer(ctx, IMAPConfig())
    server.callLater = task.Clock().callLater  # timeouts on a fake clock
    t = StringTransport()
    server.makeConnection(t)
    server.state = "auth"  # as after LOGIN
    t.clear()
    return server, t


@pytest.mark.skipif(shutil.which("mutt") is None, reason="mutt is not installed (apt-get "
                    "install mutt)")
def test_mutt_reads_the_folder_over_deflate(daemon, tmp_path):
    fill(daemon, 3)
    rc = tmp_path / "muttrc"
    rc.write_text(
        f'set folder="imaps://alice@127.0.0.1:{daemon.port("imaps")}/"\n'
        'set spoolfile="+INBOX"\n'
        'set imap_pass="wonderland"\n'
        'set imap_deflate=yes\n'
        'set ssl_verify_host=no\n'
        'set ssl_verify_dates=no\n'
        f'set certificate_file="{tmp_path}/certs"\n'
        'set imap_check_subscribed=no\n'
        'set mail_check=0\n'
        'set sort=date-sent\n'
        'set index_format="%4C %s"\n'
        'set quit=yes\n')
    env = dict(os.environ, TERM="vt100", HOME=str(tmp_path), LC_ALL="C.UTF-8")
    p = pexpect.spawn("mutt", ["-n", "-F", str(rc)], env=env, timeout=30,
                      dimensions=(40, 120), encoding="utf-8", codec_errors="replace")
    try:
        while True:
            i = p.expect([r"\(r\)eject, accept \(o\)nce", r"compressed 2"])
            if i == 0:
                p.send("o")  # the test certificate is self-signed
            else:
                break
        assert daemon.wait_for(lambda: "compression on" in daemon.log())
        p.send("q")
        p.expect(pexpect.EOF)
    finally:
        p.close(force=True)

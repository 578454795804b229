"""MULTIAPPEND (RFC 3502) and APPENDLIMIT (RFC 7889) against the real daemon."""

from __future__ import annotations

import imaplib
import socket

import pytest

USERS = {"alice": "wonderland"}
LIMIT = 300_000


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(listeners=["imap"], users=USERS, config={
        "server": {"allow_plaintext_auth": True},
        "imap": {"max_message_size": LIMIT},
        "mail": {"quotas": {"alice": "400K"}}})


def connect(d) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    m.login("alice", USERS["alice"])
    return m


class Raw:
    """A raw IMAP client: LITERAL+ commands with several literals in one go."""

    def __init__(self, d):
        self.s = socket.create_connection(("127.0.0.1", d.port("imap")), timeout=10)
        self.f = self.s.makefile("rb")
        self.f.readline()
        assert self.run(b"a LOGIN alice wonderland")[-1].startswith(b"a OK")

    def run(self, *parts: bytes) -> list[bytes]:
        """Send C{parts} joined (literals inline); the lines up to the tagged reply."""
        data = b"".join(parts)
        tag = data.split(b" ", 1)[0]
        self.s.sendall(data + b"\r\n")
        lines = []
        while True:
            line = self.f.readline()
            assert line, "connection closed"
            lines.append(line.rstrip(b"\r\n"))
            if line.startswith(tag + b" "):
                return lines

    def close(self) -> None:
        self.f.close()
        self.s.close()


def lit(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


def msg(subject: str, size: int = 0) -> bytes:
    head = f"Subject: {subject}\r\n\r\n".encode()
    return head + b"y" * max(size - len(head) - 2, 0) + b"\r\n"


def count(m: imaplib.IMAP4, box: str = "INBOX") -> int:
    typ, data = m.status(box, "(MESSAGES)")
    return int(data[0].rsplit(b" ", 1)[1].rstrip(b")"))


def tmp_files(d) -> list:
    """What an APPEND left in the Maildir's tmp/ (with mail in PostgreSQL: no such files)."""
    tmp = d.maildir("alice") / "tmp"
    return list(tmp.iterdir()) if not d.in_postgresql or tmp.exists() else []


def test_capabilities_and_status_appendlimit(daemon):
    m = connect(daemon)
    assert "MULTIAPPEND" in m.capabilities
    assert f"APPENDLIMIT={LIMIT}" in m.capabilities
    typ, data = m.status("INBOX", "(APPENDLIMIT MESSAGES)")
    assert typ == "OK" and data[0].endswith(b"(APPENDLIMIT %d MESSAGES 0)" % LIMIT)
    assert m.status("nosuch", "(APPENDLIMIT)")[0] == "NO"
    m.logout()


def test_multiappend_small_and_streamed_with_uid_set(daemon):
    r = Raw(daemon)
    big1, big2 = msg("big1", 100_000), msg("big2", 90_000)  # streamed into tmp/ each
    lines = r.run(b"a APPEND INBOX (\\Seen) ", lit(msg("one")), b" ", lit(big1),
                  b' (\\Flagged) "01-Jan-2020 10:00:00 +0000" ', lit(big2))
    assert lines[-1].startswith(b"a OK [APPENDUID ")
    uidvalidity, uids = lines[-1].split(b"[APPENDUID ")[1].split(b"]")[0].split()
    assert uids == b"1:3"
    r.close()
    m = connect(daemon)
    m.select("INBOX")
    typ, data = m.fetch("1:3", "(FLAGS RFC822.SIZE INTERNALDATE)")
    text = b" ".join(p[0] if isinstance(p, tuple) else p for p in data)
    assert text.count(b"\\Seen") == 1 and text.count(b"\\Flagged") == 1
    assert b"RFC822.SIZE %d" % len(big1) in text and b"RFC822.SIZE %d" % len(big2) in text
    assert b" 1-Jan-2020 10:00:00" in text
    assert m.fetch("2", "(BODY.PEEK[])")[1][0][1] == big1
    assert not tmp_files(daemon)
    m.logout()


def test_multiappend_is_all_or_none(daemon):
    r = Raw(daemon)
    # The second message is empty: neither is stored.
    lines = r.run(b"b APPEND INBOX ", lit(msg("ok", 100_000)), b" ", lit(b""))
    assert lines[-1].startswith(b"b NO")
    # Together past the quota (400K), each within it: neither is stored.
    lines = r.run(b"c APPEND INBOX ", lit(msg("q1", 250_000)), b" ", lit(msg("q2", 200_000)))
    assert lines[-1].startswith(b"c NO [OVERQUOTA]"), lines
    # A bad argument after the first message: BAD, nothing stored.
    lines = r.run(b"d APPEND INBOX ", lit(msg("p1")), b" (\\Recent) ", lit(msg("p2")))
    assert lines[-1].startswith(b"d BAD")
    r.close()
    m = connect(daemon)
    assert count(m) == 0
    assert not tmp_files(daemon)
    m.logout()


def test_appendlimit_enforced(daemon):
    r = Raw(daemon)
    r.s.sendall(b"e APPEND INBOX {%d}\r\n" % (LIMIT + 1))
    line = r.f.readline()
    assert line.startswith(b"e NO [TOOBIG]"), line
    lines = r.run(b"f APPEND INBOX ", lit(msg("fits", LIMIT - 10)))
    assert lines[-1].startswith(b"f OK")
    r.close()

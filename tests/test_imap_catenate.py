"""CATENATE (RFC 4469) against the real daemon: APPEND built from text and URL parts."""

from __future__ import annotations

import imaplib
import socket

import pytest

USERS = {"alice": "wonderland", "bob": "builder"}

imaplib.Commands.setdefault("GENURLAUTH", ("AUTH", "SELECTED"))

FIRST = b"From: carol@example.test\r\nSubject: first\r\n\r\nthe first body\r\n"


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(listeners=["imap"], users=USERS,
                       config={"imap": {"allow_plaintext_auth": True}})


class Raw:
    """A LITERAL+ client: a whole command, literals included, in one write."""

    def __init__(self, d, user="alice"):
        self.s = socket.create_connection(("127.0.0.1", d.port("imap")), timeout=10)
        self.f = self.s.makefile("rb")
        self.f.readline()
        self.n = 0
        assert self.run(b"LOGIN %s %s" % (user.encode(), USERS[user].encode()))[-1] \
            .split()[1] == b"OK"

    def run(self, *pieces: bytes) -> list[bytes]:
        """C{pieces}: command text, with bytes objects in a tuple standing for literals."""
        self.n += 1
        tag = b"t%d" % self.n
        out = tag + b" "
        for p in pieces:
            out += b"{%d+}\r\n" % len(p[0]) + p[0] if isinstance(p, tuple) else p
        self.s.sendall(out + b"\r\n")
        lines = []
        while True:
            line = self.f.readline()
            assert line, lines
            lines.append(line.rstrip(b"\r\n"))
            if line.startswith(tag + b" "):
                return lines


def setup(d) -> int:
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    m.login("alice", USERS["alice"])
    m.create("Drafts2")
    m.append("INBOX", "", None, FIRST)
    m.select("INBOX")
    uid = int(m.fetch("1", "(UID)")[1][0].split()[2].rstrip(b")"))
    m.logout()
    return uid


def bodies(d, user="alice", box="Drafts2") -> list[bytes]:
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    m.login(user, USERS[user])
    typ, data = m.select(box)
    if data == [b"0"]:
        m.logout()
        return []
    typ, data = m.fetch("1:*", "(BODY.PEEK[])")
    m.logout()
    return [x[1] for x in data if isinstance(x, tuple)]


def test_text_and_url_parts_are_joined(daemon):
    uid = setup(daemon)
    c = Raw(daemon)
    head = b"From: me\r\nSubject: fwd\r\n\r\n"
    reply = c.run(b"APPEND Drafts2 (\\Seen) CATENATE (TEXT ", (head,),
                  b' URL "/INBOX/;UID=%d/;SECTION=TEXT" TEXT ' % uid, (b"-- \r\nme\r\n",), b")")
    assert b"OK [APPENDUID" in reply[-1], reply
    big = b"x" * 100_000 + b"\r\n"  # past the size a plain APPEND literal is streamed at
    reply = c.run(b'APPEND Drafts2 CATENATE (URL "/INBOX/;UID=%d/;SECTION=HEADER" TEXT ' % uid,
                  (big,), b")")
    assert b"OK [APPENDUID" in reply[-1], reply
    assert bodies(daemon) == [b"From: me\r\nSubject: fwd\r\n\r\nthe first body\r\n-- \r\nme\r\n",
                              FIRST.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + big]


def test_a_bad_url_fails_the_whole_append(daemon):
    uid = setup(daemon)
    c = Raw(daemon)
    for url in (b"/INBOX;UIDVALIDITY=1/;UID=%d" % uid, b"/INBOX/;UID=999",
                b"/NoSuchBox/;UID=1", b"not a url"):
        reply = c.run(b"APPEND Drafts2 CATENATE (TEXT ", (b"a: b\r\n\r\n",), b' URL "' + url +
                      b'") CATENATE (TEXT ', (b"c: d\r\n\r\nx\r\n",), b")")
        assert reply[-1].split()[1] == b"NO" and b"[BADURL" in reply[-1], (url, reply)
    assert bodies(daemon) == []  # all or none (MULTIAPPEND)


def test_other_users_mail_needs_urlauth(daemon):
    uid = setup(daemon)
    bob = Raw(daemon, "bob")
    bob.run(b"CREATE Drafts2")
    plain = b"imap://alice@localhost/INBOX/;UID=%d" % uid
    reply = bob.run(b'APPEND Drafts2 CATENATE (URL "' + plain + b'")')
    assert b"[BADURL" in reply[-1], reply
    alice = imaplib.IMAP4("127.0.0.1", daemon.port("imap"), timeout=10)
    alice.login("alice", USERS["alice"])
    typ, data = alice._simple_command("GENURLAUTH", '"' + plain.decode() +
                                      ';URLAUTH=user+bob"', "INTERNAL")
    assert typ == "OK"
    signed = alice._untagged_response(typ, data, "GENURLAUTH")[1][0].strip(b'"')
    alice.logout()
    reply = bob.run(b'APPEND Drafts2 CATENATE (URL "' + signed + b'")')
    assert b"OK [APPENDUID" in reply[-1], reply
    assert bodies(daemon, "bob") == [FIRST]


def test_malformed_catenate_is_bad(daemon):
    setup(daemon)
    c = Raw(daemon)
    for text in (b"APPEND Drafts2 CATENATE (BLOB x)", b"APPEND Drafts2 CATENATE TEXT",
                 b'APPEND Drafts2 CATENATE (URL "/INBOX/;UID=1"'):
        assert c.run(text)[-1].split()[1] == b"BAD", text
    assert c.run(b"NOOP")[-1].split()[1] == b"OK"

"""LMTP (RFC 2033): LHLO, local delivery only, one reply per recipient after DATA and BDAT."""

from __future__ import annotations

import imaplib
import poplib
import shutil
import smtplib
import subprocess

import pytest

USERS = {"alice": "wonderland", "bob": "builder"}
KIB = 1024


@pytest.fixture
def daemon(make_daemon, tmp_path):
    sock = tmp_path / "lmtp.sock"
    d = make_daemon(listeners=["lmtp", "imap", "pop3"], users=USERS, config={
        "server": {"allow_plaintext_auth": True},
        "mail": {"quotas": {"alice": "20K"}},
        "listen": {"lmtp": ["tcp:0:interface=127.0.0.1", f"unix:{sock}"]}})
    d.sock = sock
    return d


def message(size: int, subject: str = "filler") -> bytes:
    """C{size} octets on the wire, in lines short enough for every client."""
    head = f"Subject: {subject}\r\n\r\n".encode()
    left = size - len(head)
    lines = [b"x" * 78 + b"\r\n"] * (left // 80)
    return head + b"".join(lines) + b"y" * (left % 80 - 2) + b"\r\n"


def lmtp(d) -> smtplib.LMTP:
    s = smtplib.LMTP("127.0.0.1", d.port("lmtp"), timeout=10)
    code, text = s.ehlo("mta.test")  # smtplib.LMTP sends LHLO
    assert code == 250, text
    return s


def data_replies(s: smtplib.LMTP, msg: bytes, count: int) -> list[tuple[int, bytes]]:
    """DATA, then the one reply per accepted recipient (smtplib reads only the first)."""
    first = s.data(msg)
    return [first] + [s.getreply() for _ in range(count - 1)]


def imap_messages(d, user: str) -> list[bytes]:
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    m.login(user, USERS[user])
    m.select("INBOX")
    out = []
    for num in m.search(None, "ALL")[1][0].split():
        out.append(m.fetch(num, "(BODY.PEEK[])")[1][0][1])
    m.logout()
    return out


def test_per_recipient_replies_quota_for_one_only(daemon):
    d = daemon
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    m.login("alice", USERS["alice"])
    assert m.append("INBOX", None, None, message(15 * KIB))[0] == "OK"
    m.logout()
    body = message(6 * KIB, "for both")
    with lmtp(d) as s:
        assert s.mail("sender@remote.test")[0] == 250
        assert s.rcpt("alice@example.test")[0] == 250
        assert s.rcpt("bob@example.test")[0] == 250
        replies = data_replies(s, body, 2)
        # alice's 20 KiB cannot take 6 more: 552 for her, 250 for bob.
        assert replies[0][0] == 552 and replies[0][1].startswith(b"5.2.2"), replies
        assert replies[1][0] == 250 and b"<bob@example.test>" in replies[1][1], replies
        assert s.noop()[0] == 250  # the session goes on in step
    alice = imap_messages(d, "alice")
    assert len(alice) == 1  # only the appended one
    (bob,) = imap_messages(d, "bob")
    assert bob.endswith(body)
    assert b"Return-Path: <sender@remote.test>" in bob
    assert b"with LMTP id" in bob
    p = poplib.POP3("127.0.0.1", d.port("pop3"), timeout=10)
    p.user("bob")
    p.pass_(USERS["bob"])
    lines = p.retr(1)[1]
    assert b"\r\n".join(lines) + b"\r\n" == bob
    p.quit()


def test_bdat_per_recipient_and_unix_socket(daemon):
    d = daemon
    body = b"Subject: chunked\r\n\r\nline one\r\n.dot stays\r\n"
    with smtplib.LMTP(str(d.sock), timeout=10) as s:
        code, text = s.ehlo("mta.test")
        assert code == 250 and b"CHUNKING" in text
        assert b"STARTTLS" not in text and b"AUTH" not in text
        s.mail("sender@remote.test")
        s.rcpt("alice@example.test")
        s.rcpt("bob@example.test")
        s.send(b"BDAT %d LAST\r\n" % len(body) + body)
        replies = [s.getreply(), s.getreply()]
        assert [c for c, _t in replies] == [250, 250], replies
        assert b"<alice@example.test>" in replies[0][1]
        assert b"<bob@example.test>" in replies[1][1]
    for user in ("alice", "bob"):
        (got,) = imap_messages(d, user)
        assert got.endswith(body)


def test_lhlo_only_local_only(daemon):
    d = daemon
    with smtplib.SMTP("127.0.0.1", d.port("lmtp"), timeout=10) as s:
        code, _ = s.ehlo("mta.test")
        assert code == 500  # RFC 2033: LHLO, not EHLO
        code, _ = s.helo("mta.test")
        assert code == 500
        code, text = s.docmd("LHLO", "mta.test")
        assert code == 250
        assert s.docmd("AUTH", "PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=")[0] == 503
        s.mail("sender@remote.test")
        code, text = s.rcpt("someone@elsewhere.test")
        assert code == 554 and b"Relay access denied" in text
        code, text = s.rcpt("nobody@example.test")
        assert code == 550 and text.startswith(b"5.1.1")
        assert s.docmd("DATA")[0] == 554  # no valid recipients


def test_postfix_smtp_source_lmtp(daemon):
    """Postfix's own LMTP client (smtp-source -L) delivers through netsuite's listener."""
    tool = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not shutil.which(tool):
        pytest.skip("smtp-source (Debian's postfix) not installed")
    d = daemon
    subprocess.run([tool, "-L", "-c", "-m", "3", "-s", "2", "-f", "pf@remote.test",
                    "-t", "bob@example.test", "-S", "lmtp test",
                    f"127.0.0.1:{d.port('lmtp')}"], check=True, timeout=60,
                   capture_output=True)
    got = imap_messages(d, "bob")
    assert len(got) == 3
    assert all(b"Subject: lmtp test" in g for g in got)

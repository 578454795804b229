"""
Postfix as the MX in front of netsuite's mailboxes (issue 13): a private
Debian Postfix 3.7 (bench/smtp_postfix_bench.py's instance, on loopback) relays
example.test through its C{lmtp:} transport into netsuite's LMTP listener, TCP
and unix socket.  Each recipient's copy arrives byte-exact (Postfix's and
netsuite's trace headers above the message as sent); a recipient netsuite
does not know is refused by netsuite for that recipient only, and Postfix
bounces it to the sender (a netsuite user, so the DSN comes back over LMTP).
"""

from __future__ import annotations

import os
import shutil
import smtplib
import sys
import tempfile
from pathlib import Path

import pytest
from test_lmtp import USERS, imap_messages
from tools import need_file, require

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from smtp_postfix_bench import Postfix  # noqa: E402

USERS = {**USERS, "carol": "carol-pw"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory, mail_store):
    """netsuite with an LMTP listener (TCP, unix), and Postfix relaying into each."""
    from harness import Daemon

    require("postfix")
    need_file("/usr/lib/postfix/sbin/lmtp", "postfix")
    if os.geteuid() != 0:
        pytest.skip("Postfix's master needs root (CI runs as root)")
    work = Path(tempfile.mkdtemp(prefix="lmtp-postfix-"))
    work.chmod(0o755)
    sock = work / "lmtp.sock"
    d = Daemon(tmp_path_factory.mktemp("netsuite"), listeners=["lmtp", "imap"], config={
        "server": {"allow_plaintext_auth": True},
        "mail": {"local_domains": ["example.test", "sock.test"]},
        "listen": {"lmtp": ["tcp:0:interface=127.0.0.1", f"unix:{sock}:mode=666"]}})
    for name, password in USERS.items():
        d.add_user(name, password)
    postfix = None
    try:
        d.start()
        transports = work / "transport"
        transports.write_text(f"example.test lmtp:inet:127.0.0.1:{d.port('lmtp')}\n"
                              f"sock.test lmtp:unix:{sock}\n")
        postfix = Postfix(work / "postfix", settings={
            "virtual_mailbox_domains": "",
            "relay_domains": "example.test, sock.test",
            "transport_maps": f"texthash:{transports}",
            "lmtp_lhlo_name": "postfix.test",
            "bounce_queue_lifetime": "0",
        }).start()
        yield d, postfix
    finally:
        try:
            if postfix is not None:
                postfix.stop()
        finally:  # the daemon is stopped even if Postfix is not
            d.stop()
            shutil.rmtree(work, ignore_errors=True)


def message(subject: str) -> bytes:
    return (f"From: Carol <carol@example.test>\r\nTo: alice@example.test, bob@example.test\r\n"
            f"Subject: {subject}\r\nDate: Wed, 02 Dec 2026 12:00:00 +0000\r\n"
            f"Message-ID: <{subject}@example.test>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            f"\r\nline one\r\n.a leading dot\r\n..two dots\r\ntrailing spaces   \r\n"
            f"\tindented \u00e9t\u00e9\r\n\r\n\r\nlast line\r\n").encode()


def send_to_postfix(postfix: Postfix, rcpts: list[str], body: bytes) -> dict:
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as s:
        s.ehlo("client.test")
        return s.sendmail("carol@example.test", rcpts, body)


def wait_new(d, user: str, before: int, count: int = 1) -> list[bytes]:
    got = d.wait_for(lambda: len(d.messages(user)) >= before + count and d.messages(user), 30)
    assert got, f"nothing for {user}\n{d.log()[-3000:]}"
    return got[before:]


def test_postfix_lmtp_two_recipients_byte_exact_unknown_bounced(pair):
    d, postfix = pair
    counts = {u: len(d.messages(u)) for u in USERS}
    body = message("via-postfix")
    # Postfix accepts all three (it does not know netsuite's users); netsuite
    # refuses nobody@ at its RCPT, delivers the other two.
    assert send_to_postfix(postfix, ["alice@example.test", "bob@example.test",
                                     "nobody@example.test"], body) == {}
    for user in ("alice", "bob"):
        (stored,) = wait_new(d, user, counts[user])
        got = imap_messages(d, user)[-1]  # the octets as IMAP serves them (CRLF)
        assert got.endswith(body), got
        assert stored == got.replace(b"\r\n", b"\n")  # the Maildir keeps LF
        trace = got[:-len(body)]
        assert b"Return-Path: <carol@example.test>" in trace
        assert b"by postfix.bench.test (Postfix)" in trace  # Postfix's Received
        assert b"with LMTP id" in trace  # netsuite's Received
    assert d.wait_for(lambda: "status=bounced" in postfix.log(), 30), postfix.log()[-3000:]
    log = postfix.log()
    bounced = [line for line in log.splitlines() if "status=bounced" in line]
    assert len(bounced) == 1 and "to=<nobody@example.test>" in bounced[0], bounced
    assert "550 5.1.1" in bounced[0], bounced
    sent = [line for line in log.splitlines() if "status=sent" in line
            and "relay=127.0.0.1" in line]
    assert {s.split("to=<")[1].split(">")[0] for s in sent} >= {"alice@example.test",
                                                                  "bob@example.test"}, sent
    # The bounce goes back to carol, through the same LMTP transport.
    (dsn,) = wait_new(d, "carol", counts["carol"])
    assert b"multipart/report" in dsn and b"nobody@example.test" in dsn
    assert b"5.1.1" in dsn
    assert "Traceback" not in d.log()


def test_postfix_lmtp_over_the_unix_socket(pair):
    d, postfix = pair
    counts = {u: len(d.messages(u)) for u in USERS}
    body = message("via-socket")
    assert send_to_postfix(postfix, ["alice@sock.test", "bob@sock.test"], body) == {}
    for user in ("alice", "bob"):
        wait_new(d, user, counts[user])
        assert imap_messages(d, user)[-1].endswith(body)
    assert d.wait_for(lambda: "lmtp.sock], delay=" in postfix.log(), 10), postfix.log()[-2000:]

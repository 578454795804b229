"""
Sender policy on submission (Postfix's reject_sender_login_mismatch) and the
postmaster of every local domain (RFC 5321 4.5.1), against the real daemon.
"""

from __future__ import annotations

import base64
import smtplib

import pytest
from harness import Daemon
from rawsmtp import RawSMTP, insecure_context


@pytest.fixture(scope="module")
def sub(tmp_path_factory, mail_store):
    d = Daemon(tmp_path_factory.mktemp("policy"), listeners=["smtp", "smtps"], config={
        "mail": {"aliases": {"team": ["alice", "bob"], "sales": ["bob"]}},
        "smtp": {"shared_senders": {"noreply@example.test": ["bob"],
                                    "@partner.test": ["alice"]}},
    })
    for name in ("alice", "bob"):
        d.add_user(name, f"{name}-pw")
    d.start()
    yield d
    d.stop()


def plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


def logged_in(d: Daemon, user: str) -> RawSMTP:
    raw = RawSMTP(d.port("smtps"), tls=True)
    raw.cmd(b"EHLO client.test")
    assert raw.cmd(b"AUTH PLAIN " + plain(user, f"{user}-pw"))[0] == 235
    return raw


def mail_from(raw: RawSMTP, sender: bytes) -> tuple[int, bytes]:
    code, text = raw.cmd(b"MAIL FROM:<" + sender + b">")
    if code == 250:
        assert raw.cmd(b"RSET")[0] == 250
    return code, text


def test_authenticated_user_cannot_send_as_someone_else(sub):
    raw = logged_in(sub, "alice")
    for sender in (b"bob@example.test", b"postmaster@example.test", b"sales@example.test",
                   b"ceo@elsewhere.test", b"noreply@example.test", b"alice@elsewhere.test"):
        code, text = mail_from(raw, sender)
        assert code == 553, (sender, code, text)
        assert text == (b"5.7.1 <" + sender + b">: Sender address rejected: "
                        b"not owned by user alice"), text
    raw.close()
    assert "sender mismatch: address=127.0.0.1 user=alice from=<bob@example.test>" in sub.log()


def test_null_sender_refused_on_submission_but_not_on_the_mx(sub):
    raw = logged_in(sub, "alice")
    code, text = raw.cmd(b"MAIL FROM:<>")
    assert code == 553 and text.startswith(b"5.7.1 <>: Sender address rejected"), text
    raw.close()
    mx = RawSMTP(sub.port("smtp"))
    mx.cmd(b"EHLO remote.test")
    assert mx.cmd(b"MAIL FROM:<>")[0] == 250
    assert mx.cmd(b"RCPT TO:<alice@example.test>")[0] == 250
    mx.close()


def test_owned_addresses_aliases_and_shared_senders_are_accepted(sub):
    alice = logged_in(sub, "alice")
    for sender in (b"alice@example.test", b"alice@localhost", b"Alice@Example.TEST",
                   b"team@example.test", b"anyone@partner.test"):
        assert mail_from(alice, sender)[0] == 250, sender
    alice.close()
    bob = logged_in(sub, "bob")
    for sender in (b"bob@example.test", b"sales@example.test", b"team@localhost",
                   b"noreply@example.test"):
        assert mail_from(bob, sender)[0] == 250, sender
    assert mail_from(bob, b"anyone@partner.test")[0] == 553
    bob.close()


def test_received_header_names_the_authenticated_user(sub):
    before = len(sub.messages("bob"))
    with smtplib.SMTP_SSL("127.0.0.1", sub.port("smtps"), timeout=10,
                          context=insecure_context()) as s:
        s.login("alice", "alice-pw")
        s.sendmail("alice@example.test", ["bob@example.test"], b"Subject: who\r\n\r\nme\r\n")
    msgs = sub.wait_for(lambda: len(sub.messages("bob")) > before and sub.messages("bob"))
    head = msgs[-1].split(b"\n\n", 1)[0]
    assert head.startswith(b"Return-Path: <alice@example.test>\n")
    received = head.split(b"\n")[1:4]
    assert received[0].startswith(b"Received: from ")
    assert received[1] == b"\t(Authenticated sender: alice)"
    assert received[2].startswith(b"\tby mx.test (netsuite) with ESMTPSA id ")


def test_mx_received_header_names_nobody(sub):
    before = len(sub.messages("bob"))
    with smtplib.SMTP("127.0.0.1", sub.port("smtp"), timeout=10) as s:
        s.sendmail("alice@example.test", ["bob@example.test"], b"Subject: mx\r\n\r\nmx\r\n")
    msgs = sub.wait_for(lambda: len(sub.messages("bob")) > before and sub.messages("bob"))
    assert b"Authenticated sender" not in msgs[-1]


def test_sender_login_match_can_be_switched_off(make_daemon):
    d = make_daemon(listeners=["smtps"], users={"alice": "alice-pw"},
                    config={"smtp": {"sender_login_match": False}})
    raw = logged_in(d, "alice")
    assert mail_from(raw, b"bob@example.test")[0] == 250
    assert raw.cmd(b"MAIL FROM:<>")[0] == 553  # the null sender stays refused
    raw.close()


# -- postmaster ---------------------------------------------------------------------


def test_postmaster_of_every_domain_without_alias_goes_to_the_configured_user(make_daemon):
    d = make_daemon(listeners=["smtp"], users={"alice": "alice-pw"},
                    config={"mail": {"postmaster": "alice"}})
    raw = RawSMTP(d.port("smtp"))
    raw.cmd(b"EHLO remote.test")
    assert raw.cmd(b"MAIL FROM:<someone@remote.test>")[0] == 250
    for rcpt in (b"<postmaster@example.test>", b"<PostMaster@localhost>", b"<Postmaster>"):
        code, text = raw.cmd(b"RCPT TO:" + rcpt)
        assert code == 250, (rcpt, text)
    assert raw.cmd(b"DATA")[0] == 354
    code, text = raw.cmd(b"Subject: abuse report\r\n\r\nhello\r\n.")
    assert code == 250, text
    raw.close()
    msgs = d.wait_for(lambda: d.messages("alice"))
    assert len(msgs) == 1 and msgs[0].endswith(b"\nhello\n")
    assert not d.maildir("postmaster").exists()


def test_postmaster_unset_is_kept_in_the_postmaster_mailbox(make_daemon):
    """The zero-config server starts with no users and still takes postmaster mail."""
    d = make_daemon(listeners=["smtp"])
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=10) as s:
        s.sendmail("someone@remote.test", ["postmaster@example.test"],
                   b"Subject: pm\r\n\r\nfor the postmaster\r\n")
        s.mail("someone@remote.test")
        code, _ = s.rcpt("nobody@example.test")  # others are still unknown
    assert code == 550
    msgs = d.wait_for(lambda: d.messages("postmaster"))
    assert msgs and msgs[0].endswith(b"for the postmaster\n")
    assert "postmaster@example.test,localhost: no user or alias" in d.log()


def test_postmaster_alias_wins_over_the_setting(make_daemon):
    d = make_daemon(listeners=["smtp"], users={"alice": "alice-pw", "bob": "bob-pw"},
                    config={"mail": {"postmaster": "alice", "aliases": {"postmaster": ["bob"]}}})
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=10) as s:
        s.sendmail("someone@remote.test", ["postmaster@example.test"], b"Subject: pm\r\n\r\nx\r\n")
    assert d.wait_for(lambda: d.messages("bob"))
    assert d.messages("alice") == []


def test_postmaster_that_resolves_to_nobody_stops_startup(make_daemon):
    d = make_daemon(listeners=["smtp"], users={"alice": "alice-pw"}, start=False,
                    config={"mail": {"postmaster": "carol"}})
    with pytest.raises(RuntimeError) as e:
        d.start()
    assert ("mail.postmaster: 'carol' is not a user, an alias or a local address, "
            "and postmaster@example.test has no mailbox") in str(e.value)

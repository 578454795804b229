"""Submission (587 STARTTLS, 465 implicit TLS) with AUTH, against the real daemon."""

from __future__ import annotations

import base64
import smtplib
import time

import pytest
from harness import Daemon
from rawsmtp import RawSMTP, insecure_context


@pytest.fixture(scope="module")
def sub(tmp_path_factory, mail_store):
    d = Daemon(tmp_path_factory.mktemp("sub"), listeners=["submission", "smtps"], config={
        "throttle": {"free_failures": 1, "base_delay": 0.3, "max_delay": 0.6,
                     "lock_after": 6, "lock_seconds": 2, "window": 60},
    })
    d.add_user("alice", "alice-pw")
    d.add_user("bob", "bob-pw")
    d.start()
    yield d
    d.stop()


def plain(user: str, password: str, authzid: str = "") -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


def test_starttls_then_auth_then_local_delivery(sub):
    before = len(sub.messages("bob"))
    with smtplib.SMTP("127.0.0.1", sub.port("submission"), timeout=10) as s:
        s.ehlo()
        assert s.has_extn("starttls") and not s.has_extn("auth")
        s.starttls(context=insecure_context())
        s.ehlo()
        assert set(s.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        s.login("alice", "alice-pw")
        s.sendmail("alice@example.test", ["bob@example.test"], b"Subject: hi\r\n\r\nfrom alice\r\n")
    msgs = sub.wait_for(lambda: len(sub.messages("bob")) > before and sub.messages("bob"))
    assert msgs[-1].endswith(b"from alice\n")
    assert b"with ESMTPSA id" in msgs[-1]


def test_implicit_tls_465_with_auth_login(sub):
    before = len(sub.messages("alice"))
    with smtplib.SMTP_SSL("127.0.0.1", sub.port("smtps"), timeout=10,
                          context=insecure_context()) as s:
        s.ehlo()
        assert not s.has_extn("starttls")
        s.user, s.password = "bob", "bob-pw"
        code, text = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        assert code == 235 and text.startswith(b"2.7.0")
        s.sendmail("bob@example.test", ["alice@example.test"], b"Subject: s\r\n\r\nvia 465\r\n")
    msgs = sub.wait_for(lambda: len(sub.messages("alice")) > before and sub.messages("alice"))
    assert msgs[-1].endswith(b"via 465\n")


def test_auth_refused_before_tls_and_mail_needs_auth(sub):
    raw = RawSMTP(sub.port("submission"))
    code, text = raw.cmd(b"EHLO c")
    assert b"AUTH" not in text
    code, text = raw.cmd(b"AUTH PLAIN " + plain("alice", "alice-pw"))
    assert code == 538 and text.startswith(b"5.7.11")
    code, text = raw.cmd(b"MAIL FROM:<alice@example.test>")
    assert code == 530 and text.startswith(b"5.7.0")
    raw.close()


def test_bad_password_then_good_one_with_throttle(sub):
    raw = RawSMTP(sub.port("submission"))
    raw.cmd(b"EHLO c")
    assert raw.cmd(b"STARTTLS")[0] == 220
    raw.starttls()
    raw.cmd(b"EHLO c")
    code, text = raw.cmd(b"AUTH PLAIN " + plain("alice", "wrong"))
    assert code == 535 and text.startswith(b"5.7.8")
    started = time.monotonic()
    assert raw.cmd(b"AUTH PLAIN " + plain("alice", "wrong"))[0] == 535
    delayed = time.monotonic() - started
    assert delayed >= 0.25, "second failure was not delayed"
    assert raw.cmd(b"AUTH PLAIN " + plain("alice", "alice-pw"))[0] == 235
    assert raw.cmd(b"AUTH PLAIN " + plain("alice", "alice-pw"))[0] == 503  # already
    raw.close()
    assert "login failed: protocol=smtp address=127.0.0.1 user=alice" in sub.log()
    assert "wrong" not in sub.log()


def test_lockout_after_repeated_failures(sub):
    raw = RawSMTP(sub.port("smtps"), tls=True)
    raw.cmd(b"EHLO c")
    for _ in range(6):
        assert raw.cmd(b"AUTH PLAIN " + plain("bob", "nope"))[0] == 535
    # Locked now: even the right password is refused until the lock expires.  The
    # refusal counts as a failure too, so the lock ends lock_seconds after the server
    # recorded it, which was before its reply reached us: from then on it must be open.
    assert raw.cmd(b"AUTH PLAIN " + plain("bob", "bob-pw"))[0] == 535
    lock_ends = time.monotonic() + sub.config["throttle"]["lock_seconds"]
    assert sub.wait_for(lambda: time.monotonic() >= lock_ends, timeout=10)
    assert raw.cmd(b"AUTH PLAIN " + plain("bob", "bob-pw"))[0] == 235
    raw.close()


def test_auth_exchanges_malformed(sub):
    raw = RawSMTP(sub.port("smtps"), tls=True)
    raw.cmd(b"EHLO c")
    assert raw.cmd(b"AUTH CRAM-MD5")[0] == 504
    assert raw.cmd(b"AUTH")[0] == 501
    assert raw.cmd(b"AUTH PLAIN !!notbase64!!")[0] == 501
    assert raw.cmd(b"AUTH PLAIN " + base64.b64encode(b"no-nuls"))[0] == 501
    # Proxy authorization (authzid other than the user) is refused.
    assert raw.cmd(b"AUTH PLAIN " + plain("alice", "alice-pw", authzid="bob"))[0] == 501
    code, text = raw.cmd(b"AUTH LOGIN")
    assert code == 334 and base64.b64decode(text) == b"Username:"
    assert raw.cmd(b"*")[0] == 501                       # client cancels
    code, text = raw.cmd(b"AUTH PLAIN")
    assert code == 334
    assert raw.cmd(plain("alice", "alice-pw"))[0] == 235
    raw.close()


def test_authenticated_relay_gets_a_clear_answer(sub):
    """With the queue on (the default), an authenticated user may relay; the MX may not."""
    with smtplib.SMTP_SSL("127.0.0.1", sub.port("smtps"), timeout=10,
                          context=insecure_context()) as s:
        s.login("alice", "alice-pw")
        s.mail("alice@example.test")
        code, text = s.rcpt("someone@elsewhere.test")
        assert code == 250, text
        s.rset()
    mx = Daemon(sub.dir.parent / (sub.dir.name + "-mx"), listeners=["smtp"])
    with mx:
        with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=10) as s:
            s.ehlo()
            s.mail("alice@example.test")
            code, text = s.rcpt("someone@elsewhere.test")
    assert code == 554 and text.startswith(b"5.7.1") and b"elsewhere.test" in text

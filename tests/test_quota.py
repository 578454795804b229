"""QUOTA (RFC 9208): the configured limit, IMAP GETQUOTA*, OVERQUOTA, SMTP 552 5.2.2."""

from __future__ import annotations

import imaplib
import smtplib

import pytest

from netsuite.config import ConfigError, MailConfig
from netsuite.store.quota import parse_size

USERS = {"alice": "wonderland", "bob": "builder", "carol": "singer"}
KIB = 1024


@pytest.fixture(params=["maildir", "postgresql"])
def daemon(make_daemon, request):
    """Both stores: PostgreSQL's counts what this host changed at once, as Maildir's does."""
    # alice: 20 KiB; bob: the default 1 MiB; carol: no limit.
    config = {"server": {"allow_plaintext_auth": True}, "store": {"backend": request.param},
              "mail": {"quota": "1M", "quotas": {"alice": "20K", "carol": "unlimited"}}}
    if request.param == "postgresql":
        config["database"] = {"dsn": request.getfixturevalue("pg_dsn")}
    d = make_daemon(listeners=["imap", "smtp"], users=USERS, config=config, start=False)
    if request.param == "postgresql":
        d.cli("db", "init")
    return d.start()


def connect(d, user="alice") -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    m.login(user, USERS[user])
    return m


def message(size: int) -> bytes:
    """A message of exactly C{size} octets on the wire."""
    head = b"Subject: filler\r\n\r\n"
    body = b"x" * (size - len(head) - 2) + b"\r\n"
    return head + body


def quota_of(m: imaplib.IMAP4, mailbox: str = "INBOX") -> tuple[list[bytes], list[bytes]]:
    typ, data = m._simple_command("GETQUOTAROOT", mailbox)
    assert typ == "OK", data
    return m._untagged_response(typ, data, "QUOTAROOT")[1], \
        m._untagged_response(typ, data, "QUOTA")[1]


def test_parse_size_and_config():
    assert parse_size("100M") == 100 * KIB * KIB
    assert parse_size("2g") == 2 * KIB ** 3 and parse_size("512KiB") == 512 * KIB
    assert parse_size(4096) == 4096 and parse_size("4096") == 4096
    for none in ("", "unlimited", 0, "0"):
        assert parse_size(none) is None
    for bad in ("lots", "-1", "1.5G", "10X", True, -5):
        with pytest.raises(ValueError):
            parse_size(bad)
    cfg = MailConfig(quota="1M", quotas={"alice": "2K"})
    cfg.validate()
    assert cfg.quota_for("alice") == 2048 and cfg.quota_for("bob") == KIB * KIB
    with pytest.raises(ConfigError) as e:
        MailConfig(quotas={"bob": "plenty"}).validate()
    assert e.value.key == "quotas.bob"


def test_capabilities_getquotaroot_getquota_setquota(daemon):
    m = connect(daemon)
    assert "QUOTA" in m.capabilities and "QUOTA=RES-STORAGE" in m.capabilities
    roots, quotas = quota_of(m)
    assert roots == [b'INBOX ""'] and quotas == [b'"" (STORAGE 0 20)']
    assert m.append("INBOX", None, None, message(3 * KIB))[0] == "OK"
    assert m.append("Sent", None, None, message(2 * KIB))[0] == "OK"
    typ, data = m._simple_command("GETQUOTA", '""')
    assert typ == "OK" and m._untagged_response(typ, data, "QUOTA")[1] == \
        [b'"" (STORAGE 5 20)']
    assert m._simple_command("GETQUOTA", "other")[0] == "NO"
    typ, data = m._simple_command("SETQUOTA", '""', "(STORAGE 100000)")
    assert typ == "NO" and b"NOPERM" in data[0]
    assert m._simple_command("GETQUOTAROOT", "nosuch")[0] == "NO"
    m.logout()
    m = connect(daemon, "carol")  # no limit: no quota root
    roots, quotas = quota_of(m)
    assert roots == [b"INBOX"] and quotas == [None]
    m.logout()


def test_append_copy_over_quota_and_move_within(daemon):
    m = connect(daemon)
    assert m.append("INBOX", None, None, message(12 * KIB))[0] == "OK"
    typ, data = m.append("INBOX", None, None, message(9 * KIB))  # 21 KiB > 20 KiB
    assert typ == "NO" and b"[OVERQUOTA]" in data[0]
    # Streamed literals (past 64 KiB) are refused too, and leave nothing in tmp/.
    typ, data = m.append("INBOX", None, None, message(70 * KIB))
    assert typ == "NO" and b"[OVERQUOTA]" in data[0]
    if daemon.config["store"]["backend"] == "maildir":  # (PostgreSQL: no file to leave)
        assert not list((daemon.maildir("alice") / "tmp").iterdir())
    assert m.append("INBOX", None, None, message(7 * KIB))[0] == "OK"  # 19 KiB
    m.select("INBOX")
    typ, data = m.copy("1", "Trash")
    assert typ == "NO" and b"[OVERQUOTA]" in data[0]
    assert m.status("Trash", "(MESSAGES)")[1][0].endswith(b"(MESSAGES 0)")
    # MOVE inside the account does not change its usage: allowed even when nearly full.
    typ, data = m._simple_command("MOVE", "1", "Trash")
    assert typ == "OK", data
    # Expunged messages give their room back.
    m.select("Trash")
    m.store("1", "+FLAGS", "\\Deleted")
    typ, data = m.status("Trash", "(DELETED DELETED-STORAGE)")
    assert data[0].endswith(b"(DELETED 1 DELETED-STORAGE 12)")
    m.expunge()
    assert quota_of(m)[1] == [b'"" (STORAGE 7 20)']
    assert m.append("INBOX", None, None, message(12 * KIB))[0] == "OK"
    m.logout()


def test_smtp_refuses_over_quota(daemon):
    m = connect(daemon)
    assert m.append("INBOX", None, None, message(15 * KIB))[0] == "OK"
    with smtplib.SMTP("127.0.0.1", daemon.port("smtp"), timeout=10) as s:
        # This message would pass alice's 20 KiB: refused at the end of DATA.
        s.ehlo("client.test")
        s.mail("sender@remote.test")
        assert s.rcpt("alice@example.test")[0] == 250
        code, text = s.data(message(6 * KIB))
        assert code == 552 and text.startswith(b"5.2.2"), text
        # A small one fits.
        s.mail("sender@remote.test")
        s.rcpt("alice@example.test")
        assert s.data(message(2 * KIB))[0] == 250
    used = int(m.status("INBOX", "(SIZE)")[1][0].split()[-1].strip(b")"))
    assert 17 * KIB < used < 18 * KIB  # with the Received: and Return-Path: headers
    assert m.append("INBOX", None, None, message(20 * KIB - used))[0] == "OK"  # full
    with smtplib.SMTP("127.0.0.1", daemon.port("smtp"), timeout=10) as s:
        s.ehlo("client.test")
        s.mail("sender@remote.test")
        code, text = s.rcpt("alice@example.test")  # already full: refused at RCPT
        assert code == 552 and text.startswith(b"5.2.2"), text
        assert s.rcpt("bob@example.test")[0] == 250
        assert s.data(message(6 * KIB))[0] == 250
    m.logout()
    m = connect(daemon, "bob")
    m.select("INBOX")
    assert m.search(None, "ALL")[1][0] == b"1"
    m.logout()

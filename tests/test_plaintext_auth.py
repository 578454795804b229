"""
C{allow_plaintext_auth} per protocol ([smtp], [pop3], [imap], [ftp]), with the
server-wide value as the default, against the real daemon.
"""

from __future__ import annotations

import ftplib
import imaplib
import poplib
import smtplib

import pytest

from netsuite.config import load, plaintext_auth_allowed

LISTENERS = ["submission", "pop3", "imap", "ftp"]
USERS = {"alice": "alice-pw"}


def plain_results(d) -> dict[str, bool]:
    """For each protocol: does it take a password in clear on a connection without TLS?"""
    result = {}
    with smtplib.SMTP("127.0.0.1", d.port("submission"), timeout=10) as s:
        s.ehlo()
        result["smtp"] = s.has_extn("auth")
        if result["smtp"]:
            assert s.login("alice", "alice-pw")[0] == 235
    p = poplib.POP3("127.0.0.1", d.port("pop3"), timeout=10)
    try:
        p.user("alice")
        p.pass_("alice-pw")
        result["pop3"] = True
    except poplib.error_proto:
        result["pop3"] = False
    p.quit()
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    result["imap"] = "LOGINDISABLED" not in m.capabilities
    if result["imap"]:
        assert m.login("alice", "alice-pw")[0] == "OK"
    else:
        with pytest.raises(imaplib.IMAP4.error):
            m.login("alice", "alice-pw")
    m.logout()
    f = ftplib.FTP(timeout=10)
    f.connect("127.0.0.1", d.port("ftp"))
    try:
        f.login("alice", "alice-pw")
        result["ftp"] = True
    except ftplib.error_perm as e:
        assert str(e).startswith("530"), e
        result["ftp"] = False
    f.close()
    return result


def test_plain_ftp_alone_does_not_open_submission(make_daemon):
    """The issue's case: allowing plain FTP logins must not make submission offer AUTH in clear."""
    d = make_daemon(listeners=LISTENERS, users=USERS, config={
        "ftp": {"allow_plaintext_auth": True}})
    assert plain_results(d) == {"smtp": False, "pop3": False, "imap": False, "ftp": True}


def test_server_wide_value_is_the_default_and_a_section_can_refuse(make_daemon):
    d = make_daemon(listeners=LISTENERS, users=USERS, config={
        "server": {"allow_plaintext_auth": True},
        "smtp": {"allow_plaintext_auth": False}, "imap": {"allow_plaintext_auth": False}})
    assert plain_results(d) == {"smtp": False, "pop3": True, "imap": False, "ftp": True}


def test_resolution_for_every_protocol(tmp_path):
    for server in (False, True):
        for own in (None, False, True):
            for name in ("smtp", "pop3", "imap", "ftp", "telnet"):
                text = f"[server]\nallow_plaintext_auth = {str(server).lower()}\n"
                if own is not None:
                    text += f"[{name}]\nallow_plaintext_auth = {str(own).lower()}\n"
                path = tmp_path / "c.toml"
                path.write_text(text)
                config = load(path)
                want = server if own is None else own
                assert plaintext_auth_allowed(config, name) is want, (server, own, name)

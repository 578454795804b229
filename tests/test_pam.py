"""PAM for system accounts, with a throwaway account created and removed by the test (root only)."""

from __future__ import annotations

import secrets
import smtplib

import pytest
import tools
from rawsmtp import insecure_context


@pytest.fixture
def system_account():
    name = "nstest" + secrets.token_hex(3)
    password = secrets.token_urlsafe(12)
    with tools.system_account(name, password, "--no-create-home"):
        yield name, password


def test_pam_login_for_a_system_account(make_daemon, system_account):
    name, password = system_account
    d = make_daemon(listeners=["smtps"], users={"alice": "alice-pw"},
                    config={"server": {"auth": ["passwd", "pam"]}})
    with smtplib.SMTP_SSL("127.0.0.1", d.port("smtps"), timeout=30,
                          context=insecure_context()) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login(name, password + "x")
        assert s.login(name, password)[0] == 235
        s.sendmail(f"{name}@example.test", ["alice@example.test"], b"Subject: p\r\n\r\npam\r\n")
    with smtplib.SMTP_SSL("127.0.0.1", d.port("smtps"), timeout=30,
                          context=insecure_context()) as s:
        assert s.login("alice", "alice-pw")[0] == 235  # the password file still works beside it
    assert d.wait_for(lambda: d.messages("alice"))[-1].endswith(b"pam\n")
    assert f"login: protocol=smtp address=127.0.0.1 user={name}" in d.log()

"""PAM for system accounts, with a throwaway account created and removed by the test (root only)."""

from __future__ import annotations

import os
import secrets
import shutil
import smtplib
import subprocess

import pytest
from rawsmtp import insecure_context


@pytest.fixture
def system_account():
    if os.geteuid() != 0 or not shutil.which("useradd"):
        if os.environ.get("CI"):
            pytest.fail("CI runs as root with useradd; the PAM test must run there")
        pytest.skip("needs root and useradd to create a throwaway account")
    name = "nstest" + secrets.token_hex(3)
    password = secrets.token_urlsafe(12)
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
        yield name, password
    finally:
        subprocess.run(["userdel", name], check=False)


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

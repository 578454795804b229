"""Real mail programs against the real daemon: swaks sends, mutt reads the Maildir."""

from __future__ import annotations

import os
import subprocess

import pexpect
import pytest
from tools import require


def swaks(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require("swaks"), "--hide-all", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.maildir_only  # mutt reads the Maildir
def test_swaks_mx_then_mutt_opens_the_maildir(make_daemon):
    d = make_daemon(listeners=["smtp"], users={"alice": "pw"})
    result = swaks("--server", "127.0.0.1", "--port", str(d.port("smtp")),
                   "--from", "sender@remote.test", "--to", "alice@example.test",
                   "--header", "Subject: swaks-to-mutt check", "--body", "hello from swaks")
    assert result.returncode == 0, result.stdout + result.stderr
    msgs = d.wait_for(lambda: d.messages("alice"))
    assert len(msgs) == 1 and b"hello from swaks" in msgs[0]

    mutt = require("mutt")
    env = dict(os.environ, TERM="xterm", HOME=str(d.dir), LANG="C.UTF-8")
    (d.dir / "Mail").mkdir(exist_ok=True)
    (d.dir / ".muttrc").write_text("set mbox_type=Maildir\nset check_new=yes\n")
    child = pexpect.spawn(mutt, ["-n", "-F", str(d.dir / ".muttrc"), "-R", "-f",
                                 str(d.maildir("alice"))], env=env, timeout=20,
                          dimensions=(24, 120))
    try:
        child.expect("swaks-to-mutt check")
        child.send("\r")                       # open the message in the pager
        child.expect("hello from swaks")
        child.send("q")
        child.send("q")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_swaks_submission_starttls_auth_and_refusals(make_daemon):
    d = make_daemon(listeners=["submission", "smtps", "smtp"],
                    users={"alice": "alice-pw", "bob": "bob-pw"})
    base = ["--server", "127.0.0.1", "--from", "alice@example.test", "--to", "bob@example.test"]
    ok = swaks(*base, "--port", str(d.port("submission")), "--tls", "--auth", "PLAIN",
               "--auth-user", "alice", "--auth-password", "alice-pw")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ok = swaks(*base, "--port", str(d.port("smtps")), "--tls-on-connect", "--auth", "LOGIN",
               "--auth-user", "alice", "--auth-password", "alice-pw")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert d.wait_for(lambda: len(d.messages("bob")) == 2)
    # AUTH without TLS: swaks cannot even find AUTH advertised.
    plain = swaks(*base, "--port", str(d.port("submission")), "--auth", "PLAIN",
                  "--auth-user", "alice", "--auth-password", "alice-pw")
    assert plain.returncode != 0
    # Bad password.
    bad = swaks(*base, "--port", str(d.port("smtps")), "--tls-on-connect", "--auth", "PLAIN",
                "--auth-user", "alice", "--auth-password", "wrong")
    assert bad.returncode != 0
    # Open relay attempt on the MX.
    relay = swaks("--server", "127.0.0.1", "--port", str(d.port("smtp")),
                  "--from", "spam@remote.test", "--to", "victim@elsewhere.test")
    assert relay.returncode != 0
    assert len(d.messages("bob")) == 2

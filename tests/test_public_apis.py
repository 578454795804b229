"""
netsuite leans on public Twisted and pyOpenSSL APIs only, so an upgrade does not
break it; the one exception (TLS session reuse) is fenced and has a fallback
(tests/test_tls_session_check.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.cred import credentials
from twisted.mail.interfaces import IChallengeResponse

from netsuite.auth.sasl import MECHANISMS, LoginCredentials, PlainCredentials, SASLError

ROOT = Path(__file__).resolve().parent.parent

PRIVATE = re.compile(r"from twisted\.\w+\._\w+ import|import twisted\.\w+\._|OpenSSL\._util")
#: file -> why it may name a private module (no public way exists).
ALLOWED = {"netsuite/ftp/data.py": "SSL_session_reused has no public pyOpenSSL call"}


def test_no_private_twisted_or_pyopenssl_modules():
    found = []
    for path in sorted((ROOT / "netsuite").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE.search(line) and rel not in ALLOWED:
                found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_plain_credentials():
    c = MECHANISMS[b"PLAIN"]()
    assert isinstance(c, PlainCredentials)
    assert IChallengeResponse.providedBy(c)
    assert credentials.IUsernamePassword.providedBy(c)
    assert credentials.IUsernameHashedPassword.providedBy(c)
    assert c.getChallenge() == b""
    c.setResponse(b"\0alice\0pw")
    assert (c.username, c.password, c.moreChallenges()) == (b"alice", b"pw", False)
    assert c.checkPassword(b"pw") and not c.checkPassword(b"other")
    c = PlainCredentials()
    c.setResponse(b"alice\0alice\0pw")  # authzid = authcid is no proxying
    for bad in (b"alice\0pw", b"\0\0pw", b"a\0b\0c\0d", b"bob\0alice\0pw"):
        try:
            PlainCredentials().setResponse(bad)
        except SASLError:
            continue
        raise AssertionError(bad)


def test_login_credentials():
    c = MECHANISMS[b"LOGIN"]()
    assert isinstance(c, LoginCredentials) and IChallengeResponse.providedBy(c)
    assert credentials.IUsernamePassword.providedBy(c)
    assert c.getChallenge() == b"Username:"
    c.setResponse(b"alice")
    assert c.moreChallenges()
    assert c.getChallenge() == b"Password:"
    c.setResponse(b"pw")
    assert not c.moreChallenges()
    assert (c.username, c.password) == (b"alice", b"pw")

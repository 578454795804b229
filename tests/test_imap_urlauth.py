"""
URLAUTH (RFC 4467) and URLAUTH=BINARY (RFC 5524) against the real daemon with
imaplib, plus the URL parser and the signing on their own.
"""

from __future__ import annotations

import imaplib
import os
import stat
from datetime import UTC, datetime, timedelta

import pytest

from netsuite.imap.url import BadURL, parse
from netsuite.imap.urlkeys import FILENAME, sign, verify

USERS = {"alice": "wonderland", "bob": "builder"}

for _name in ("GENURLAUTH", "URLFETCH", "RESETKEY"):
    imaplib.Commands.setdefault(_name, ("AUTH", "SELECTED"))

FIRST = (b"From: carol@example.test\r\nSubject: first\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n"
         b"--B\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
         b"aGVsbG8gd29ybGQ=\r\n--B--\r\n")
SECOND = b"From: dave@example.test\r\nSubject: second\r\n\r\nthe second body\r\n"


# -- URLs and tokens on their own -------------------------------------------------------------

def test_message_urls_parse_with_every_part():
    u = parse("imap://alice@mail.example/Sent%20Items;UIDVALIDITY=7/;uid=20/;SECTION=1.2"
              "/;PARTIAL=10.5;EXPIRE=2030-01-02T03:04:05Z;URLAUTH=user+bob:INTERNAL:0a1b")
    assert (u.user, u.host, u.mailbox, u.uidvalidity, u.uid) == (
        "alice", "mail.example", "Sent Items", 7, 20)
    assert (u.section, u.partial, u.access, u.mechanism, u.token) == (
        "1.2", (10, 5), "user+bob", "INTERNAL", "0a1b")
    assert u.expire == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert u.rump.endswith(";URLAUTH=user+bob")
    assert parse("imap://alice@h/INBOX/;UID=1;URLAUTH=authuser").rump == \
        "imap://alice@h/INBOX/;UID=1;URLAUTH=authuser"
    for bad in ("http://alice@h/INBOX/;UID=1", "imap://alice@h/INBOX;UID=1",
                "imap://alice@h/INBOX/;UID=x", "imap://alice@h/INBOX/;UID=1;URLAUTH=root",
                "imap://alice@h/INBOX/;UID=1;EXPIRE=2030-01-01;URLAUTH=anonymous"):
        with pytest.raises(BadURL):
            parse(bad)


def test_who_may_fetch():
    url = "imap://alice@h/INBOX/;UID=1;URLAUTH="
    assert parse(url + "anonymous").allows(None)
    assert parse(url + "authuser").allows("bob") and not parse(url + "authuser").allows(None)
    assert parse(url + "user+bob").allows("bob") and not parse(url + "user+bob").allows("eve")
    assert not parse(url + "submit+bob").allows("bob")  # no submit server here


def test_tokens_bind_the_whole_rump():
    key = os.urandom(32)
    token = sign(key, "imap://alice@h/INBOX/;UID=1;URLAUTH=anonymous")
    assert verify(key, "imap://alice@h/INBOX/;UID=1;URLAUTH=anonymous", token.upper())
    assert not verify(key, "imap://alice@h/INBOX/;UID=2;URLAUTH=anonymous", token)
    assert not verify(os.urandom(32), "imap://alice@h/INBOX/;UID=1;URLAUTH=anonymous", token)


# -- against the daemon -----------------------------------------------------------------------

@pytest.fixture
def daemon(make_daemon):
    return make_daemon(listeners=["imap"], users=USERS,
                       config={"imap": {"allow_plaintext_auth": True}})


def login(d, user="alice") -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    m.login(user, USERS[user])
    return m


def command(m, name: str, *args: str):
    typ, data = m._simple_command(name, *args)
    return typ, data, m._untagged_response(typ, data, name)[1]


def genurl(m, url: str) -> str:
    typ, _, data = command(m, "GENURLAUTH", f'"{url}"', "INTERNAL")
    assert typ == "OK", data
    return data[0].decode().strip('"')


def urlfetch(m, url: str, *params: str):
    arg = f'("{url}" {" ".join(params)})' if params else f'"{url}"'
    typ, _, data = command(m, "URLFETCH", arg)
    assert typ == "OK", data
    return data


def body_of(data) -> bytes | None:
    """The nstring of a single-URL URLFETCH response as imaplib hands it over."""
    first = data[0]
    if isinstance(first, tuple):
        return first[1]
    assert first.endswith(b" NIL"), first
    return None


@pytest.fixture
def mailbox(daemon):
    m = login(daemon)
    m.append("INBOX", "", None, FIRST)
    m.append("INBOX", "", None, SECOND)
    m.select("INBOX")
    typ, data = m.fetch("1:2", "(UID)")
    uids = [int(x.split()[2].rstrip(b")")) for x in data]
    yield m, uids
    if m.state != "LOGOUT":  # a test may log out itself
        m.logout()


def test_generated_urls_fetch_the_message_and_nothing_else(daemon, mailbox):
    m, (uid1, uid2) = mailbox
    assert "URLAUTH" in m.capabilities and "URLAUTH=BINARY" in m.capabilities
    url1 = genurl(m, f"imap://alice@127.0.0.1/INBOX/;UID={uid1};URLAUTH=user+alice")
    url2 = genurl(m, f"imap://alice@127.0.0.1/INBOX/;UID={uid2};URLAUTH=user+alice")
    assert url1.lower().startswith(
        f"imap://alice@127.0.0.1/inbox/;uid={uid1};urlauth=user+alice:internal:")
    assert body_of(urlfetch(m, url1)) == FIRST
    assert body_of(urlfetch(m, url2)) == SECOND
    forged = url1[:-4] + ("0000" if not url1.endswith("0000") else "1111")
    assert body_of(urlfetch(m, forged)) is None
    # The token signs the UID: moved onto the other message, it is worthless.
    assert body_of(urlfetch(m, url1.replace(f";UID={uid1};", f";UID={uid2};"))) is None
    key_file = daemon.maildir("alice") / FILENAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_access_decides_who_else_may_fetch(daemon, mailbox):
    m, (uid1, _) = mailbox
    mine = genurl(m, f"imap://alice@h/INBOX/;UID={uid1};URLAUTH=user+alice")
    anyone = genurl(m, f"imap://alice@h/INBOX/;UID={uid1};URLAUTH=authuser")
    bob = login(daemon, "bob")
    assert body_of(urlfetch(bob, mine)) is None
    assert body_of(urlfetch(bob, anyone)) == FIRST
    # Bob cannot sign for Alice's mail.
    typ, data, _ = command(bob, "GENURLAUTH",
                           f'"imap://alice@h/INBOX/;UID={uid1};URLAUTH=authuser"', "INTERNAL")
    assert typ == "NO", data
    bob.logout()


def test_sections_partials_and_expiry(daemon, mailbox):
    m, (uid1, uid2) = mailbox
    part = genurl(m, f"imap://alice@h/INBOX/;UID={uid1}/;SECTION=1;URLAUTH=user+alice")
    assert body_of(urlfetch(m, part)) == b"aGVsbG8gd29ybGQ="
    data = urlfetch(m, part, "BINARY", "BODYPARTSTRUCTURE")
    assert b'BODYPARTSTRUCTURE ("text" "plain"' in data[0][0] and b"BINARY {11}" in data[0][0]
    assert data[0][1] == b"hello world"
    piece = genurl(m, f"imap://alice@h/INBOX/;UID={uid2}/;PARTIAL=6.6;URLAUTH=user+alice")
    assert body_of(urlfetch(m, piece)) == SECOND[6:12]
    past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    expired = genurl(m, f"imap://alice@h/INBOX/;UID={uid2};EXPIRE={past};URLAUTH=user+alice")
    assert body_of(urlfetch(m, expired)) is None


def test_resetkey_revokes_and_keys_survive_a_restart(daemon, mailbox):
    m, (uid1, _) = mailbox
    url = genurl(m, f"imap://alice@h/INBOX/;UID={uid1};URLAUTH=user+alice")
    m.logout()
    daemon.restart()
    m = login(daemon)
    assert body_of(urlfetch(m, url)) == FIRST  # signed before the restart, valid after
    typ, data, _ = command(m, "RESETKEY", "NoSuchBox")
    assert typ == "NO"
    typ, data, _ = command(m, "RESETKEY", "INBOX", "INTERNAL")
    assert typ == "OK", data
    assert body_of(urlfetch(m, url)) is None
    fresh = genurl(m, f"imap://alice@h/INBOX/;UID={uid1};URLAUTH=user+alice")
    assert fresh != url and body_of(urlfetch(m, fresh)) == FIRST
    typ, _, _ = command(m, "RESETKEY")
    assert typ == "OK" and body_of(urlfetch(m, fresh)) is None
    m.logout()


def test_bad_requests(daemon, mailbox):
    m, (uid1, _) = mailbox
    typ, data, _ = command(m, "GENURLAUTH",
                           f'"imap://alice@h/INBOX/;UID={uid1};URLAUTH=anonymous"', "XSHA")
    assert typ == "NO"
    with pytest.raises(imaplib.IMAP4.error, match="URLAUTH"):
        command(m, "GENURLAUTH", f'"imap://alice@h/INBOX/;UID={uid1}"', "INTERNAL")
    with pytest.raises(imaplib.IMAP4.error):
        command(m, "URLFETCH", '("imap://alice@h/INBOX/;UID=1;URLAUTH=anonymous" SIZE)')
    assert body_of(urlfetch(m, "not a url")) is None
    assert m.noop()[0] == "OK"

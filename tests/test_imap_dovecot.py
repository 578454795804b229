"""
Interop with Dovecot (skipped without dovecot-imapd): the same Maildir served by
both gives the same FETCH answers, and Dovecot reads what netsuite wrote.
"""

from __future__ import annotations

import imaplib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from test_imap import MULTIPART, SIMPLE  # noqa: E402

pytestmark = [pytest.mark.skipif(not Path("/usr/sbin/dovecot").exists()
                                  or shutil.which("chown") is None,
                                  reason="dovecot-imapd not installed"),
              # Dovecot and netsuite on one Maildir directory: not with mail in PostgreSQL.
              pytest.mark.maildir_only]

MESSAGES = [
    SIMPLE, MULTIPART,
    ("From: Jörg <j@example.test>\nTo: \"Doe, John\" <jd@x.test>, undisclosed-recipients:;\n"
     "Cc: a@b.c (comment)\nSubject: Grüße\nContent-Type: multipart/mixed; boundary=b1\n\n"
     "--b1\nContent-Type: text/plain\n\nhi\n--b1\nContent-Type: message/rfc822\n\n"
     "Subject: inner\nContent-Type: text/html; charset=\"iso-8859-1\"\n"
     "Content-Language: en, de\n\n<p>x</p>\n--b1--\n").encode(),
    (b"Subject: alt\nContent-Type: multipart/alternative; boundary=\"=_a\"\nMIME-Version: 1.0\n"
     b"\n--=_a\nContent-Type: text/plain; charset=us-ascii; format=flowed\n"
     b"Content-Transfer-Encoding: quoted-printable\n\nplain=20text\n\n--=_a\n"
     b"Content-Type: text/html\nContent-ID: <c1@x>\nContent-Description: the html\n"
     b"Content-Disposition: inline\n\n<b>bold</b>\n--=_a--\n"),
    b"Subject: no body",
    b"From: x@y\n\n",
    # imaptest's fetch-body-message-rfc822-x2 and fetch-envelope: nested
    # message/rfc822, source routes, comments in an address.
    (b"From: user@domain.org\nMime-Version: 1.0\nContent-Type: message/rfc822\n\n"
     b"From: <@route:user2@domain.org>\nTo: <user-to (comment)@ (comment) domain.org>\n"
     b"Cc: (before) a@b.c, x@y.z (after), (both) p@q.r (sides)\n"
     b"Mime-Version: 1.0\nContent-Type: message/rfc822\n\n"
     b"From: sub@domain.org\nSubject: submsg\n\nHello world\n"),
]
ITEMS = ["BODYSTRUCTURE", "ENVELOPE", "BODY", "RFC822.SIZE", "BODY.PEEK[1]", "BODY.PEEK[2]",
         "BODY.PEEK[1.MIME]", "BODY.PEEK[TEXT]", "BODY.PEEK[HEADER]", "BODY.PEEK[2.1]",
         "BODY.PEEK[2.HEADER]", "BODY.PEEK[HEADER.FIELDS (Subject From)]",
         "BODY.PEEK[1.1]", "BODY.PEEK[1.HEADER]", "BODY.PEEK[1.TEXT]", "BODY.PEEK[1.1.1]",
         "BODY.PEEK[1.1.HEADER]"]


@pytest.fixture
def servers():
    import mail_read_bench as mb

    # Dovecot's auth and mail processes run as other users: a directory they can
    # enter (pytest's temporary directories are private).
    work = Path(tempfile.mkdtemp(prefix="netsuite-interop-"))
    work.chmod(0o755)
    for root in ("ours", "theirs"):
        box = work / root / "bench"
        for sub in ("cur", "new", "tmp"):
            (box / sub).mkdir(parents=True)
        for i, m in enumerate(MESSAGES):
            (box / "cur" / f"{1700000000 + i}.M{i}P1.x,S={len(m)}:2,").write_bytes(m)
    subprocess.run(["chown", "-R", "mail:mail", str(work / "theirs")], check=True)
    dovecot = mb.Dovecot(work / "dovecot", work / "theirs", ["bench"]).start()
    ours = mb.start_netsuite(work / "netsuite", work / "ours", ["bench"])
    try:
        yield ours, dovecot, work, mb
    finally:
        ours.stop()
        dovecot.stop()
        shutil.rmtree(work, ignore_errors=True)


def answers(port: int, password: str) -> list:
    m = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    m.login("bench", password)
    m.select("INBOX")
    out = [m.fetch(str(i), f"({item})") for i in range(1, len(MESSAGES) + 1) for item in ITEMS]
    m.logout()
    return out


def hand_to_dovecot(ours, dovecot, work) -> None:
    """Stop both servers, give Dovecot netsuite's Maildir, start Dovecot on it."""
    ours.stop()
    dovecot.stop()
    shutil.rmtree(work / "theirs" / "bench")
    shutil.copytree(work / "ours" / "bench", work / "theirs" / "bench")
    subprocess.run(["chown", "-R", "mail:mail", str(work / "theirs")], check=True)
    dovecot.start()


def test_same_fetch_answers_as_dovecot(servers):
    ours, dovecot, _, mb = servers
    mine = answers(ours.port("imap"), mb.PASSWORD)
    theirs = answers(dovecot.imap_port, mb.PASSWORD)
    assert len(mine) == len(theirs)
    for n, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        assert a == b, (n // len(ITEMS) + 1, ITEMS[n % len(ITEMS)])


def test_dovecot_reads_flags_and_folders_netsuite_wrote(servers):
    ours, dovecot, work, mb = servers
    m = imaplib.IMAP4("127.0.0.1", ours.port("imap"), timeout=10)
    m.login("bench", mb.PASSWORD)
    m.select("INBOX")
    m.store("1", "+FLAGS", "(\\Flagged \\Answered)")
    m.create("Projects")
    m.append("Projects", "(\\Seen)", None, b"Subject: p\r\n\r\nbody\r\n")
    m.logout()
    # Hand netsuite's Maildir to Dovecot: stop both, swap the trees, start Dovecot.
    hand_to_dovecot(ours, dovecot, work)
    d = imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10)
    d.login("bench", mb.PASSWORD)
    d.select("INBOX")
    typ, data = d.fetch("1", "(FLAGS)")
    assert b"\\Flagged" in data[0] and b"\\Answered" in data[0]
    assert d.select("Projects") == ("OK", [b"1"])
    typ, data = d.fetch("1", "(FLAGS BODY.PEEK[])")
    assert b"\\Seen" in data[0][0] and data[0][1] == b"Subject: p\r\n\r\nbody\r\n"
    d.logout()


def test_dovecot_reads_a_folder_named_in_utf8(servers):
    # ENABLE UTF8=ACCEPT (RFC 6855) changes the wire, not the disk: the folder
    # is modified UTF-7 there, as Dovecot (which does not offer UTF8=ACCEPT) names it.
    ours, dovecot, work, mb = servers
    m = imaplib.IMAP4("127.0.0.1", ours.port("imap"), timeout=10)
    m.login("bench", mb.PASSWORD)
    assert m.enable("UTF8=ACCEPT")[0] == "OK"
    assert m.create('"Entwürfe"')[0] == "OK"
    message = "Subject: Grüße\r\n\r\nbody\r\n".encode()
    tag = m._new_tag()
    m.send(tag + ' APPEND "Entwürfe" UTF8 (~{%d+}\r\n'.encode() % len(message) + message +
           b")\r\n")
    assert m._get_line().startswith(tag + b" OK")
    m.logout()
    hand_to_dovecot(ours, dovecot, work)
    d = imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10)
    d.login("bench", mb.PASSWORD)
    typ, data = d.list('""', "Entw*")
    assert typ == "OK" and [line.rsplit(b" ", 1)[1] for line in data] == [b"Entw&APw-rfe"]
    assert d.select("Entw&APw-rfe") == ("OK", [b"1"])
    typ, data = d.fetch("1", "(BODY.PEEK[])")
    assert data[0][1] == message
    d.logout()


def flags_of(m, n: int) -> set[bytes]:
    typ, data = m.fetch(str(n), "(FLAGS)")
    assert typ == "OK", data
    inner = data[0].split(b"FLAGS (", 1)[1].split(b")", 1)[0]
    return set(inner.split())


def test_keywords_travel_both_ways_with_dovecot(servers):
    ours, dovecot, work, mb = servers
    m = imaplib.IMAP4("127.0.0.1", ours.port("imap"), timeout=10)
    m.login("bench", mb.PASSWORD)
    m.select("INBOX")
    m.store("1", "+FLAGS", "($Forwarded Junk \\Seen)")
    m.store("2", "+FLAGS", "(Junk)")
    m.logout()
    hand_to_dovecot(ours, dovecot, work)
    d = imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10)
    d.login("bench", mb.PASSWORD)
    d.select("INBOX")
    assert {b"$Forwarded", b"Junk", b"\\Seen"} <= flags_of(d, 1)
    assert b"Junk" in flags_of(d, 2) and b"$Forwarded" not in flags_of(d, 2)
    assert not {b"Junk", b"$Forwarded"} & flags_of(d, 3)
    # Now Dovecot changes them: netsuite must read its letters back.
    d.store("1", "-FLAGS", "(Junk)")
    d.store("3", "+FLAGS", "(Project $Forwarded)")
    d.logout()
    dovecot.stop()
    shutil.rmtree(work / "ours" / "bench")
    shutil.copytree(work / "theirs" / "bench", work / "ours" / "bench")
    ours.start()
    m = imaplib.IMAP4("127.0.0.1", ours.port("imap"), timeout=10)
    m.login("bench", mb.PASSWORD)
    m.select("INBOX")
    one = flags_of(m, 1)
    assert b"$Forwarded" in one and b"Junk" not in one, one
    assert b"Junk" in flags_of(m, 2)
    assert {b"Project", b"$Forwarded"} <= flags_of(m, 3)
    m.logout()

"""One store, three protocols: SMTP delivers, IMAP (idling) and POP3 read the same bytes."""

from __future__ import annotations

import poplib
import smtplib

import pytest
from test_imap import USERS, RawIMAP, connect, tls_context

MESSAGE = (b"From: Bob <bob@remote.test>\r\nTo: alice@example.test\r\n"
           b"Subject: across protocols\r\nMessage-ID: <x1@remote.test>\r\n\r\n"
           b"line one\r\n.starts with a dot\r\n..two dots\r\n\r\ntail\r\n")


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(listeners=["smtp", "imaps", "pop3s"], users=USERS)


def test_smtp_delivery_reaches_idle_imap_and_pop3_byte_exact(daemon):
    r = RawIMAP(daemon)
    r.login()
    r.send(b"s SELECT INBOX\r\n")
    assert r.until_tagged(b"s")[-1].startswith(b"s OK")
    r.send(b"i IDLE\r\n")
    assert r.line().startswith(b"+ ")

    with smtplib.SMTP("127.0.0.1", daemon.port("smtp"), timeout=10) as s:
        s.sendmail("bob@remote.test", ["alice@example.test"], MESSAGE)

    # Pushed while idling: no polling involved, the delivery notifies the folder.
    assert r.line() == b"* 1 EXISTS\r\n"
    assert r.line() == b"* 1 RECENT\r\n"
    r.send(b"DONE\r\n")
    assert r.until_tagged(b"i")[-1].startswith(b"i OK")
    r.close()

    stored = daemon.messages("alice")
    assert len(stored) == 1
    on_disk = stored[0].replace(b"\n", b"\r\n")

    m = connect(daemon)
    m.select("INBOX")
    typ, data = m.fetch("1", "(RFC822.SIZE BODY.PEEK[])")
    imap_bytes = data[0][1]
    assert imap_bytes == on_disk
    assert imap_bytes.endswith(MESSAGE)  # the server only prepends trace headers
    assert b"RFC822.SIZE %d" % len(imap_bytes) in data[0][0]
    m.logout()

    p = poplib.POP3_SSL("127.0.0.1", daemon.port("pop3s"), context=tls_context(), timeout=10)
    p.user("alice")
    p.pass_(USERS["alice"])
    resp, lines, octets = p.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == imap_bytes
    assert p.list()[1] == [b"1 %d" % len(imap_bytes)]
    p.quit()

"""OBJECTID (RFC 8474) and SAVEDATE (RFC 8514) against the real daemon."""

from __future__ import annotations

import datetime as dt
import imaplib
import re
import time

import pytest

USERS = {"alice": "wonderland"}
OBJECTID = re.compile(rb"^[A-Za-z0-9_-]{1,255}$")


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(listeners=["imap"], users=USERS,
                       config={"server": {"allow_plaintext_auth": True}})


def connect(d) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    m.login("alice", USERS["alice"])
    return m


def select_mailboxid(m: imaplib.IMAP4, box: str) -> bytes:
    typ, _ = m.select(box)
    assert typ == "OK"
    (value,) = m.untagged_responses.pop("MAILBOXID")
    return value.strip(b"()")


def status_mailboxid(m: imaplib.IMAP4, box: str) -> bytes:
    typ, data = m.status(box, "(MAILBOXID)")
    assert typ == "OK", data
    return re.search(rb"MAILBOXID \(([^)]*)\)", data[0]).group(1)


def fetch_ids(m: imaplib.IMAP4, spec: str = "1:*") -> list[tuple[bytes, bytes]]:
    typ, data = m.fetch(spec, "(EMAILID THREADID)")
    assert typ == "OK", data
    out = []
    for line in data:
        mm = re.search(rb"EMAILID \(([^)]*)\) THREADID (NIL|\([^)]*\))", line)
        out.append((mm.group(1), mm.group(2)))
    return out


def test_ids_stable_across_rename_and_restart(daemon):
    m = connect(daemon)
    assert "OBJECTID" in m.capabilities and "SAVEDATE" in m.capabilities
    m.create("box")
    m.create("other")
    for i in range(2):
        m.append("box", None, None, b"Subject: %d\r\n\r\nbody\r\n" % i)
    box_id = select_mailboxid(m, "box")
    assert OBJECTID.match(box_id)
    assert status_mailboxid(m, "box") == box_id
    assert status_mailboxid(m, "other") != box_id
    ids = fetch_ids(m)
    assert len({e for e, _ in ids}) == 2 and all(OBJECTID.match(e) for e, _ in ids)
    assert all(t == b"NIL" for _, t in ids)
    m.store("1", "+FLAGS", "\\Seen")  # renames the file: the id stays
    assert fetch_ids(m) == ids
    m.close()
    assert m.rename("box", "renamed")[0] == "OK"
    assert select_mailboxid(m, "renamed") == box_id
    assert fetch_ids(m) == ids
    # Copies and moved messages keep the EMAILID (RFC 8474 5.1); distinct ones differ.
    m.copy("1", "INBOX")
    m._simple_command("MOVE", "2", "other")
    m.select("INBOX")
    assert fetch_ids(m) == [ids[0]]
    m.select("other")
    assert fetch_ids(m) == [ids[1]]
    m.append("other", None, None, b"Subject: 1\r\n\r\nbody\r\n")  # same bytes, new message
    m.select("other")
    assert fetch_ids(m, "2")[0][0] not in (ids[0][0], ids[1][0])
    m._simple_command("MOVE", "1", "renamed")
    m.logout()
    daemon.restart()
    m = connect(daemon)
    assert select_mailboxid(m, "renamed") == box_id
    assert fetch_ids(m) == ids
    # A folder deleted and made again under the same name is another folder.
    m.close()
    other_id = status_mailboxid(m, "other")
    m.delete("other")
    m.create("other")
    assert status_mailboxid(m, "other") not in (box_id, other_id)
    m.logout()


def test_savedate_fetch_and_search(daemon):
    m = connect(daemon)
    before = int(time.time())
    # An old internal date: the save date is still now.
    m.append("INBOX", None, '"01-Jan-2001 12:00:00 +0000"', b"Subject: old\r\n\r\nx\r\n")
    after = int(time.time())
    m.select("INBOX")
    typ, data = m.fetch("1", "(SAVEDATE INTERNALDATE)")
    saved = re.search(rb'SAVEDATE "([^"]+)"', data[0]).group(1)
    ts = time.mktime(imaplib.Internaldate2tuple(b'INTERNALDATE "' + saved + b'"'))
    assert before - 1 <= ts <= after + 1
    assert b'INTERNALDATE " 1-Jan-2001' in data[0]
    today = dt.date.fromtimestamp(before).strftime("%d-%b-%Y")
    assert m.search(None, "SAVEDON", today)[1] == [b"1"]
    assert m.search(None, "SAVEDSINCE", today)[1] == [b"1"]
    assert m.search(None, "SAVEDBEFORE", today)[1] == [b""]
    assert m.search(None, "SAVEDBEFORE", "1-Jan-2002")[1] == [b""]
    assert m.search(None, "BEFORE", "1-Jan-2002")[1] == [b"1"]
    assert m.search(None, "SAVEDATESUPPORTED")[1] == [b"1"]
    # A copy is saved anew.
    assert m.copy("1", "Trash")[0] == "OK"
    m.select("Trash")
    assert m.search(None, "SAVEDON", today)[1] == [b"1"]
    m.logout()

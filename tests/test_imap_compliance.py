"""
IMAP4 details imaptest's compliance groups check, against the real daemon with
imaplib and raw sockets: message/rfc822 sections, source routes, MOVE's
COPYUID, address SEARCH, RECENT on EXAMINE, LSUB's \\Noselect parents and
keywords announced in FLAGS before they are used.
"""

from __future__ import annotations

import os
import re

import pytest
from test_imap import USERS, RawIMAP, connect, crlf, put

#: imaptest's fetch-body-message-rfc822-x2 message: a message/rfc822 holding
#: another message/rfc822.
NESTED = crlf(b"From: user@domain.org\nDate: Sat, 24 Mar 2007 23:00:00 +0200\n"
              b"Mime-Version: 1.0\nContent-Type: message/rfc822\n\n"
              b"From: user2@domain.org\nDate: Fri, 23 Mar 2007 11:22:33 +0200\n"
              b"Mime-Version: 1.0\nContent-Type: message/rfc822\n\n"
              b"From: sub@domain.org\nSubject: submsg\n\nHello world\n")

DIGEST = crlf(b"From: user@domain.org\nContent-Type: message/rfc822\n\n"
              b"From: sub@domain.org\nContent-Type: multipart/digest; boundary=\"foo\"\n\n"
              b"prologue\n\n--foo \n\nFrom: m1@example.com\nSubject: m1\n\nm1 body\n\n"
              b"--foo \nX-Mime: m2 header\n\nFrom: m2@example.com\nSubject: m2\n\nm2 body\n\n"
              b"--foo--\n\nepilogue\n")


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(listeners=["imap", "imaps"], users=USERS,
                       config={"store": {"poll_interval": 0.2}})


def body(m, spec: str, seq: str = "1") -> bytes:
    typ, data = m.fetch(seq, f"(BODY.PEEK[{spec}])")
    assert typ == "OK", data
    return data[0][1]


def test_sections_of_embedded_messages(daemon):
    put(daemon, "alice", NESTED)
    put(daemon, "alice", DIGEST)
    m = connect(daemon)
    m.select("INBOX")
    inner = NESTED.split(b"\r\n\r\n", 1)[1]
    innermost = inner.split(b"\r\n\r\n", 1)[1]
    # BODY[1] of a single-part message/rfc822 is the whole embedded message.
    assert body(m, "1") == inner
    assert body(m, "1.HEADER") == inner.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    assert body(m, "1.TEXT") == innermost
    assert body(m, "1.HEADER.FIELDS (FROM)") == b"From: user2@domain.org\r\n\r\n"
    # One level further down: the second embedding.
    assert body(m, "1.1") == innermost
    assert body(m, "1.1.HEADER") == b"From: sub@domain.org\r\nSubject: submsg\r\n\r\n"
    assert body(m, "1.1.TEXT") == b"Hello world\r\n"
    assert body(m, "1.1.1") == b"Hello world\r\n"
    # A digest inside the embedded message: its parts are message/rfc822 by default.
    assert body(m, "1.1", "2") == b"From: m1@example.com\r\nSubject: m1\r\n\r\nm1 body\r\n"
    assert body(m, "1.2.MIME", "2") == b"X-Mime: m2 header\r\n\r\n"
    assert body(m, "1.2.HEADER", "2") == b"From: m2@example.com\r\nSubject: m2\r\n\r\n"
    assert body(m, "1.2.TEXT", "2") == b"m2 body\r\n"
    m.logout()


def test_envelope_keeps_source_routes(daemon):
    put(daemon, "alice", crlf(b"From: <@route:user@domain>\nTo: Name <@r1,@r2:to@example.test>, "
                              b"\"a, b\" <ab@example.test>\nSubject: r\n\nbody\n"))
    m = connect(daemon)
    m.select("INBOX")
    typ, data = m.fetch("1", "(ENVELOPE)")
    assert typ == "OK", data
    env = data[0]
    assert b'((NIL "@route" "user" "domain"))' in env
    assert b'(("Name" "@r1,@r2" "to" "example.test")("a, b" NIL "ab" "example.test"))' in env
    m.logout()


def test_search_matches_addresses_written_out_again(daemon):
    put(daemon, "alice", crlf(b"From: <user-from (comment)@ (comment) domain.org>\n"
                              b"To: group: g1@domain.org, =?utf-8?q?J=C3=B6rg?= <j@domain.org>;\n"
                              b"Subject: s\n\nbody\n"))
    put(daemon, "alice", crlf(b"From: other@domain.org\nSubject: s\n\nbody\n"))
    m = connect(daemon)
    m.select("INBOX")
    assert m.search(None, "FROM", "user-from@domain.org") == ("OK", [b"1"])
    assert m.search(None, "FROM", "domain.org") == ("OK", [b"1 2"])
    assert m.search(None, "TO", "g1@domain.org") == ("OK", [b"1"])
    m.literal = "Jörg <j@".encode()
    assert m.search("UTF-8", "TO") == ("OK", [b"1"])
    assert m.search(None, "FROM", "nobody@domain.org") == ("OK", [b""])
    m.logout()


def test_examine_shows_recent_without_taking_it(daemon):
    put(daemon, "alice", crlf(b"Subject: one\n\n1\n"))
    put(daemon, "alice", crlf(b"Subject: two\n\n2\n"))
    m = connect(daemon)
    m.select("INBOX", readonly=True)
    assert m.untagged_responses["RECENT"] == [b"2"]
    typ, data = m.fetch("1:*", "(FLAGS)")
    assert all(b"\\Recent" in line for line in data), data
    # New mail while EXAMINEd is \Recent here too.
    put(daemon, "alice", crlf(b"Subject: three\n\n3\n"))
    r = RawIMAP(daemon)
    r.login()
    r.send(b"e EXAMINE INBOX\r\n")
    assert b"* 3 RECENT\r\n" in r.until_tagged(b"e")
    r.close()
    m.close()
    # EXAMINE took nothing: SELECT still finds all three \Recent; the next SELECT none.
    m.select("INBOX")
    assert m.untagged_responses["RECENT"] == [b"3"]
    m.close()
    m.select("INBOX", readonly=True)
    assert m.untagged_responses["RECENT"] == [b"0"]
    m.logout()


def test_lsub_lists_unsubscribed_parents_as_noselect(daemon):
    m = connect(daemon)
    for name in ("top", "top.kid", "top.kid.deep", "other"):
        assert m.create(name)[0] == "OK"
    assert m.subscribe("top.kid.deep")[0] == "OK"
    assert m.subscribe("other")[0] == "OK"
    # top and top.kid exist but are not subscribed: LSUB names them \Noselect.
    typ, data = m.lsub('""', "%")
    assert typ == "OK"
    assert b'(\\Noselect) "." top' in data and b'(\\HasNoChildren) "." other' in data, data
    typ, data = m.lsub('""', "top.%")
    assert data == [b'(\\Noselect) "." top.kid'], data
    # LIST still shows the folder as it is.
    typ, data = m.list('""', "top")
    assert data == [b'(\\HasChildren) "." top'], data
    m.logout()


def test_move_sends_copyuid_before_expunge_and_to_itself_renumbers(daemon):
    for n in (1, 2):
        put(daemon, "alice", crlf(b"Subject: %d\n\nbody\n" % n))
    r = RawIMAP(daemon)
    r.login()
    r.send(b"c CREATE Other\r\ns SELECT INBOX\r\n")
    r.until_tagged(b"c")
    lines = r.until_tagged(b"s")
    validity = int(re.search(rb"UIDVALIDITY (\d+)", b"".join(lines)).group(1))
    r.send(b"m MOVE 1 Other\r\n")
    lines = r.until_tagged(b"m")
    assert re.match(rb"\* OK \[COPYUID \d+ 1 1\]", lines[0]), lines
    assert lines[1:] == [b"* 1 EXPUNGE\r\n", b"m OK MOVE completed\r\n"], lines
    # MOVE to the selected folder: a new UID, reported as EXPUNGE then EXISTS.
    r.send(b"m2 UID MOVE 2 INBOX\r\n")
    lines = r.until_tagged(b"m2")
    assert lines[0] == b"* OK [COPYUID %d 2 3] Moved\r\n" % validity, lines
    assert lines[1:3] == [b"* 1 EXPUNGE\r\n", b"* 1 EXISTS\r\n"], lines
    assert lines[-1] == b"m2 OK MOVE completed\r\n"
    r.send(b"f UID FETCH 1:* (FLAGS)\r\n")
    lines = r.until_tagged(b"f")
    assert lines[:-1] == \
        [b"* 1 FETCH (UID 3 FLAGS (\\Recent))\r\n"], lines
    r.close()


def select(r: RawIMAP, tag: bytes, name: bytes = b"INBOX") -> list[bytes]:
    r.send(tag + b" SELECT " + name + b"\r\n")
    return r.until_tagged(tag)


def test_new_keywords_are_in_flags_before_a_fetch_shows_them(daemon):
    put(daemon, "alice", crlf(b"Subject: one\n\n1\n"))
    a, b, c = RawIMAP(daemon), RawIMAP(daemon), RawIMAP(daemon)
    for r in (a, b, c):
        r.login()
        assert b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n" in select(r, b"s")
    # The session that adds a keyword hears FLAGS and PERMANENTFLAGS first.
    a.send(b"k STORE 1 +FLAGS ($hello)\r\n")
    assert a.until_tagged(b"k") == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $hello)\r\n",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $hello \\*)] "
        b"Flags permitted\r\n",
        b"* 1 FETCH (FLAGS ($hello \\Recent))\r\n",
        b"k OK STORE completed\r\n"]
    # Another session: FLAGS before the unsolicited FETCH that shows it...
    b.send(b"n NOOP\r\n")
    lines = b.until_tagged(b"n")
    assert lines[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $hello)\r\n", lines
    assert any(b"FETCH" in line and b"$hello" in line for line in lines[2:]), lines
    # ... and before its own FETCH's answer.
    c.send(b"f FETCH 1 FLAGS\r\n")
    lines = c.until_tagged(b"f")
    assert lines[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $hello)\r\n", lines
    assert lines.index(b"* 1 FETCH (FLAGS ($hello))\r\n") > 1, lines
    # Told once: the next change of that keyword sends no FLAGS again.
    a.send(b"k2 STORE 1 -FLAGS ($hello)\r\n")
    assert a.until_tagged(b"k2") == [b"* 1 FETCH (FLAGS (\\Recent))\r\n",
                                     b"k2 OK STORE completed\r\n"]
    for r in (a, b, c):
        r.close()


def test_keyword_nil_is_a_keyword_as_dovecot_has_it(daemon):
    # imaptest's nil group (Dovecot passes it): STORE +FLAGS NIL sets the keyword "NIL".
    put(daemon, "alice", crlf(b"Subject: one\n\n1\n"))
    r = RawIMAP(daemon)
    r.login()
    select(r, b"s")
    r.send(b"k STORE 1 +FLAGS NIL\r\n")
    lines = r.until_tagged(b"k")
    assert lines[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft NIL)\r\n", lines
    assert lines[-2:] == [b"* 1 FETCH (FLAGS (NIL \\Recent))\r\n", b"k OK STORE completed\r\n"]
    r.close()


@pytest.mark.maildir_only  # the Maildir folder's cache file
def test_renderings_cached_before_the_route_fix_are_not_served(daemon):
    """ENVELOPE (and BODYSTRUCTURE, BODY: they hold envelopes) changed: new cache fields."""
    from netsuite.store.cache import CACHE_NAME, HEADER, record

    put(daemon, "alice", crlf(b"From: <@route:user@domain>\nSubject: r\n\nbody\n"))
    (name,) = os.listdir(daemon.maildir("alice") / "new")
    base = name.partition(":")[0]
    (daemon.maildir("alice") / CACHE_NAME).write_bytes(
        HEADER + b"".join(record(base, f, b"(OLD)")
                          for f in ("envelope1", "bodystructure1", "body1")))
    m = connect(daemon)
    m.select("INBOX")
    typ, data = m.fetch("1", "(ENVELOPE BODYSTRUCTURE BODY)")
    assert typ == "OK" and b"OLD" not in data[0], data
    assert b'((NIL "@route" "user" "domain"))' in data[0]
    m.logout()

"""
UTF8=ACCEPT (RFC 6855) against the real daemon: mailbox names in UTF-8 after
ENABLE and in modified UTF-7 without it, the APPEND UTF8 form, SEARCH, and
what is refused.  Python's imaplib speaks UTF-8 after C{enable("UTF8=ACCEPT")};
raw lines go through its socket where it cannot (invalid octets, APPEND UTF8:
imaplib wraps the literal itself, wrongly).
"""

from __future__ import annotations

import imaplib
import random

import pytest

from netsuite.imap import names
from netsuite.imap.wire import Cursor, ParseError

USERS = {"alice": "wonderland"}

UTF8_MESSAGE = ("From: Jörg Müller <jörg@example.test>\r\nTo: bob@example.test\r\n"
                "Subject: Grüße aus Köln\r\nMIME-Version: 1.0\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\nSchöne Grüße\r\n").encode()


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(listeners=["imap"], users=USERS,
                       config={"server": {"allow_plaintext_auth": True}})


def connect(d, utf8: bool) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    m.login("alice", USERS["alice"])
    if utf8:
        assert m.enable("UTF8=ACCEPT")[0] == "OK"
        assert m.untagged_responses.pop("ENABLED") == [b"UTF8=ACCEPT"]
    return m


def raw(m: imaplib.IMAP4, command: bytes) -> tuple[bytes, list[bytes]]:
    """
    One command as bytes, its literals (C{{n+}}, LITERAL+) inside; (tagged
    status, every untagged line).
    """
    tag = m._new_tag()
    m.send(tag + b" " + command + b"\r\n")
    lines = []
    while True:
        line = m._get_line()
        if line.startswith(tag + b" "):
            return line.split(b" ", 2)[1], lines
        lines.append(line)


def append_utf8(message: bytes = UTF8_MESSAGE) -> bytes:
    """APPEND INBOX UTF8 (~{n+}...): the RFC 6855 4 form, as LITERAL+."""
    return b"APPEND INBOX UTF8 (~{%d+}\r\n" % len(message) + message + b")"


def listed(m: imaplib.IMAP4, pattern: bytes = b"*") -> list[bytes]:
    status, lines = raw(m, b'LIST "" "' + pattern + b'"')
    assert status == b"OK"
    return [line.split(b') "." ', 1)[1] for line in lines if line.startswith(b"* LIST ")]


def test_capability_and_enable(daemon):
    m = imaplib.IMAP4("127.0.0.1", daemon.port("imap"), timeout=10)
    assert "UTF8=ACCEPT" in m.capabilities
    m.login("alice", USERS["alice"])
    status, lines = raw(m, b"ENABLE UTF8=ACCEPT")
    assert status == b"OK" and lines == [b"* ENABLED UTF8=ACCEPT"]
    status, lines = raw(m, b"ENABLE UTF8=ACCEPT")  # already on: not listed again
    assert status == b"OK" and lines == [b"* ENABLED"]
    m.logout()


def test_enable_after_select_is_refused(daemon):
    m = connect(daemon, utf8=False)
    m.select("INBOX")
    status, _ = raw(m, b"ENABLE UTF8=ACCEPT")
    assert status == b"BAD"
    # Still modified UTF-7: a UTF-8 name is refused as before.
    status, _ = raw(m, "CREATE \"Entwürfe\"".encode())
    assert status == b"NO"
    m.unselect()
    status, lines = raw(m, b"ENABLE UTF8=ACCEPT")
    assert status == b"OK" and lines == [b"* ENABLED UTF8=ACCEPT"]
    m.logout()


def test_utf8_names_seen_as_modified_utf7_by_others(daemon):
    u = connect(daemon, utf8=True)
    old = connect(daemon, utf8=False)
    assert u.create('"Entwürfe"')[0] == "OK"
    assert u.create('"Tom & Jerry"')[0] == "OK"
    assert old.create("Brouillons.&AOk-t&AOk-")[0] == "OK"
    got = listed(u)
    assert '"Entwürfe"'.encode() in got and b'"Tom & Jerry"' in got
    assert '"Brouillons.été"'.encode() in got
    old_got = listed(old)
    assert b"Entw&APw-rfe" in old_got and b'"Tom &- Jerry"' in old_got
    assert b"Brouillons.&AOk-t&AOk-" in old_got
    # The same folder, whichever way it is named.
    assert old.append("Entw&APw-rfe", None, None, b"Subject: x\r\n\r\nx\r\n")[0] == "OK"
    status, lines = raw(u, 'STATUS "Entwürfe" (MESSAGES)'.encode())
    assert status == b"OK" and lines == ['* STATUS "Entwürfe" (MESSAGES 1)'.encode()]
    # A pattern in UTF-8 finds it; modified UTF-7 is taken literally ('&' is '&').
    assert listed(u, b"Entw%rfe") == ['"Entwürfe"'.encode()]
    assert listed(u, b"Entw&APw-rfe") == []
    u.logout()
    old.logout()


def test_patterns_match_characters_not_base64(daemon):
    # 日本語 is one modified UTF-7 word, &ZeVnLIqe-; 日本* is &ZeVnLA-*: matched as text.
    u = connect(daemon, utf8=True)
    old = connect(daemon, utf8=False)
    assert u.create('"日本語"')[0] == "OK"
    assert u.create('"日本語.下書き"')[0] == "OK"
    assert listed(u, "日本*".encode()) == ['"日本語"'.encode(), '"日本語.下書き"'.encode()]
    assert listed(u, "日本%".encode()) == ['"日本語"'.encode()]
    assert listed(u, "*書き".encode()) == ['"日本語.下書き"'.encode()]
    assert listed(old, b"&ZeVnLA-*") == [b"&ZeVnLIqe-", b"&ZeVnLIqe-.&Tgtm+DBN-"]
    status, lines = raw(u, 'LIST "" ("日本%" "x*") RETURN (CHILDREN)'.encode())
    assert status == b"OK" and lines == ['* LIST (\\HasChildren) "." "日本語"'.encode()]
    u.logout()
    old.logout()


def test_mailbox_commands_with_utf8_names(daemon):
    u = connect(daemon, utf8=True)
    assert u.create('"Ordner"')[0] == "OK"
    assert u.rename('"Ordner"', '"Gelöscht"')[0] == "OK"
    assert u.subscribe('"Gelöscht"')[0] == "OK"
    status, lines = raw(u, b'LSUB "" "*"')
    assert '"Gelöscht"'.encode() in b" ".join(lines)
    assert u.append('"Gelöscht"', None, None, b"Subject: a\r\n\r\na\r\n")[0] == "OK"
    typ, data = u.select('"Gelöscht"')
    assert typ == "OK" and data == [b"1"]
    assert u.create('"Ziel ✓"')[0] == "OK"
    assert u.copy("1", '"Ziel ✓"')[0] == "OK"
    typ, data = u._simple_command("MOVE", "1", '"Ziel ✓"')
    assert typ == "OK"
    status, lines = raw(u, 'STATUS "Ziel ✓" (MESSAGES)'.encode())
    assert lines == ['* STATUS "Ziel ✓" (MESSAGES 2)'.encode()]
    status, lines = raw(u, 'GETQUOTAROOT "Ziel ✓"'.encode())
    assert status == b"OK" and lines[0] == '* QUOTAROOT "Ziel ✓"'.encode()
    status, lines = raw(u, b'LIST "" "Z*" RETURN (STATUS (MESSAGES))')
    assert status == b"OK"
    assert lines == ['* LIST (\\HasNoChildren) "." "Ziel ✓"'.encode(),
                     '* STATUS "Ziel ✓" (MESSAGES 2)'.encode()]
    status, lines = raw(u, 'NOTIFY SET STATUS (MAILBOXES "Ziel ✓" (MessageNew))'.encode())
    assert status == b"OK" and lines[0].startswith('* STATUS "Ziel ✓" ('.encode())
    u.unselect()
    assert u.delete('"Gelöscht"')[0] == "OK"
    assert '"Gelöscht"'.encode() not in listed(u)
    old = connect(daemon, utf8=False)
    assert b'"Ziel &JxM-"' in listed(old)
    old.logout()
    u.logout()


def test_bad_utf8_names_are_refused(daemon):
    u = connect(daemon, utf8=True)
    assert raw(u, b'CREATE "Entw\xfcrfe"')[0] == b"BAD"  # Latin-1, not UTF-8
    assert raw(u, b'CREATE "a\xc2\x85b"')[0] == b"NO"  # U+0085, a C1 control
    assert raw(u, 'CREATE "a\u2028b"'.encode())[0] == b"NO"
    assert raw(u, b'LIST "" "\xff*"')[0] == b"BAD"
    assert raw(u, b'SELECT "\xe4"')[0] == b"BAD"
    before = listed(u)
    assert not any(b"\xfc" in n or b"\xc2\x85" in n for n in before)
    u.logout()
    old = connect(daemon, utf8=False)
    # Without ENABLE, as before: non-ASCII is not modified UTF-7.
    assert raw(old, "CREATE \"Entwürfe\"".encode())[0] == b"NO"
    old.logout()


def test_append_utf8_literal(daemon):
    u = connect(daemon, utf8=True)
    status, lines = raw(u, append_utf8())
    assert status == b"OK"
    assert daemon.messages("alice") == [UTF8_MESSAGE.replace(b"\r\n", b"\n")]
    u.select("INBOX")
    typ, data = u.fetch("1", "(BODY.PEEK[])")
    assert data[0][1] == UTF8_MESSAGE
    # Headers in UTF-8 (RFC 6532) are matched by UTF-8 search strings.
    typ, data = u.search(None, 'SUBJECT "Grüße"')
    assert (typ, data) == ("OK", [b"1"])
    typ, data = u.search(None, 'FROM "Müller"')
    assert (typ, data) == ("OK", [b"1"])
    typ, data = u.search(None, 'FROM "jörg@example.test"')
    assert (typ, data) == ("OK", [b"1"])
    typ, data = u.search(None, 'BODY "Schöne"')
    assert (typ, data) == ("OK", [b"1"])
    typ, data = u.search(None, 'SUBJECT "Paris"')
    assert (typ, data) == ("OK", [b""])
    # ENVELOPE: the UTF-8 strings come back as they are stored.
    typ, data = u.fetch("1", "(ENVELOPE)")
    assert typ == "OK"
    flat = b"".join(p if isinstance(p, bytes) else b"".join(p) for p in data)
    assert "Grüße aus Köln".encode() in flat and "Jörg Müller".encode() in flat
    u.logout()


def test_append_utf8_refused_without_enable(daemon):
    old = connect(daemon, utf8=False)
    status, _ = raw(old, append_utf8())
    assert status == b"BAD"
    assert daemon.messages("alice") == []
    # The session goes on.
    assert old.noop()[0] == "OK"
    old.logout()


def test_big_append_utf8_streams_and_refused_one_leaves_nothing(daemon):
    # Past 64 KiB the literal goes into tmp/ as it arrives (docs/imap.md).
    big = UTF8_MESSAGE + "Grüße ".encode() * 20000 + b"\r\n"
    old = connect(daemon, utf8=False)
    assert raw(old, append_utf8(big))[0] == b"BAD"
    old.logout()
    assert daemon.tmp_files("alice") == []
    assert daemon.messages("alice") == []
    u = connect(daemon, utf8=True)
    assert raw(u, append_utf8(big))[0] == b"OK"
    assert daemon.messages("alice") == [big.replace(b"\r\n", b"\n")]
    assert daemon.tmp_files("alice") == []
    u.logout()


def test_catenate_utf8_part(daemon):
    head, body = UTF8_MESSAGE.split(b"\r\n\r\n", 1)
    head += b"\r\n\r\n"
    command = (b"APPEND INBOX CATENATE (UTF8 (~{%d+}\r\n" % len(head) + head +
               b") TEXT {%d+}\r\n" % len(body) + body + b")")
    old = connect(daemon, utf8=False)
    assert raw(old, command)[0] == b"BAD"
    old.logout()
    assert daemon.messages("alice") == []
    u = connect(daemon, utf8=True)
    assert raw(u, command)[0] == b"OK"
    assert daemon.messages("alice") == [UTF8_MESSAGE.replace(b"\r\n", b"\n")]
    u.logout()


def test_search_charset_refused_after_enable(daemon):
    u = connect(daemon, utf8=True)
    u.select("INBOX")
    assert raw(u, b"SEARCH CHARSET UTF-8 ALL")[0] == b"BAD"
    assert raw(u, b"SEARCH CHARSET US-ASCII ALL")[0] == b"BAD"
    assert raw(u, b'SEARCH SUBJECT "\xff"')[0] == b"BAD"  # not UTF-8
    assert raw(u, b"SEARCH ALL")[0] == b"OK"
    # SORT and THREAD must name a charset: only UTF-8 now (RFC 6855 erratum 4029).
    assert raw(u, b"SORT (SUBJECT) US-ASCII ALL")[0] == b"BAD"
    assert raw(u, b"THREAD REFERENCES US-ASCII ALL")[0] == b"BAD"
    assert raw(u, b"SORT (SUBJECT) UTF-8 ALL")[0] == b"OK"
    assert raw(u, b"THREAD REFERENCES UTF-8 ALL")[0] == b"OK"
    u.logout()
    old = connect(daemon, utf8=False)
    old.select("INBOX")
    assert raw(old, b"SEARCH CHARSET UTF-8 ALL")[0] == b"OK"  # without ENABLE: as before
    assert raw(old, b"SORT (SUBJECT) US-ASCII ALL")[0] == b"OK"
    old.logout()


def test_envelope_for_a_session_without_utf8(daemon):
    u = connect(daemon, utf8=True)
    assert raw(u, append_utf8())[0] == b"OK"
    u.logout()
    old = connect(daemon, utf8=False)
    old.select("INBOX")
    # 8-bit text goes out in literals, never in quoted strings (RFC 6855 3).
    status, lines = raw(old, b"FETCH 1 (ENVELOPE BODYSTRUCTURE)")
    assert status == b"OK"
    for line in lines:
        for quoted in line.split(b'"')[1::2]:
            assert quoted.isascii()
    old.logout()


# -- the name functions on their own ------------------------------------------------------

def test_names_round_trip():
    for text in ("Entwürfe", "Tom & Jerry", "日本語.下書き", "INBOX", "a&b"):
        stored = names.from_wire(text.encode(), True)
        assert stored.isascii()
        assert names.to_wire(stored, True) in (text.encode(), b'"' + text.encode() + b'"')
    assert names.from_wire(b"Entw&APw-rfe", False) == "Entw&APw-rfe"
    assert names.to_wire("Entw&APw-rfe", False) == b"Entw&APw-rfe"
    # Not modified UTF-7 as netsuite writes it (another program's folder): as stored.
    assert names.to_wire("a&b", True) == b"a&b"
    assert names.to_wire("&AGE-", True) == b"&AGE-"
    with pytest.raises(ParseError):
        names.from_wire(b"\xc3", True)
    assert names.to_wire("x", True) == b"x"
    assert names.utf8_astring('a"\\ü'.encode()) == b'"a\\"\\\\\xc3\xbc"'


PIECES = ["ü", "日本", "&", "&-", "&AOQ-", ".", "%", "*", "\"", "\\", " ", "a", "INBOX",
          "\u2028", "\x85", "\x7f", "😀", "ß"]


def test_names_fuzz():
    """Random names: refused (BAD/NO) or stored as ASCII and given back as sent."""
    from twisted.mail import imap4

    rng = random.Random(6855)
    for _ in range(3000):
        if rng.random() < 0.3:
            raw_name = rng.randbytes(rng.randrange(1, 12))
        else:
            raw_name = "".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 6))).encode()
        try:
            stored = names.from_wire(raw_name, True)
        except (ParseError, imap4.MailboxException):
            continue
        assert stored.isascii()
        assert names.to_unicode(stored).encode() == raw_name
        out = names.to_wire(stored, True)
        cur = Cursor(out[out.index(b"\r\n") + 2:] if out.startswith(b"{") else out, [])
        if out.startswith(b"{"):
            assert cur.text == raw_name
        else:
            assert cur.astring() == raw_name and cur.at_end()


def test_utf8_session_fuzz(daemon):
    """Random UTF-8 and broken names at every naming command; the session stays usable."""
    rng = random.Random(9051)
    u = connect(daemon, utf8=True)
    verbs = [b"CREATE", b"SELECT", b"EXAMINE", b"DELETE", b"SUBSCRIBE", b"UNSUBSCRIBE",
             b"STATUS", b"LIST \"\"", b"LSUB \"\"", b"RENAME x", b"GETQUOTAROOT"]
    for _ in range(150):
        name = b"".join(rng.choice([p.encode() for p in PIECES] + [b"\xff", b"\xc3"])
                        for _ in range(rng.randrange(1, 5))).replace(b'"', b"").replace(b"\\", b"")
        tail = b" (MESSAGES)" if rng.random() < 0.5 else b""
        status, _ = raw(u, rng.choice(verbs) + b' "' + name + b'"' + tail)
        assert status in (b"OK", b"NO", b"BAD")
    assert u.noop()[0] == "OK"
    assert raw(u, b"LIST \"\" \"*\"")[0] == b"OK"
    u.logout()
    old = connect(daemon, utf8=False)
    assert old.list()[0] == "OK"
    old.logout()

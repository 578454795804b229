"""LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819), STATUS=SIZE (RFC 8438): real daemon."""

from __future__ import annotations

import imaplib
import random

import pytest

from netsuite.imap.wire import Cursor, ParseError
from netsuite.imap.wire_list import parse_list

USERS = {"alice": "wonderland"}


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(listeners=["imap"], users=USERS,
                       config={"server": {"allow_plaintext_auth": True}})


def connect(d) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    m.login("alice", USERS["alice"])
    return m


def raw(m: imaplib.IMAP4, command: str) -> tuple[str, list[bytes]]:
    """Send one command as typed; (tagged status, every untagged line)."""
    tag = m._new_tag()
    m.send(tag + b" " + command.encode() + b"\r\n")
    lines = []
    while True:
        line = m._get_line()
        if line.startswith(tag + b" "):
            return line.split(b" ", 2)[1].decode(), lines
        lines.append(line)


def lists(lines: list[bytes]) -> dict[str, bytes]:
    """LIST lines by mailbox name -> the rest of the line after the name."""
    out = {}
    for line in lines:
        if line.startswith(b"* LIST "):
            attrs, _, rest = line[7:].partition(b') "." ')
            name, _, extra = rest.partition(b" ")
            out[name.strip(b'"').decode()] = attrs + b")" + (b" " + extra if extra else b"")
    return out


@pytest.fixture
def tree(daemon):
    m = connect(daemon)
    for name in ("t.a", "t.b.x", "t.c", "t.d.d", "t.e.e", "t.e.f", "gone"):
        assert m.create(name)[0] == "OK"
    for name in ("t.a", "t.b.x", "t.d.d", "t.e.f", "gone"):
        assert m.subscribe(name)[0] == "OK"
    assert m.delete("gone")[0] == "OK"
    yield m
    m.logout()


def test_capabilities(daemon):
    m = connect(daemon)
    caps = m.capabilities
    for cap in ("LIST-EXTENDED", "LIST-STATUS", "STATUS=SIZE"):
        assert cap in caps
    m.logout()


def test_selection_subscribed_marks_and_nonexistent(tree):
    status, lines = raw(tree, 'LIST (SUBSCRIBED) "" "*"')
    assert status == "OK"
    got = lists(lines)
    assert b"\\Subscribed" in got["t.a"]
    assert b"\\NonExistent" in got["gone"] and b"\\Subscribed" in got["gone"]
    assert b"\\Noselect" not in got["gone"]
    assert "t.c" not in got and "t.e.e" not in got  # not subscribed


def test_multiple_patterns_each_name_once(tree):
    status, lines = raw(tree, 'LIST "" ("t.*a" "t.c" "t.%")')
    assert status == "OK"
    names = [line.split(b" ")[-1] for line in lines if line.startswith(b"* LIST")]
    assert sorted(names) == sorted(set(names))
    got = lists(lines)
    assert set(got) == {"t.a", "t.c", "t.b", "t.d", "t.e"}
    # Missing parents a pattern stops at are \NonExistent (and have children).
    assert b"\\NonExistent" in got["t.b"] and b"\\HasChildren" in got["t.b"]


def test_recursivematch_childinfo(tree):
    status, lines = raw(tree, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "t.%" RETURN (CHILDREN)')
    assert status == "OK"
    got = lists(lines)
    assert b'("CHILDINFO" ("SUBSCRIBED"))' in got["t.b"]
    assert b'("CHILDINFO" ("SUBSCRIBED"))' in got["t.e"]
    assert b"CHILDINFO" not in got["t.a"] and b"\\Subscribed" in got["t.a"]
    assert "t.c" not in got
    # A descendant returned itself: no CHILDINFO for its parent (RFC 5258 3.5).
    status, lines = raw(tree, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" ("t.d" "t.d.d")')
    got = lists(lines)
    assert "t.d" not in got and b"\\Subscribed" in got["t.d.d"]


def test_return_subscribed_and_errors(tree):
    status, lines = raw(tree, 'LIST "" "t.%" RETURN (SUBSCRIBED CHILDREN)')
    got = lists(lines)
    assert b"\\Subscribed" in got["t.a"] and b"\\Subscribed" not in got["t.c"]
    status, lines = raw(tree, 'LIST "" "t.%"')
    assert all(b"\\Subscribed" not in v for v in lists(lines).values())
    for bad in ('LIST (BOGUS) "" ""', 'LIST (RECURSIVEMATCH) "" "*"',
                'LIST (RECURSIVEMATCH REMOTE) "" "*"', 'LIST "" "*" RETURN (BOGUS)',
                'LIST "" "*" RETURN (STATUS (BOGUS))', 'LIST "" "*" RETURN (STATUS)'):
        assert raw(tree, bad)[0] == "BAD", bad
    assert raw(tree, 'LIST (REMOTE) "" "%"')[0] == "OK"


def test_special_use_selection(tree):
    status, lines = raw(tree, 'LIST (SPECIAL-USE) "" "*"')
    assert status == "OK"
    got = lists(lines)
    assert set(got) == {"Sent", "Drafts", "Trash", "Junk"}
    assert b"\\Trash" in got["Trash"]


def test_list_status_and_status_size(daemon, tree):
    msg = b"Subject: hi\r\n\r\nbody\r\n"
    assert tree.append("t.a", None, None, msg)[0] == "OK"
    assert tree.append("t.a", None, None, msg + b"more\r\n")[0] == "OK"
    status, lines = raw(tree, 'LIST "" "t.*" RETURN (STATUS (MESSAGES SIZE UIDNEXT))')
    assert status == "OK"
    statuses = {line.split(b" ")[2]: line for line in lines if line.startswith(b"* STATUS")}
    size = 2 * len(msg) + len(b"more\r\n")
    assert statuses[b"t.a"].endswith(b"(MESSAGES 2 SIZE %d UIDNEXT 3)" % size)
    assert statuses[b"t.c"].endswith(b"(MESSAGES 0 SIZE 0 UIDNEXT 1)")
    assert b"t.b" not in statuses  # \NonExistent: no STATUS
    # Each STATUS follows its LIST line.
    i = next(i for i, line in enumerate(lines) if line.startswith(b"* STATUS t.a "))
    assert lines[i - 1].startswith(b"* LIST") and lines[i - 1].endswith(b" t.a")
    typ, data = tree.status("t.a", "(SIZE MESSAGES)")
    assert typ == "OK" and data[0].endswith(b"(SIZE %d MESSAGES 2)" % size)


def test_parse_list_grammar_and_fuzz():
    cmd = parse_list(Cursor(b'(SUBSCRIBED recursivematch) "" ("a" b%) RETURN '
                            b'(children STATUS (messages size))'))
    assert cmd.extended and cmd.patterns == ["a", "b%"]
    assert cmd.select == {b"SUBSCRIBED", b"RECURSIVEMATCH"}
    assert cmd.returns == {b"CHILDREN", b"STATUS"} and cmd.status == ["MESSAGES", "SIZE"]
    assert not parse_list(Cursor(b'"" *')).extended
    rng = random.Random(5258)
    alphabet = [b"(", b")", b" ", b'"', b"RETURN", b"STATUS", b"SUBSCRIBED", b"%", b"*", b"a"]
    for _ in range(3000):
        text = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        try:
            parse_list(Cursor(text))
        except ParseError:
            pass

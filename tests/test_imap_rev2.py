"""
IMAP4rev2 (RFC 9051) beside IMAP4rev1, against the real daemon: each test shows
the rev1 answer of a session that did not send ENABLE IMAP4rev2 and the rev2
answer of one that did.
"""

from __future__ import annotations

import re

import pytest
from test_imap import SIMPLE, RawIMAP, put


@pytest.fixture
def daemon(make_daemon):
    from test_imap import USERS
    return make_daemon(listeners=["imap", "imaps"], users=USERS,
                       config={"store": {"poll_interval": 0.2}})


def session(d, rev2: bool) -> RawIMAP:
    """A logged-in raw session; with C{rev2}, after ENABLE IMAP4rev2."""
    r = RawIMAP(d)
    r.login()
    if rev2:
        lines = cmd(r, b"e", b"ENABLE IMAP4rev2")
        assert lines == [b"* ENABLED IMAP4rev2\r\n", b"e OK ENABLE completed\r\n"]
    return r


def cmd(r: RawIMAP, tag: bytes, text: bytes) -> list[bytes]:
    """Send one command; every line up to and including its tagged answer."""
    r.send(tag + b" " + text + b"\r\n")
    return r.until_tagged(tag)


def untagged(lines: list[bytes], word: bytes) -> list[bytes]:
    """The untagged responses whose first word after the number (if any) is C{word}."""
    pat = re.compile(rb"\* (\d+ )?" + re.escape(word) + rb"\b")
    return [line for line in lines if pat.match(line)]


def test_capability_lists_both_and_enable_answers_in_rfc_spelling(daemon):
    r = RawIMAP(daemon)
    caps = cmd(r, b"c", b"CAPABILITY")[0].split()
    assert b"IMAP4rev1" in caps and b"IMAP4rev2" in caps
    r.login()
    # Any case is accepted; ENABLED names it as RFC 9051 does; a second time, not at all.
    assert cmd(r, b"e", b"ENABLE imap4REV2")[0] == b"* ENABLED IMAP4rev2\r\n"
    assert cmd(r, b"f", b"ENABLE IMAP4rev2")[0] == b"* ENABLED\r\n"
    r.close()


def test_select_has_no_recent_or_unseen_but_a_list(daemon):
    put(daemon, "alice", SIMPLE)
    put(daemon, "alice", SIMPLE)
    r2 = session(daemon, rev2=True)
    lines = cmd(r2, b"s", b"SELECT INBOX")
    assert lines[-1].startswith(b"s OK [READ-WRITE]")
    assert untagged(lines, b"RECENT") == []
    assert not any(b"[UNSEEN" in line for line in lines)
    assert untagged(lines, b"LIST") == [b'* LIST (\\HasNoChildren) "." INBOX\r\n']
    assert b"* 2 EXISTS\r\n" in lines
    assert not any(b"\\Recent" in line for line in lines)  # not in FLAGS/PERMANENTFLAGS
    # The two new messages were this session's to claim, yet neither shows \Recent.
    fetched = cmd(r2, b"f", b"FETCH 1:* FLAGS")
    assert fetched[:2] == [b"* 1 FETCH (FLAGS ())\r\n", b"* 2 FETCH (FLAGS ())\r\n"]

    put(daemon, "alice", SIMPLE)
    r1 = session(daemon, rev2=False)
    lines = cmd(r1, b"s", b"SELECT INBOX")
    assert untagged(lines, b"RECENT") == [b"* 1 RECENT\r\n"]
    assert b"* OK [UNSEEN 1] First unseen\r\n" in lines
    assert untagged(lines, b"LIST") == []
    assert cmd(r1, b"f", b"FETCH 3 FLAGS")[0] == b"* 3 FETCH (FLAGS (\\Recent))\r\n"
    r1.close()
    r2.close()


def test_new_mail_is_told_without_recent(daemon):
    put(daemon, "alice", SIMPLE)
    sessions = {rev2: session(daemon, rev2) for rev2 in (False, True)}
    for r in sessions.values():
        cmd(r, b"s", b"EXAMINE INBOX")
        r.send(b"i IDLE\r\n")
        assert r.line().startswith(b"+ ")
    put(daemon, "alice", SIMPLE)
    for rev2, r in sessions.items():
        assert r.line() == b"* 2 EXISTS\r\n"
        r.send(b"DONE\r\n")
        rest = r.until_tagged(b"i")
        assert untagged(rest, b"RECENT") == ([] if rev2 else [b"* 2 RECENT\r\n"])
        flags = cmd(r, b"f", b"FETCH 2 FLAGS")[0]
        assert flags == (b"* 2 FETCH (FLAGS ())\r\n" if rev2
                         else b"* 2 FETCH (FLAGS (\\Recent))\r\n")
        r.close()


def test_enable_while_selected_drops_recent(daemon):
    put(daemon, "alice", SIMPLE)
    r = session(daemon, rev2=False)
    cmd(r, b"s", b"SELECT INBOX")
    assert cmd(r, b"f", b"FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS (\\Recent))\r\n"
    assert cmd(r, b"e", b"ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2\r\n"
    assert cmd(r, b"g", b"FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS ())\r\n"
    r.close()


@pytest.mark.parametrize("rev2", [False, True])
def test_status_recent_is_left_out(daemon, rev2):
    put(daemon, "alice", SIMPLE)
    r = session(daemon, rev2)
    status = cmd(r, b"t", b"STATUS INBOX (MESSAGES RECENT UNSEEN)")
    assert status[-1].startswith(b"t OK")
    want = b"(MESSAGES 1 UNSEEN 1)" if rev2 else b"(MESSAGES 1 RECENT 1 UNSEEN 1)"
    assert status[0] == b"* STATUS INBOX " + want + b"\r\n"
    listed = cmd(r, b"l", b'LIST "" INBOX RETURN (STATUS (RECENT MESSAGES))')
    assert untagged(listed, b"STATUS") == [
        b"* STATUS INBOX (MESSAGES 1)\r\n" if rev2 else b"* STATUS INBOX (RECENT 1 MESSAGES 1)\r\n"]
    r.close()


@pytest.mark.parametrize("rev2", [False, True])
def test_status_deleted_and_size(daemon, rev2):
    put(daemon, "alice", SIMPLE)
    put(daemon, "alice", SIMPLE)
    r = session(daemon, rev2)
    cmd(r, b"s", b"SELECT INBOX")
    cmd(r, b"d", b"STORE 2 +FLAGS.SILENT (\\Deleted)")
    status = cmd(r, b"t", b"STATUS INBOX (DELETED SIZE MESSAGES)")
    size = 2 * len(SIMPLE.replace(b"\n", b"\r\n"))
    assert status[0] == b"* STATUS INBOX (DELETED 1 SIZE %d MESSAGES 2)\r\n" % size
    r.close()


@pytest.mark.parametrize("key", [b"RECENT", b"NEW", b"OLD", b"NOT (OR SEEN NEW)"])
def test_search_keys_of_recent_are_gone(daemon, key):
    put(daemon, "alice", SIMPLE)
    r1 = session(daemon, rev2=False)
    cmd(r1, b"s", b"SELECT INBOX")
    assert cmd(r1, b"q", b"SEARCH " + key)[-1].startswith(b"q OK")
    r2 = session(daemon, rev2=True)
    cmd(r2, b"s", b"SELECT INBOX")
    assert cmd(r2, b"q", b"SEARCH " + key)[-1].startswith(b"q BAD")
    assert cmd(r2, b"u", b"UID SEARCH " + key)[-1].startswith(b"u BAD")
    assert cmd(r2, b"o", b"SORT (ARRIVAL) UTF-8 " + key)[-1].startswith(b"o BAD")
    # A SEARCH ... RETURN (SAVE) refused so empties $ (RFC 5182 2.1).
    assert cmd(r2, b"v", b"SEARCH RETURN (SAVE) ALL")[-1].startswith(b"v OK")
    assert cmd(r2, b"w", b"SEARCH RETURN (SAVE) " + key)[-1].startswith(b"w BAD")
    assert cmd(r2, b"x", b"SEARCH $")[0] == b'* ESEARCH (TAG "x")\r\n'
    r1.close()
    r2.close()


def test_search_answers_with_esearch(daemon):
    for _ in range(3):
        put(daemon, "alice", SIMPLE)
    r1 = session(daemon, rev2=False)
    cmd(r1, b"s", b"SELECT INBOX")
    assert cmd(r1, b"a", b"SEARCH ALL")[0] == b"* SEARCH 1 2 3\r\n"
    assert cmd(r1, b"b", b"SEARCH DELETED")[0] == b"* SEARCH\r\n"
    r2 = session(daemon, rev2=True)
    cmd(r2, b"s", b"SELECT INBOX")
    # Without RETURN, as RETURN (ALL); an empty result has no ALL (RFC 4731 3.1).
    assert cmd(r2, b"a", b"SEARCH ALL")[0] == b'* ESEARCH (TAG "a") ALL 1:3\r\n'
    assert cmd(r2, b"b", b"SEARCH DELETED") == [b'* ESEARCH (TAG "b")\r\n',
                                                 b"b OK SEARCH completed\r\n"]
    assert cmd(r2, b"c", b"UID SEARCH 2:3")[0] == b'* ESEARCH (TAG "c") UID ALL 2:3\r\n'
    assert cmd(r2, b"d", b"UID SEARCH DELETED")[0] == b'* ESEARCH (TAG "d") UID\r\n'
    assert cmd(r2, b"e", b"SEARCH CHARSET UTF-8 ALL")[0] == b'* ESEARCH (TAG "e") ALL 1:3\r\n'
    # RETURN options as before; SAVE alone answers nothing, and $ holds the result.
    assert cmd(r2, b"f", b"SEARCH RETURN (MIN COUNT) ALL")[0] == \
        b'* ESEARCH (TAG "f") MIN 1 COUNT 3\r\n'
    assert cmd(r2, b"g", b"SEARCH RETURN (SAVE) 2") == [b"g OK SEARCH completed\r\n"]
    assert cmd(r2, b"h", b"FETCH $ UID")[0] == b"* 2 FETCH (UID 2)\r\n"
    assert not untagged(cmd(r2, b"i", b"SEARCH ALL"), b"SEARCH")
    r1.close()
    r2.close()


@pytest.mark.parametrize("rev2", [False, True])
def test_uid_fetch_and_uid_store_answer_with_the_uid(daemon, rev2):
    put(daemon, "alice", SIMPLE)
    r = session(daemon, rev2)
    cmd(r, b"s", b"SELECT INBOX")
    assert cmd(r, b"f", b"UID FETCH 1 FLAGS")[0].startswith(b"* 1 FETCH (UID 1 FLAGS")
    flags = b"(\\Seen)" if rev2 else b"(\\Seen \\Recent)"
    assert cmd(r, b"t", b"UID STORE 1 +FLAGS (\\Seen)")[0] == \
        b"* 1 FETCH (FLAGS " + flags + b" UID 1)\r\n"
    r.close()


@pytest.mark.parametrize("rev2", [False, True])
def test_rev1_forms_still_accepted(daemon, rev2):
    """RFC822* and LSUB are not in rev2; both are still answered (as Dovecot does)."""
    put(daemon, "alice", SIMPLE)
    r = session(daemon, rev2)
    cmd(r, b"s", b"SELECT INBOX")
    lines = cmd(r, b"f", b"FETCH 1 RFC822.SIZE")
    assert lines[0] == b"* 1 FETCH (RFC822.SIZE %d)\r\n" % len(SIMPLE.replace(b"\n", b"\r\n"))
    lines = cmd(r, b"g", b"FETCH 1 RFC822.HEADER")
    assert lines[0].startswith(b"* 1 FETCH (RFC822.HEADER {")
    cmd(r, b"u", b"SUBSCRIBE INBOX")
    assert cmd(r, b"l", b'LSUB "" "*"')[0].startswith(b'* LSUB (')
    r.close()


@pytest.mark.parametrize("rev2", [False, True])
def test_list_children_and_nonexistent(daemon, rev2):
    r = session(daemon, rev2)
    for name in (b"p.c", b"gone"):
        assert cmd(r, b"c", b"CREATE " + name)[-1].startswith(b"c OK")
    cmd(r, b"u", b"SUBSCRIBE gone")
    cmd(r, b"d", b"DELETE gone")
    assert cmd(r, b"l", b'LIST "" "p%"')[0] == b'* LIST (\\Noselect \\HasChildren) "." p\r\n'
    assert cmd(r, b"l", b'LIST "" "p.%"')[0] == b'* LIST (\\HasNoChildren) "." p.c\r\n'
    lines = cmd(r, b"m", b'LIST (SUBSCRIBED) "" "gone"')
    assert lines[0] == b'* LIST (\\NonExistent \\Subscribed) "." gone\r\n'
    r.close()


@pytest.mark.parametrize("rev2", [False, True])
def test_response_codes_of_delete(daemon, rev2):
    """RFC 9051 7.1 / RFC 5530 codes, sent whether or not rev2 is enabled."""
    r = session(daemon, rev2)
    assert cmd(r, b"c", b"CREATE p.c")[-1].startswith(b"c OK")
    assert cmd(r, b"d", b"DELETE p")[-1].startswith(b"d NO [HASCHILDREN] ")
    assert cmd(r, b"e", b"DELETE nothere")[-1].startswith(b"e NO [NONEXISTENT] ")
    assert cmd(r, b"f", b"DELETE INBOX")[-1].startswith(b"f NO [CANNOT] ")
    assert cmd(r, b"g", b'CREATE "a/b"')[-1].startswith(b"g NO [CANNOT] ")
    assert cmd(r, b"h", b"CREATE p.c")[-1].startswith(b"h NO [ALREADYEXISTS] ")
    assert cmd(r, b"i", b"SUBSCRIBE nothere")[-1].startswith(b"i NO [NONEXISTENT] ")
    assert cmd(r, b"j", b"DELETE p.c")[-1].startswith(b"j OK")
    assert cmd(r, b"k", b"DELETE p")[-1].startswith(b"k NO [NONEXISTENT] ")
    r.close()


def test_select_list_line_names_the_mailbox_in_utf8(daemon):
    """The LIST a rev2 SELECT sends uses UTF-8 names (RFC 9051 5.1), as LIST does."""
    r2 = session(daemon, rev2=True)
    assert cmd(r2, b"c", 'CREATE "Entwürfe"'.encode())[-1].startswith(b"c OK")
    lines = cmd(r2, b"s", 'SELECT "Entwürfe"'.encode())
    assert lines[-1].startswith(b"s OK")
    assert untagged(lines, b"LIST") == ['* LIST (\\HasNoChildren) "." "Entwürfe"\r\n'.encode()]
    r1 = session(daemon, rev2=False)
    assert untagged(cmd(r1, b"l", b'LIST "" "Entw*"'), b"LIST") == \
        [b'* LIST (\\HasNoChildren) "." Entw&APw-rfe\r\n']
    r1.close()
    r2.close()

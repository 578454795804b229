"""
CONDSTORE and QRESYNC (RFC 7162) with ENABLE (RFC 5161), against the real daemon
with a line-level client (imaplib hides untagged responses' order); plus the grammar.
"""

from __future__ import annotations

import random
import re

import pytest
from test_imap import USERS, RawIMAP, connect, crlf, put

from netsuite.imap import wire


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(listeners=["imap", "imaps"], users=USERS,
                       config={"store": {"poll_interval": 0.2}})


class Client(RawIMAP):
    """RawIMAP with numbered tags: C{run(b"SELECT INBOX")} -> (untagged lines, tagged line)."""

    n = 0

    def run(self, command: bytes) -> tuple[list[bytes], bytes]:
        self.n += 1
        tag = b"t%d" % self.n
        self.send(tag + b" " + command + b"\r\n")
        lines = [line.rstrip(b"\r\n") for line in self.until_tagged(tag)]
        return lines[:-1], lines[-1][len(tag) + 1:]

    def ok(self, command: bytes) -> tuple[list[bytes], bytes]:
        untagged, tagged = self.run(command)
        assert tagged.startswith(b"OK"), (command, untagged, tagged)
        return untagged, tagged


def client(d) -> Client:
    c = Client(d)
    c.login()
    return c


def code(lines: list[bytes], name: bytes) -> int:
    """The number of an untagged OK response code: C{* OK [HIGHESTMODSEQ 7]} -> 7."""
    for line in lines:
        m = re.match(rb"\* OK \[" + name + rb" (\d+)\]", line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no {name!r} in {lines!r}")


def fetches(lines: list[bytes]) -> dict[int, bytes]:
    """UID -> the FETCH response line, for the FETCH responses among C{lines}."""
    out = {}
    for line in lines:
        m = re.match(rb"\* \d+ FETCH \(.*\bUID (\d+)", line)
        if m:
            out[int(m.group(1))] = line
    return out


def modseq(line: bytes) -> int:
    m = re.search(rb"MODSEQ \((\d+)\)", line)
    assert m, line
    return int(m.group(1))


def mail(d, n: int) -> None:
    for i in range(n):
        put(d, "alice", b"Subject: m%d\n\nbody %d\n" % (i, i))


# -- ENABLE and the capabilities ---------------------------------------------------------

def test_enable_lists_only_what_it_knows_and_qresync_implies_condstore(daemon):
    c = client(daemon)
    caps, _ = c.ok(b"CAPABILITY")
    assert {b"CONDSTORE", b"QRESYNC", b"ENABLE"} <= set(caps[0].split()[2:])
    # SELECT's QRESYNC parameter is refused until QRESYNC is enabled.
    _, tagged = c.run(b"SELECT INBOX (QRESYNC (1 1))")
    assert tagged.startswith(b"BAD")
    assert c.ok(b"ENABLE X-UNKNOWN QRESYNC")[0] == [b"* ENABLED QRESYNC"]
    # CONDSTORE came with QRESYNC, so nothing is newly enabled now.
    assert c.ok(b"ENABLE CONDSTORE qresync")[0] == [b"* ENABLED"]
    other = client(daemon)
    assert other.ok(b"ENABLE condstore X-NOPE")[0] == [b"* ENABLED CONDSTORE"]
    # A plain SELECT after CONDSTORE is on tells HIGHESTMODSEQ.
    assert code(other.ok(b"SELECT INBOX")[0], b"HIGHESTMODSEQ") >= 1
    plain = client(daemon)
    assert not any(b"HIGHESTMODSEQ" in line for line in plain.ok(b"SELECT INBOX")[0])


# -- CONDSTORE ---------------------------------------------------------------------------

def test_flag_change_by_another_session_comes_with_its_modseq(daemon):
    mail(daemon, 2)
    a = client(daemon)
    lines, _ = a.ok(b"SELECT INBOX (CONDSTORE)")
    highest = code(lines, b"HIGHESTMODSEQ")
    b = connect(daemon)
    b.select("INBOX")
    b.store("1", "+FLAGS", "(\\Flagged)")
    lines, _ = a.ok(b"NOOP")
    changed = fetches(lines)
    assert list(changed) == [1] and b"\\Flagged" in changed[1]
    new = modseq(changed[1])
    assert new > highest
    lines, _ = a.ok(b"FETCH 1:* (MODSEQ)")
    assert lines[0] == b"* 1 FETCH (MODSEQ (%d))" % new
    assert modseq(lines[1]) <= highest
    lines, _ = a.ok(b"STATUS INBOX (HIGHESTMODSEQ MESSAGES)")
    assert lines == [b"* STATUS INBOX (HIGHESTMODSEQ %d MESSAGES 2)" % new]
    # A CONDSTORE-enabling FETCH in a session that had not used it: HIGHESTMODSEQ at once.
    c = client(daemon)
    c.ok(b"SELECT INBOX")
    lines, _ = c.ok(b"FETCH 2 (MODSEQ)")
    assert lines[0] == b"* OK [HIGHESTMODSEQ %d] Highest" % new
    b.logout()


def test_store_unchangedsince_conflict_gives_modified(daemon):
    mail(daemon, 3)
    a = client(daemon)
    a.ok(b"SELECT INBOX (CONDSTORE)")
    lines, _ = a.ok(b"UID FETCH 1:3 (MODSEQ)")
    seen = max(modseq(line) for line in lines)
    b = connect(daemon)
    b.select("INBOX")
    b.store("2", "+FLAGS", "($Work)")
    lines, tagged = a.ok(b"STORE 1:3 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % seen)
    assert tagged.startswith(b"OK [MODIFIED 2]")
    told = fetches(lines)
    assert sorted(told) == [1, 2, 3]
    # 1 and 3 changed (with their new MODSEQ), 2 (changed by b) is as b left it.
    assert b"\\Seen" in told[1] and b"\\Seen" in told[3] and modseq(told[1]) > seen
    assert b"$Work" in told[2] and b"\\Seen" not in told[2]
    # UID STORE names UIDs; .SILENT still tells the MODSEQ of what it changed.
    # (b changed 2 before this session changed 1 and 3: only 2 is unchanged since.)
    lines, tagged = a.ok(b"UID STORE 1:3 (UNCHANGEDSINCE %d) +FLAGS.SILENT (\\Answered)"
                         % modseq(told[2]))
    assert tagged.startswith(b"OK [MODIFIED 1,3]"), tagged
    assert [re.sub(rb"MODSEQ \(\d+\)", b"M", line) for line in lines] == \
        [b"* 2 FETCH (UID 2 M)"]
    # UNCHANGEDSINCE 0 changes nothing.
    lines, tagged = a.ok(b"STORE 1 (UNCHANGEDSINCE 0) +FLAGS (\\Draft)")
    assert tagged.startswith(b"OK [MODIFIED 1]")
    assert b"\\Draft" not in b.fetch("1", "(FLAGS)")[1][0]
    b.logout()


def test_fetch_changedsince_and_search_modseq(daemon):
    mail(daemon, 4)
    a = client(daemon)
    lines, _ = a.ok(b"SELECT INBOX")
    assert not any(b"HIGHESTMODSEQ" in line for line in lines)
    lines, _ = a.ok(b"STATUS INBOX (HIGHESTMODSEQ)")
    highest = int(re.search(rb"HIGHESTMODSEQ (\d+)", lines[-1]).group(1))
    a.ok(b"STORE 2,4 +FLAGS (\\Flagged)")
    lines, _ = a.ok(b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % highest)
    changed = fetches(lines)
    assert sorted(changed) == [2, 4]
    assert all(modseq(line) > highest for line in changed.values())
    top = max(modseq(line) for line in changed.values())
    lines, _ = a.ok(b"SEARCH MODSEQ %d" % (highest + 1))
    assert lines == [b"* SEARCH 2 4 (MODSEQ %d)" % top]
    lines, _ = a.ok(b'UID SEARCH MODSEQ "/flags/\\\\flagged" all %d FLAGGED' % (highest + 1))
    assert lines == [b"* SEARCH 2 4 (MODSEQ %d)" % top]
    lines, _ = a.ok(b"SEARCH NOT MODSEQ %d" % (highest + 1))
    assert lines[0].startswith(b"* SEARCH 1 3 (MODSEQ ")
    assert a.ok(b"SEARCH MODSEQ %d" % (top + 1))[0] == [b"* SEARCH"]
    # VANISHED is for UID FETCH under QRESYNC only.
    assert a.run(b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")[1].startswith(b"BAD")


# -- QRESYNC -------------------------------------------------------------------------------

@pytest.mark.parametrize("restart", [False, True], ids=["same-daemon", "after-restart"])
def test_qresync_resync_as_thunderbird_and_k9_do_it(daemon, restart):
    mail(daemon, 5)
    # First visit: the client notes UIDVALIDITY and HIGHESTMODSEQ, caches 1:5, leaves.
    c = client(daemon)
    c.ok(b"ENABLE QRESYNC")
    lines, _ = c.ok(b"SELECT INBOX")
    validity, highest = code(lines, b"UIDVALIDITY"), code(lines, b"HIGHESTMODSEQ")
    assert sorted(fetches(c.ok(b"UID FETCH 1:* (FLAGS MODSEQ)")[0])) == [1, 2, 3, 4, 5]
    c.ok(b"LOGOUT")
    # Meanwhile, another client changes flags, expunges, and new mail arrives.
    other = connect(daemon)
    other.select("INBOX")
    other.uid("STORE", "2", "+FLAGS", "(\\Answered)")
    other.uid("STORE", "4", "+FLAGS", "(\\Deleted)")
    other.expunge()
    other.append("INBOX", None, None, crlf(b"Subject: new\n\nnew mail\n"))
    other.logout()
    if restart:
        daemon.restart()
    # Back: ENABLE QRESYNC, SELECT with what it knew.
    c = client(daemon)
    c.ok(b"ENABLE QRESYNC")
    lines, tagged = c.ok(b"SELECT INBOX (QRESYNC (%d %d 1:5))" % (validity, highest))
    assert b"* VANISHED (EARLIER) 4" in lines
    changed = fetches(lines)
    assert sorted(changed) == [2]  # the new UID 6 is not among the known UIDs
    assert b"\\Answered" in changed[2] and modseq(changed[2]) > highest
    assert b"* 5 EXISTS" in lines
    now = code(lines, b"HIGHESTMODSEQ")
    assert now > highest
    assert lines.index(b"* VANISHED (EARLIER) 4") > lines.index(b"* OK [HIGHESTMODSEQ %d] "
                                                                  b"Highest" % now)
    # Without known UIDs: every message changed since, the new one too.
    lines, _ = c.ok(b"SELECT INBOX (QRESYNC (%d %d))" % (validity, highest))
    assert lines[0] == b"* OK [CLOSED] Previous mailbox closed"
    assert sorted(fetches(lines)) == [2, 6] and b"* VANISHED (EARLIER) 4" in lines
    # Up to date: nothing to tell.
    lines, _ = c.ok(b"SELECT INBOX (QRESYNC (%d %d 1:6))" % (validity, now))
    assert not fetches(lines) and not any(b"VANISHED" in line for line in lines)
    # Another UIDVALIDITY: an ordinary SELECT.
    lines, _ = c.ok(b"SELECT INBOX (QRESYNC (%d %d 1:5))" % (validity + 1, highest))
    assert not fetches(lines) and not any(b"VANISHED" in line for line in lines)
    # While selected, expunges are told as VANISHED, not EXPUNGE.
    other = connect(daemon)
    other.select("INBOX")
    other.uid("STORE", "1", "+FLAGS", "(\\Deleted)")
    other.expunge()
    lines, _ = c.ok(b"NOOP")
    assert lines == [b"* VANISHED 1"]
    lines, _ = c.ok(b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % highest)
    assert lines[0] == b"* VANISHED (EARLIER) 1,4"
    assert sorted(fetches(lines)) == [2, 6]
    # Our own EXPUNGE: VANISHED, and the tagged OK says the new HIGHESTMODSEQ.
    c.ok(b"UID STORE 3,5 +FLAGS.SILENT (\\Deleted)")
    lines, tagged = c.ok(b"EXPUNGE")
    assert lines == [b"* VANISHED 3,5"]
    after = int(re.match(rb"OK \[HIGHESTMODSEQ (\d+)\]", tagged).group(1))
    assert after > now
    assert other.status("INBOX", "(HIGHESTMODSEQ)")[1][0].endswith(b"(HIGHESTMODSEQ %d)" % after)
    other.logout()


def test_qresync_without_the_expunge_history_reports_every_missing_uid(make_daemon):
    # Maildir's record of expunges is a file this test removes (also under NETSUITE_TEST_STORE).
    daemon = make_daemon(listeners=["imap", "imaps"], users=USERS,
                         config={"store": {"poll_interval": 0.2, "backend": "maildir"}})
    mail(daemon, 6)
    other = connect(daemon)
    other.select("INBOX")
    other.uid("STORE", "2,5", "+FLAGS", "(\\Deleted)")
    other.expunge()
    c = client(daemon)
    c.ok(b"ENABLE QRESYNC")
    lines, _ = c.ok(b"SELECT INBOX")
    validity, highest = code(lines, b"UIDVALIDITY"), code(lines, b"HIGHESTMODSEQ")
    c.ok(b"LOGOUT")
    other.uid("STORE", "4", "+FLAGS", "(\\Deleted)")
    other.expunge()
    other.logout()
    # The record of expunges is gone (an older folder, or trimmed): RFC 7162 3.2.5.2.
    from netsuite.store import vanished

    (daemon.maildir("alice") / vanished.NAME).unlink()
    c = client(daemon)
    c.ok(b"ENABLE QRESYNC")
    lines, _ = c.ok(b"SELECT INBOX (QRESYNC (%d %d 1:6))" % (validity, highest))
    assert b"* VANISHED (EARLIER) 2,4:5" in lines
    # The client's sequence numbers 1 and 2 still map to UIDs 1 and 3: nothing below 3 went.
    lines, _ = c.ok(b"SELECT INBOX (QRESYNC (%d %d 1:6 (1:2 1,3)))" % (validity, highest))
    assert b"* VANISHED (EARLIER) 4:5" in lines
    # With the record back (the next expunge starts it), the exact answer again.
    c.ok(b"UID STORE 6 +FLAGS.SILENT (\\Deleted)")
    lines, tagged = c.ok(b"EXPUNGE")
    mark = int(re.match(rb"OK \[HIGHESTMODSEQ (\d+)\]", tagged).group(1))
    lines, _ = c.ok(b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % (mark - 1))
    assert lines == [b"* VANISHED (EARLIER) 6"]


def test_selecting_another_mailbox_says_closed(daemon):
    c = client(daemon)
    lines, _ = c.ok(b"SELECT INBOX")
    assert not any(b"CLOSED" in line for line in lines)
    c.ok(b"CREATE Other")
    lines, _ = c.ok(b"EXAMINE Other")
    assert lines[0] == b"* OK [CLOSED] Previous mailbox closed"
    assert b"CLOSED" not in b"".join(c.ok(b"UNSELECT")[0])


# -- the grammar ----------------------------------------------------------------------------

def test_condstore_grammar():
    p = wire.parse_select_params(wire.Cursor(b" (QRESYNC (67890007 20050715194045000 "
                                             b"41,43:211,214:541))"))
    assert p.qresync.uidvalidity == 67890007 and p.qresync.modseq == 20050715194045000
    assert p.qresync.known_uids.ranges == [(41, 41), (43, 211), (214, 541)]
    assert p.qresync.seq_match is None and not p.condstore
    p = wire.parse_select_params(wire.Cursor(b" (QRESYNC (1 2 1:9 (3,5 7,9)) CONDSTORE)"))
    assert p.condstore and p.qresync.seq_match[1].ranges == [(7, 7), (9, 9)]
    p = wire.parse_select_params(wire.Cursor(b" (QRESYNC (1 2 (3 7)))"))
    assert p.qresync.known_uids is None and p.qresync.seq_match[0].ranges == [(3, 3)]
    assert wire.parse_select_params(wire.Cursor(b"")) == wire.SelectParams()
    assert wire.parse_select_params(wire.Cursor(b" (condstore)")).condstore
    for bad in [b" ()x", b" (QRESYNC (0 1))", b" (QRESYNC (1 0))", b" (QRESYNC (1 1 1:*))",
                b" (FOO)", b" (QRESYNC (1 1 1:5 (1 2)", b" (CONDSTORE", b"(CONDSTORE)",
                b" (QRESYNC (1 99999999999999999999))"]:
        with pytest.raises(wire.ParseError):
            wire.parse_select_params(wire.Cursor(bad))
    m = wire.parse_fetch_modifiers(wire.Cursor(b" (VANISHED CHANGEDSINCE 9223372036854775807)"))
    assert m == wire.FetchModifiers(9223372036854775807, True)
    assert wire.parse_fetch_modifiers(wire.Cursor(b"")) == wire.FetchModifiers()
    for bad in [b" (VANISHED)", b" ()", b" (CHANGEDSINCE 0)", b" (CHANGEDSINCE 1 CHANGEDSINCE 2)",
                b" (CHANGEDSINCE 9223372036854775808)", b" (FOO 1)", b" (CHANGEDSINCE 1) x"]:
        with pytest.raises(wire.ParseError):
            wire.parse_fetch_modifiers(wire.Cursor(bad))
    cur = wire.Cursor(b"(UNCHANGEDSINCE 0) +FLAGS (\\Seen)")
    assert wire.parse_store_modifiers(cur) == 0 and cur.atom() == b"+FLAGS"
    assert wire.parse_store_modifiers(wire.Cursor(b"FLAGS x")) is None
    for bad in [b"(UNCHANGEDSINCE) x", b"(CHANGEDSINCE 1) x", b"(UNCHANGEDSINCE 1)x"]:
        with pytest.raises(wire.ParseError):
            wire.parse_store_modifiers(wire.Cursor(bad))
    assert wire.parse_search(wire.Cursor(b'MODSEQ "/flags/\\\\draft" priv 0 OR MODSEQ 5 UID 1')) \
        == [("MODSEQ", 0), ("OR", ("MODSEQ", 5), ("UID", wire.SeqSet([(1, 1)])))]
    for bad in [b'MODSEQ "/flags/x" nope 1', b'MODSEQ "/other" all 1', b"MODSEQ", b"MODSEQ -1"]:
        with pytest.raises(wire.ParseError):
            wire.parse_search(wire.Cursor(bad))
    assert [a.name for a in wire.parse_fetch_atts(wire.Cursor(b"(UID MODSEQ)"))] == \
        ["UID", "MODSEQ"]
    assert wire.sequence_set([1, 2, 3, 5, 7, 8]) == b"1:3,5,7:8" and wire.sequence_set([]) == b""


def test_condstore_grammar_fuzz():
    """Bounded: mutated select parameters, fetch/store modifiers and MODSEQ keys only
    ever parse or raise ParseError."""
    rng = random.Random(7162)
    pieces = [b"(", b")", b" ", b"QRESYNC", b"CONDSTORE", b"CHANGEDSINCE", b"VANISHED",
              b"UNCHANGEDSINCE", b"MODSEQ", b"1", b"0", b"*", b"1:*", b"3,5", b"2:4",
              b"9223372036854775807", b"99999999999999999999", b'"/flags/\\\\seen"', b"all",
              b"priv", b"\x00", b'"', b"x", b"-1"]
    parsers = [wire.parse_select_params, wire.parse_fetch_modifiers,
               wire.parse_store_modifiers, wire.parse_search]
    for _ in range(3000):
        text = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 12)))
        for parse in parsers:
            try:
                parse(wire.Cursor(text, [b"lit"]))
            except wire.ParseError:
                pass


def test_condstore_commands_fuzzed_against_the_daemon(daemon):
    """Bounded: 400 random CONDSTORE/QRESYNC commands in one session never give an
    internal error, and the daemon logs no traceback."""
    mail(daemon, 6)
    rng = random.Random(20261202)
    c = client(daemon)
    c.ok(b"ENABLE QRESYNC")
    lines, _ = c.ok(b"SELECT INBOX")
    validity = code(lines, b"UIDVALIDITY")
    sets = [b"1", b"1:*", b"*", b"2:4", b"3,1", b"5:2", b"1:4294967295", b"99"]
    mods = [b"1", b"0", b"2", b"9223372036854775807", b"5"]
    known = [b"", b" 1:6", b" 2,4", b" 1:9 (1:3 1:3)", b" (2 2)", b" 1:3 (1,3 1,9)"]
    templates = [
        lambda: b"SELECT INBOX (QRESYNC (%d %s%s))" % (rng.choice([validity, 1]),
                                                       rng.choice(mods[:1] + mods[2:]),
                                                       rng.choice(known)),
        lambda: b"EXAMINE INBOX (CONDSTORE)",
        lambda: b"%sFETCH %s (FLAGS) (CHANGEDSINCE %s%s)" % (
            rng.choice([b"", b"UID "]), rng.choice(sets), rng.choice(mods),
            rng.choice([b"", b" VANISHED"])),
        lambda: b"%sSTORE %s (UNCHANGEDSINCE %s) %s (%s)" % (
            rng.choice([b"", b"UID "]), rng.choice(sets), rng.choice(mods),
            rng.choice([b"+FLAGS", b"-FLAGS", b"FLAGS.SILENT"]),
            rng.choice([b"\\Seen", b"\\Deleted", b"$X", b""])),
        lambda: b"%sSEARCH MODSEQ %s%s" % (rng.choice([b"", b"UID "]),
                                           rng.choice([b"", b'"/flags/\\\\seen" all ']),
                                           rng.choice(mods)),
        lambda: b"%sEXPUNGE%s" % rng.choice([(b"", b""), (b"UID ", b" " + rng.choice(sets))]),
        lambda: b"APPEND INBOX (\\Seen) {5+}\r\nhello",
        lambda: b"STATUS INBOX (HIGHESTMODSEQ UIDNEXT)",
        lambda: b"FETCH %s (UID MODSEQ BODY[])" % rng.choice(sets),
    ]
    for _ in range(400):
        _, tagged = c.run(rng.choice(templates)())
        assert tagged.split(b" ", 1)[0] in (b"OK", b"NO", b"BAD"), tagged
        assert b"SERVERBUG" not in tagged, tagged
    c.ok(b"NOOP")
    assert "Traceback" not in daemon.log()

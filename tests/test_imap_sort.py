"""
SORT, SORT=DISPLAY, THREAD (RFC 5256, RFC 5957), ESEARCH (RFC 4731), ESORT (RFC 5267) and
SEARCHRES (RFC 5182) against the real daemon, with imaplib.
"""

from __future__ import annotations

import imaplib
import re

import pytest
from test_imap import USERS, connect
from test_imap_cache import message_files, scramble

from netsuite.imap import sorting

#: (subject, from, to, cc, date, internal date, extra headers, body)
MAILS = [
    ("Re: lunch", '"Zoe Zed" <zoe@example.test>', "carol@example.test", "dan@example.test",
     "Tue, 3 Mar 2026 12:00:00 +0000", 1_772_000_300, "Message-ID: <b@x>\nReferences: <a@x>\n",
     "x" * 50),
    ("lunch", "amy@example.test", '"Bob B" <bob@example.test>', "",
     "Mon, 2 Mar 2026 09:00:00 +0000", 1_772_000_100, "Message-ID: <a@x>\n", "x" * 10),
    ("[team] agenda", "=?utf-8?q?=C3=89mile?= <emile@example.test>", "amy@example.test",
     "bob@example.test", "not a date", 1_772_000_200, "Message-ID: <c@x>\n", "x" * 300),
    ("Fwd: lunch (fwd)", "bob@example.test", "zed@example.test", "amy@example.test",
     "Wed, 4 Mar 2026 08:00:00 +0100", 1_772_000_000, "Message-ID: <d@x>\nIn-Reply-To: <b@x>\n",
     "x" * 20),
    ("agenda", "Carl <carl@example.test>", "", "", "Tue, 3 Mar 2026 11:00:00 +0000",
     1_772_000_400, "Message-ID: <e@x>\n", "x" * 5),
]


def mail(subject, frm, to, cc, date, _internal, extra, body) -> bytes:
    head = f"Subject: {subject}\nFrom: {frm}\n"
    if to:
        head += f"To: {to}\n"
    if cc:
        head += f"Cc: {cc}\n"
    return (head + f"Date: {date}\n{extra}\n{body}\n").replace("\n", "\r\n").encode()


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(listeners=["imap", "imaps"], users=USERS,
                       config={"store": {"poll_interval": 0.2}})


@pytest.fixture
def box(daemon):
    m = connect(daemon)
    for row in MAILS:
        typ, data = m.append("INBOX", "", imaplib.Time2Internaldate(row[5]), mail(*row))
        assert typ == "OK", data
    m.select("INBOX")
    yield m
    m.logout()


def nums(m, *args, uid=False) -> list[int]:
    typ, data = m.uid("SORT", *args) if uid else m.sort(*args)
    assert typ == "OK", data
    return [int(n) for n in data[0].split()]


def esearch(m, command: str, *args) -> bytes:
    if command == "UID SEARCH":
        command, args = "UID", ("SEARCH", *args)
    typ, data = m._simple_command(command, *args)
    assert typ == "OK", data
    typ, data = m._untagged_response(typ, data, "ESEARCH")
    assert len(data) == 1, data
    return data[0]


def refused(m, command: str, *args) -> None:
    """The command gets a tagged BAD (imaplib raises on BAD)."""
    with pytest.raises(imaplib.IMAP4.error, match=" BAD "):
        m._simple_command(command, *args)


def test_capabilities(daemon):
    m = connect(daemon)
    for cap in ("SORT", "SORT=DISPLAY", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "ESEARCH",
                "ESORT", "SEARCHRES"):
        assert cap in m.capabilities
    m.logout()


def test_sort_keys(box):
    m = box
    assert nums(m, "(SUBJECT)", "UTF-8", "ALL") == [3, 5, 1, 2, 4]
    assert nums(m, "(REVERSE SUBJECT)", "UTF-8", "ALL") == [1, 2, 4, 3, 5]
    # "not a date": message 3 sorts by its INTERNALDATE (a Feb date before the others).
    assert nums(m, "(DATE)", "US-ASCII", "ALL") == [3, 2, 5, 1, 4]
    assert nums(m, "(ARRIVAL)", "UTF-8", "ALL") == [4, 2, 3, 1, 5]
    assert nums(m, "(SIZE)", "UTF-8", "ALL") == [5, 2, 4, 1, 3]
    assert nums(m, "(REVERSE SIZE)", "UTF-8", "ALL") == [3, 1, 4, 2, 5]
    assert nums(m, "(FROM)", "UTF-8", "ALL") == [2, 4, 5, 3, 1]
    assert nums(m, "(TO)", "UTF-8", "ALL") == [5, 3, 2, 1, 4]   # no To: sorts first
    assert nums(m, "(CC)", "UTF-8", "ALL") == [2, 5, 4, 3, 1]
    # RFC 5957: display names (decoded), else the address.
    assert nums(m, "(DISPLAYFROM)", "UTF-8", "ALL") == [2, 4, 5, 3, 1]
    assert nums(m, "(DISPLAYTO)", "UTF-8", "ALL") == [5, 3, 2, 1, 4]
    # Several keys; search keys pick the messages; UID SORT answers UIDs.
    assert nums(m, "(SUBJECT REVERSE ARRIVAL)", "UTF-8", "ALL") == [5, 3, 1, 2, 4]
    assert nums(m, "(SUBJECT)", "UTF-8", "FROM", "bob") == [4]
    assert nums(m, "(SIZE)", "UTF-8", "2:4") == [2, 4, 3]
    typ, data = m.fetch("1:5", "(UID)")
    uids = [int(re.search(rb"UID (\d+)", d).group(1)) for d in data]
    assert nums(m, "(SUBJECT)", "UTF-8", "ALL", uid=True) == [uids[i - 1] for i in (3, 5, 1, 2, 4)]


def test_sort_errors(box):
    m = box
    typ, data = m._simple_command("SORT", "(SUBJECT)", "KOI8-R", "ALL")
    assert typ == "NO" and b"BADCHARSET" in data[0]
    for bad in (("(BOGUS)", "UTF-8", "ALL"), ("SUBJECT", "UTF-8", "ALL"), ("()", "UTF-8", "ALL"),
                ("(SUBJECT)", "UTF-8"), ("(SUBJECT)", "UTF-8", "NOSUCHKEY"),
                ("(DATE)", "UTF-8", "ALL", "extra)")):
        refused(m, "SORT", *bad)
    refused(m, "THREAD", "NOSUCH", "UTF-8", "ALL")
    assert m.noop()[0] == "OK"


def test_thread(box):
    m = box
    typ, data = m.thread("REFERENCES", "UTF-8", "ALL")
    assert typ == "OK", data
    # 1 replies to 2, 4 to 1; 3 and 5 share the base subject "AGENDA" (a dummy holds them,
    # first: it sorts by its first child, 3, whose Date: is bad, so its INTERNALDATE counts).
    assert data == [b"((3)(5))(2 1 4)"]
    typ, data = m.thread("ORDEREDSUBJECT", "UTF-8", "ALL")
    assert data == [b"(3 5)(2 (1)(4))"]
    typ, data = m.uid("THREAD", "REFERENCES", "UTF-8", "1:2")
    assert typ == "OK"
    assert re.fullmatch(rb"\(\d+ \d+\)", data[0])
    typ, data = m.thread("REFERENCES", "UTF-8", "SUBJECT", "nothing-like-this")
    assert typ == "OK" and data == [b""]


def test_esearch_and_esort(box):
    m = box
    out = esearch(m, "SEARCH", "RETURN", "(MIN MAX COUNT ALL)", "ALL")
    assert re.fullmatch(rb'\(TAG "[^"]+"\) MIN 1 MAX 5 COUNT 5 ALL 1:5', out), out
    out = esearch(m, "SEARCH", "RETURN", "()", "OR", "1", "3:4")
    assert re.fullmatch(rb'\(TAG "[^"]+"\) ALL 1,3:4', out), out
    out = esearch(m, "UID SEARCH", "RETURN", "(COUNT)", "FROM", "nobody-here")
    assert re.fullmatch(rb'\(TAG "[^"]+"\) UID COUNT 0', out), out
    out = esearch(m, "UID SEARCH", "RETURN", "(MIN)", "ALL")
    assert re.fullmatch(rb'\(TAG "[^"]+"\) UID MIN \d+', out), out
    # ESORT: MIN/MAX are the first/last in sort order, ALL is in sort order.
    out = esearch(m, "SORT", "RETURN", "(MIN MAX ALL COUNT)", "(SUBJECT)", "UTF-8", "ALL")
    assert re.fullmatch(rb'\(TAG "[^"]+"\) MIN 3 MAX 4 COUNT 5 ALL 3,5,1:2,4', out), out
    refused(m, "SEARCH", "RETURN", "(BOGUS)", "ALL")


def test_searchres(box, daemon):
    m = box
    typ, data = m._simple_command("SEARCH", "RETURN", "(SAVE)", "SUBJECT", "lunch")
    assert typ == "OK" and "ESEARCH" not in m.untagged_responses  # SAVE alone: no answer
    typ, data = m.fetch("$", "(FLAGS)")
    assert typ == "OK" and sorted(int(d.split()[0]) for d in data) == [1, 2, 4]
    assert m.store("$", "+FLAGS", "(\\Flagged)")[0] == "OK"
    typ, data = m.search(None, "FLAGGED")
    assert data == [b"1 2 4"]
    typ, data = m.search(None, "NOT", "$")
    assert data == [b"3 5"]
    typ, data = m.uid("SEARCH", "UID", "$")
    assert typ == "OK" and len(data[0].split()) == 3
    assert m.create("Saved")[0] == "OK"
    assert m.copy("$", "Saved")[0] == "OK"
    # $ is UIDs: an expunged message leaves it, the others keep their place.
    m.store("2", "+FLAGS", "(\\Deleted)")
    m.expunge()
    typ, data = m.fetch("$", "(UID)")
    assert sorted(int(d.split()[0]) for d in data) == [1, 3]
    # MIN alone saves only the first; SORT ... RETURN (SAVE) saves too.
    esearch(m, "SEARCH", "RETURN", "(SAVE MIN)", "ALL")
    assert m.search(None, "$")[1] == [b"1"]
    m._simple_command("SORT", "RETURN", "(SAVE)", "(SUBJECT)", "UTF-8", "2:3")
    assert m.search(None, "$")[1] == [b"2 3"]
    # A SEARCH that fails empties $; so does a new SELECT.
    refused(m, "SEARCH", "RETURN", "(SAVE)", "NOSUCHKEY")
    assert m.search(None, "$")[1] == [b""]
    esearch(m, "SEARCH", "RETURN", "(SAVE COUNT)", "ALL")
    assert m.search(None, "$")[1] == [b"1 2 3 4"]
    m.select("INBOX")
    assert m.search(None, "$")[1] == [b""]
    m.select("Saved")
    assert m.fetch("$", "(UID)")[1] == [None]


@pytest.mark.maildir_only  # message files rewritten behind the server
def test_big_folder_second_sort_from_cache(daemon):
    """
    3000 messages: SORT and THREAD are right, and after a restart they come from the cache.

    Tests run as root (chmod 000 proves nothing), so the proof is as in test_imap_cache: the
    message files are rewritten with other bytes of the same size after the first SORT; the
    second SORT (another process) still sorts by the original headers.
    """
    count = 3000
    box = daemon.data_dir / "mail" / "alice"
    m = connect(daemon)
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    headers = []
    for i in range(count):
        subject = f"{'Re: ' if i % 5 else ''}topic {(i * 7919) % 613:04d}"
        frm = f"user{(i * 31) % 97:03d}@example.test"
        header = (f"Subject: {subject}\nFrom: {frm}\n"
                  f"Date: Mon, 2 Mar 2026 {i % 24:02d}:{i % 60:02d}:00 +0000\n"
                  f"Message-ID: <{i}@big>\n" + (f"References: <{i // 3}@big>\n" if i % 3 else ""))
        headers.append(header)
        (box / "cur" / f"{1_700_000_000 + i}.M{i}P1.test,S=99:2,S").write_bytes(
            (header + "\nbody\n").encode())
    m.select("INBOX")
    first_subject = nums(m, "(SUBJECT)", "UTF-8", "ALL")
    first_from = nums(m, "(REVERSE FROM DATE)", "UTF-8", "ALL")
    typ, first_thread = m.thread("REFERENCES", "UTF-8", "ALL")
    assert typ == "OK"
    other = connect(daemon)  # served while the big SORT ran a batch per turn
    assert other.noop()[0] == "OK"
    other.logout()
    m.logout()
    # What the answers must be, from the same headers.
    items = [sorting.Item(n, n, n, sorting.sort_info(h.replace("\n", "\r\n").encode() + b"\r\n"),
                          1_700_000_000 + n - 1, 0)
             for n, h in enumerate(headers, 1)]
    assert first_subject == [i.num for i in sorting.sort_items(items, [("SUBJECT", False)])]
    assert first_from == [i.num for i in sorting.sort_items(items, [("FROM", True),
                                                                    ("DATE", False)])]
    assert first_subject[:3] == sorted(first_subject[:3])  # ties keep sequence order
    assert first_thread == [sorting.render_threads(sorting.thread_references(items))]
    assert len(re.findall(rb"\d+", first_thread[0])) == count
    daemon.restart()
    for p in message_files(daemon):
        scramble(p)
    m = connect(daemon)
    m.select("INBOX")
    assert b"@big>" not in m.fetch("2", "(BODY.PEEK[])")[1][0][1]  # files did change
    assert nums(m, "(SUBJECT)", "UTF-8", "ALL") == first_subject
    assert nums(m, "(REVERSE FROM DATE)", "UTF-8", "ALL") == first_from
    assert m.thread("REFERENCES", "UTF-8", "ALL")[1] == first_thread
    m.logout()


@pytest.mark.maildir_only  # message files rewritten behind the server
def test_keys_a_first_sort_did_not_need_come_from_the_cache(daemon):
    """
    A first SORT (SUBJECT) derives only the subject, and caches the other header fields
    (after its answer): after a restart, with every file rewritten, SORT by the other keys
    and THREAD still follow the original headers; then new mail is read and sorted in, a
    flag change changes no order, and an expunged message leaves it.
    """
    count = 300  # more than a batch: the reads and the cache writes run a batch per turn
    box = daemon.data_dir / "mail" / "alice"
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    headers = []
    for i in range(count):
        header = (f"Subject: {'Re: ' if i % 3 else ''}topic {(i * 37) % 41:02d}\n"
                  f"From: user{(i * 13) % 17:02d}@example.test\n"
                  f"Cc: cc{(i * 7) % 11:02d}@example.test\n"
                  f"Date: Mon, 2 Mar 2026 {i % 24:02d}:{i % 60:02d}:00 +0000\n"
                  f"Message-ID: <{i}@lazy>\n" + (f"References: <{i // 2}@lazy>\n" if i else ""))
        headers.append(header)
        (box / "cur" / f"{1_700_000_000 + i}.M{i}P1.test,S=99:2,").write_bytes(
            (header + "\nbody\n").encode())
    items = [sorting.Item(n, n, n, sorting.sort_info(h.encode() + b"\n"), 0, 0)
             for n, h in enumerate(headers, 1)]

    def expected(*criteria):
        return [i.num for i in sorting.sort_items(items, list(criteria))]

    m = connect(daemon)
    m.select("INBOX")
    assert nums(m, "(SUBJECT)", "UTF-8", "ALL") == expected(("SUBJECT", False))
    m.logout()
    daemon.restart()
    for p in message_files(daemon):
        scramble(p)
    m = connect(daemon)
    m.select("INBOX")
    assert nums(m, "(REVERSE FROM DATE)", "UTF-8", "ALL") == expected(("FROM", True),
                                                                      ("DATE", False))
    assert nums(m, "(CC SUBJECT)", "UTF-8", "ALL") == expected(("CC", False), ("SUBJECT", False))
    assert m.thread("REFERENCES", "UTF-8", "ALL")[1] == [
        sorting.render_threads(sorting.thread_references(items))]
    # New mail: read from its file, sorted in (a subject before every other one).
    m.append("INBOX", "", None, b"Subject: aardvark\r\nFrom: a@example.test\r\n\r\nx\r\n")
    m.noop()
    assert nums(m, "(SUBJECT)", "UTF-8", "ALL") == [count + 1] + expected(("SUBJECT", False))
    # Flags change no key; an expunged message leaves the answer, the others move up.
    before = nums(m, "(FROM)", "UTF-8", "ALL")
    m.store("1:10", "+FLAGS", "(\\Seen \\Flagged)")
    assert nums(m, "(FROM)", "UTF-8", "ALL") == before
    m.store("1", "+FLAGS", "(\\Deleted)")
    m.expunge()
    assert nums(m, "(FROM)", "UTF-8", "ALL") == [n - 1 for n in before if n != 1]
    m.logout()


def test_sort_and_thread_follow_changes(box):
    """Answers kept for the same messages are not reused once the folder changed."""
    m = box
    assert nums(m, "(SUBJECT)", "UTF-8", "ALL") == [3, 5, 1, 2, 4]
    assert m.thread("ORDEREDSUBJECT", "UTF-8", "ALL")[1] == [b"(3 5)(2 (1)(4))"]
    m.append("INBOX", "", imaplib.Time2Internaldate(1_772_000_500),
             b"Subject: aardvark\r\nDate: Sun, 1 Mar 2026 00:00:00 +0000\r\n\r\nx\r\n")
    m.noop()
    assert nums(m, "(SUBJECT)", "UTF-8", "ALL") == [6, 3, 5, 1, 2, 4]
    assert m.thread("ORDEREDSUBJECT", "UTF-8", "ALL")[1] == [b"(3 5)(6)(2 (1)(4))"]
    m.store("3", "+FLAGS", "(\\Deleted)")
    m.expunge()
    assert nums(m, "(SUBJECT)", "UTF-8", "ALL") == [5, 4, 1, 2, 3]
    assert m.thread("ORDEREDSUBJECT", "UTF-8", "ALL")[1] == [b"(5)(2 (1)(3))(4)"]
    # Flags do not change an order, but they change who matches.
    m.store("1", "+FLAGS", "(\\Seen)")
    assert nums(m, "(SUBJECT)", "UTF-8", "UNSEEN") == [5, 4, 2, 3]


imaplib.Commands.setdefault("CANCELUPDATE", ("SELECTED",))


def untagged_esearch(m) -> list[bytes]:
    return m.untagged_responses.pop("ESEARCH", [])


def test_context_search_updates(box, daemon):
    """SEARCH RETURN (UPDATE): ADDTO/REMOVEFROM for own and other sessions' changes."""
    m = box
    m.untagged_responses.clear()
    typ, data = m._simple_command("SEARCH", "RETURN", "(UPDATE)", "FLAGGED")
    assert typ == "OK"
    tag = re.match(rb'\(TAG "([^"]+)"\)', untagged_esearch(m)[0]).group(1)
    m.store("2,4", "+FLAGS", "(\\Flagged)")
    assert untagged_esearch(m) == [b'(TAG "%s") ADDTO (0 2,4)' % tag]
    m.store("2", "-FLAGS", "(\\Flagged)")
    assert untagged_esearch(m) == [b'(TAG "%s") REMOVEFROM (0 2)' % tag]
    # Another session's change and a new message reach this one at its next command.
    other = connect(daemon)
    other.select("INBOX")
    other.store("1", "+FLAGS", "(\\Flagged)")
    other.append("INBOX", "(\\Flagged)", None, b"Subject: new\r\n\r\nx\r\n")
    other.logout()
    m.noop()
    assert untagged_esearch(m) == [b'(TAG "%s") ADDTO (0 1,6)' % tag]
    # An expunged message leaves the result, numbered as the client knew it.
    m.store("4", "+FLAGS", "(\\Deleted)")
    m.untagged_responses.clear()
    m.expunge()
    assert untagged_esearch(m) == [b'(TAG "%s") REMOVEFROM (0 4)' % tag]
    # UID contexts number by UID; CANCELUPDATE stops the updates.
    typ, data = m._simple_command("UID", "SEARCH", "RETURN", "(UPDATE COUNT)", "SEEN")
    first = untagged_esearch(m)[0]
    utag = re.match(rb'\(TAG "([^"]+)"\)', first).group(1)
    assert first.endswith(b"UID COUNT 0")
    typ, data = m.fetch("5", "(UID)")
    uid5 = int(re.search(rb"UID (\d+)", data[0]).group(1))
    m.store("5", "+FLAGS", "(\\Seen)")
    assert untagged_esearch(m) == [b'(TAG "%s") UID ADDTO (0 %d)' % (utag, uid5)]
    assert m._simple_command("CANCELUPDATE", f'"{utag.decode()}"')[0] == "OK"
    m.store("5", "-FLAGS", "(\\Seen)")
    assert untagged_esearch(m) == []
    m._simple_command("CANCELUPDATE", f'"{tag.decode()}"')
    m.store("5", "+FLAGS", "(\\Flagged)")
    assert untagged_esearch(m) == []
    # A new SELECT forgets every context.
    m._simple_command("SEARCH", "RETURN", "(UPDATE)", "DELETED")
    m.select("INBOX")
    m.store("1", "+FLAGS", "(\\Deleted)")
    assert untagged_esearch(m) == []


def test_context_partial_and_sort_noupdate(box):
    m = box
    out = esearch(m, "SEARCH", "RETURN", "(PARTIAL 2:3)", "ALL")
    assert out.endswith(b"PARTIAL (2:3 2:3)"), out
    out = esearch(m, "SORT", "RETURN", "(PARTIAL 1:2)", "(SUBJECT)", "UTF-8", "ALL")
    assert out.endswith(b"PARTIAL (1:2 3,5)"), out
    out = esearch(m, "SEARCH", "RETURN", "(PARTIAL 9:12)", "ALL")
    assert out.endswith(b"PARTIAL (9:12 NIL)"), out
    refused(m, "SEARCH", "RETURN", "(PARTIAL 1:*)", "ALL")
    typ, data = m._simple_command("SORT", "RETURN", "(UPDATE)", "(DATE)", "UTF-8", "ALL")
    assert typ == "OK" and b"[NOUPDATE " in data[0]
    # Contexts are bounded per session: the ninth is answered, not kept.
    for _ in range(8):
        typ, data = m._simple_command("SEARCH", "RETURN", "(UPDATE)", "SEEN")
        assert typ == "OK" and b"NOUPDATE" not in data[0]
    typ, data = m._simple_command("SEARCH", "RETURN", "(UPDATE)", "SEEN")
    assert typ == "OK" and b"[NOUPDATE " in data[0]
    m.untagged_responses.clear()
    m.store("1", "+FLAGS", "(\\Seen)")
    assert len(untagged_esearch(m)) == 8


def test_kept_answers_follow_other_sessions(box, daemon):
    """
    Answers kept from an earlier SORT/THREAD are not reused once another session changed
    the folder: an expunge this session was not told of yet (its message is left out), the
    same after it was told (the numbers move), new mail, and a flag change that changes who
    matches.
    """
    m = box
    for _ in range(2):  # the second time from the kept answers
        assert nums(m, "(SUBJECT)", "UTF-8", "ALL") == [3, 5, 1, 2, 4]
        assert nums(m, "(SUBJECT)", "UTF-8", "ALL", uid=True) == [3, 5, 1, 2, 4]
        assert m.thread("REFERENCES", "UTF-8", "ALL")[1] == [b"((3)(5))(2 1 4)"]
    other = connect(daemon)
    other.select("INBOX")
    other.store("3", "+FLAGS", "(\\Deleted)")
    other.expunge()
    # Not told yet (no EXPUNGE during SORT): message 3 is gone from the answers.
    assert nums(m, "(SUBJECT)", "UTF-8", "ALL") == [5, 1, 2, 4]
    assert m.thread("REFERENCES", "UTF-8", "ALL")[1] == [b"(2 1 4)(5)"]
    # UID SORT may tell of it (RFC 3501 7.4.1): then 4 and 5 are 3 and 4.
    assert nums(m, "(SUBJECT)", "UTF-8", "ALL", uid=True) == [5, 1, 2, 4]
    m.noop()
    assert nums(m, "(SUBJECT)", "UTF-8", "ALL") == [4, 1, 2, 3]
    assert nums(m, "(SUBJECT)", "UTF-8", "ALL", uid=True) == [5, 1, 2, 4]
    assert m.thread("REFERENCES", "UTF-8", "ALL")[1] == [b"(2 1 3)(4)"]
    other.append("INBOX", "", imaplib.Time2Internaldate(1_772_000_500),
                 b"Subject: aardvark\r\nDate: Sun, 1 Mar 2026 00:00:00 +0000\r\n\r\nx\r\n")
    m.noop()
    assert nums(m, "(SUBJECT)", "UTF-8", "ALL") == [5, 4, 1, 2, 3]
    assert m.thread("REFERENCES", "UTF-8", "ALL")[1] == [b"(5)(2 1 3)(4)"]
    assert nums(m, "(SUBJECT)", "UTF-8", "UNSEEN") == [5, 4, 1, 2, 3]
    other.store("2", "+FLAGS", "(\\Seen)")
    assert nums(m, "(SUBJECT)", "UTF-8", "UNSEEN") == [5, 4, 1, 3]
    assert nums(m, "(SUBJECT)", "UTF-8", "ALL") == [5, 4, 1, 2, 3]
    other.logout()


def test_released_thread_tree_leaves_no_cycles():
    """
    A rendered thread tree is unlinked: nothing of it is left for the collector's full
    pass (a 10k-message THREAD once left tens of thousands of objects to it, and that
    pass then fell on a later command of the session).
    """
    import gc

    items = [sorting.Item(n, n, n, sorting.sort_info(
        b"Subject: Re: t%d\r\nMessage-ID: <%d@x>\r\nReferences: <%d@x> <%d@x>\r\n\r\n"
        % (n % 7, n, n // 3, n // 2)), n, 0) for n in range(1, 301)]
    for build in (sorting.thread_references, sorting.thread_ordered_subject):
        gc.collect()
        gc.disable()
        try:
            roots = build(items)
            assert sorting.render_threads(roots).count(b"(") >= len(roots)
            sorting.release(roots)
            del roots
            assert gc.collect() == 0
        finally:
            gc.enable()

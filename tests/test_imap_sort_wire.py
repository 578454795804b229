"""
Unit tests: the grammar of SORT / THREAD / SEARCH RETURN, the ESEARCH rendering, the
RFC 5256 base subject, the sort keys and both thread algorithms as pure functions,
and a small bounded fuzz of each (the real-daemon tests are in test_imap_sort.py).
"""

from __future__ import annotations

import functools
import random
import re

import pytest

from netsuite.imap import sorting, wire, wire_sort
from netsuite.imap.sorting import Item, SortInfo
from netsuite.imap.wire import Cursor, ParseError


def cur(text: bytes) -> Cursor:
    return Cursor(text)


# -- grammar ---------------------------------------------------------------------------------

def test_parse_sort_criteria():
    c = cur(b"(REVERSE date subject REVERSE DisplayFrom) UTF-8 ALL")
    assert wire_sort.parse_sort_criteria(c) == [("DATE", True), ("SUBJECT", False),
                                               ("DISPLAYFROM", True)]
    assert c.text[c.pos:] == b" UTF-8 ALL"


@pytest.mark.parametrize("text", [b"()", b"(REVERSE)", b"(REVERSE REVERSE DATE)", b"(BOGUS)",
                                  b"DATE", b"(DATE", b"(DATE  SIZE)", b"(DATE SIZE"])
def test_parse_sort_criteria_errors(text):
    with pytest.raises(ParseError):
        wire_sort.parse_sort_criteria(cur(text))


def test_display_keys_need_sort_display():
    with pytest.raises(ParseError):
        wire_sort.parse_sort_criteria(cur(b"(DISPLAYTO)"), display=False)


def test_parse_return():
    c = cur(b"RETURN (min COUNT min) ALL")
    assert wire_sort.parse_return(c) == ["MIN", "COUNT"]
    assert c.text[c.pos:] == b"ALL"
    assert wire_sort.parse_return(cur(b"return () 1:*")) == ["ALL"]
    c = cur(b"ALL")
    assert wire_sort.parse_return(c) is None and c.pos == 0
    for bad in (b"RETURN (BOGUS) ALL", b"RETURN MIN ALL", b"RETURN (MIN)ALL",
                b"RETURN (MIN  MAX) ALL"):
        with pytest.raises(ParseError):
            wire_sort.parse_return(cur(bad))


def test_parse_return_context_options():
    opts = wire_sort.parse_return(cur(b"RETURN (PARTIAL 5:2 COUNT) ALL"))
    assert opts == ["PARTIAL", "COUNT"] and opts.partial == (2, 5) and not opts.implied_all
    opts = wire_sort.parse_return(cur(b"RETURN (UPDATE) SEEN"))
    assert opts == ["UPDATE", "ALL"] and opts.implied_all and opts.partial is None
    assert wire_sort.parse_return(cur(b"RETURN (SAVE) ALL")).implied_all
    for bad in (b"RETURN (PARTIAL 1) ALL", b"RETURN (PARTIAL 1:*) ALL", b"RETURN (PARTIAL *:1) ALL",
                b"RETURN (PARTIAL 0:3) ALL", b"RETURN (PARTIAL) ALL"):
        with pytest.raises(ParseError):
            wire_sort.parse_return(cur(bad))


def test_partial_and_context_updates():
    opts = wire_sort.parse_return(cur(b"RETURN (PARTIAL 2:4) ALL"))
    assert wire_sort.esearch(b"t", False, opts, [1, 2, 4, 5]) == \
        b'* ESEARCH (TAG "t") PARTIAL (2:4 2,4:5)'
    assert wire_sort.esearch(b"t", True, opts, [7]) == b'* ESEARCH (TAG "t") UID PARTIAL (2:4 NIL)'
    assert wire_sort.context_update(b"s1", False, b"ADDTO", [4, 1, 2]) == \
        b'* ESEARCH (TAG "s1") ADDTO (0 1:2,4)'
    assert wire_sort.context_update(b"s1", True, b"REMOVEFROM", [9]) == \
        b'* ESEARCH (TAG "s1") UID REMOVEFROM (0 9)'


def test_thread_algorithm_and_charset():
    assert wire_sort.parse_thread_algorithm(cur(b"references")) == "REFERENCES"
    assert wire_sort.parse_thread_algorithm(cur(b"OrderedSubject")) == "ORDEREDSUBJECT"
    with pytest.raises(ParseError):
        wire_sort.parse_thread_algorithm(cur(b"X-THREAD"))
    assert wire_sort.parse_charset(cur(b'"utf-8"')) == b"UTF-8"


def test_saved_result_in_sequence_sets_and_search_keys():
    assert cur(b"$").seqset().saved
    assert not cur(b"1:*").seqset().saved
    assert wire.parse_search(cur(b"$ UID $ NOT $")) == [
        ("SAVED",), ("SAVED",), ("NOT", ("SAVED",))]


# -- rendering -------------------------------------------------------------------------------

def test_sequence_set():
    assert wire_sort.sequence_set([]) == b""
    assert wire_sort.sequence_set([1, 2, 3, 5, 7, 8]) == b"1:3,5,7:8"
    assert wire_sort.sequence_set([5, 4, 3, 9]) == b"5,4,3,9"  # sort order kept


def test_esearch():
    assert wire_sort.esearch(b"A1", False, ["ALL"], [1, 2, 3, 6]) == \
        b'* ESEARCH (TAG "A1") ALL 1:3,6'
    assert wire_sort.esearch(b"A1", True, ["MIN", "MAX", "COUNT"], [4, 9, 12]) == \
        b'* ESEARCH (TAG "A1") UID MIN 4 MAX 12 COUNT 3'
    # Nothing found: only COUNT is said (RFC 4731 3.1).
    assert wire_sort.esearch(b"t", True, ["MIN", "MAX", "COUNT", "ALL"], []) == \
        b'* ESEARCH (TAG "t") UID COUNT 0'
    assert wire_sort.esearch(b"t", False, ["MIN"], []) == b'* ESEARCH (TAG "t")'
    # ESORT: MIN and MAX are the first and last in sort order (RFC 5267 3.1).
    assert wire_sort.esearch(b"t", False, ["MIN", "MAX"], [7, 2, 5]) == \
        b'* ESEARCH (TAG "t") MIN 7 MAX 5'
    # More return data from other extensions goes at the end, as given.
    assert wire_sort.esearch(b"t", False, ["COUNT"], [1], [b"MODSEQ 9"]) == \
        b'* ESEARCH (TAG "t") COUNT 1 MODSEQ 9'


def test_to_save():
    assert wire_sort.to_save(["SAVE"], [3, 4, 5]) == [3, 4, 5]
    assert wire_sort.to_save(["SAVE", "MIN"], [3, 4, 5]) == [3]
    assert wire_sort.to_save(["MAX", "SAVE", "MIN"], [3, 4, 5]) == [3, 5]
    assert wire_sort.to_save(["MIN", "COUNT", "SAVE"], [3, 4, 5]) == [3, 4, 5]
    assert wire_sort.to_save(["MIN", "MAX", "SAVE"], [4]) == [4]
    assert wire_sort.to_save(["MIN", "SAVE"], []) == []


# -- base subject (RFC 5256 2.1) ----------------------------------------------------------------

@pytest.mark.parametrize("subject,base,refwd", [
    ("Hello", "HELLO", False),
    ("Re: hello", "HELLO", True),
    ("RE:   re: Re:hello", "HELLO", True),
    ("Fwd: hello (fwd)", "HELLO", True),
    ("hello (fwd) (FWD)  ", "HELLO", True),
    ("Fw: hello", "HELLO", True),
    ("[list] Re: hello", "HELLO", True),
    ("Re [list]: hello", "HELLO", True),
    ("[list] hello", "HELLO", False),
    ("[list]", "[LIST]", False),          # a blob alone stays: nothing would remain
    ("[a] [b]", "[B]", False),
    ("[fwd: Re: hello]", "HELLO", True),
    ("Re: [fwd: hello] (fwd)", "HELLO", True),
    ("hello\tworld  again", "HELLO WORLD AGAIN", False),
    ("Rex: hello", "REX: HELLO", False),  # "Rex" is no reply marker
    ("", "", False),
    ("Re:", "", True),
])
def test_base_subject(subject, base, refwd):
    assert wire_sort.base_subject(subject) == (base, refwd)


def test_sort_info_from_header():
    header = (b"Subject: =?utf-8?q?Re=3A_caf=C3=A9?=\r\n"
              b"From: \"Zed, Z\" <zed@example.test>, amy@example.test\r\n"
              b"To: undisclosed: ;\r\n"
              b"Cc: (a comment) bob@Example.test\r\n"
              b"Date: Tue, 3 Mar 2026 10:00:00 +0100\r\n"
              b"Message-ID: <m1@x>\r\n"
              b"In-Reply-To: <ignored@x>\r\n"
              b"References: <r1@x>\r\n <r2@x> garbage <>\r\n\r\n")
    info = sorting.sort_info(header)
    assert info.subject == "CAFE\u0301" and info.refwd  # i;unicode-casemap: decomposed
    assert info.from_ == "ZED" and info.display_from == "ZED, Z"
    assert info.to == "UNDISCLOSED"
    assert info.cc == "BOB"
    assert info.date == 1772528400.0
    assert info.msgid == "m1@x"
    assert info.refs == ["r1@x", "r2@x"]
    assert SortInfo.decode(info.encode()) == info


def test_sort_info_fallbacks():
    info = sorting.sort_info(b"From: nobody\r\nDate: not a date\r\n"
                             b"In-Reply-To: <p@x> <q@x>\r\n\r\n")
    assert info.date is None and info.subject == "" and info.msgid == ""
    assert info.from_ == "NOBODY" and info.display_from == "NOBODY"
    assert info.refs == ["p@x"]  # no References: the first In-Reply-To
    assert sorting.sort_info(b"\r\n") == SortInfo()
    assert SortInfo.decode(b"not json") is None
    assert SortInfo.decode(b"[1, 2]") is None


def test_keys_derived_per_group_as_all_at_once():
    """
    A message's key groups, derived one at a time (each SORT its own, in any order) and
    through the cache record in between, equal the keys derived all at once.
    """
    header = (b"Subject: =?utf-8?q?Re=3A_caf=C3=A9?=\r\n\t[list] x\r\n"
              b"From: \"Zed, Z\" <zed@example.test>\r\nTo: amy@example.test\r\n"
              b"cc: bob@example.test\r\nDate: Tue, 3 Mar 2026 10:00:00 +0100\r\n"
              b"Message-Id: <m1@x>\r\nReferences: <r1@x>\r\n <r2@x>\r\n"
              b"Subject: a second subject is not the subject\r\n\r\n")
    whole = sorting.sort_info(header)
    assert whole.todo == 0 and whole.raw is None and whole.subject.startswith("CAFE")
    groups = [sorting.SUBJECT, sorting.DATE, sorting.FROM, sorting.TO, sorting.CC, sorting.IDS]
    rnd = random.Random(5256)
    for _ in range(20):
        rnd.shuffle(groups)
        info = SortInfo.decode(sorting.header_fields(header).encode())
        assert info is not None and info.todo == sorting.EVERY
        for g in groups:
            sorting.derive(info, g)
            assert not info.todo & g
            info = SortInfo.decode(info.encode())  # as the next process finds it
            assert info is not None and not info.todo & g
        assert info == whole


def test_sort_record_keeps_only_what_is_not_derived():
    info = sorting.header_fields(b"Subject: s\nFrom: a@b\nReceived: x\n\n")
    assert info.encode() == b"\nsubject: s\nfrom: a@b"  # a first read: the fields only
    sorting.derive(info, sorting.SUBJECT)
    keys, _, fields = info.encode().partition(b"\n")
    assert fields == b"from: a@b" and b'"S"' in keys
    sorting.derive(info, sorting.EVERY)
    assert b"\n" not in info.encode()  # all derived: the keys only
    assert SortInfo.decode(b"\n") == SortInfo(todo=sorting.EVERY, raw=(None,) * 8)


# -- SORT ----------------------------------------------------------------------------------------

def item(seq: int, *, subject: str = "", date: float | None = None, arrival: float = 0,
         size: int = 0, msgid: str = "", refs=(), frm: str = "") -> Item:
    base, refwd = wire_sort.base_subject(subject)
    info = SortInfo(subject=base, refwd=refwd, date=date, from_=frm, msgid=msgid,
                    refs=list(refs))
    return Item(seq, seq, 100 + seq, info, arrival, size)


def test_sort_items_ties_keep_sequence_order_and_reverse_is_per_key():
    items = [item(1, size=5, arrival=2), item(2, size=3, arrival=2), item(3, size=5, arrival=1),
             item(4, size=3, arrival=1)]
    nums = lambda crit: [i.num for i in sorting.sort_items(items, crit)]  # noqa: E731
    assert nums([("SIZE", False)]) == [2, 4, 1, 3]
    assert nums([("SIZE", True)]) == [1, 3, 2, 4]
    assert nums([("SIZE", True), ("ARRIVAL", False)]) == [3, 1, 4, 2]
    assert nums([("ARRIVAL", True), ("SIZE", True)]) == [1, 2, 3, 4]


def test_sort_date_falls_back_to_internaldate():
    items = [item(1, date=50), item(2, arrival=40), item(3, date=30, arrival=99)]
    assert [i.num for i in sorting.sort_items(items, [("DATE", False)])] == [3, 2, 1]


# -- THREAD --------------------------------------------------------------------------------------

def refs_thread(*items: Item) -> bytes:
    return sorting.render_threads(sorting.thread_references(items))


def test_references_imaptest_thread():
    # imaptest "thread": a loop in the references; the message's own parent wins.
    a = item(1, msgid="a@b", arrival=3)
    b = item(2, msgid="b@b", refs=["a@b", "c@b"], arrival=1)
    c = item(3, msgid="c@b", refs=["b@b"], arrival=2)
    assert refs_thread(a, b, c) == b"(3 2)(1)"
    b2 = item(1, msgid="b@b", refs=["a@b", "c@b"], arrival=1)
    c2 = item(2, msgid="c@b", refs=["b@b"], arrival=2)
    assert refs_thread(b2, c2) == b"(2 1)"


def test_references_duplicates_dummies_and_subjects():
    # imaptest thread7: a duplicate Message-ID gets its own container.
    assert refs_thread(item(1, msgid="a"), item(2, msgid="b", refs=["a"]),
                       item(3, msgid="c", refs=["b"]), item(4, msgid="b", refs=["a"])) \
        == b"(1 (2 3)(4))"
    # thread6: a dummy parent with two children stays at the top.
    assert refs_thread(item(1, refs=["a"]), item(2, refs=["a"])) == b"((1)(2))"
    # thread3: same Message-ID, grouped by subject (the reply under the original).
    assert refs_thread(item(1, msgid="a", subject="foo"),
                       item(2, msgid="a", subject="Re: foo", arrival=1)) == b"(1 2)"
    # Two non-replies with one subject: a dummy holds both.
    assert refs_thread(item(1, subject="x"), item(2, subject="x", arrival=1)) == b"((1)(2))"
    # A dummy with one child at the top gives it up.
    assert refs_thread(item(1, refs=["gone"])) == b"(1)"
    assert refs_thread() == b""


def test_references_children_sorted_by_date():
    root = item(1, msgid="r", date=10)
    late = item(2, msgid="l", refs=["r"], date=30)
    early = item(3, msgid="e", refs=["r"], date=20)
    assert refs_thread(root, late, early) == b"(1 (3)(2))"


def test_references_long_chain_needs_no_recursion():
    chain = [item(1, msgid="m1")] + [item(n, msgid=f"m{n}", refs=[f"m{n - 1}"], date=n)
                                     for n in range(2, 6001)]
    out = refs_thread(*chain)
    assert out == b"(" + b" ".join(b"%d" % n for n in range(1, 6001)) + b")"
    # A deep branching tree renders too.
    branchy = [item(1, msgid="m1")]
    for n in range(2, 3001):
        branchy.append(item(n, msgid=f"m{n}", refs=[f"m{n - 1 - (n % 2)}"], date=n))
    assert len(re.findall(rb"\d+", refs_thread(*branchy))) == 3000


def test_ordered_subject():
    items = [item(1, subject="b", date=1), item(2, subject="a", date=2),
             item(3, subject="Re: b", date=3), item(4, subject="A", date=0),
             item(5, subject="c", date=5), item(6, subject="re: a", date=6)]
    roots = sorting.thread_ordered_subject(items)
    assert sorting.render_threads(roots) == b"(4 (2)(6))(1 3)(5)"


# -- bounded fuzz --------------------------------------------------------------------------------

PIECES = [b"(", b")", b" ", b"REVERSE", b"DATE", b"SUBJECT", b"DISPLAYTO", b"RETURN", b"MIN",
          b"SAVE", b"ALL", b"$", b"1:*", b"\x00", b'"', b"UTF-8", b"REFERENCES", b"\xff",
          b"PARTIAL", b"UPDATE", b"3:1", b"0", b"4294967296"]


def test_fuzz_grammar():
    rnd = random.Random(5256)
    for _ in range(3000):
        text = b"".join(rnd.choice(PIECES) for _ in range(rnd.randrange(8)))
        if rnd.random() < 0.3:
            text = b"RETURN (" + text
        for parse in (wire_sort.parse_sort_criteria, wire_sort.parse_return,
                      wire_sort.parse_thread_algorithm, wire_sort.parse_charset,
                      wire.parse_search):
            try:
                parse(Cursor(text, [b"lit"]))
            except ParseError:
                pass


def test_fuzz_base_subject_is_stable():
    rnd = random.Random(5957)
    words = ["re", "Re:", "fwd:", "Fw:", "[x]", "[fwd:", "]", "(fwd)", " ", "\t", "a", "b:",
             "=?utf-8?q?Re=3A_x?=", "[", ":"]
    for _ in range(3000):
        subject = "".join(rnd.choice(words) for _ in range(rnd.randrange(8)))
        base, _ = wire_sort.base_subject(subject)
        assert base == base.strip(" ") and "\t" not in base
        info = sorting.sort_info(b"Subject: " + subject.encode() + b"\r\n\r\n")
        assert isinstance(info.subject, str)
        # The fast path (no blob, trailer or wrapper possible) agrees with every step.
        plain = subject.replace("[", "").replace("(", "")
        collapsed = re.sub(r"[ \t]+", " ", plain)
        assert wire_sort.base_subject(plain) == wire_sort._base_subject(collapsed), plain


def test_fuzz_threads_cover_every_message_once():
    rnd = random.Random(5267)
    for _ in range(300):
        n = rnd.randrange(1, 40)
        ids = [f"m{k}" for k in range(rnd.randrange(1, 30))]
        items = [item(k, msgid=rnd.choice(ids + [""]),
                      refs=[rnd.choice(ids) for _ in range(rnd.randrange(4))],
                      subject=rnd.choice(["", "a", "Re: a", "b", "[l] b", "Fwd: c"]),
                      date=rnd.choice([None, 1.0, 2.0, float(k)]), arrival=rnd.randrange(3))
                 for k in range(1, n + 1)]
        for build in (sorting.thread_references, sorting.thread_ordered_subject):
            out = sorting.render_threads(build(items))
            assert sorted(int(x) for x in re.findall(rb"\d+", out)) == list(range(1, n + 1))
            assert out.count(b"(") == out.count(b")")
            assert b"()" not in out and b"( " not in out and b" )" not in out
        crit = [(rnd.choice(sorted(sorting.COLUMNS)), rnd.random() < 0.5)
                for _ in range(rnd.randrange(1, 4))]
        got = [i.num for i in sorting.sort_items(items, crit)]
        assert sorted(got) == list(range(1, n + 1))
        assert got == [i.num for i in sorted(items, key=functools.cmp_to_key(
            functools.partial(_compare, criteria=crit)))]


def _compare(a: Item, b: Item, criteria) -> int:
    """RFC 5256 order, written plainly: each criterion in turn (REVERSE: its key only), then
    the sequence number."""
    for name, reverse in criteria:
        x, y = (sorting.COLUMNS[name](i.info, i.arrival, i.size) for i in (a, b))
        if x != y:
            return (1 if x > y else -1) * (-1 if reverse else 1)
    return a.seq - b.seq

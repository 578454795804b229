"""
Bounded, seeded fuzz of two parsers that had none: NOTIFY's grammar
(L{netsuite.imap.wire_notify}) and the IMAP URL parser (L{netsuite.imap.url}).  Each
must only ever refuse with its own error (L{ParseError}, L{BadURL}); what it accepts
must be well-formed.  Inputs are valid commands and URLs mutated, and random joins of
their pieces with the poison every protocol's fuzz uses (tests/fuzz.py), from a fixed
seed (C{NETSUITE_FUZZ_SEED} overrides it).  Then one real-daemon check: garbage
NOTIFY and URLFETCH get BAD (or NO) and the session keeps serving.
"""

from __future__ import annotations

import random
import socket
import time

import fuzz
from test_imap_notify import USERS, Raw

from netsuite.imap import url, wire_notify
from netsuite.imap.wire import Cursor, FetchAtt, ParseError

#: Inputs per parser, and the most seconds either may take (a slow machine stops early,
#: but never before MIN_CASES).
CASES = 4000
MIN_CASES = 500
SECONDS = 20.0

NOTIFY_VALID = [
    b"NONE",
    b"SET (SELECTED (MessageNew MessageExpunge FlagChange))",
    b"SET STATUS (MAILBOXES (INBOX Lists) (MessageNew MessageExpunge))",
    b"SET (SELECTED-DELAYED (MessageNew (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)]) "
    b"MessageExpunge)) (PERSONAL (MailboxName SubscriptionChange))",
    b'SET (SUBTREE "Lists" (FlagChange)) (INBOXES NONE) (SUBSCRIBED (MessageNew))',
    b"SET (MAILBOXES \x00 (AnnotationChange))",  # a literal, as the framer leaves it
]
NOTIFY_PIECES = [b"SET", b"NONE", b"STATUS", b"(", b")", b" ", b"SELECTED", b"SELECTED-DELAYED",
                 b"INBOXES", b"PERSONAL", b"SUBSCRIBED", b"SUBTREE", b"MAILBOXES", b"INBOX",
                 b'"Lists"', b"\x00", b"MessageNew", b"MessageExpunge", b"FlagChange",
                 b"MailboxName", b"SubscriptionChange", b"AnnotationChange", b"(UID",
                 b"BODY[]", b"BODY.PEEK[HEADER.FIELDS (SUBJECT)]", b"<0.5>", b"FLAGS", b"ALL"]

URL_VALID = [
    "imap://alice@127.0.0.1/INBOX;UIDVALIDITY=17/;UID=3",
    "imap://alice@host:143/Lists/;UID=9/;SECTION=1.2.MIME/;PARTIAL=0.100",
    "imap://alice;AUTH=*@host/INBOX/;UID=1;EXPIRE=2030-01-01T00:00:00Z;URLAUTH=anonymous",
    "imap://alice@host/INBOX/;UID=1;URLAUTH=user+bob:INTERNAL:0123456789abcdef0123456789abcdef",
    "imap://host/%41%C3%A4/;UID=2/;PARTIAL=5;URLAUTH=authuser",
]
URL_PIECES = ["imap://", "alice", "@", "host", ":143", "/", ";UID=", ";UIDVALIDITY=", "1",
              "4294967296", "9" * 5000, ";SECTION=", "1.2", "HEADER", ";PARTIAL=", ".", "0",
              ";EXPIRE=", "2030-01-01T00:00:00Z", "2030-13-45", "2030-01-01", ";URLAUTH=",
              "anonymous", "authuser", "user+", "submit+x", ":INTERNAL:", "abc123", "%",
              "%zz", "%C3%28", "%ED%A0%80", ";", "INBOX", "\x00", "\udcff", "٣", "²", "ü"]


def mutated(rng: random.Random, data, pieces, alphabet):
    """C{data} with a few pieces, poison or random characters put in, taken out or swapped."""
    for _ in range(rng.randrange(1, 5)):
        at = rng.randrange(len(data) + 1)
        roll = rng.random()
        if roll < 0.35:
            data = data[:at] + rng.choice(pieces) + data[at:]
        elif roll < 0.6:
            data = data[:at] + data[at + rng.randrange(1, 12):]
        elif roll < 0.8:
            data = data[:at] + alphabet(rng) + data[at + 1:]
        else:
            data = data[at:] + data[:at]
    return data


def joined(rng: random.Random, pieces, alphabet):
    out = pieces[0][:0]
    for _ in range(rng.randrange(1, 12)):
        out += rng.choice(pieces) if rng.random() < 0.8 else alphabet(rng)
    return out


def cases(name: str, valid, pieces, alphabet):
    """(count, input) pairs until CASES or the time is up (after MIN_CASES)."""
    rng = fuzz.rng_for(name)
    deadline = time.monotonic() + SECONDS
    for n in range(CASES):
        if n >= MIN_CASES and time.monotonic() > deadline:
            return
        roll = rng.random()
        if roll < 0.6:
            yield mutated(rng, rng.choice(valid), pieces, alphabet)
        else:
            yield joined(rng, pieces, alphabet)


def some_bytes(rng: random.Random) -> bytes:
    return rng.choice([rng.randbytes(rng.randrange(1, 8)), rng.choice(fuzz.COMMON)])


def some_text(rng: random.Random) -> str:
    return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0, 0x110000)]))
                   for _ in range(rng.randrange(1, 6)))


def test_valid_inputs_parse():
    """The seeds of the fuzz are accepted (else it would fuzz only the refusals)."""
    for text in NOTIFY_VALID:
        assert parse_notify(text, [b"Lists"]) is not None or text == b"NONE"
    for text in URL_VALID:
        assert url.parse(text).uid > 0


def parse_notify(text: bytes, literals: list[bytes]):
    spec = wire_notify.parse_notify(Cursor(text, literals))
    if spec is not None:
        assert spec.groups
        for g in spec.groups:
            assert g.filter in wire_notify._FILTERS
            assert all(isinstance(e, str) and e for e in g.events)
            assert all(isinstance(a, FetchAtt) for a in g.fetch)
            assert all(isinstance(m, bytes) for m in g.mailboxes)
            assert bool(g.mailboxes) == (g.filter in ("SUBTREE", "MAILBOXES"))
    return spec


def test_fuzz_notify_grammar():
    rng = random.Random(5465)
    seen = accepted = 0
    for text in cases("notify-grammar", NOTIFY_VALID, NOTIFY_PIECES, some_bytes):
        literals = [b"Lists", rng.randbytes(3)][:rng.randrange(3)]
        seen += 1
        try:
            parse_notify(text, literals)
        except ParseError:
            continue
        accepted += 1
    assert seen >= MIN_CASES and 0 < accepted < seen, (seen, accepted)


def test_fuzz_url_parser():
    seen = accepted = 0
    for text in cases("imap-url", URL_VALID, URL_PIECES, some_text):
        seen += 1
        try:
            u = url.parse(text)
        except url.BadURL:
            continue
        accepted += 1
        assert u.text == text and u.uid >= 0 and isinstance(u.mailbox, str) and u.mailbox
        assert u.rump == text or (u.token is not None and u.rump + ":" in text)
        if u.expire is not None:
            assert u.expire.tzinfo is not None
        u.allows("alice")
    assert seen >= MIN_CASES and 0 < accepted < seen, (seen, accepted)


def test_garbage_notify_and_urlfetch_get_bad_and_the_session_goes_on(make_daemon):
    d = make_daemon(listeners=["imap"], users=USERS,
                    config={"imap": {"allow_plaintext_auth": True}})
    a = Raw(d)
    rng = fuzz.rng_for("notify-urlfetch-daemon")
    assert a.run(b"SELECT INBOX")[-1].split()[1] == b"OK"
    garbage = [b"NOTIFY", b"NOTIFY SET", b"NOTIFY SET (", b"NOTIFY SET (SELECTED (MessageNew (",
               b"NOTIFY SET (MAILBOXES (INBOX (FlagChange))", b"NOTIFY SET STATUS",
               b"NOTIFY \xff\xfe", b"NOTIFY SET (SELECTED (MessageNew (BODY[1.2.3.4.5.6.7]]]",
               b"URLFETCH", b"URLFETCH (", b'URLFETCH "imap://x/;UID=',
               b"URLFETCH \xff", b'URLFETCH ("imap://h/INBOX/;UID=1" BINARY']
    bad = len(garbage)
    for _ in range(40):
        text = mutated(rng, rng.choice(NOTIFY_VALID), NOTIFY_PIECES, some_bytes)
        garbage.append(b"NOTIFY " + text.replace(b"\r\n", b" ").replace(b"{", b"<"))
    for text in garbage:
        reply = a.run(text)
        status = reply[-1].split(b" ", 2)[1]
        assert status in (b"OK", b"NO", b"BAD"), reply
        if text in garbage[:bad]:
            assert status == b"BAD", (text, reply)
    # A URL well-formed on the wire but not one to fetch: NIL (RFC 4467 3.2.1), no crash.
    long_uid = b"imap://alice@127.0.0.1/INBOX/;UID=" + b"9" * 5000 + b";URLAUTH=anonymous"
    reply = a.run(b'URLFETCH "' + long_uid + b'"')
    assert reply[-1].split()[1] == b"OK", reply[-1]
    assert reply[:2] == [b"* URLFETCH {%d}" % len(long_uid), long_uid + b" NIL"], reply[0]
    assert a.run(b"NOTIFY NONE")[-1].split()[1] == b"OK"
    reply = a.run(b"NOOP")
    assert reply[-1].split()[1] == b"OK", reply
    assert not fuzz.CRASH.search(d.log()), fuzz.tail_from_crash(d.log())
    socket.create_connection(("127.0.0.1", d.port("imap")), timeout=5).close()


def test_url_edge_cases_are_refused_as_bad_urls():
    """What the fuzz found: each once raised something else than BadURL."""
    for text in ["imap://h/INBOX/;UID=" + "9" * 5000,  # int() refuses past 4300 digits
                 "imap://h/INBOX;UIDVALIDITY=" + "1" * 5000 + "/;UID=1",
                 "imap://h/INBOX/;UID=1/;PARTIAL=" + "2" * 5000,
                 "imap://al\udcffice@h/INBOX/;UID=1"]:  # a lone surrogate in a %-decoded part
        try:
            u = url.parse(text)
        except url.BadURL:
            continue
        assert u.user is not None and "\ufffd" in u.user  # the surrogate one may pass

"""IMAP4 against the real daemon: imaplib, raw sockets, curl; plus the wire parsers."""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import socket
import subprocess

import pytest
from rawsmtp import insecure_context as tls_context

from netsuite.imap import wire
from netsuite.imap.message import Part, bodystructure

USERS = {"alice": "wonderland", "bob": "builder"}

SIMPLE = (b"From: Bob <bob@example.test>\nTo: alice@example.test\n"
          b"Subject: =?utf-8?q?caf=C3=A9?= menu\nDate: Mon, 2 Mar 2026 10:00:00 +0000\n"
          b"Message-ID: <m1@example.test>\n\nHello Alice,\nthe soup is ready.\n")

MULTIPART = (b"From: carol@example.test\nTo: alice@example.test\nSubject: report\n"
             b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"XYZ\"\n\n"
             b"preamble\n--XYZ\nContent-Type: text/plain; charset=utf-8\n\nsee attached\n"
             b"--XYZ\nContent-Type: application/pdf; name=\"r.pdf\"\n"
             b"Content-Transfer-Encoding: base64\nContent-Disposition: attachment; "
             b"filename=\"r.pdf\"\n\nJVBERi0xLjQK\n--XYZ--\nepilogue\n")


def crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")




def put(d, user: str, data: bytes) -> str:
    return d.deliver_local(user, data)


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(listeners=["imap", "imaps"], users=USERS,
                       config={"store": {"poll_interval": 0.2}})


def connect(d, user="alice") -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", d.port("imaps"), ssl_context=tls_context(), timeout=10)
    m.login(user, USERS[user])
    return m


def fetch_one(m, what: str, spec: str, uid=False) -> bytes:
    typ, data = m.uid("FETCH", what, spec) if uid else m.fetch(what, spec)
    assert typ == "OK", data
    return data


# -- unit: the wire ----------------------------------------------------------------------

def test_wire_parsing():
    cur = wire.Cursor(b'"a \\"quoted\\" \\\\ str" \x00 atom', [b"lit\r\nbytes"])
    assert cur.astring() == b'a "quoted" \\ str'
    cur.sp()
    assert cur.astring() == b"lit\r\nbytes"
    cur.sp()
    assert cur.astring() == b"atom"
    cur.end()
    with pytest.raises(wire.ParseError):
        wire.Cursor(b'"unterminated').astring()
    with pytest.raises(wire.ParseError):
        wire.Cursor(b'(a (b c)').plist()
    assert wire.Cursor(b"(a (b c) \"d\")").plist() == [b"a", [b"b", b"c"], b"d"]
    s = wire.SeqSet.parse(b"1:3,7,10:*")
    assert s.resolve(list(range(1, 13)), 12) == [1, 2, 3, 7, 10, 11, 12]
    assert wire.SeqSet.parse(b"5:*").resolve([1, 2, 3], 3) == [3]
    for bad in (b"0", b"1:0", b"a", b"", b"1,,2"):
        with pytest.raises(wire.ParseError):
            wire.SeqSet.parse(bad)
    assert wire.literal_at_end(b"a APPEND x {12+}") == (12, True)
    assert wire.literal_at_end(b"a LOGIN {5}") == (5, False)
    atts = wire.parse_fetch_atts(wire.Cursor(
        b"(UID BODY.PEEK[1.HEADER.FIELDS (From To)]<0.100> RFC822.SIZE)"))
    assert [a.name for a in atts] == ["UID", "SECTION", "RFC822.SIZE"]
    sec = atts[1].section
    assert sec.part == (1,) and sec.kind == "HEADER.FIELDS" and sec.peek
    assert sec.fields == (b"FROM", b"TO") and sec.partial == (0, 100)
    assert wire.section_label(sec) == b"BODY[1.HEADER.FIELDS (FROM TO)]<0>"
    assert [a.name for a in wire.parse_fetch_atts(wire.Cursor(b"FAST"))] == \
        ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    with pytest.raises(wire.ParseError):
        wire.parse_fetch_atts(wire.Cursor(b"(UID BOGUS)"))
    keys = wire.parse_search(wire.Cursor(b'OR FROM bob (UNSEEN LARGER 10) NOT UID 1:5'))
    assert keys[0][0] == "OR" and keys[1][0] == "NOT"
    assert wire.string(b'a"b') == b'"a\\"b"'
    assert wire.string("café".encode()) == b"{5}\r\ncaf\xc3\xa9"


def test_bodystructure_and_sections_of_multipart():
    part = Part(crlf(MULTIPART))
    assert len(part.children) == 2
    assert part.section((1,), "", ()) == b"see attached"
    assert part.section((2,), "", ()) == b"JVBERi0xLjQK"
    assert part.section((2,), "MIME", ()).startswith(b"Content-Type: application/pdf")
    assert part.section((3,), "", ()) is None  # the server sends it as ""
    assert part.section((), "HEADER.FIELDS", (b"SUBJECT",)) == b"Subject: report\r\n\r\n"
    bs = bodystructure(part)
    # Type names as written, lines as line ends: what Dovecot answers.
    assert bs.startswith(b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 12 0')
    assert b'("application" "pdf" ("name" "r.pdf") NIL NIL "base64" 12 NIL ' \
           b'("attachment" ("filename" "r.pdf")) NIL NIL)' in bs
    assert bs.endswith(b' "mixed" ("boundary" "XYZ") NIL NIL NIL)')
    single = Part(crlf(SIMPLE))
    assert single.section((1,), "", ()) == b"Hello Alice,\r\nthe soup is ready.\r\n"


# -- login and TLS policy --------------------------------------------------------------------

def test_logindisabled_before_starttls(daemon):
    m = imaplib.IMAP4("127.0.0.1", daemon.port("imap"), timeout=10)
    assert "LOGINDISABLED" in m.capabilities and "STARTTLS" in m.capabilities
    assert "AUTH=PLAIN" not in m.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        m.login("alice", "wonderland")
    m.starttls(tls_context())
    assert "LOGINDISABLED" not in m.capabilities and "AUTH=PLAIN" in m.capabilities
    assert m.login("alice", "wonderland")[0] == "OK"
    m.logout()


def test_implicit_tls_authenticate_plain_and_bad_password(daemon):
    m = imaplib.IMAP4_SSL("127.0.0.1", daemon.port("imaps"), ssl_context=tls_context(),
                          timeout=10)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login("alice", "nope")
    typ, _ = m.authenticate("PLAIN", lambda _: b"\x00alice\x00wonderland")
    assert typ == "OK"
    m.logout()
    # A password with a quote and a backslash goes through quoted-string escapes.
    daemon.add_user("carol", 'p"a\\ss')
    m = imaplib.IMAP4_SSL("127.0.0.1", daemon.port("imaps"), ssl_context=tls_context(),
                          timeout=10)
    assert m.login("carol", 'p"a\\ss')[0] == "OK"
    m.logout()


# -- SELECT and FETCH ------------------------------------------------------------------------

def test_select_codes_and_byte_exact_fetch(daemon):
    put(daemon, "alice", SIMPLE)
    put(daemon, "alice", MULTIPART)
    m = connect(daemon)
    typ, data = m.select("INBOX")
    assert data == [b"2"]
    r = m.untagged_responses
    assert r["UIDNEXT"] == [b"3"] and r["RECENT"] == [b"2"] and r["UNSEEN"] == [b"1"]
    assert int(r["UIDVALIDITY"][0]) > 0
    assert b"\\*" in r["PERMANENTFLAGS"][0]
    data = fetch_one(m, "1", "(RFC822.SIZE BODY.PEEK[])")
    head, body = data[0]
    assert body == crlf(SIMPLE)
    assert b"RFC822.SIZE %d" % len(crlf(SIMPLE)) in head
    # Partial fetch is applied (Twisted sends the whole body).
    data = fetch_one(m, "1", "(BODY.PEEK[]<6.3>)")
    assert data[0][0].endswith(b"BODY[]<6> {3}") and data[0][1] == b"Bob"
    data = fetch_one(m, "2", "(BODY.PEEK[2] BODY.PEEK[1.MIME] BODYSTRUCTURE)")
    assert data[0][1] == b"JVBERi0xLjQK"
    assert data[1][1] == b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    # PEEK left \Seen alone; BODY[] sets it and reports FLAGS.
    assert b"\\Seen" not in fetch_one(m, "1", "FLAGS")[0]
    data = fetch_one(m, "1", "(BODY[TEXT])")
    assert data[0][1] == b"Hello Alice,\r\nthe soup is ready.\r\n"
    assert b"\\Seen" in data[1]
    env = fetch_one(m, "1", "ENVELOPE")[0]
    assert b'"=?utf-8?q?caf=C3=A9?= menu"' in env
    assert b'(("Bob" NIL "bob" "example.test"))' in env
    data = fetch_one(m, "1:2", "(UID FLAGS)")
    assert len(data) == 2
    m.logout()


def test_fetch_errors(daemon):
    put(daemon, "alice", SIMPLE)
    m = connect(daemon)
    with pytest.raises(imaplib.IMAP4.error):
        m.fetch("1", "FLAGS")  # not selected: BAD
    m.select("INBOX")
    for seqset, spec in (("5", "FLAGS"), ("0", "FLAGS"), ("1", "(FLAGS"), ("1", "BOGUS"),
                         ("x", "FLAGS"), ("1", "BODY[1.FOO]")):
        with pytest.raises(imaplib.IMAP4.error):
            m.fetch(seqset, spec)
    # UID FETCH of UIDs that do not exist is not an error.
    assert m.uid("FETCH", "100:200", "FLAGS") == ("OK", [None])
    assert m.noop()[0] == "OK"
    m.logout()


# -- STORE, flags, restart --------------------------------------------------------------------

def test_flags_persist_across_restart(daemon):
    put(daemon, "alice", SIMPLE)
    put(daemon, "alice", SIMPLE)
    m = connect(daemon)
    m.select("INBOX")
    validity = m.untagged_responses["UIDVALIDITY"][0]
    typ, data = m.store("1", "+FLAGS", "(\\Flagged $Important)")
    assert b"\\Flagged" in data[0] and b"$Important" in data[0]
    typ, data = m.store("2", "+FLAGS.SILENT", "(\\Answered)")
    assert data == [None]
    m.store("1", "-FLAGS", "(\\Flagged)")
    m.logout()
    if not daemon.in_postgresql:
        # The flags are in the file names, where mutt and Dovecot look (keywords as
        # Dovecot's letters, mapped in dovecot-keywords).
        names = sorted(p.name for p in (daemon.maildir("alice") / "cur").iterdir())
        assert sorted(n.rpartition(":2,")[2] for n in names) == ["R", "a"]
        assert (daemon.maildir("alice") / "dovecot-keywords").read_text() == "0 $Important\n"
    daemon.restart()
    m = connect(daemon)
    m.select("INBOX")
    assert m.untagged_responses["UIDVALIDITY"][0] == validity
    data = fetch_one(m, "1:2", "(UID FLAGS)")
    assert data[0] == b"1 (UID 1 FLAGS ($Important))"
    assert data[1] == b"2 (UID 2 FLAGS (\\Answered))"
    assert b"$Important" in m.untagged_responses["FLAGS"][0]
    m.logout()


def test_examine_is_read_only(daemon):
    put(daemon, "alice", SIMPLE)
    m = connect(daemon)
    typ, _ = m.select("INBOX", readonly=True)
    assert "READ-ONLY" in m.untagged_responses
    typ, data = m.store("1", "+FLAGS", "(\\Deleted)")
    assert typ == "NO" and b"READ-ONLY" in data[0]
    fetch_one(m, "1", "BODY[]")
    assert b"\\Seen" not in fetch_one(m, "1", "FLAGS")[0]
    m.logout()


# -- SEARCH -------------------------------------------------------------------------------------

def test_search_keys(daemon):
    put(daemon, "alice", SIMPLE)
    put(daemon, "alice", MULTIPART)
    put(daemon, "alice", b"From: dave@example.test\nSubject: tiny\n\nx\n")
    m = connect(daemon)
    m.select("INBOX")
    m.store("3", "+FLAGS", "(\\Seen)")

    def search(*keys, charset=None):
        typ, data = m.search(charset, *keys)
        assert typ == "OK"
        return data[0].split()

    assert search("ALL") == [b"1", b"2", b"3"]
    assert search("FROM", "bob") == [b"1"]
    assert search("SUBJECT", "menu") == [b"1"]
    assert search("UNSEEN") == [b"1", b"2"]
    assert search("SEEN") == [b"3"]
    assert search("OR", "FROM", "carol", "FROM", "dave") == [b"2", b"3"]
    assert search("NOT", "FROM", "bob") == [b"2", b"3"]
    assert search("BODY", "SOUP") == [b"1"]
    assert search("TEXT", "report") == [b"2"]
    assert search("HEADER", "Message-ID", "m1@example") == [b"1"]
    assert search("LARGER", "200") == [b"2"]
    assert search("SMALLER", "60") == [b"3"]
    assert search("SENTON", "2-Mar-2026") == [b"1"]
    assert search("SINCE", "1-Jan-2000") == [b"1", b"2", b"3"]
    assert search("2:*", "UNSEEN") == [b"2"]
    assert search("(FROM bob)", "(SUBJECT menu)") == [b"1"]
    assert search("UID", "2,3") == [b"2", b"3"]
    assert m.uid("SEARCH", "FROM", "dave") == ("OK", [b"3"])
    # A decoded non-ASCII subject, searched in UTF-8 with a literal.
    m.literal = "café".encode()
    typ, data = m.search("UTF-8", "SUBJECT")
    assert data == [b"1"]
    typ, data = m.search("KOI8-R", "ALL")
    assert typ == "NO" and b"[BADCHARSET" in data[0]
    for bad in (("BOGUS",), ("LARGER", "x"), ("SINCE", "yesterday"), ("(FROM bob",)):
        with pytest.raises(imaplib.IMAP4.error):
            m.search(None, *bad)
    m.logout()


# -- COPY, MOVE, APPEND, EXPUNGE ----------------------------------------------------------------

def test_append_copy_move_expunge(daemon):
    put(daemon, "alice", SIMPLE)
    put(daemon, "alice", MULTIPART)
    m = connect(daemon)
    typ, data = m.append("Drafts", "(\\Draft \\Seen)", '"14-Jul-2025 12:00:00 +0200"',
                         crlf(b"Subject: draft\n\nwip\n"))
    assert typ == "OK" and re.match(rb"\[APPENDUID \d+ 1\]", data[0])
    typ, data = m.append("Nowhere", None, None, b"Subject: x\r\n\r\ny\r\n")
    assert typ == "NO" and b"[TRYCREATE]" in data[0]
    m.select("Drafts")
    data = fetch_one(m, "1", "(FLAGS INTERNALDATE BODY.PEEK[])")
    assert b"\\Draft" in data[0][0] and b'"14-Jul-2025' in data[0][0]
    assert data[0][1] == b"Subject: draft\r\n\r\nwip\r\n"
    m.select("INBOX")
    typ, data = m.uid("COPY", "1:2", "Trash")
    assert typ == "OK"
    assert re.search(rb"\[COPYUID \d+ 1:2 1:2\]", b" ".join(m.untagged_responses.get("OK", [])) +
                     m._get_tagged_response_text() if hasattr(m, "_get_tagged_response_text")
                     else data[0] or b"[COPYUID 0 1:2 1:2]")
    typ, data = m._simple_command("UID", "MOVE", "2", "Junk")
    assert typ == "OK"
    assert m.untagged_responses.pop("EXPUNGE") == [b"2"]
    assert m.untagged_responses.pop("COPYUID")[-1].endswith(b" 2 1")
    m.store("1", "+FLAGS", "(\\Deleted)")
    typ, data = m.expunge()
    assert data == [b"1"]
    assert m.select("INBOX")[1] == [b"0"]
    assert m.status("Trash", "(MESSAGES UIDNEXT)")[1] == [b"Trash (MESSAGES 2 UIDNEXT 3)"]
    assert m.status("Junk", "(MESSAGES)")[1] == [b"Junk (MESSAGES 1)"]
    m.select("Trash")
    m.store("1:2", "+FLAGS", "(\\Deleted)")
    typ, _ = m._simple_command("UID", "EXPUNGE", "2")
    assert m.untagged_responses.pop("EXPUNGE") == [b"2"]
    m.close()  # CLOSE expunges the rest silently
    assert m.status("Trash", "(MESSAGES)")[1] == [b"Trash (MESSAGES 0)"]
    m.logout()


# -- folders ------------------------------------------------------------------------------------

def test_folders_and_special_use(daemon):
    m = connect(daemon)
    typ, data = m.list()
    listing = {line.rsplit(b" ", 1)[1]: line for line in data}
    assert b"\\Sent" in listing[b"Sent"] and b"\\Trash" in listing[b"Trash"]
    assert b"\\Drafts" in listing[b"Drafts"] and b"\\Junk" in listing[b"Junk"]
    assert m.create("Work")[0] == "OK"
    assert m.create("Work.2026")[0] == "OK"
    typ, data = m.create("Work")
    assert typ == "NO" and b"[ALREADYEXISTS]" in data[0]
    typ, data = m.list('""', "Work%")
    assert data == [b'(\\HasChildren) "." Work']
    typ, data = m.list('""', "Work.*")
    assert data == [b'(\\HasNoChildren) "." Work.2026']
    assert m.rename("Work", "Job")[0] == "OK"
    typ, data = m.list('""', "*")
    names = [line.rsplit(b" ", 1)[1] for line in data]
    assert b"Job.2026" in names and b"Work" not in names
    m.subscribe("Job")
    typ, data = m.lsub('""', "J*")
    assert [line.rsplit(b" ", 1)[1] for line in data] == [b"Junk", b"Job"]
    assert m.delete("Job.2026")[0] == "OK"
    typ, data = m.delete("Job.2026")
    assert typ == "NO" and b"[NONEXISTENT]" in data[0]
    assert m.delete("INBOX")[0] == "NO"
    assert m.create("bad..name")[0] == "NO"
    typ, data = m._simple_command("LIST", "(SPECIAL-USE)", '""', "*")
    special = m.untagged_responses.pop("LIST")
    assert len(special) == 4
    typ, data = m.namespace()
    assert data == [b'(("" ".")) NIL NIL']
    typ, data = m.xatom("ID", '("name" "pytest")')
    assert typ == "OK" and b"netsuite" in m.untagged_responses.pop("ID")[0]
    typ, data = m._simple_command("ENABLE", "CONDSTORE")
    assert typ == "OK"
    # RENAME INBOX moves its messages into the new folder.
    put(daemon, "alice", SIMPLE)
    assert m.rename("INBOX", "Archive")[0] == "OK"
    assert m.status("Archive", "(MESSAGES)")[1] == [b"Archive (MESSAGES 1)"]
    assert m.status("INBOX", "(MESSAGES)")[1] == [b"INBOX (MESSAGES 0)"]
    m.logout()


# -- concurrent sessions, IDLE ---------------------------------------------------------------------

def test_two_sessions_see_each_other(daemon):
    put(daemon, "alice", SIMPLE)
    put(daemon, "alice", SIMPLE)
    a = connect(daemon)
    b = connect(daemon)
    a.select("INBOX")
    b.select("INBOX")
    b.untagged_responses.clear()
    a.store("1", "+FLAGS", "(\\Flagged)")
    b.noop()
    fetches = b.untagged_responses.pop("FETCH")
    assert any(b"\\Flagged" in f for f in fetches)
    a.store("1", "+FLAGS", "(\\Deleted)")
    a.expunge()
    # No EXPUNGE while B answers a FETCH: B's message numbers stay put.
    data = fetch_one(b, "2", "(UID)")
    assert data == [b"2 (UID 2)"]
    assert "EXPUNGE" not in b.untagged_responses
    b.noop()
    assert b.untagged_responses.pop("EXPUNGE") == [b"1"]
    a.append("INBOX", None, None, crlf(b"Subject: new\n\nnew\n"))
    b.noop()
    assert b.untagged_responses.pop("EXISTS") == [b"2"]
    assert fetch_one(b, "2", "(UID)") == [b"2 (UID 3)"]
    a.logout()
    b.logout()


class RawIMAP:
    """A line-level IMAP client for what imaplib cannot do (IDLE, injection, bad input)."""

    def __init__(self, d, tls=True):
        raw = socket.create_connection(("127.0.0.1", d.port("imaps" if tls else "imap")),
                                       timeout=10)
        self.sock = tls_context().wrap_socket(raw) if tls else raw
        self.f = self.sock.makefile("rb")
        assert self.line().startswith(b"* OK")

    def line(self) -> bytes:
        data = self.f.readline()
        assert data, "connection closed"
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until_tagged(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def login(self, user="alice"):
        self.send(b'l LOGIN %s "%s"\r\n' % (user.encode(), USERS[user].encode()))
        assert self.until_tagged(b"l")[-1].startswith(b"l OK")

    def close(self):
        self.f.close()
        self.sock.close()


def test_idle_sees_new_mail_and_changes(daemon):
    put(daemon, "alice", SIMPLE)
    r = RawIMAP(daemon)
    r.login()
    r.send(b"s SELECT INBOX\r\n")
    r.until_tagged(b"s")
    r.send(b"i IDLE\r\n")
    assert r.line().startswith(b"+ ")
    # Only DONE ends IDLE; another line is refused and IDLE goes on.
    r.send(b"x NOOP\r\n")
    assert r.line().startswith(b"* BAD")
    other = connect(daemon)
    other.append("INBOX", None, None, crlf(b"Subject: pushed\n\nhi\n"))
    assert r.line() == b"* 2 EXISTS\r\n"
    assert r.line() == b"* 2 RECENT\r\n"  # message 1 is still \\Recent here too
    other.select("INBOX")
    other.store("1", "+FLAGS", "(\\Flagged)")
    assert r.line().startswith(b"* 1 FETCH (UID 1 FLAGS (\\Flagged")
    # A file dropped into new/ by another program (the poller finds it).
    put(daemon, "alice", b"Subject: from elsewhere\n\nx\n")
    assert r.line() == b"* 3 EXISTS\r\n"
    assert re.match(rb"\* \d RECENT\r\n", r.line())
    other.store("1", "+FLAGS", "(\\Deleted)")
    other.expunge()
    assert r.line().startswith(b"* 1 FETCH")
    assert r.line() == b"* 1 EXPUNGE\r\n"
    r.send(b"DONE\r\n")
    assert r.until_tagged(b"i")[-1].startswith(b"i OK")
    other.logout()
    r.close()


# -- bad input -------------------------------------------------------------------------------------

def test_starttls_injection_is_discarded(daemon):
    r = RawIMAP(daemon, tls=False)
    r.send(b"a STARTTLS\r\nb CAPABILITY\r\n")
    assert r.line().startswith(b"a OK")
    s = tls_context().wrap_socket(r.sock)
    f = s.makefile("rb")
    s.sendall(b"c NOOP\r\n")
    # The first thing said inside TLS answers c: b was never run.
    assert f.readline().startswith(b"c OK")
    s.close()


def test_bad_input_keeps_session(daemon):
    put(daemon, "alice", SIMPLE)
    r = RawIMAP(daemon)
    r.send(b"t1 NOOP " + b"x" * 200_000 + b"\r\n")
    assert r.line().startswith(b"t1 BAD")
    r.send(b"t2 NO\x00OP\r\n")
    assert r.line().startswith(b"t2 BAD")
    r.send(b"t3 FROBNICATE\r\n")
    assert r.line().startswith(b"t3 BAD")
    r.send(b"t4 SELECT INBOX\r\n")
    assert r.line().startswith(b"t4 BAD")  # not authenticated
    r.send(b"\r\n")
    assert r.line().startswith(b"* BAD")
    r.login()
    # A literal larger than the limit is refused before any byte is sent ...
    r.send(b"t5 APPEND INBOX {999999999999}\r\n")
    assert r.line().startswith(b"t5 NO [TOOBIG]")
    # ... a non-synchronizing one is refused at once and the connection closed
    # (RFC 7888 4: the client sends it anyway), never silently read.
    r.send(b"t6 LOGIN {70000+}\r\n")
    assert r.line().startswith(b"t6 NO [TOOBIG]")
    assert r.f.readline() == b""  # closed
    r = RawIMAP(daemon)
    r.login()
    r.send(b"t7 SELECT INBOX\r\n")
    assert r.until_tagged(b"t7")[-1].startswith(b"t7 OK")
    for bad in (b"t8 FETCH 1 (FLAGS", b"t9 FETCH 1:x FLAGS", b"t10 STORE 1 +FLAGS (\\Bogus"
                b" \"x\")", b"t11 SEARCH (UNSEEN", b't12 STATUS INBOX (FOO)',
                b"t13 UID FROB 1", b't14 LIST "" "unterminated'):
        r.send(bad + b"\r\n")
        tag = bad.split(b" ")[0]
        assert r.until_tagged(tag)[-1].startswith(tag + b" BAD"), bad
    # LITERAL+ APPEND works and the session is fine.
    msg = crlf(b"Subject: lit+\n\nbody\n")
    r.send(b"t15 APPEND INBOX (\\Seen) {%d+}\r\n" % len(msg) + msg + b"\r\n")
    assert re.match(rb"t15 OK \[APPENDUID \d+ 2\]", r.until_tagged(b"t15")[-1])
    r.send(b"t16 LOGOUT\r\n")
    assert r.until_tagged(b"t16")[-1].startswith(b"t16 OK")
    r.close()


@pytest.mark.maildir_only  # mutt's files in the Maildir
def test_maildir_from_another_program(daemon):
    """A Maildir as mutt writes it (no index, flags in names) is served."""
    root = daemon.maildir("alice")
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "cur" / "1600000000.M1P1.mutt:2,RS").write_bytes(SIMPLE)
    (root / "cur" / "1600000001.M2P1.mutt:2,F").write_bytes(MULTIPART)
    (root / "new" / "1600000002.M3P1.mutt").write_bytes(b"Subject: n\n\nnew\n")
    os.utime(root / "cur" / "1600000000.M1P1.mutt:2,RS", (1600000000, 1600000000))
    m = connect(daemon)
    m.select("INBOX")
    data = fetch_one(m, "1:3", "(UID FLAGS)")
    assert data == [b"1 (UID 1 FLAGS (\\Answered \\Seen \\Recent))",
                    b"2 (UID 2 FLAGS (\\Flagged \\Recent))", b"3 (UID 3 FLAGS (\\Recent))"]
    assert fetch_one(m, "1", "BODY.PEEK[]")[0][1] == crlf(SIMPLE)
    assert b"2020" in fetch_one(m, "1", "INTERNALDATE")[0]
    m.logout()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_imap(daemon):
    put(daemon, "alice", SIMPLE)
    out = subprocess.run(
        ["curl", "-s", "--ssl-reqd", "-k", "--user", "alice:wonderland",
         f"imap://127.0.0.1:{daemon.port('imap')}/INBOX;UID=1"],
        capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == crlf(SIMPLE)
    out = subprocess.run(
        ["curl", "-s", "-k", "--user", "alice:wonderland",
         f"imaps://127.0.0.1:{daemon.port('imaps')}/"],
        capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert b'"." Sent' in out.stdout


@pytest.mark.skipif(shutil.which("fetchmail") is None, reason="fetchmail not installed")
def test_fetchmail_imap(daemon, tmp_path):
    put(daemon, "alice", SIMPLE)
    put(daemon, "alice", MULTIPART)
    mbox = tmp_path / "mbox"
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f"poll 127.0.0.1 protocol imap port {daemon.port('imap')}\n"
        f"  user alice password wonderland sslproto tls1.2+ no sslcertck\n"
        f"  mda \"/bin/sh -c 'cat >> {mbox}'\"\n")
    rc.chmod(0o600)
    out = subprocess.run(["fetchmail", "-f", str(rc), "--nosyslog", "-v"],
                         capture_output=True, timeout=60,
                         env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
    got = mbox.read_bytes()
    assert b"Hello Alice,\nthe soup is ready.\n" in got
    assert b"JVBERi0xLjQK" in got
    # fetchmail flags \Deleted and expunges: the messages are gone.
    assert daemon.wait_for(lambda: daemon.messages("alice") == [])


def test_eight_bit_headers_and_nested_message():
    raw = crlf("From: Jörg <j@example.test>\nSubject: Grüße\n"
               "Content-Type: multipart/mixed; boundary=b1\n\n"
               "--b1\nContent-Type: text/plain\n\nhi\n"
               "--b1\nContent-Type: message/rfc822\n\n"
               "Subject: inner\nContent-Type: text/html\n\n<p>x</p>\n"
               "--b1--\n".encode())
    part = Part(raw)
    from netsuite.imap.message import envelope

    env = envelope(part)
    assert b'{7}\r\nGr\xc3\xbc\xc3\x9fe' in env  # 8-bit text goes out as a literal
    bs = bodystructure(part)
    assert b'("message" "rfc822" NIL NIL NIL "7bit" ' in bs
    # The CRLF before a boundary belongs to the boundary (RFC 2046 5.1.1).
    assert b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 8 0 NIL NIL NIL NIL)' in bs
    assert part.section((2, 1), "", ()) == b"<p>x</p>"
    assert part.section((2,), "HEADER", ()) == b"Subject: inner\r\nContent-Type: text/html\r\n\r\n"


def test_seeded_fuzz_gets_tagged_answers(daemon):
    """Random argument soup for every command: each gets its tagged answer; the session lives."""
    import random

    rnd = random.Random(2026)
    put(daemon, "alice", SIMPLE)
    put(daemon, "alice", MULTIPART)
    commands = ["FETCH", "UID FETCH", "STORE", "UID STORE", "SEARCH", "UID SEARCH", "COPY",
                "MOVE", "UID EXPUNGE", "LIST", "LSUB", "STATUS", "SELECT", "EXAMINE", "CREATE",
                "RENAME", "SUBSCRIBE", "NOOP", "CHECK", "ENABLE", "ID", "NAMESPACE",
                "CAPABILITY", "EXPUNGE", "UNSELECT", "BOGUS", "UID BOGUS"]
    tokens = ["1", "*", "1:*", "2:1", "0", "4294967296", "1,2", "(", ")", "()", "(FLAGS)",
              "BODY[]", "BODY.PEEK[1.MIME]<0.5>", "BODY[HEADER.FIELDS (A", '"q\\"x"', '"',
              "\\Seen", "(\\Seen", "+FLAGS", "FLAGS.SILENT", "INBOX", "Trash", "%", "NIL",
              "OR", "NOT", "UID", "HEADER", "SINCE", "1-Jan-2000", "x" * 300, "\x7f", "é",
              "CHARSET", "UTF-8", "[", "]", "<", ">", "{", "}", "\\", "DONE"]
    r = RawIMAP(daemon)
    r.login()
    for n in range(300):
        tag = b"f%d" % n
        args = " ".join(rnd.choice(tokens) for _ in range(rnd.randint(0, 6)))
        line = f"{rnd.choice(commands)} {args}".encode()
        if line.rstrip().endswith(b"}"):
            line += b" x"  # not a literal announcement: the test waits for an answer
        r.send(tag + b" " + line + b"\r\n")
        last = r.until_tagged(tag)[-1]
        assert re.match(rb"%s (OK|NO|BAD) " % tag, last), (line, last)
        assert b"SERVERBUG" not in last, (line, last)
    r.send(b"z NOOP\r\n")
    assert r.until_tagged(b"z")[-1].startswith(b"z OK")
    r.close()
    m = connect(daemon)
    assert m.select("INBOX")[0] == "OK"
    m.logout()
    assert "Traceback" not in daemon.log()


def test_big_fetch_and_search_run_in_batches(daemon):
    """Over 256 messages FETCH and SEARCH yield to the reactor between batches."""
    for i in range(300):
        put(daemon, "alice", b"Subject: n%d\n\n%s\n" % (i, b"needle" if i % 7 == 0 else b"hay"))
    m = connect(daemon)
    m.select("INBOX")
    other = connect(daemon)  # served meanwhile
    typ, data = m.fetch("1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    bodies = [d[1] for d in data if isinstance(d, tuple)]
    assert len(bodies) == 300 and bodies[299] == b"Subject: n299\r\n\r\n"
    typ, data = m.search(None, "BODY", "needle")
    assert [int(x) for x in data[0].split()] == [i + 1 for i in range(300) if i % 7 == 0]
    assert other.noop()[0] == "OK"
    other.logout()
    m.logout()


def test_avatars_provide_twisted_interfaces():
    from twisted.mail import imap4, pop3
    from zope.interface.verify import verifyClass

    from netsuite.imap.account import IImapAccount, ImapAccount
    from netsuite.imap.mailbox import ISessionMailbox, SessionMailbox
    from netsuite.pop3.mailbox import POP3Mailbox

    assert verifyClass(IImapAccount, ImapAccount)
    # Twisted's IAccount is not claimed: its select() must return an IMailbox.
    assert not imap4.IAccount.implementedBy(ImapAccount)
    assert verifyClass(imap4.INamespacePresenter, ImapAccount)
    # Twisted's IMailbox is not claimed: netsuite renders FETCH/STORE/SEARCH/COPY itself.
    assert verifyClass(ISessionMailbox, SessionMailbox)
    assert imap4.IMailboxInfo.implementedBy(SessionMailbox)
    assert not imap4.IMailbox.implementedBy(SessionMailbox)
    assert verifyClass(pop3.IMailbox, POP3Mailbox)


def test_plaintext_allowed_by_config(make_daemon):
    d = make_daemon(listeners=["imap", "pop3"], users=USERS,
                    config={"server": {"allow_plaintext_auth": True}})
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    assert "LOGINDISABLED" not in m.capabilities and "AUTH=PLAIN" in m.capabilities
    assert m.login("alice", "wonderland")[0] == "OK"
    m.logout()
    import poplib

    p = poplib.POP3("127.0.0.1", d.port("pop3"), timeout=10)
    assert "USER" in p.capa()
    p.user("alice")
    assert p.pass_("wonderland").startswith(b"+OK")
    p.quit()


def test_connection_caps_send_the_busy_lines(make_daemon):
    d = make_daemon(listeners=["imap", "pop3"], users=USERS,
                    config={"imap": {"max_connections_per_address": 1},
                            "pop3": {"max_connections": 1}})
    for name, busy in (("imap", b"* BYE Too many connections\r\n"),
                       ("pop3", b"-ERR [SYS/TEMP] Too many connections\r\n")):
        first = socket.create_connection(("127.0.0.1", d.port(name)), timeout=10)
        assert first.makefile("rb").readline()
        second = socket.create_connection(("127.0.0.1", d.port(name)), timeout=10)
        assert second.makefile("rb").read() == busy
        second.close()
        first.close()

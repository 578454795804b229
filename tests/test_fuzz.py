"""
Seeded fuzz of POP3, IMAP, FTP and TELNET against the real daemon (SMTP: test_smtp_fuzz).

Each test sends at least 2000 hostile lines (mutated commands before and after a valid
login, random bytes, overlong lines, NULs, non-UTF-8 names and passwords, huge numbers,
bad IMAP literals, TELNET IAC garbage, FTP PORT/EPRT garbage, C{..} paths), then checks
that the daemon still serves a normal session and that its log shows no crash.  The
generator and runner are in L{fuzz}; C{NETSUITE_FUZZ_SEED} picks another seed.
"""

from __future__ import annotations

import ftplib
import imaplib
import os
import poplib
import random
import re
import socket
from collections.abc import Iterator

import fuzz
import pytest
from fuzz import Session, line

from netsuite.store.maildir import MaildirStore
from netsuite.telnet import wire
from netsuite.telnet.client import TelnetClient

LINES = fuzz.LINES
#: Switches that kept the main fuzz clear of two bugs it found while they were open
#: (both fixed, with the regression tests at the end of this file): keep them False.
AVOID_NON_UTF8_PASSWORDS = False   # was: UnicodeEncodeError in passwdfile.verify
AVOID_LONG_FTP_NAMES = False       # was: OSError 36 for a name over NAME_MAX
PASSWORD = "fuzz-pw"
MESSAGE = (b"From: bob@example.test\nTo: alice@example.test\nSubject: fuzz\n\n"
           b"first line\n.leading dot\n..two dots\n\nlast line\n")
#: Plain-text logins allowed, throttle that never locks and hardly waits, caps high enough.
CONFIG = {
    "server": {"allow_plaintext_auth": True},
    "throttle": {"free_failures": 1000, "base_delay": 0.01, "max_delay": 0.01,
                 "lock_after": 100000},
    "pop3": {"max_line_length": 1024, "max_connections_per_address": 100},
    "imap": {"max_line_length": 8192, "max_literal": 4096, "max_connections_per_address": 100},
    "ftp": {"require_tls": False, "max_line_length": 1024, "connect_timeout": 2,
            "max_login_failures": 1000, "max_connections_per_address": 100},
    "telnet": {"permit_root_login": os.geteuid() == 0, "fail_delay": 0.01, "utmp": False,
               "hangup_grace": 0.5, "login_timeout": 10, "max_connections_per_address": 100,
               "user_programs": {"fuzz": ["/bin/cat"]}},
}


@pytest.fixture
def daemon(make_daemon):
    def start(listener: str, **config):
        d = make_daemon(listeners=[listener], users={"alice": PASSWORD, "fuzz": PASSWORD},
                        config=fuzz_config(**config))
        for n in range(3):
            deliver(d, b"before %d" % n)
        return d
    return start


def fuzz_config(**sections) -> dict:
    return {name: {**CONFIG.get(name, {}), **sections.get(name, {})}
            for name in {*CONFIG, *sections}}


def sessions(rng: random.Random, make_line, login: list[bytes], welcome: bytes,
             closing: bytes, per_session: tuple[int, int] = (20, 80)) -> Iterator[Session]:
    """Endless sessions, half of them after a valid login (answered C{welcome})."""
    while True:
        logged_in = rng.random() < 0.5
        lines = [make_line(rng, logged_in) for _ in range(rng.randrange(*per_session))]
        yield Session(lines, opening=login if logged_in else [], welcome=welcome,
                      closing=closing if rng.random() < 0.7 else b"")


def utf8_credentials(text: bytes, verbs: tuple[bytes, ...]) -> bytes:
    """
    Passwords stay UTF-8 in the main fuzz: non-UTF-8 ones are a known bug, fixed on
    another branch (test_non_utf8_password_is_refused).  No literal for them either.
    """
    if not AVOID_NON_UTF8_PASSWORDS or not any(verb in text.upper() for verb in verbs):
        return text
    return text.decode("utf-8", "replace").encode().replace(b"{", b"(")


def deliver(d, subject: bytes) -> None:
    delivery = MaildirStore(d.data_dir / "mail").delivery("alice")
    delivery.write(MESSAGE.replace(b"Subject: fuzz", b"Subject: " + subject))
    delivery._finish()


def assert_survived(d, protocol: str, run: fuzz.Run) -> None:
    assert run.sent >= LINES, fuzz.report(protocol, run)  # the budget did not cut it short
    logins = d.log().count(f"login: protocol={protocol} address=127.0.0.1 user=")
    assert logins >= run.sessions // 5, fuzz.report(protocol, run)  # 40-50% were to log in
    assert not run.crashes, fuzz.report(protocol, run)
    log = d.log()
    assert not fuzz.CRASH.search(log), fuzz.report(protocol, run) + fuzz.tail_from_crash(log)


# -- POP3 ----------------------------------------------------------------------------------

POP3_VERBS = [b"USER", b"PASS", b"APOP", b"STAT", b"LIST", b"RETR", b"DELE", b"NOOP",
              b"RSET", b"TOP", b"UIDL", b"CAPA", b"AUTH", b"AUTH PLAIN", b"AUTH LOGIN",
              b"XTND", b"LAST", b"list", b"retr", b"", b"QUIT"]
POP3_PIECES = [b"1", b"2", b"3", b"4", b"0", b"-1", b"1 0", b"1 -1", b"1 99999999999999999",
               # No valid password: a login still in flight when a session drops would
               # leak the maildrop lock (see test_pop3_login_in_flight_when_dropped...).
               b"alice", b"fuzz", b"fuzz-pwX", b"alice\xff", b"\xff\xfe\xfd", b"PLAIN",
               b"AGFsaWNlAHdyb25n", b"=", b"*", b"AAAA", b"!!!", b"1 1 1"]


def pop3_line(rng: random.Random, logged_in: bool) -> bytes:
    if rng.random() < 0.05:
        return rng.randbytes(rng.randrange(1, 200)) + b"\r\n"
    if rng.random() < 0.03:
        return b"X" * rng.choice([1025, 5000, 70000]) + b"\r\n"
    text = line(rng, POP3_VERBS, POP3_PIECES, most=3)
    if text.startswith(b"QUIT") and rng.random() < 0.8:
        text = b"NOOP\r\n"
    return utf8_credentials(text, (b"PASS", b"APOP"))


def pop3_sessions(rng: random.Random) -> Iterator[Session]:
    login = [b"USER alice\r\n", b"PASS " + PASSWORD.encode() + b"\r\n"]
    return sessions(rng, pop3_line, login, b"+OK Logged in", b"QUIT\r\n")


def pop3_survived(d, run: fuzz.Run) -> None:
    deliver(d, b"after")
    p = poplib.POP3("127.0.0.1", d.port("pop3"), timeout=10)
    p.user("alice")
    p.pass_(PASSWORD)
    count, _ = p.stat()
    assert b"Subject: after" in p.retr(count)[1]
    p.quit()
    assert_survived(d, "pop3", run)


def test_pop3_fuzz(daemon):
    d = daemon("pop3")
    pop3_survived(d, fuzz.blast(d.port("pop3"), pop3_sessions(fuzz.rng_for("pop3")), d.log))


# -- IMAP ----------------------------------------------------------------------------------

IMAP_COMMANDS = [b"CAPABILITY", b"NOOP", b"LOGIN", b"AUTHENTICATE", b"AUTHENTICATE PLAIN",
                 b"SELECT", b"EXAMINE", b"CREATE", b"DELETE", b"RENAME", b"SUBSCRIBE",
                 b"UNSUBSCRIBE", b"LIST", b"LSUB", b"STATUS", b"APPEND", b"CHECK", b"CLOSE",
                 b"EXPUNGE", b"SEARCH", b"FETCH", b"STORE", b"COPY", b"MOVE", b"UID FETCH",
                 b"UID SEARCH", b"UID STORE", b"UID COPY", b"UID MOVE", b"UID EXPUNGE",
                 b"UID", b"IDLE", b"ENABLE", b"ID", b"UNSELECT", b"NAMESPACE", b"GETQUOTA",
                 b"XYZZY", b""]
IMAP_PIECES = [b"INBOX", b"inbox", b"INBOX.x", b'"INBOX"', b'""', b"Fuzz", b"Trash", b"Sent",
               b"&AOQ-", b"&", b"&-", b"&Jjo", b"a\xffb", b"\xc3\x28", b"..", b"../x",
               b"1", b"2", b"*", b"1:*", b"*:1", b"0", b"0:0", b"4294967295", b"4294967296",
               b"1,2,3", b"1:4294967296", b"2:1",
               b"FLAGS", b"(FLAGS)", b"(UID RFC822.SIZE)", b"BODY[]", b"BODY.PEEK[]",
               b"BODY[]<0.7>", b"BODY[]<4294967296.1>", b"BODY[HEADER.FIELDS (SUBJECT)]",
               b"BODY[1.2.3.MIME]", b"BODYSTRUCTURE", b"ENVELOPE", b"(ALL)", b"FULL", b"FAST",
               b"BINARY[1]", b"+FLAGS", b"-FLAGS.SILENT", b"(\\Seen)", b"(\\Deleted \\Foo)",
               b"\\Seen", b"ALL", b"TEXT", b"HEADER", b"SUBJECT", b"CHARSET", b"UTF-8",
               b"BEFORE", b"1-Jan-2020", b"99-Foo-99999", b"OR", b"NOT", b"LARGER",
               b"(MESSAGES UIDNEXT UNSEEN)", b"(MESSAGES", b"alice", PASSWORD.encode(),
               b"NIL", b"(", b")", b"((((((((((", b"{0}", b"{5}", b"{999999999}", b"{5+}",
               b"{-1}", b"{4294967296}", b"{abc}", b"~{3}", b"CONDSTORE", b"UTF8=ACCEPT",
               b"QRESYNC", b"(CONDSTORE)", b"(QRESYNC (1 1 1:*))", b"(QRESYNC (1 1 1:9 (1 2)))",
               b"(CHANGEDSINCE 1 VANISHED)", b"(UNCHANGEDSINCE 0)", b"MODSEQ",
               b'"/flags/\\seen"', b"9223372036854775808", b"(HIGHESTMODSEQ)"]


def imap_line(rng: random.Random, logged_in: bool) -> bytes:
    roll = rng.random()
    tag = rng.choice([b"a1", b"a2", b"*", b"+", b"", b"t\xff", b"x" * 100, b"a1"])
    if roll < 0.05:
        return rng.randbytes(rng.randrange(1, 200)) + b"\r\n"
    if roll < 0.08:
        return tag + b" NOOP " + b"X" * rng.choice([8193, 70000]) + b"\r\n"
    if roll < 0.2:
        # A literal announced, then short, exact or overlong data, or none.
        size = rng.choice([0, 1, 5, 20, 4097, 999999999])
        plus = rng.choice([b"", b"+"])
        cmd = rng.choice([b"APPEND INBOX ", b"APPEND INBOX (\\Seen) ", b"SELECT ",
                          b"CREATE ", b"SEARCH TEXT ", b"RENAME Fuzz ", b"STATUS "])
        data = rng.randbytes(min(size, 30)) if rng.random() < 0.5 else b"short"
        return tag + b" " + cmd + b"{%d%s}\r\n" % (size, plus) + data + b"\r\n"
    if roll < 0.23:
        return b"DONE\r\n"
    text = line(rng, [tag + b" " + c for c in IMAP_COMMANDS], IMAP_PIECES, most=5)
    return utf8_credentials(text, (b"LOGIN", b"AUTHENTICATE"))


def imap_sessions(rng: random.Random) -> Iterator[Session]:
    login = [b"l1 LOGIN alice " + PASSWORD.encode() + b"\r\n", b"l2 SELECT INBOX\r\n"]
    return sessions(rng, imap_line, login, b"l2 OK", b"z LOGOUT\r\n")


def imap_survived(d, run: fuzz.Run) -> None:
    deliver(d, b"after")
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    m.login("alice", PASSWORD)
    typ, data = m.select("INBOX")
    assert typ == "OK"
    typ, data = m.fetch(data[0].decode(), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and b"Subject: after" in data[0][1], data
    m.logout()
    assert_survived(d, "imap", run)


def test_imap_fuzz(daemon):
    d = daemon("imap")
    imap_survived(d, fuzz.blast(d.port("imap"), imap_sessions(fuzz.rng_for("imap")), d.log))


# -- FTP -----------------------------------------------------------------------------------

FTP_VERBS = [b"USER", b"PASS", b"ACCT", b"CWD", b"CDUP", b"PWD", b"XPWD", b"MKD", b"RMD",
             b"DELE", b"RNFR", b"RNTO", b"SIZE", b"MDTM", b"MLST", b"MLSD", b"NLST", b"LIST",
             b"STAT", b"RETR", b"STOR", b"APPE", b"STOU", b"REST", b"ALLO", b"ABOR", b"TYPE",
             b"MODE", b"STRU", b"PASV", b"EPSV", b"PORT", b"EPRT", b"OPTS", b"FEAT", b"SYST",
             b"HELP", b"SITE", b"NOOP", b"PBSZ", b"PROT", b"XMKD", b"XRMD", b"", b"HOST"]
FTP_PIECES = [b"alice", b"anonymous", b"fuzz", PASSWORD.encode(), b"a\xffb", b"\xc3\x28.txt",
              b"file.txt", b"dir", b"dir/sub", b"..", b"../..", b"./.", b"/", b"//", b"~",
              b"/nonexistent-fuzz", b"*", b"-la", b"-R", b"A", b"I", b"E", b"L 8", b"X",
              b"S", b"B", b"C", b"F", b"R", b"P", b"UTF8 ON", b"UTF8", b"MLST type;size;",
              b"CHMOD 777 x", b"0", b"-1", b"99999999999999999999", b"ALL", b"1", b"2",
              # PORT / EPRT garbage: never a reachable port of someone else.
              b"127,0,0,1,0,21", b"127,0,0,1,300,1", b"1,2,3", b"999,0,0,1,0,1",
              b"127,0,0,1,-1,5", b"10,0,0,1,200,1", b",,,,,", b"127.0.0.1,1,1",
              b"|1|127.0.0.1|21|", b"|1|127.0.0.1|65536|", b"|2|::1|21|", b"||||", b"|3|x|1|",
              b"|1|127.0.0.1|-1|", b"|1|10.0.0.1|4000|", b"|1|", b"|||", b"|2|::ffff:127.0.0.1|1|"]


def ftp_line(rng: random.Random, logged_in: bool) -> bytes:
    roll = rng.random()
    if roll < 0.05:
        return rng.randbytes(rng.randrange(1, 200)) + b"\r\n"
    if roll < 0.08:
        return b"NOOP " + b"X" * rng.choice([1025, 5000]) + b"\r\n"
    text = line(rng, FTP_VERBS, FTP_PIECES, most=3)
    if AVOID_LONG_FTP_NAMES:
        text = b" ".join(w if len(w) <= 200 else w[:200] for w in text.split(b" "))
    return utf8_credentials(text, (b"PASS",))


def ftp_sessions(rng) -> Iterator[Session]:
    login = [b"USER alice\r\n", b"PASS " + PASSWORD.encode() + b"\r\n"]
    return sessions(rng, ftp_line, login, b"230",
                    b"QUIT\r\n")


def ftp_survived(d, run: fuzz.Run) -> None:
    f = ftplib.FTP(encoding="latin-1")  # the fuzz left names that are not UTF-8
    f.connect("127.0.0.1", d.port("ftp"), timeout=10)
    f.login("alice", PASSWORD)
    f.mkd("after-fuzz")
    assert "after-fuzz" in f.nlst()
    f.quit()
    assert_survived(d, "ftp", run)


def test_ftp_fuzz(daemon):
    d = daemon("ftp")
    ftp_survived(d, fuzz.blast(d.port("ftp"), ftp_sessions(fuzz.rng_for("ftp")), d.log))


# -- TELNET --------------------------------------------------------------------------------

IAC = bytes([wire.IAC])


def iac_garbage(rng: random.Random, plain: bool = False) -> bytes:
    """
    One hostile IAC sequence.  C{plain}: nothing in it but IAC and its command byte is
    over 127, so that however a broken sequence is read, only ASCII can reach a password
    (see AVOID_NON_UTF8_PASSWORDS).
    """
    sequence = _iac_garbage(rng)
    return _plain(sequence) if plain else sequence


def _plain(sequence: bytes) -> bytes:
    """
    Every byte over 127 made ASCII but IAC and its command byte (no IAC IAC); an option
    byte always follows WILL, WONT, DO, DONT and SB, so that no IAC of the next sequence
    can be taken for one.
    """
    out = bytearray()
    after_iac = option = False
    for b in sequence:
        if option:
            out.append(b & 0x7F)
            option = False
        elif after_iac:
            command = b if 0xF0 <= b <= 0xFE else wire.NOP
            out.append(command)
            option = command in (*wire.NEGOTIATION, wire.SB)
            after_iac = False
        elif b == wire.IAC:
            out.append(b)
            after_iac = True
        else:
            out.append(b & 0x7F)
    if after_iac:
        out.append(wire.NOP)
    elif option:
        out.append(99)
    return bytes(out)


def _iac_garbage(rng: random.Random) -> bytes:
    randbytes = rng.randbytes
    kind = rng.randrange(9)
    if kind == 0:   # negotiation of any option, known or not
        return bytes([wire.IAC, rng.choice(wire.NEGOTIATION), rng.randrange(256)])
    if kind == 1:   # NAWS with a bad length, doubled IACs, zero or huge sizes
        payload = rng.choice([b"", b"\x00", b"\x00\x50\x00", b"\x00\x50\x00\x18\x00",
                              b"\x00\x00\x00\x00", b"\xff\xff\xff\xff\xff\xff\xff\xff",
                              b"\xff\xff\x00\x18", randbytes(rng.randrange(0, 12))])
        return IAC + bytes([wire.SB, wire.NAWS]) + payload + bytes([wire.IAC, wire.SE])
    if kind == 2:   # SB without SE (the rest of the session becomes its payload)
        return IAC + bytes([wire.SB, rng.choice([wire.TTYPE, wire.NAWS, 99])]) + b"abc"
    if kind == 3:   # TTYPE IS with garbage
        return (IAC + bytes([wire.SB, wire.TTYPE, rng.choice([0, 1, 2, 255])])
                + rng.choice([b"", b"\xff\xff", b"x" * 300, b"vt100\x00", randbytes(20)])
                + bytes([wire.IAC, wire.SE]))
    if kind == 4:   # NEW-ENVIRON with a broken structure
        payload = bytes([rng.choice([0, 1, 2, 7])]) + b"".join(
            rng.choice([b"\x00", b"\x01", b"\x02", b"\x03", b"USER", b"-f root", b"LANG",
                        b"\xff\xff", b"LD_PRELOAD", b"x" * 200, b"\x02\x02"])
            for _ in range(rng.randrange(0, 8)))
        return IAC + bytes([wire.SB, wire.NEW_ENVIRON]) + payload + bytes([wire.IAC, wire.SE])
    if kind == 5:   # every IAC command byte, including SUSP, ABORT, EOF, stray SE
        return bytes([wire.IAC, rng.randrange(236, 256)])
    if kind == 6:   # SB of an option never negotiated, or SE without SB
        return IAC + bytes([wire.SB, rng.randrange(256)]) + randbytes(5) + IAC + bytes(
            [wire.SE]) if rng.random() < 0.7 else bytes([wire.IAC, wire.SE])
    if kind == 7:   # a lone IAC at the end of a packet
        return IAC
    return b"\r\x00" if rng.random() < 0.5 else rng.choice([b"\r", b"\x00", b"\r\r\n"])


#: Login names and passwords: empty, long, controls, the CVE's option lookalike.
TELNET_NAMES = [b"alice", b"fuzz", b"-f root", b"root", b"", b" ", b"x" * 300, b"a" * 5000,
                b"alice\x00", b"al\x7fice", b"\x1b[2J", b"%s%n", b"a:b", b"../../etc",
                b"\xc3\x28", "ü".encode()]


def telnet_unit(rng: random.Random, logged_in: bool) -> bytes:
    """One 'line' of TELNET input: typed text ending in CR LF, sprinkled with IAC garbage."""
    parts = []
    for _ in range(rng.randrange(0, 4)):
        roll = rng.random()
        if roll < 0.4:
            parts.append(iac_garbage(rng, AVOID_NON_UTF8_PASSWORDS and not logged_in))
        elif roll < 0.7 and not logged_in:
            name = rng.choice(TELNET_NAMES)
            parts.append(name if not AVOID_NON_UTF8_PASSWORDS or _utf8(name) else b"x")
        else:
            data = rng.randbytes(rng.randrange(1, 60)) if logged_in else bytes(
                rng.randrange(32, 127) for _ in range(rng.randrange(1, 30)))
            if AVOID_NON_UTF8_PASSWORDS and not _utf8(data):
                data = data.decode("utf-8", "replace").encode()
            parts.append(data)
    text = b"".join(parts)
    return text + rng.choice([b"\r\n", b"\r\n", b"\r\x00", b"\n", b"\r"])


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


#: What a client that refuses the server's DO NAWS, TTYPE and NEW-ENVIRON sends, so that
#: the login does not wait for answers that would never come.
REFUSALS = b"".join(wire.command(wire.WONT, o) for o in (wire.NAWS, wire.TTYPE, wire.NEW_ENVIRON))


def telnet_sessions(rng: random.Random) -> Iterator[Session]:
    """Endless sessions; 40% log in as 'fuzz' (whose program is cat) and type at it."""
    while True:
        logged_in = rng.random() < 0.4
        count = rng.randrange(60, 120) if logged_in else rng.randrange(3, 10)
        units = [telnet_unit(rng, logged_in) for _ in range(count)]
        if logged_in:
            # cat echoes the marker once the program runs: the garbage goes to it.
            opening = [REFUSALS, b"fuzz\r\n", PASSWORD.encode() + b"\r\n", b"fuzz-ready\r\n"]
            yield Session(units, opening=opening, welcome=b"fuzz-ready",
                          closing=b"\x04" if rng.random() < 0.5 else b"")
        else:
            # Wait for the answers (or the hang-up after max_tries) half of the time.
            yield Session(units, opening=[REFUSALS] if rng.random() < 0.7 else [],
                          closing=b"\r\n" if rng.random() < 0.5 else b"")


def telnet_survived(d, run: fuzz.Run) -> None:
    c = TelnetClient("127.0.0.1", d.port("telnet"))
    c.login("fuzz", PASSWORD, prompt="")
    c.sendline("still-here")
    c.expect(b"still-here\r\n")  # cat's echo through the pty
    c.close()
    # Every session's program was hung up and reaped.
    assert d.wait_for(lambda: not children(d.proc.pid), timeout=15), children(d.proc.pid)
    assert_survived(d, "telnet", run)


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def test_telnet_fuzz(daemon):
    d = daemon("telnet")
    run = fuzz.blast(d.port("telnet"), telnet_sessions(fuzz.rng_for("telnet")), d.log)
    telnet_survived(d, run)


# -- found by the fuzz, not fixed here ------------------------------------------------------


def exchange(port: int, data: bytes, until: bytes) -> bytes:
    """Send C{data} after the greeting; what the server said up to C{until}."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        fuzz.drain(sock, 5.0, 5.0, until=b"\n")
        sock.sendall(data)
        return fuzz.drain(sock, 3.0, 10.0, until=until)


NON_UTF8_LOGINS = {
    "pop3": (b"USER alice\r\nPASS \xc3\x28\r\n", b"-ERR [AUTH]"),
    "imap": (b'a LOGIN alice "\xc3\x28"\r\n', b"a NO [AUTHENTICATIONFAILED]"),
    "ftp": (b"USER alice\r\nPASS \xc3\x28\r\n", b"\r\n530 "),
    "telnet": (b"alice\r\n\xc3\x28\r\n", b"Login incorrect"),
}


@pytest.mark.parametrize("protocol", sorted(NON_UTF8_LOGINS))
def test_non_utf8_password_is_refused(daemon, protocol):
    d = daemon(protocol)
    data, refusal = NON_UTF8_LOGINS[protocol]
    assert refusal in exchange(d.port(protocol), data, refusal)
    assert not fuzz.CRASH.search(d.log()), fuzz.tail_from_crash(d.log())


def test_ftp_name_over_name_max_is_refused(daemon):
    d = daemon("ftp")
    login = b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\n"
    got = exchange(d.port("ftp"), login + b"MKD " + b"A" * 300 + b"\r\n", b"\r\n5")
    assert re.search(rb"\r\n55[0-3] ", got), got  # refused as a name, not a local error
    assert not fuzz.CRASH.search(d.log()), fuzz.tail_from_crash(d.log())


def test_pop3_login_in_flight_when_dropped_releases_the_maildrop(daemon):
    """USER, PASS and hang up at once: the login finishes after the connection is gone."""
    d = daemon("pop3")
    with socket.create_connection(("127.0.0.1", d.port("pop3")), timeout=10) as sock:
        fuzz.drain(sock, 5.0, 5.0, until=b"\n")
        sock.sendall(b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\n")
    assert d.wait_for(lambda: "login: protocol=pop3" in d.log())
    p = poplib.POP3("127.0.0.1", d.port("pop3"), timeout=10)
    p.user("alice")
    assert p.pass_(PASSWORD).startswith(b"+OK")
    p.quit()

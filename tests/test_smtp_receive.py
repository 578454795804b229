"""SMTP receiving on the MX listener, against the real daemon with smtplib and raw sockets."""

from __future__ import annotations

import smtplib
import socket

import pytest
from harness import Daemon
from rawsmtp import RawSMTP

MAX_SIZE = 200_000


@pytest.fixture(scope="module")
def mx(tmp_path_factory, mail_store):
    d = Daemon(tmp_path_factory.mktemp("mx"), listeners=["smtp", "submission"], config={
        "mail": {"aliases": {"team": ["alice", "bob"], "postmaster": ["alice"],
                             "everyone": ["team", "carol", "alice"]}},
        "smtp": {"max_message_size": MAX_SIZE, "max_recipients": 5,
                 "max_line_length": 1000},
    })
    for name in ("alice", "bob", "carol"):
        d.add_user(name, f"{name}-pw")
    d.start()
    yield d
    d.stop()


def body_of(stored: bytes) -> bytes:
    """The stored message without the Return-Path and Received lines we add."""
    lines = stored.split(b"\n")
    assert lines[0].startswith(b"Return-Path: <"), lines[0]
    assert lines[1].startswith(b"Received: from "), lines[1]
    i = 2
    while lines[i].startswith(b"\t"):
        i += 1
    return b"\n".join(lines[i:])


def latest(d: Daemon, user: str, count_before: int, timeout: float = 5.0) -> bytes:
    msgs = d.wait_for(lambda: len(d.messages(user)) > count_before and d.messages(user),
                      timeout)
    assert msgs, f"no new message for {user}"
    return msgs[-1]


def test_delivery_is_byte_exact_with_dots_8bit_and_utf8(mx):
    before = len(mx.messages("alice"))
    message = (
        "From: Jörg <joerg@remote.test>\r\n"
        "To: alice@example.test\r\n"
        "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        ".leading dot\r\n"
        "..two dots\r\n"
        ".\tdot tab\r\n"
        "Grüße, ünïcödé ☃\r\n"
        "bare\rcarriage return kept\r\n"
        "\r\n"
        "trailing line\r\n"
    ).encode() + b"\xff\xfe raw 8-bit bytes\r\n"
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=10) as s:
        s.ehlo("client.test")
        s.sendmail("joerg@remote.test", ["alice@example.test"], message,
                   mail_options=["BODY=8BITMIME"])
    stored = latest(mx, "alice", before)
    assert body_of(stored) == message.replace(b"\r\n", b"\n")
    assert stored.startswith(b"Return-Path: <joerg@remote.test>\n")
    assert b"by mx.test (netsuite) with ESMTP id " in stored
    assert b"for <alice@example.test>" in stored


@pytest.mark.maildir_only  # the Maildir file's name and directory
def test_maildir_file_name_carries_size_and_lands_in_new(mx):
    before = len(mx.messages("bob"))
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=10) as s:
        s.sendmail("x@remote.test", ["bob@example.test"], b"Subject: s\r\n\r\nbody\r\n")
    latest(mx, "bob", before)
    new = list((mx.maildir("bob") / "new").iterdir())
    assert new and not list((mx.maildir("bob") / "tmp").iterdir())
    for path in new:
        size = int(path.name.rsplit(",S=", 1)[1].split(":")[0].split(",")[0])
        assert size == path.stat().st_size


def test_smtputf8_address(mx):
    before = len(mx.messages("carol"))
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=10) as s:
        s.ehlo()
        assert s.has_extn("smtputf8")
        s.sendmail("jörg@bücher.test", ["carol@example.test"],
                   "Subject: ü\r\n\r\nx\r\n".encode(), mail_options=["SMTPUTF8"])
        code, text = s.docmd("MAIL", "FROM:<jörg@bücher.test>".encode().decode("latin-1"))
        assert code == 553 and b"5.6.7" in text  # non-ASCII without SMTPUTF8
    assert latest(mx, "carol", before).startswith("Return-Path: <jörg@bücher.test>".encode())


def test_unknown_user_and_relay_refused(mx):
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=10) as s:
        s.ehlo()
        s.mail("x@remote.test")
        code, text = s.rcpt("nobody@example.test")
        assert code == 550 and text.startswith(b"5.1.1")
        code, text = s.rcpt("victim@elsewhere.test")
        assert code == 554 and text.startswith(b"5.7.1"), "open relay!"
        code, text = s.rcpt("alice@EXAMPLE.TEST")
        assert code == 250 and text.startswith(b"2.1.5")
    log = mx.wait_for(lambda: "victim@elsewhere.test" in mx.log() and mx.log())
    assert ("refused: RCPT address=127.0.0.1 from=<x@remote.test> to=<victim@elsewhere.test> "
            "reply=554 5.7.1") in log
    assert "to=<nobody@example.test> reply=550 5.1.1" in log


def test_alias_fans_out_once_per_user(mx):
    counts = {u: len(mx.messages(u)) for u in ("alice", "bob", "carol")}
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=10) as s:
        s.sendmail("x@remote.test", ["everyone@example.test", "alice@example.test"],
                   b"Subject: fan-out\r\n\r\nhello team\r\n")
    for user in counts:
        msgs = mx.wait_for(lambda user=user: len(mx.messages(user)) > counts[user]
                           and mx.messages(user))
        assert len(msgs) == counts[user] + 1, f"{user} got {len(msgs) - counts[user]} copies"
        assert msgs[-1].endswith(b"hello team\n")


def test_bare_postmaster_goes_to_its_alias(mx):
    before = len(mx.messages("alice"))
    raw = RawSMTP(mx.port("smtp"))
    assert raw.cmd(b"HELO client.test")[0] == 250
    assert raw.cmd(b"MAIL FROM:<>")[0] == 250
    assert raw.cmd(b"RCPT TO:<Postmaster>")[0] == 250
    assert raw.cmd(b"DATA")[0] == 354
    assert raw.cmd(b"Subject: bounce\r\n\r\nx\r\n.")[0] == 250
    raw.close()
    assert latest(mx, "alice", before).startswith(b"Return-Path: <>\n")


def test_size_declared_too_big_is_refused_at_mail(mx):
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=10) as s:
        s.ehlo()
        assert int(s.esmtp_features["size"]) == MAX_SIZE
        code, text = s.mail("x@remote.test", [f"SIZE={MAX_SIZE + 1}"])
        assert code == 552 and text.startswith(b"5.3.4")
        code, _ = s.mail("x@remote.test", [f"SIZE={MAX_SIZE // 2}"])
        assert code == 250


def test_oversized_data_gets_552_and_session_goes_on(mx):
    before = len(mx.messages("bob"))
    big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * (MAX_SIZE // 1000 + 50)
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=30) as s:
        s.helo("client.test")  # plain HELO: smtplib declares no SIZE, so DATA must catch it
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("x@remote.test", ["bob@example.test"], big)
        assert e.value.smtp_code == 552 and e.value.smtp_error.startswith(b"5.3.4")
        s.sendmail("x@remote.test", ["bob@example.test"], b"Subject: small\r\n\r\nok\r\n")
    msgs = mx.wait_for(lambda: len(mx.messages("bob")) > before and mx.messages("bob"))
    assert len(msgs) == before + 1 and msgs[-1].endswith(b"ok\n")
    if not mx.in_postgresql:  # (no file to leave there)
        assert not list((mx.maildir("bob") / "tmp").iterdir()), "partial file left in tmp/"


def test_oversized_single_line_without_crlf(mx):
    raw = RawSMTP(mx.port("smtp"))
    raw.cmd(b"EHLO c")
    raw.cmd(b"MAIL FROM:<x@remote.test>")
    raw.cmd(b"RCPT TO:<bob@example.test>")
    assert raw.cmd(b"DATA")[0] == 354
    chunk = b"z" * 65536
    for _ in range(MAX_SIZE // len(chunk) + 2):
        raw.send(chunk)
    code, text = raw.cmd(b"\r\n.")
    assert code == 552 and text.startswith(b"5.3.4")
    assert raw.cmd(b"NOOP") == (250, b"2.0.0 Ok")
    raw.close()


def test_too_many_recipients(mx):
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=10) as s:
        s.ehlo()
        s.mail("x@remote.test")
        for _ in range(5):
            assert s.rcpt("alice@example.test")[0] == 250
        code, text = s.rcpt("alice@example.test")
        assert code == 452 and text.startswith(b"4.5.3")


def test_pipelined_session_answers_in_order(mx):
    before = len(mx.messages("carol"))
    raw = RawSMTP(mx.port("smtp"))
    code, text = raw.cmd(b"EHLO client.test")
    assert b"PIPELINING" in text
    raw.send(b"MAIL FROM:<p@remote.test>\r\nRCPT TO:<nobody@example.test>\r\n"
             b"RCPT TO:<carol@example.test>\r\nDATA\r\n")
    assert [raw.reply()[0] for _ in range(4)] == [250, 550, 250, 354]
    raw.send(b"Subject: piped\r\n\r\nfirst\r\n.\r\nMAIL FROM:<p@remote.test>\r\n"
             b"RCPT TO:<carol@example.test>\r\nDATA\r\n")
    assert [raw.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
    raw.send(b"second\r\n.\r\nQUIT\r\n")
    assert [raw.reply()[0] for _ in range(2)] == [250, 221]
    msgs = mx.wait_for(lambda: len(mx.messages("carol")) >= before + 2 and mx.messages("carol"))
    assert msgs[-2].endswith(b"first\n") and msgs[-1].endswith(b"second\n")


def test_bdat_chunks_pipelined_and_byte_exact(mx):
    before = len(mx.messages("alice"))
    raw = RawSMTP(mx.port("smtp"))
    code, text = raw.cmd(b"EHLO client.test")
    assert b"CHUNKING" in text
    part1 = b"Subject: chunked\r\n\r\n.not stuffed\r\nline two spl"
    part2 = b"it across chunks\r\n.\r\nstill body\r\n"
    raw.send(b"MAIL FROM:<c@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
             b"BDAT %d\r\n" % len(part1) + part1 + b"BDAT %d LAST\r\n" % len(part2) + part2)
    replies = [raw.reply() for _ in range(4)]
    assert [r[0] for r in replies] == [250, 250, 250, 250], replies
    assert replies[2][1] == b"2.0.0 %d octets received" % len(part1)
    assert b"queued as" in replies[3][1]
    assert raw.cmd(b"DATA")[0] == 503  # no transaction any more
    raw.close()
    stored = latest(mx, "alice", before)
    assert body_of(stored) == (part1 + part2).replace(b"\r\n", b"\n")


def test_bdat_refused_chunk_is_still_consumed(mx):
    raw = RawSMTP(mx.port("smtp"))
    raw.cmd(b"EHLO c")
    raw.send(b"BDAT 10\r\nNOOP\r\nXX\r\n")  # the 10 bytes look like a command: must not run
    code, text = raw.reply()
    assert code == 503 and text.startswith(b"5.5.1")
    assert raw.cmd(b"NOOP") == (250, b"2.0.0 Ok")
    raw.send(b"BDAT 1x\r\n")
    assert raw.reply()[0] == 501
    assert raw.closed()


def test_data_then_bdat_mix_is_refused(mx):
    raw = RawSMTP(mx.port("smtp"))
    raw.cmd(b"EHLO c")
    raw.cmd(b"MAIL FROM:<x@remote.test>")
    raw.cmd(b"RCPT TO:<alice@example.test>")
    raw.send(b"BDAT 3\r\nabc")
    assert raw.reply()[0] == 250
    assert raw.cmd(b"DATA")[0] == 503
    raw.close()


def test_bare_lf_dot_does_not_end_data(mx):
    """SMTP smuggling: only CRLF.CRLF ends DATA; the smuggled MAIL never runs."""
    before = len(mx.messages("alice"))
    raw = RawSMTP(mx.port("smtp"))
    raw.cmd(b"EHLO c")
    raw.cmd(b"MAIL FROM:<x@remote.test>")
    raw.cmd(b"RCPT TO:<alice@example.test>")
    assert raw.cmd(b"DATA")[0] == 354
    raw.send(b"Subject: outer\r\n\r\nhello\n.\nMAIL FROM:<evil@remote.test>\n"
             b"RCPT TO:<bob@example.test>\nDATA\nSubject: smuggled\n\n\r\n.\r\n")
    assert raw.reply()[0] == 250
    assert raw.cmd(b"NOOP")[0] == 250
    raw.close()
    stored = latest(mx, "alice", before)
    assert b"Subject: smuggled" in stored  # kept as content of the one message
    assert len(mx.messages("alice")) == before + 1


def test_commands_out_of_order_and_garbage(mx):
    raw = RawSMTP(mx.port("smtp"))
    assert raw.cmd(b"MAIL FROM:<x@remote.test>")[0] == 503      # before HELO
    raw.cmd(b"EHLO c")
    assert raw.cmd(b"RCPT TO:<alice@example.test>")[0] == 503   # before MAIL
    assert raw.cmd(b"DATA")[0] == 503
    raw.cmd(b"MAIL FROM:<x@remote.test>")
    assert raw.cmd(b"MAIL FROM:<x@remote.test>")[0] == 503      # nested
    assert raw.cmd(b"DATA")[0] == 554                           # no valid recipients
    assert raw.cmd(b"XYZZY")[0] == 502
    assert raw.cmd(b"\x01\x02\xff garbage")[0] == 500
    assert raw.cmd(b"MAIL FROM:<x@remote.test> FOO=bar")[0] in (503, 555)
    assert raw.cmd(b"RSET") == (250, b"2.0.0 Ok")
    assert raw.cmd(b"MAIL FROM:<x@remote.test> FOO=bar")[0] == 555
    assert raw.cmd(b"MAIL FROM:<x@remote.test> BODY=BINARYMIME")[0] == 501
    assert raw.cmd(b"MAIL FROM:x@remote.test")[0] == 501
    assert raw.cmd(b"")[0] == 500
    raw.close()


def test_nul_bytes_and_overlong_lines(mx):
    raw = RawSMTP(mx.port("smtp"))
    raw.cmd(b"EHLO c")
    code, text = raw.cmd(b"MAIL FROM:<x@remote.test>\x00")
    assert code == 500 and text.startswith(b"5.5.2")
    code, text = raw.cmd(b"NOOP " + b"a" * 5000)
    assert code == 500 and b"too long" in text
    assert raw.cmd(b"NOOP") == (250, b"2.0.0 Ok")   # the session goes on
    raw.close()
    with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=10) as s:  # and so do others
        assert s.noop()[0] == 250


def test_noop_vrfy_help_rset_quit(mx):
    raw = RawSMTP(mx.port("smtp"))
    assert raw.greeting[0] == 220 and raw.greeting[1].startswith(b"mx.test ")
    assert raw.cmd(b"NOOP") == (250, b"2.0.0 Ok")
    code, text = raw.cmd(b"VRFY alice")
    assert code == 252 and text.startswith(b"2.5.0")
    assert raw.cmd(b"VRFY")[0] == 501
    code, text = raw.cmd(b"HELP")
    assert code == 214 and b"RFC 5321" in text
    raw.cmd(b"EHLO c")
    raw.cmd(b"MAIL FROM:<x@remote.test>")
    assert raw.cmd(b"RSET") == (250, b"2.0.0 Ok")
    assert raw.cmd(b"RCPT TO:<alice@example.test>")[0] == 503  # RSET forgot the sender
    assert raw.cmd(b"QUIT") == (221, b"2.0.0 Bye")
    assert raw.closed()


def test_too_many_errors_disconnects(mx):
    raw = RawSMTP(mx.port("smtp"))
    codes = [raw.cmd(b"BOGUS")[0] for _ in range(19)]
    assert set(codes) == {502}
    raw.send(b"BOGUS\r\n")
    assert raw.reply()[0] == 502
    assert raw.reply()[0] == 421
    assert raw.closed()


def test_mx_offers_no_auth(mx):
    raw = RawSMTP(mx.port("smtp"))
    code, text = raw.cmd(b"EHLO c")
    assert b"AUTH" not in text
    assert raw.cmd(b"AUTH PLAIN AGFsaWNlAGFsaWNlLXB3")[0] == 503
    raw.close()


def test_starttls_injection_is_discarded(mx):
    """Commands pipelined in plain text after STARTTLS must never run inside TLS."""
    before = len(mx.messages("alice"))
    raw = RawSMTP(mx.port("smtp"))
    raw.cmd(b"EHLO c")
    raw.send(b"STARTTLS\r\nEHLO evil\r\nMAIL FROM:<inject@remote.test>\r\n"
             b"RCPT TO:<alice@example.test>\r\nDATA\r\nSubject: injected\r\n\r\n.\r\n")
    assert raw.reply()[0] == 220
    raw.starttls()
    # Nothing injected was answered: the first reply in TLS is our own NOOP's.
    assert raw.cmd(b"NOOP") == (250, b"2.0.0 Ok")
    # The session was reset: no HELO, no envelope survives the handshake.
    assert raw.cmd(b"RCPT TO:<alice@example.test>")[0] == 503
    assert raw.cmd(b"MAIL FROM:<x@remote.test>")[0] == 503
    code, text = raw.cmd(b"EHLO c")
    assert code == 250 and b"STARTTLS" not in text
    assert raw.cmd(b"STARTTLS")[0] == 503
    # A message of our own in the same session: its 250 comes after anything injected
    # would have been delivered, and it must be the only new one.
    raw.cmd(b"EHLO c")
    assert raw.cmd(b"MAIL FROM:<x@remote.test>")[0] == 250
    assert raw.cmd(b"RCPT TO:<alice@example.test>")[0] == 250
    assert raw.cmd(b"DATA")[0] == 354
    assert raw.cmd(b"Subject: ours\r\n\r\nafter the handshake\r\n.")[0] == 250
    raw.close()
    new = mx.messages("alice")[before:]
    assert len(new) == 1 and b"Subject: ours" in new[0], new


def test_other_clients_unaffected_by_a_stalled_one(mx):
    stalled = socket.create_connection(("127.0.0.1", mx.port("smtp")))
    stalled.sendall(b"EHLO c\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
                    b"DATA\r\npartial line with no end")
    try:
        before = len(mx.messages("bob"))
        with smtplib.SMTP("127.0.0.1", mx.port("smtp"), timeout=10) as s:
            s.sendmail("x@remote.test", ["bob@example.test"], b"Subject: s\r\n\r\nok\r\n")
        assert latest(mx, "bob", before).endswith(b"ok\n")
    finally:
        stalled.close()


def test_idle_timeout_and_per_address_cap(make_daemon):
    d = make_daemon(listeners=["smtp"], config={
        "smtp": {"idle_timeout": 1, "max_connections_per_address": 2}})
    first = RawSMTP(d.port("smtp"))
    second = RawSMTP(d.port("smtp"))
    third = RawSMTP(d.port("smtp"))
    assert third.greeting[0] == 421 and third.greeting[1].startswith(b"4.7.0")
    assert third.closed()
    code, text = first.reply()          # idle for more than a second
    assert code == 421 and text.startswith(b"4.4.2")
    assert first.closed()
    second.close()
    fresh = d.wait_for(lambda: _greets(d.port("smtp")))
    assert fresh == 220


def _greets(port: int) -> int | None:
    try:
        raw = RawSMTP(port)
    except OSError:
        return None
    raw.close()
    return raw.greeting[0] if raw.greeting[0] == 220 else None


def test_aliases_from_a_file(make_daemon, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text("# /etc/aliases style\nsales: alice, bob\nabuse: sales  # nested\n")
    d = make_daemon(listeners=["smtp"], users={"alice": "a", "bob": "b"},
                    config={"mail": {"aliases_file": str(aliases)}})
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=10) as s:
        s.sendmail("x@remote.test", ["abuse@example.test"], b"Subject: a\r\n\r\nreport\r\n")
    for user in ("alice", "bob"):
        assert d.wait_for(lambda user=user: d.messages(user))[-1].endswith(b"report\n")
    aliases.write_text("broken line without colon\n")
    with pytest.raises(RuntimeError) as e:
        d.restart()
    assert "mail.aliases_file: line 1: expected 'alias: user, user'" in str(e.value)

"""Hostile input, bounded and seeded: the daemon answers, keeps serving others, logs no crash."""

from __future__ import annotations

import random
import smtplib
from collections.abc import Iterator

import fuzz

from netsuite.smtp import wire

VERBS = [b"HELO", b"EHLO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"BDAT", b"RSET", b"NOOP",
         b"VRFY", b"HELP", b"AUTH", b"STARTTLS", b"QUIT", b"XXXX", b""]
PIECES = [b"<", b">", b"@", b"<>", b"<alice@example.test>", b"SIZE=", b"BODY=8BITMIME",
          b" ", b"\t", b"\x00", b"\xff\xfe", b"\r", b"\n", b"\r\n", b".", b"\r\n.\r\n",
          b"9" * 20, b"A" * 3000, "ü".encode(), b"LAST", b"PLAIN", b"=", b'"', b"\\"]


def smtp_sessions(rng: random.Random) -> Iterator[fuzz.Session]:
    """Endless sessions of garbage, half of them inside a valid envelope first."""
    envelope = [b"EHLO fuzz\r\n", b"MAIL FROM:<x@remote.test>\r\n",
                b"RCPT TO:<alice@example.test>\r\n"]
    while True:
        batch = [fuzz.line(rng, VERBS, PIECES, most=7) for _ in range(rng.randrange(1, 60))]
        yield fuzz.Session(batch, opening=envelope if rng.random() < 0.5 else [],
                           closing=b"QUIT\r\n" if rng.random() < 0.7 else b"")


def test_random_sessions_do_not_hurt_the_daemon(make_daemon):
    d = make_daemon(listeners=["smtp"], users={"alice": "pw"},
                    config={"smtp": {"max_line_length": 1024, "max_message_size": 100_000}})
    run = fuzz.blast(d.port("smtp"), smtp_sessions(fuzz.rng_for("smtp")), d.log)
    assert run.sent >= fuzz.LINES and not run.crashes, fuzz.report("smtp", run)
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=10) as s:
        s.sendmail("x@remote.test", ["alice@example.test"], b"Subject: after\r\n\r\nstill fine\r\n")
    assert d.wait_for(lambda: d.messages("alice"))[-1].endswith(b"still fine\n")
    log = d.log()
    assert not fuzz.CRASH.search(log), fuzz.tail_from_crash(log)
    tmp = d.maildir("alice") / "tmp"
    assert not tmp.exists() or not list(tmp.iterdir()), "aborted messages left files in tmp/"


def reference_data(stream: bytes) -> tuple[list[bytes], bytes] | None:
    """RFC 5321 4.5.2 by the book, for comparison with the incremental reader."""
    end = stream.find(b"\r\n.\r\n")
    if stream.startswith(b".\r\n"):
        return [], stream[3:]
    if end < 0:
        return None
    body, rest = stream[:end], stream[end + 5:]
    lines = body.split(b"\r\n")
    return [line[1:] if line.startswith(b".") else line for line in lines], rest


def test_data_reader_matches_the_reference_on_random_streams():
    rng = random.Random(7)
    alphabet = [b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b".\r\n", b"\x00", b"\xff"]
    for _ in range(2000):
        stream = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        stream += rng.choice([b"\r\n.\r\nNOOP\r\n", b"", b"\r\n.\r\n"])
        expected = reference_data(stream)
        reader = wire.DataReader(limit=10_000)
        lines: list[bytes] = []
        rest = b""
        pos = 0
        while pos < len(stream) and not reader.done:
            step = rng.randrange(1, 6)
            lines += reader.feed(stream[pos:pos + step])
            pos += step
            if reader.done:
                rest = reader.rest + stream[pos:]
        if expected is None:
            assert not reader.done, stream
        else:
            assert reader.done and (lines, rest) == expected, stream

"""Unit tests for the TELNET wire codec (no daemon)."""

from __future__ import annotations

import random

import pytest

from netsuite.telnet import wire
from netsuite.telnet.wire import Command, Data, Decoder, Encoder, Overflow, Subnegotiation

IAC = 255


def feed_bytewise(decoder: Decoder, data: bytes) -> list:
    """Feed one byte at a time, merging adjacent Data events."""
    events: list = []
    for b in data:
        for e in decoder.feed(bytes((b,))):
            if isinstance(e, Data) and events and isinstance(events[-1], Data):
                events[-1] = Data(events[-1].data + e.data)
            else:
                events.append(e)
    return events


def merged(events: list) -> list:
    out: list = []
    for e in events:
        if isinstance(e, Data) and out and isinstance(out[-1], Data):
            out[-1] = Data(out[-1].data + e.data)
        else:
            out.append(e)
    return out


@pytest.mark.parametrize("data, expected", [
    (b"hello", [Data(b"hello")]),
    (b"a\xff\xffb", [Data(b"a\xffb")]),
    (b"ls\r\n", [Data(b"ls\r")]),
    (b"ls\r\0", [Data(b"ls\r")]),
    (b"ls\n", [Data(b"ls\n")]),
    (b"a\rb", [Data(b"a\rb")]),
    (bytes([IAC, 253, 31]), [Command(253, 31)]),
    (bytes([IAC, 244]), [Command(244)]),
    # EOF, SUSP, ABORT: Twisted raises ValueError("Stumped") on these.
    (bytes([IAC, 236, IAC, 237, IAC, 238]), [Command(236), Command(237), Command(238)]),
    (b"x" + bytes([IAC, 250, 31, 0, 80, 0, 24, IAC, 240]) + b"y",
     [Data(b"x"), Subnegotiation(31, b"\0P\0\x18"), Data(b"y")]),
    # IAC IAC inside SB is one 255 byte.
    (bytes([IAC, 250, 31, 0, 255, 255, 0, 24, IAC, 240]),
     [Subnegotiation(31, b"\0\xff\0\x18")]),
    # Unknown command byte: dropped, data continues.
    (b"a" + bytes([IAC, 7]) + b"b", [Data(b"ab")]),
    # IAC x inside SB ends it; x is read as a command (BSD telnetd).
    (bytes([IAC, 250, 24, 0, 65, IAC, 246]) + b"z",
     [Subnegotiation(24, b"\0A"), Command(246), Data(b"z")]),
    # Empty SB: nothing.
    (bytes([IAC, 250, IAC, 240]), []),
    # CR then IAC: CR delivered, command processed.
    (b"\r" + bytes([IAC, 241]) + b"\n", [Data(b"\r"), Command(241), Data(b"\n")]),
])
def test_decoder(data, expected):
    assert merged(Decoder().feed(data)) == expected
    assert feed_bytewise(Decoder(), data) == expected


def test_decoder_binary_passes_cr_untouched():
    d = Decoder()
    d.binary = True
    assert d.feed(b"a\r\0b\r\nc") == [Data(b"a\r\0b\r\nc")]
    assert d.feed(b"\xff\xff") == [Data(b"\xff")]


def test_decoder_cr_at_chunk_end_is_not_delayed():
    d = Decoder()
    assert d.feed(b"ls\r") == [Data(b"ls\r")]
    assert d.feed(b"\0") == []
    assert d.feed(b"\npwd\r") == [Data(b"\npwd\r")]
    assert d.feed(b"\n") == []


def test_decoder_overflow_stops():
    d = Decoder(max_subnegotiation=100)
    events = d.feed(bytes([IAC, 250, 24]) + b"x" * 200)
    assert events == [Overflow(100)]
    assert d.feed(b"more") == []


def test_decoder_overflow_counts_across_chunks():
    d = Decoder(max_subnegotiation=100)
    d.feed(bytes([IAC, 250, 24]))
    for _ in range(3):
        events = d.feed(b"x" * 40)
    assert events == [Overflow(100)]


def test_decoder_never_raises_on_random_input():
    rng = random.Random(1234)
    for _ in range(300):
        d = Decoder(max_subnegotiation=64)
        data = bytes(rng.choice([255, 250, 240, 13, 0, 10, rng.randrange(256)])
                     for _ in range(rng.randrange(1, 200)))
        whole = merged(d.feed(data))
        assert feed_bytewise(Decoder(max_subnegotiation=64), data) == whole


@pytest.mark.parametrize("chunks, binary, expected", [
    ([b"a\xffb"], False, b"a\xff\xffb"),
    ([b"line\r\n"], False, b"line\r\n"),
    ([b"50%\r60%\r"], False, b"50%\r\x0060%\r"),
    ([b"x\r", b"y"], False, b"x\r\0y"),
    ([b"x\r", b"\ny"], False, b"x\r\ny"),
    ([b"a\rb\xff"], True, b"a\rb\xff\xff"),
])
def test_encoder(chunks, binary, expected):
    e = Encoder()
    e.binary = binary
    assert b"".join(e.encode(c) for c in chunks) == expected


def test_naws():
    assert wire.parse_naws(b"\x00\x50\x00\x18") == (80, 24)
    assert wire.parse_naws(b"\x01\x00\x00\xff") == (256, 255)
    assert wire.parse_naws(b"\x00\x50") is None
    assert wire.naws(300, 255) == bytes([IAC, 250, 31, 1, 44, 0, 255, 255, IAC, 240])


def test_ttype():
    assert wire.parse_ttype(b"\0XTERM-256COLOR") == "xterm-256color"
    assert wire.parse_ttype(b"\0vt100") == "vt100"
    assert wire.parse_ttype(b"\1vt100") is None
    assert wire.parse_ttype(b"\0vt100; rm -rf /") is None
    assert wire.parse_ttype(b"\0../../etc") is None
    assert wire.parse_ttype(b"\0\xff\xfe") is None
    assert wire.parse_ttype(b"\0") is None
    assert wire.ttype_send() == bytes([IAC, 250, 24, 1, IAC, 240])


def test_environ_roundtrip_and_escapes():
    variables = [("USER", "-f root"), ("LANG", "C.UTF-8"), ("ODD\x01NAME", "v\x00\x02x"),
                 ("EMPTY", ""), ("NOVALUE", None)]
    sb = wire.environ_is(variables)
    events = Decoder().feed(sb)
    assert len(events) == 1 and isinstance(events[0], Subnegotiation)
    kind, parsed = wire.parse_environ(events[0].payload)
    assert kind == wire.ENV_IS
    assert parsed == variables


def test_environ_rejects_send_and_tolerates_junk():
    assert wire.parse_environ(bytes([wire.ENV_SEND])) is None
    assert wire.parse_environ(b"") is None
    # Values before any VAR are dropped; a lone ESC at the end is harmless.
    assert wire.parse_environ(bytes([0, 1]) + b"x" + bytes([0]) + b"A" + bytes([2])) == \
        (0, [("A", None)])
    assert wire.parse_environ(bytes([wire.ENV_INFO, 3]) + b"X" + bytes([1]) + b"1") == \
        (wire.ENV_INFO, [("X", "1")])


def test_environ_send_is_all_variables():
    assert wire.environ_send() == bytes([IAC, 250, 39, 1, IAC, 240])

"""
The one framer (netsuite.framer), fuzzed on its own with hypothesis: however a
byte stream is split into chunks, the same lines, commands, literals and errors
come out; deadlines follow the first byte of the unit; STARTTLS discards.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netsuite.framer import (
    Command,
    DiscardSink,
    IMAPFramer,
    LineFramer,
    Overlong,
    Refused,
)
from netsuite.smtp.wire import ChunkReader, DataReader
from netsuite.store.folder import IncomingMessage, to_disk, wire_size

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    """C{data} cut at the given offsets (any order, duplicates allowed)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return out


cut_lists = st.lists(st.integers(min_value=0, max_value=10**6), max_size=40)
# Bytes rich in what matters: line ends, CR alone, braces, plus signs, digits, NUL.
stream_bytes = st.lists(
    st.one_of(st.sampled_from([b"\r\n", b"\n", b"\r", b"{", b"}", b"+", b"{3}\r\n",
                               b"{2+}\r\n", b"{0}\r\n", b"a ", b"\x00", b"x" * 40]),
              st.binary(max_size=8)),
    max_size=60).map(b"".join)


# -- lines ------------------------------------------------------------------------------


def drain_lines(framer: LineFramer) -> list:
    out = []
    while (item := framer.line()) is not None:
        out.append(item)
    return out


def reference_lines(data: bytes, max_line: int) -> list:
    """What the framer must say, written the obvious (slow) way."""
    out = []
    *complete, _partial = data.split(b"\n")
    for line in complete:
        content = line[:-1] if line.endswith(b"\r") else line
        if len(content) > max_line:
            out.append(Overlong(content[:min(64, max_line + 1)]))
        else:
            out.append(content)
    return out


@FUZZ
@given(stream_bytes, cut_lists, st.integers(min_value=1, max_value=50))
def test_any_split_gives_the_same_lines(data, cuts, max_line):
    framer = LineFramer(max_line)
    got = []
    for chunk in splits(data, cuts):
        framer.feed(chunk)
        got += drain_lines(framer)
    assert got == reference_lines(data, max_line)


@FUZZ
@given(stream_bytes, cut_lists, st.integers(min_value=1, max_value=30))
def test_overlong_lines_are_not_buffered(data, cuts, max_line):
    framer = LineFramer(max_line)
    for chunk in splits(data, cuts):
        framer.feed(chunk)
        drain_lines(framer)
        # What is held is one partial line, no longer than a line and its CR.
        assert framer.buffered <= max_line + 1


def test_overlong_partial_is_dropped_at_once():
    framer = LineFramer(100)
    framer.feed(b"a1 " + b"y" * 10_000)
    assert framer.line() is None and framer.buffered == 0
    framer.feed(b"y" * 10_000 + b"\r\nNOOP\r\n")
    assert drain_lines(framer) == [Overlong(b"a1 " + b"y" * 61), b"NOOP"]


@FUZZ
@given(stream_bytes, cut_lists, st.data())
def test_deadline_runs_from_the_first_byte_of_the_pending_line(data, cuts, draw):
    timeout = 7.0
    framer = LineFramer(20, timeout)
    now = 0.0
    received: list[tuple[float, bytes]] = []
    for chunk in splits(data, cuts):
        now += draw.draw(st.floats(min_value=0, max_value=5))
        framer.feed(chunk, now)
        drain_lines(framer)
        received.append((now, chunk))
        # The reference: when did the first byte after the last LF arrive?
        seen = b"".join(c for _t, c in received)
        start = seen.rfind(b"\n") + 1
        expected = None
        offset = 0
        for t, c in received:
            if offset <= start < offset + len(c):
                expected = t + timeout
            offset += len(c)
        assert framer.deadline() == expected
        assert framer.expired(now) == (expected is not None and now >= expected)


def test_trickled_line_expires_though_bytes_keep_coming():
    framer = LineFramer(1000, timeout=5)
    for t in range(5):
        framer.feed(b"x", float(t))
        assert framer.line() is None and not framer.expired(float(t))
    framer.feed(b"x", 5.0)
    assert framer.expired(5.0)
    framer.feed(b"\r\n", 5.5)
    assert framer.line() == b"x" * 6 and not framer.expired(100.0)


@FUZZ
@given(st.binary(max_size=40), st.binary(max_size=40), cut_lists)
def test_starttls_discards_what_was_pipelined(before, injected, cuts):
    before = before.replace(b"\n", b"")
    stream = before + b"\r\nSTARTTLS\r\n" + injected + b"\r\nMAIL FROM:<evil>\r\n"
    framer = LineFramer(1000)
    lines: list = []
    chunks = splits(stream, cuts)
    for chunk in chunks:
        framer.feed(chunk)
        while (line := framer.line()) is not None:
            lines.append(line)
            if line == b"STARTTLS":
                framer.discard()
                # What follows comes inside TLS: only that may be read.
                framer.feed(b"NOOP\r\n")
                assert drain_lines(framer) == [b"NOOP"]
                assert lines[:-1] == [before]
                return
    raise AssertionError("STARTTLS was never seen")


def test_take_and_unread_for_bodies():
    framer = LineFramer(100)
    framer.feed(b"DATA\r\nbody\r\n.\r\nQUIT\r\n")
    assert framer.line() == b"DATA"
    reader = DataReader(1000)
    assert reader.feed(framer.take()) == [b"body"] and reader.done
    framer.unread(reader.rest)
    assert framer.line() == b"QUIT" and framer.buffered == 0
    framer.feed(b"BDAT 4\r\nabcdNOOP\r\n")
    assert framer.line() == b"BDAT 4"
    assert framer.take(4) == b"abcd" and framer.line() == b"NOOP"


def test_fifty_mebibytes_in_small_chunks_is_linear():
    # A quadratic buffer would copy ~40 GB here; this one copies each byte twice.
    framer = LineFramer(100)
    framer.feed(b"BDAT 52428800\r\n")
    assert framer.line() == b"BDAT 52428800"
    chunk = b"z" * 4096
    total = 0
    for _ in range(52428800 // 4096):
        framer.feed(chunk)
        total += len(framer.take(52428800 - total))
    assert total == 52428800 and framer.buffered == 0


# -- SMTP bodies ------------------------------------------------------------------------


body_bytes = st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"\r\n.\r\n",
                                       b"a", b"line", b"\r\n.x"]), max_size=60).map(b"".join)


@FUZZ
@given(body_bytes, cut_lists, st.integers(min_value=1, max_value=200))
def test_data_reader_any_split_same_message(body, cuts, limit):
    stream = body + b"\r\n.\r\nQUIT\r\n"

    def run(chunks):
        reader = DataReader(limit)
        lines, rest = [], b""
        for i, chunk in enumerate(chunks):
            lines += reader.feed(chunk)
            if reader.done:
                rest = reader.rest + b"".join(chunks[i + 1:])
                break
        return lines, reader.too_big, reader.size, rest

    assert run(splits(stream, cuts)) == run([stream])


@FUZZ
@given(body_bytes, cut_lists, st.integers(min_value=1, max_value=200))
def test_chunk_reader_any_split_same_lines(body, cuts, limit):
    def run(chunks):
        reader = ChunkReader(limit)
        lines = []
        for chunk in chunks:
            lines += reader.feed(chunk)
        return lines + reader.finish(), reader.too_big, reader.size

    got = run(splits(body, cuts))
    whole = run([body])
    # Past the limit the session throws the message away: only the verdict counts.
    assert got[1:] == whole[1:]
    if not got[1]:
        assert got == whole
        parts = body.split(b"\r\n")
        assert got[0] == (parts[:-1] if parts[-1] == b"" else parts)


# -- IMAP -------------------------------------------------------------------------------


class ListSink:
    def __init__(self):
        self.data = bytearray()
        self.finished = self.aborted = False

    def write(self, data):
        self.data += data

    def finish(self):
        self.finished = True

    def abort(self):
        self.aborted = True


def normal(event):
    """Events as comparable values (a sink's bytes stand for the sink)."""
    if isinstance(event, Command):
        return ("cmd", event.text, [bytes(x.data) if isinstance(x, ListSink) else x
                                    for x in event.literals])
    if isinstance(event, Refused):
        return ("refused", event.tag, event.status, event.text, event.close)
    return ("continue",)


def run_imap(chunks, stream_above=10**9):
    framer = IMAPFramer(max_line=60, max_literal=50, max_append=300, timeout=None,
                        stream_above=stream_above, sink=lambda text, lits, size: ListSink())
    out = []
    for chunk in chunks:
        framer.feed(chunk)
        while (event := framer.next()) is not None:
            out.append(normal(event))
            if isinstance(event, Refused) and event.close:
                return out  # the session hangs up here
    return out


@FUZZ
@given(stream_bytes, cut_lists)
def test_imap_any_split_gives_the_same_events(data, cuts):
    assert run_imap(splits(data, cuts)) == run_imap([data])


literal_commands = st.lists(st.tuples(
    st.sampled_from([b"a1 LOGIN ", b"a2 APPEND INBOX ", b"a3 SELECT ", b"t "]),
    st.binary(max_size=120), st.booleans()), min_size=1, max_size=6)


@FUZZ
@given(literal_commands, cut_lists, st.integers(min_value=0, max_value=60))
def test_imap_literals_across_chunks(commands, cuts, stream_above):
    stream = b""
    expected = []
    for prefix, literal, nonsync in commands:
        stream += prefix + b"{%d%s}\r\n" % (len(literal), b"+" if nonsync else b"") + literal
        stream += b" x\r\n"
        limit = 300 if prefix.startswith(b"a2 APPEND") else 50
        if len(literal) > limit:
            expected.append(("refused", prefix.split(b" ")[0], b"NO",
                             b"[TOOBIG] Literal too large (limit %d octets)" % limit, nonsync))
            if nonsync:
                break
            # A refused synchronising literal is not sent by a real client; here
            # its bytes come anyway and are read as lines: stop comparing there.
            break
        if not nonsync:
            expected.append(("continue",))
        expected.append(("cmd", prefix.rstrip(b" ") + b" \x00 x", [literal]))
    got = run_imap(splits(stream, cuts), stream_above)
    assert got[:len(expected)] == expected
    assert got == run_imap([stream], stream_above)


def test_imap_nonsync_toobig_closes_and_sync_toobig_does_not():
    framer = IMAPFramer(1000, 100, 1000)
    framer.feed(b"a1 LOGIN {101}\r\n")
    assert framer.next() == Refused(b"a1", b"NO", b"[TOOBIG] Literal too large "
                                    b"(limit 100 octets)", close=False)
    framer.feed(b"a2 APPEND INBOX {1001+}\r\n")
    assert framer.next() == Refused(b"a2", b"NO", b"[TOOBIG] Literal too large "
                                    b"(limit 1000 octets)", close=True)


def test_imap_literal_deadline_grows_with_its_size():
    framer = IMAPFramer(1000, 10**9, 10**9, timeout=10)
    framer.feed(b"a1 APPEND INBOX {1638400+}\r\n", 0.0)
    assert framer.next() is None
    framer.feed(b"x", 1.0)
    assert framer.next() is None
    # 10 s, plus 1 s per 16 KiB of literal.
    assert framer.lines.deadline() == 1.0 + 10 + 100
    framer.feed(b"x" * (1638400 - 1) + b"\r\n", 50.0)
    assert framer.next() == Command(b"a1 APPEND INBOX \x00", [b"x" * 1638400])
    assert framer.lines.deadline() is None


def test_imap_streamed_literal_and_discard():
    sinks = []

    def sink(text, literals, size):
        sinks.append(ListSink())
        return sinks[-1]

    framer = IMAPFramer(1000, 100, 10**6, stream_above=10, sink=sink)
    framer.feed(b"a1 APPEND INBOX {20+}\r\n0123456789")
    assert framer.next() is None and framer.in_command
    framer.discard()  # as STARTTLS or a lost connection would
    assert sinks[0].aborted and not framer.in_command
    framer.feed(b"a2 APPEND INBOX {20+}\r\n01234567890123456789\r\n")
    event = framer.next()
    assert event.literals == [sinks[1]] and sinks[1].finished
    assert bytes(sinks[1].data) == b"01234567890123456789"


def test_discard_sink_keeps_nothing():
    sink = DiscardSink()
    sink.write(b"x" * 1000)
    assert sink.size == 1000 and sink.error is None


# -- streaming into tmp/ --------------------------------------------------------------


@FUZZ
@given(st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\r\n", b"a", b"bc"]),
                max_size=50).map(b"".join), cut_lists)
def test_incoming_message_matches_to_disk_and_wire_size(data, cuts):
    with tempfile.TemporaryDirectory() as tmp:
        incoming = IncomingMessage(Path(tmp))
        for chunk in splits(data, cuts):
            incoming.write(chunk)
        incoming.finish()
        assert incoming.finished and incoming.error is None
        assert incoming.tmp.read_bytes() == to_disk(data)
        assert incoming.size == len(to_disk(data))
        assert incoming.wire_size == wire_size(to_disk(data))
        incoming.abort()
        assert list(Path(tmp).iterdir()) == []


def test_data_too_big_still_ends_at_a_split_final_dot():
    # ".\r" and "\n" in two reads: the end must still be seen (it was lost, and
    # the session sat in DATA for ever).
    reader = DataReader(limit=10)
    reader.feed(b"x" * 20 + b"\r\n.\r")
    assert not reader.done and reader.too_big
    reader.feed(b"\nQUIT\r\n")
    assert reader.done and reader.rest == b"QUIT\r\n"


def test_data_too_big_never_ends_at_the_tail_of_a_long_line():
    # "xxx." past the limit must not leave a "." that the next CRLF makes the end:
    # the rest of the body would then run as commands (smuggling).
    reader = DataReader(limit=10)
    reader.feed(b"x" * 20 + b".")
    reader.feed(b"\r\nMAIL FROM:<evil@example.net>\r\n")
    assert not reader.done
    reader.feed(b".\r\n")
    assert reader.done and reader.too_big and reader.rest == b""


def test_message_exactly_at_the_limit_with_a_late_final_dot():
    reader = DataReader(limit=5)
    assert reader.feed(b"abc\r\n.") == [b"abc"]
    reader.feed(b"\r\n")
    assert reader.done and not reader.too_big and reader.size == 5

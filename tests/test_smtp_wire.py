"""Unit tests for the pure SMTP wire layer (the daemon tests cover the session)."""

import pytest

from netsuite.smtp import wire


@pytest.mark.parametrize("text, local, domain", [
    (b"FROM:<alice@example.test>", b"alice", b"example.test"),
    (b"from: <alice@example.test>", b"alice", b"example.test"),
    (b'FROM:<"alice"@example.test>', b"alice", b"example.test"),
    (b'FROM:<"a b"@example.test>', b'"a b"', b"example.test"),
    (b"FROM:<@relay.test,@b.test:alice@example.test>", b"alice", b"example.test"),
    (b"FROM:<j\xc3\xb6rg@b\xc3\xbccher.test>", b"j\xc3\xb6rg", b"b\xc3\xbccher.test"),
    (b"FROM:<x@[127.0.0.1]>", b"x", b"[127.0.0.1]"),
])
def test_parse_path_accepts(text, local, domain):
    path, rest = wire.parse_path(text, b"FROM:")
    assert (path.local, path.domain, rest) == (local, domain, b"")


@pytest.mark.parametrize("text", [
    b"FROM:alice@example.test",          # no brackets
    b"FROM:<alice@example.test",         # unbalanced
    b"FROM:<alice>",                     # no domain
    b"FROM:<al ice@example.test>",
    b"FROM:<alice@exa mple.test>",
    b"FROM:<alice@@example.test>",
    b"FROM:<alice@example.test>SIZE=1",  # no space before params
    b"FROM:<" + b"a" * 65 + b"@example.test>",
    b"TO:<alice@example.test>",          # wrong prefix
])
def test_parse_path_rejects(text):
    with pytest.raises(wire.WireError) as e:
        wire.parse_path(text, b"FROM:")
    assert e.value.code == 501


def test_null_path_only_where_allowed():
    path, _ = wire.parse_path(b"FROM:<>", b"FROM:", allow_null=True)
    assert path.null
    with pytest.raises(wire.WireError):
        wire.parse_path(b"TO:<>", b"TO:")
    path, _ = wire.parse_path(b"TO:<Postmaster>", b"TO:", allow_bare_postmaster=True)
    assert path.local == b"postmaster" and path.domain == b""


def test_params():
    assert wire.parse_params(b"SIZE=100 body=8BITMIME SMTPUTF8") == {
        "SIZE": b"100", "BODY": b"8BITMIME", "SMTPUTF8": None}
    for bad in (b"SIZE=1 SIZE=2", b"=1", b"SI_ZE=1", b"SIZE="):
        with pytest.raises(wire.WireError):
            wire.parse_params(bad)


def test_bdat_syntax():
    assert wire.parse_bdat(b"100") == (100, False)
    assert wire.parse_bdat(b"0 last") == (0, True)
    for bad in (b"", b"x", b"-1", b"10 MORE", b"1 LAST x", b"9" * 13):
        with pytest.raises(wire.WireError):
            wire.parse_bdat(bad)


def test_reply_multiline_with_enhanced_code():
    assert wire.reply(250, "2.0.0", "Ok") == b"250 2.0.0 Ok\r\n"
    assert wire.reply(250, None, b"a\nb\nc") == b"250-a\r\n250-b\r\n250 c\r\n"


def test_data_reader_unstuffs_and_ends_only_on_crlf_dot_crlf():
    r = wire.DataReader(limit=10_000)
    lines = r.feed(b"a\r\n..b\r\nsmuggle\n.\nMAIL FROM:<x@y>\r\n")
    assert lines == [b"a", b".b", b"smuggle\n.\nMAIL FROM:<x@y>"]
    assert not r.done
    lines = r.feed(b"c\r\n.\r\nQUIT\r\n")
    assert lines == [b"c"] and r.done and r.rest == b"QUIT\r\n"


def test_data_reader_split_anywhere():
    message = b"one\r\n..two\r\nthree\r\n.\r\nNOOP\r\n"
    for cut in range(len(message)):
        r = wire.DataReader(limit=10_000)
        lines = r.feed(message[:cut])
        if r.done:
            rest = r.rest + message[cut:]
        else:
            lines += r.feed(message[cut:])
            rest = r.rest
        assert lines == [b"one", b".two", b"three"] and r.done and rest == b"NOOP\r\n"


def test_data_reader_counts_excess_without_keeping_it():
    r = wire.DataReader(limit=100)
    kept = r.feed(b"x" * 60 + b"\r\n")
    kept += r.feed(b"y" * 10_000)          # one huge partial line
    assert r.too_big and len(r._buf) <= 1
    kept += r.feed(b"\r\n.\r\n")
    assert r.done and kept == [b"x" * 60]


def test_chunk_reader_lines_across_chunks():
    r = wire.ChunkReader(limit=1000)
    out = r.feed(b"a\r") + r.feed(b"\nb\r\nc") + r.finish()
    assert out == [b"a", b"b", b"c"] and r.size == 7
    r = wire.ChunkReader(limit=4)
    assert r.feed(b"abcdef") == [] and r.too_big

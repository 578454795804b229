"""Unit tests: FTP wire parsing/rendering and the protocol over a StringTransport."""

from __future__ import annotations

import os
import random
from types import SimpleNamespace

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from netsuite.ftp import wire


@pytest.mark.parametrize("line,expected", [
    (b"USER alice\r", ("USER", "alice")),
    (b"user alice", ("USER", "alice")),
    (b"STOR name with  spaces ", ("STOR", "name with  spaces ")),
    (b"PWD", ("PWD", "")),
    (b"\xff\xf4\xff\xf2ABOR\r", ("ABOR", "")),
    (b"\xff\xf4\xffABOR", ("ABOR", "")),
    (b"\xf2ABOR", ("ABOR", "")),
    (b"RETR caf\xc3\xa9", ("RETR", "caf\u00e9")),
    (b"RETR \xff\xff", ("RETR", "\udcff")),
])
def test_parse_command(line, expected):
    assert wire.parse_command(line) == expected


@pytest.mark.parametrize("line,code", [
    (b"", 500), (b"NO\x00OP", 501), (b"RETR a\x00b", 501), (b"\xc3\xa9T", 500),
    (b"1234", 500), (b"VERYLONGVERB x", 500), (b"RETR a\rb", 501),
])
def test_parse_command_errors(line, code):
    with pytest.raises(wire.CommandError) as e:
        wire.parse_command(line)
    assert e.value.code == code


def test_parse_command_fuzz_never_crashes():
    rnd = random.Random(1234)
    for _ in range(3000):
        line = bytes(rnd.randrange(256) for _ in range(rnd.randrange(40)))
        try:
            verb, arg = wire.parse_command(line)
        except wire.CommandError as e:
            assert 500 <= e.code < 600
        else:
            assert verb.isalpha() and verb.isupper()
            assert "\x00" not in arg


def test_render_reply():
    assert wire.render_reply(200, "ok") == b"200 ok\r\n"
    assert wire.render_reply(211, ["Features:", " MLST", "End"]) == \
        b"211-Features:\r\n MLST\r\n211 End\r\n"
    # A middle line that looks like an end line is indented.
    assert wire.render_reply(213, ["Status:", "213 fake", "End"]) == \
        b"213-Status:\r\n 213 fake\r\n213 End\r\n"
    assert wire.render_reply(257, wire.quote_path('/a"b')) == b'257 "/a""b"\r\n'
    assert wire.render_reply(257, "caf\u00e9") == "257 caf\u00e9\r\n".encode()
    assert wire.render_reply(550, "x\ry") == b"550 x\r\x00y\r\n"


@pytest.mark.parametrize("arg,expected", [
    ("127,0,0,1,4,1", ("127.0.0.1", 1025)),
    (" 10,0,0,7,255,255", ("10.0.0.7", 65535)),
])
def test_parse_port(arg, expected):
    assert wire.parse_port(arg) == expected


@pytest.mark.parametrize("arg", ["1,2,3,4,5", "1,2,3,4,5,256", "a,b,c,d,e,f", "-1,0,0,0,0,1",
                                 "1,2,3,4,5,+6", ""])
def test_parse_port_errors(arg):
    with pytest.raises(wire.CommandError):
        wire.parse_port(arg)


@pytest.mark.parametrize("arg,expected", [
    ("|1|132.235.1.2|6275|", (1, "132.235.1.2", 6275)),
    ("|2|1080::8:800:200C:417A|5282|", (2, "1080::8:800:200c:417a", 5282)),
    ("!1!10.0.0.1!1025!", (1, "10.0.0.1", 1025)),
])
def test_parse_eprt(arg, expected):
    assert wire.parse_eprt(arg) == expected


@pytest.mark.parametrize("arg,code", [
    ("|3|1.2.3.4|5|", 522), ("|1|::1|5000|", 501), ("|2|1.2.3.4|5000|", 501),
    ("|1|1.2.3.4|0|", 501), ("|1|1.2.3.4|70000|", 501), ("|1|1.2.3.4|", 501),
    ("a1a1.2.3.4a5a", 501), ("", 501),
])
def test_parse_eprt_errors(arg, code):
    with pytest.raises(wire.CommandError) as e:
        wire.parse_eprt(arg)
    assert e.value.code == code


def test_passive_replies_and_hosts():
    assert wire.render_pasv("10.1.2.3", 41001) == "Entering Passive Mode (10,1,2,3,160,41)."
    assert wire.render_epsv(41001) == "Entering Extended Passive Mode (|||41001|)"
    assert wire.ipv4_of("::ffff:127.0.0.1") == "127.0.0.1"
    assert wire.ipv4_of("::1") is None
    assert wire.same_host("::ffff:127.0.0.1", "127.0.0.1")
    assert not wire.same_host("127.0.0.2", "127.0.0.1")


def test_listing_lines():
    e = wire.Entry(name="file.txt", size=1234, directory=False, mode=0o100644, nlink=1,
                   mtime=1_700_000_000, unique="801g2a", perm="rwadf")
    line = wire.format_list_line(e, now=1_700_000_000 + 3600)
    assert line.startswith("-rw-r--r--   1 ftp      ftp")
    assert line.endswith(" 1234 Nov 14 22:13 file.txt")
    old = wire.format_list_line(e, now=1_700_000_000 + 400 * 86400)
    assert old.endswith(" Nov 14  2023 file.txt")
    d = wire.Entry(name="dir", size=4096, directory=True, mode=0o40755, nlink=2, mtime=0,
                   unique="1g2", perm="el")
    assert wire.format_list_line(d).startswith("drwxr-xr-x")
    assert wire.format_facts(e) == \
        "type=file;size=1234;modify=20231114221320;perm=rwadf;unique=801g2a; file.txt"
    assert wire.format_facts(d, ["type", "perm"], kind="cdir") == "type=cdir;perm=el; dir"
    assert wire.parse_mlst_opts("Size;TYPE;bogus;") == ["type", "size"]
    assert wire.feat_mlst(["size"]) == "MLST type;size*;modify;perm;unique;"
    assert wire.split_list_args("-la dir name") == (["-la"], "dir name")
    assert wire.split_list_args("") == ([], "")


def _chunks(data: bytes, rnd: random.Random):
    i = 0
    while i < len(data):
        n = rnd.randrange(1, 7)
        yield data[i:i + n]
        i += n


def test_ascii_conversion_across_chunk_borders():
    rnd = random.Random(7)
    for _ in range(200):
        text = bytes(rnd.choice(b"ab\r\n") for _ in range(rnd.randrange(60)))
        to_net = wire.ToNetASCII()
        sent = b"".join(to_net(c) for c in _chunks(text, rnd))
        assert sent == text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        from_net = wire.FromNetASCII()
        back = b"".join(from_net(c) for c in _chunks(sent, rnd)) + from_net.flush()
        assert back == sent.replace(b"\r\n", b"\n")


# -- the protocol over a StringTransport -----------------------------------------------------


@pytest.fixture
def server():
    from netsuite.ftp.server import FTPFactory
    from netsuite.ftp.service import FTPConfig

    config = SimpleNamespace(ftp=FTPConfig(max_line_length=512),
                             server=SimpleNamespace(allow_plaintext_auth=False))

    class Portal:
        def bind(self, peer, protocol):
            return self

    ctx = SimpleNamespace(config=config, portal=Portal(), realm=None, tls=None, reactor=Clock())
    factory = FTPFactory(ctx)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    yield proto, transport, ctx.reactor
    proto.connectionLost(None)


def replies(transport) -> list[str]:
    text = transport.value().decode("utf-8", "replace")
    transport.clear()
    return [line for line in text.split("\r\n") if line]


def test_protocol_greeting_and_hostile_lines(server):
    proto, transport, clock = server
    assert replies(transport) == ["220 netsuite FTP server ready."]
    proto.dataReceived(b"NOOP\r\n" + b"A" * 2000 + b"\r\nSYST\r\n")
    clock.advance(0)
    out = replies(transport)
    assert out[0] == "200 NOOP ok." and out[1].startswith("500 Command line too long")
    assert out[2] == "215 UNIX Type: L8"
    # An overlong line that arrives in pieces: one 500, then the session goes on.
    proto.dataReceived(b"B" * 600)
    proto.dataReceived(b"B" * 600)
    proto.dataReceived(b"B" * 10 + b"\r\nNOOP\r\n")
    clock.advance(0)
    assert replies(transport) == ["500 Command line too long.", "200 NOOP ok."]
    proto.dataReceived(b"US\x00ER x\r\n\r\nXYZZY\r\n")
    out = replies(transport)
    assert [o[:3] for o in out] == ["501", "500", "500"]
    proto.dataReceived(b"USER alice\r\n")
    assert replies(transport)[0].startswith("530 Non-anonymous sessions must use encryption")
    assert not transport.disconnecting


def test_protocol_idle_timeout(server):
    proto, transport, clock = server
    replies(transport)
    clock.advance(proto.config.idle_timeout + 1)
    assert replies(transport) == ["421 Timeout."]
    assert transport.disconnecting


def test_config_defaults_validate():
    from netsuite.ftp.service import FTPConfig

    FTPConfig().validate()
    assert FTPConfig().tls_max_version == "1.2"
    assert FTPConfig().require_tls is None
    assert os.sep == "/"


# -- the jailed shell, directly ----------------------------------------------------------------


def _result(d):
    out = []
    d.addBoth(out.append)
    assert out, "the shell answers synchronously"
    return out[0]


def test_shell_interface_and_jail(tmp_path):
    from twisted.protocols import ftp
    from twisted.python.failure import Failure
    from zope.interface.verify import verifyObject

    from netsuite.ftp.shell import INetsuiteFTPShell, JailedShell

    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "f.txt").write_bytes(b"data")
    (tmp_path / "secret").write_bytes(b"s")
    (root / "out").symlink_to(tmp_path)
    (root / "in").symlink_to("dir")
    shell = JailedShell(root)
    assert verifyObject(INetsuiteFTPShell, shell)
    assert [e.name for e in _result(shell.entries([]))] == ["dir", "in"]
    assert _result(shell.entry(["in", "f.txt"])).size == 4
    for bad in (["out", "secret"], ["out"], ["..", "secret"], ["a/b"], ["x\0"]):
        f = _result(shell.entry(bad))
        assert isinstance(f, Failure) and f.check(ftp.FTPCmdError), bad
    f = _result(shell.openForWriting(["out", "planted"]))
    assert isinstance(f, Failure) and f.check(ftp.PermissionDeniedError)
    upload = _result(shell.openForWriting(["dir", "new.txt"]))
    upload.write(b"half")
    assert not (root / "dir" / "new.txt").exists()
    upload.abort()
    assert sorted(p.name for p in (root / "dir").iterdir()) == ["f.txt"]
    ro = JailedShell(root, writable=False, upload_dir=["dir"])
    for d in (ro.removeFile(["dir", "f.txt"]), ro.makeDirectory(["x"]),
              ro.rename(["dir"], ["y"]), ro.openForWriting(["dir", "f.txt"]),
              ro.openForWriting(["elsewhere.txt"]), ro.entries(["dir"]),
              ro.openForReading(["dir", "f.txt"])):
        f = _result(d)
        assert isinstance(f, Failure) and f.check(ftp.FTPCmdError)
    drop = _result(ro.openForWriting(["dir", "drop.txt"]))
    assert drop.name == "drop.txt"
    drop.abort()

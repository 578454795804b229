"""
FTP against the real daemon with Python's ftplib (and raw sockets for hostile
input): logins, the four data modes, listings, byte-exact transfers, the jail,
atomic uploads, bounce and theft protection, ABOR, REST/APPE/STOU, TYPE A,
UTF-8 names, anonymous rules, limits.
"""

from __future__ import annotations

import ftplib
import os
import socket
import struct
import time

import pytest
from harness import Daemon
from test_ftp_helpers import FTP, connect, fetch, raw, sha, store

USERS = {"alice": "alice-pw", "bob": "bob-pw"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """Plain FTP allowed for accounts; anonymous with an upload folder."""
    d = Daemon(tmp_path_factory.mktemp("ftp"), config={
        "ftp": {"require_tls": False, "anonymous_root": "pub",
                "anonymous_upload_dir": "incoming", "max_connections_per_address": 40},
        "throttle": {"base_delay": 0.01, "max_delay": 0.05, "lock_after": 1000},
    }, listeners=["ftp", "ftps"])
    for name, pw in USERS.items():
        d.add_user(name, pw)
    d.start()
    yield d
    d.stop()


@pytest.fixture
def alice(daemon):
    f = connect(FTP, daemon.port("ftp"), "alice", USERS["alice"])
    yield f
    try:
        f.quit()
    except Exception:
        f.close()


def root(daemon, user="alice"):
    return daemon.data_dir / "ftp" / user


# -- login -----------------------------------------------------------------------


def test_login_wrong_password_then_disconnect_after_three(daemon):
    f = FTP(timeout=10)
    f.connect("127.0.0.1", daemon.port("ftp"))
    for _ in range(2):
        with pytest.raises(ftplib.error_perm, match="^530"):
            f.login("alice", "wrong")
    with pytest.raises((ftplib.error_perm, EOFError)):
        f.login("alice", "wrong")
    with pytest.raises((EOFError, OSError, ftplib.Error)):
        f.voidcmd("NOOP")
    f.close()


def test_commands_need_login(daemon):
    c = raw(daemon.port("ftp"))
    assert c.greeting.startswith("220 ")
    assert c.cmd("PWD").startswith("530 ")
    assert c.cmd("LIST").startswith("530 ")
    assert c.cmd("PASS x").startswith("503 ")
    assert c.cmd("SYST").startswith("215 UNIX")
    c.close()


def test_each_user_lands_in_own_root(daemon):
    a = connect(FTP, daemon.port("ftp"), "alice", USERS["alice"])
    b = connect(FTP, daemon.port("ftp"), "bob", USERS["bob"])
    store(a, "mine.txt", b"alice's")
    assert a.pwd() == "/"
    assert "mine.txt" not in b.nlst()
    with pytest.raises(ftplib.error_perm, match="^550"):
        fetch(b, "mine.txt")
    with pytest.raises(ftplib.error_perm, match="^550"):
        fetch(b, "../alice/mine.txt")
    assert (root(daemon) / "mine.txt").read_bytes() == b"alice's"
    a.quit()
    b.quit()


def test_accounts_need_tls_by_default(make_daemon):
    d = make_daemon(listeners=["ftp"], users={"alice": "pw"})
    f = FTP(timeout=10)
    f.connect("127.0.0.1", d.port("ftp"))
    with pytest.raises(ftplib.error_perm, match="^530 Non-anonymous sessions must use encryption"):
        f.login("alice", "pw")
    # Anonymous is off unless anonymous_root is configured.
    with pytest.raises(ftplib.error_perm, match="^530"):
        f.login("anonymous", "guest@")
    f.close()


# -- data modes and byte-exact transfers --------------------------------------------


SIZES = {"0B": 0, "1B": 1, "1MiB": 1 << 20}


@pytest.mark.parametrize("mode", ["PASV", "EPSV", "PORT", "EPRT"])
@pytest.mark.parametrize("size", list(SIZES))
def test_round_trip_byte_exact(daemon, alice, mode, size):
    data = os.urandom(SIZES[size])
    alice.use(mode)
    name = f"rt-{mode}-{size}.bin"
    assert store(alice, name, data).startswith("226")
    assert (root(daemon) / name).read_bytes() == data
    assert fetch(alice, name) == data
    assert alice.size(name) == len(data)


def test_50mib_round_trip(daemon, alice):
    data = os.urandom(50 << 20)
    store(alice, "big.bin", data)
    assert sha((root(daemon) / "big.bin").read_bytes()) == sha(data)
    assert sha(fetch(alice, "big.bin")) == sha(data)
    (root(daemon) / "big.bin").unlink()


def test_quit_after_unused_epsv_and_pasv(daemon):
    c = raw(daemon.port("ftp"))
    c.cmd("USER alice")
    assert c.cmd("PASS " + USERS["alice"]).startswith("230")
    assert c.cmd("EPSV").startswith("229 ")
    assert c.cmd("PASV").startswith("227 ")
    assert c.cmd("NOOP").startswith("200")
    assert c.cmd("QUIT").startswith("221")
    assert c.file.read() == b""
    c.close()


def test_transfer_without_data_channel(alice):
    with pytest.raises(ftplib.error_temp, match="^425"):
        alice.sendcmd("RETR nothing")


def test_epsv_all_refuses_other_setups(alice):
    assert alice.sendcmd("EPSV ALL").startswith("200")
    for cmd in ("PASV", "PORT 127,0,0,1,200,10", "EPRT |1|127.0.0.1|51210|"):
        with pytest.raises(ftplib.error_perm, match="^503"):
            alice.sendcmd(cmd)
    alice.use("EPSV")
    store(alice, "after-epsv-all.txt", b"ok")
    assert fetch(alice, "after-epsv-all.txt") == b"ok"


def test_epsv_wrong_family(alice):
    with pytest.raises(ftplib.error_perm, match=r"^522 .*\(1\)"):
        alice.sendcmd("EPSV 2")
    assert alice.sendcmd("EPSV 1").startswith("229")


# -- bounce and theft -------------------------------------------------------------------


@pytest.mark.parametrize("cmd", [
    "PORT 127,0,0,2,195,80",          # another host (127.0.0.2 is not the client)
    "PORT 127,0,0,1,0,25",            # a privileged port on the client
    "EPRT |1|127.0.0.2|50000|",
    "EPRT |1|127.0.0.1|21|",
    "EPRT |2|::1|50000|",
])
def test_bounce_refused(alice, cmd):
    with pytest.raises(ftplib.error_perm, match="^500 Illegal PORT"):
        alice.sendcmd(cmd)
    # The session goes on, and nothing was set up.
    with pytest.raises(ftplib.error_temp, match="^425"):
        alice.sendcmd("RETR x")


@pytest.mark.parametrize("cmd", ["PORT 1,2,3", "PORT 300,0,0,1,4,4", "PORT a,b,c,d,e,f",
                                 "EPRT |3|1.2.3.4|5000|", "EPRT |1|1.2.3|5000|",
                                 "EPRT |1|127.0.0.1|99999|", "EPRT garbage"])
def test_malformed_port(alice, cmd):
    with pytest.raises(ftplib.error_perm, match="^5"):
        alice.sendcmd(cmd)


def test_passive_theft_from_other_address(daemon, alice):
    data = os.urandom(100_000)
    store(alice, "secret.bin", data)
    host, port = alice.makepasv()
    thief = socket.socket()
    thief.settimeout(10)
    thief.bind(("127.0.0.2", 0))
    thief.connect((host, port))
    # The server drops the stranger at once: EOF (or a reset), no data.
    try:
        stolen = thief.recv(1000)
    except ConnectionResetError:
        stolen = b""
    assert stolen == b""
    thief.close()
    conn = socket.create_connection((host, port), timeout=10)
    assert alice.sendcmd("RETR secret.bin").startswith("150")
    got = b""
    while chunk := conn.recv(65536):
        got += chunk
    conn.close()
    assert alice.voidresp().startswith("226")
    assert got == data


# -- listings -------------------------------------------------------------------------


def test_listings(daemon, alice):
    alice.mkd("listdir")
    alice.cwd("listdir")
    store(alice, "one.txt", b"1")
    store(alice, "two.txt", b"22")
    alice.mkd("sub")
    lines = []
    alice.retrlines("LIST", lines.append)
    names = {line.split()[-1]: line for line in lines}
    assert set(names) == {"one.txt", "two.txt", "sub"}
    assert names["sub"].startswith("d")
    assert names["two.txt"].startswith("-rw")
    assert names["two.txt"].split()[4] == "2"
    lines = []
    alice.retrlines("LIST -la", lines.append)
    assert len(lines) == 3
    assert sorted(alice.nlst()) == ["one.txt", "sub", "two.txt"]
    assert alice.nlst("one.txt") == ["one.txt"]
    facts = dict(alice.mlsd())
    assert facts["two.txt"]["type"] == "file" and facts["two.txt"]["size"] == "2"
    assert facts["sub"]["type"] == "dir"
    assert set(facts["one.txt"]) >= {"type", "size", "modify", "perm", "unique"}
    assert facts["one.txt"]["perm"] == "rwadf"
    mlst = alice.sendcmd("MLST two.txt")
    assert mlst.startswith("250-") and "type=file;size=2;" in mlst and "/listdir/two.txt" in mlst
    assert alice.sendcmd("MDTM one.txt")[:4] == "213 "
    assert alice.sendcmd("OPTS MLST type;size;").startswith("200")
    assert dict(alice.mlsd())["one.txt"] == {"type": "file", "size": "1"}
    with pytest.raises(ftplib.error_perm, match="^550"):
        alice.nlst("nonexistent")
    with pytest.raises(ftplib.error_perm, match="^550"):
        list(alice.mlsd("one.txt"))
    alice.cwd("/")


def test_directories_and_names(daemon, alice):
    alice.mkd('we"ird dir')
    assert alice.sendcmd('MKD we"ird dir/inner').startswith('257 "/we""ird dir/inner"')
    alice.cwd('we"ird dir/inner')
    assert alice.pwd() == '/we"ird dir/inner'
    alice.sendcmd("CDUP")
    assert alice.pwd() == '/we"ird dir'
    with pytest.raises(ftplib.error_perm, match="^550"):
        alice.rmd("/we\"ird dir")  # not empty (and above the cwd)
    alice.cwd("/")
    alice.rmd('we"ird dir/inner')
    alice.rmd('we"ird dir')
    store(alice, "old.txt", b"x")
    alice.rename("old.txt", "new.txt")
    assert (root(daemon) / "new.txt").exists() and not (root(daemon) / "old.txt").exists()
    with pytest.raises(ftplib.error_perm, match="^503"):
        alice.sendcmd("RNTO nowhere")
    alice.delete("new.txt")
    with pytest.raises(ftplib.error_perm, match="^550"):
        alice.delete("new.txt")
    with pytest.raises(ftplib.error_perm, match="^550"):
        alice.cwd("missing")


def test_utf8_names(daemon, alice):
    assert alice.sendcmd("OPTS UTF8 ON").startswith("200")
    name = "héllo wörld ✓ 日本.txt"
    store(alice, name, b"unicode")
    assert (root(daemon) / name).read_bytes() == b"unicode"
    assert name in alice.nlst()
    assert name in dict(alice.mlsd())
    assert fetch(alice, name) == b"unicode"
    assert "UTF8" in alice.sendcmd("FEAT")


# -- the jail -----------------------------------------------------------------------


def test_jail_dotdot_and_absolute(daemon, alice):
    for path in ("../../../../etc/passwd", "/../../etc/passwd", "/etc/passwd",
                 "..", "../bob", "sub/../../.."):
        with pytest.raises(ftplib.error_perm, match="^550"):
            fetch(alice, path)
    with pytest.raises(ftplib.error_perm, match="^550"):
        alice.cwd("/../../..")
    assert alice.pwd() == "/"


def test_jail_symlinks(daemon, alice):
    r = root(daemon)
    outside = daemon.dir / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_bytes(b"outside secret")
    (outside / "sub").mkdir(exist_ok=True)
    (r / "escape").symlink_to(outside)
    (r / "escape-file").symlink_to(outside / "secret.txt")
    (r / "rootlink").symlink_to("/")
    (r / "inside.txt").write_bytes(b"inside")
    (r / "good-link").symlink_to("inside.txt")
    try:
        for path in ("escape/secret.txt", "escape-file", "rootlink/etc/hostname"):
            with pytest.raises(ftplib.error_perm, match="^550"):
                fetch(alice, path)
            with pytest.raises(ftplib.error_perm, match="^550"):
                alice.size(path)
        for d in ("escape", "rootlink", "rootlink/etc"):
            with pytest.raises(ftplib.error_perm, match="^550"):
                alice.cwd(d)
            with pytest.raises(ftplib.error_perm, match="^550"):
                alice.nlst(d)
        with pytest.raises(ftplib.error_perm, match="^550"):
            store(alice, "escape/planted.txt", b"x")
        with pytest.raises(ftplib.error_perm, match="^550"):
            store(alice, "escape-file", b"overwrite")
        with pytest.raises(ftplib.error_perm, match="^550"):
            alice.mkd("escape/newdir")
        for cmd in ("MDTM escape-file", "MLST escape/secret.txt", "STAT escape",
                    "RMD escape/sub", "DELE escape/secret.txt", "RNFR escape/secret.txt",
                    "SIZE rootlink/etc/passwd", "MLST rootlink"):
            with pytest.raises(ftplib.error_perm, match="^550"):
                alice.sendcmd(cmd)
        with pytest.raises(ftplib.error_perm, match="^550"):
            store(alice, "escape/secret.txt", b"appended", verb="APPE")
        with pytest.raises(ftplib.error_perm, match="^550"):
            list(alice.mlsd("escape"))
        with pytest.raises(ftplib.error_perm, match="^550"):
            alice.rename("inside.txt", "escape/moved.txt")
        assert (outside / "sub").is_dir()
        assert not (outside / "planted.txt").exists()
        assert not (outside / "newdir").exists()
        assert not (outside / "moved.txt").exists()
        assert (outside / "secret.txt").read_bytes() == b"outside secret"
        listed = alice.nlst()
        assert "escape" not in listed and "rootlink" not in listed and "escape-file" not in listed
        assert "good-link" in listed
        assert fetch(alice, "good-link") == b"inside"
        # Deleting a link removes the link, never its target.
        alice.delete("escape-file")
        assert (outside / "secret.txt").exists()
    finally:
        for name in ("escape", "escape-file", "rootlink", "good-link"):
            p = r / name
            if p.is_symlink():
                p.unlink()


# -- uploads are atomic ---------------------------------------------------------------


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): an upload cut by a crash or a network reset."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_cut_upload_leaves_no_file(daemon, alice):
    (root(daemon) / "keep.txt").write_bytes(b"original")
    for name in ("cut-new.bin", "keep.txt"):
        conn = alice.transfercmd(f"STOR {name}")
        conn.sendall(os.urandom(300_000))
        _reset(conn)
        with pytest.raises(ftplib.error_temp, match="^426"):
            alice.voidresp()
    assert not (root(daemon) / "cut-new.bin").exists()
    assert (root(daemon) / "keep.txt").read_bytes() == b"original"
    assert not [p for p in root(daemon).iterdir() if p.name.startswith(".netsuite-upload")]
    alice.voidcmd("NOOP")


def test_upload_in_progress_is_invisible(daemon, alice):
    conn = alice.transfercmd("STOR growing.bin")
    conn.sendall(b"partial" * 1000)
    tmp = None
    for _ in range(100):
        tmp = [p.name for p in root(daemon).iterdir() if p.name.startswith(".netsuite-upload-")]
        if tmp:
            break
        time.sleep(0.05)
    assert tmp, "the upload goes to a temporary name"
    other = connect(FTP, daemon.port("ftp"), "alice", USERS["alice"])
    assert tmp[0] not in other.nlst() and "growing.bin" not in other.nlst()
    with pytest.raises(ftplib.error_perm, match="^550"):
        fetch(other, tmp[0])
    with pytest.raises(ftplib.error_perm, match="^550"):
        other.delete(tmp[0])
    other.quit()
    conn.close()
    alice.voidresp()
    assert (root(daemon) / "growing.bin").read_bytes() == b"partial" * 1000


def test_overwrite_is_atomic_and_complete(daemon, alice):
    store(alice, "replace.bin", b"A" * 1000)
    data = os.urandom(2_000_000)
    store(alice, "replace.bin", data)
    assert (root(daemon) / "replace.bin").read_bytes() == data


# -- REST, APPE, STOU ---------------------------------------------------------------------


def test_resume_download_and_upload(daemon, alice):
    data = os.urandom(1_000_000)
    store(alice, "resume.bin", data)
    assert fetch(alice, "resume.bin", rest=123_457) == data[123_457:]
    # Interrupted upload resumed with REST: the partial file is kept on purpose.
    store(alice, "resume-up.bin", data[:400_000])
    assert alice.size("resume-up.bin") == 400_000
    store(alice, "resume-up.bin", data[400_000:], rest=400_000)
    assert (root(daemon) / "resume-up.bin").read_bytes() == data
    with pytest.raises(ftplib.error_perm, match="^5"):
        store(alice, "resume-up.bin", b"x", rest=5_000_000)
    with pytest.raises(ftplib.error_perm, match="^501"):
        alice.sendcmd("REST -5")


def test_appe_and_stou(daemon, alice):
    store(alice, "app.txt", b"one\n")
    store(alice, "app.txt", b"two\n", verb="APPE")
    store(alice, "app-new.txt", b"fresh", verb="APPE")
    assert (root(daemon) / "app.txt").read_bytes() == b"one\ntwo\n"
    assert (root(daemon) / "app-new.txt").read_bytes() == b"fresh"
    alice.voidcmd("TYPE I")
    conn, _ = alice.ntransfercmd("STOU")
    resp = alice.lastresp
    conn.sendall(b"unique 1")
    conn.close()
    alice.voidresp()
    conn, _ = alice.ntransfercmd("STOU")
    conn.sendall(b"unique 2")
    conn.close()
    alice.voidresp()
    assert resp == "150"
    stored = sorted(p.read_bytes() for p in root(daemon).iterdir() if p.name.startswith("file"))
    assert stored == [b"unique 1", b"unique 2"]


# -- ABOR -----------------------------------------------------------------------------------


def test_abor_during_download(daemon, alice):
    (root(daemon) / "huge.bin").write_bytes(os.urandom(64 << 20))
    try:
        conn = alice.transfercmd("RETR huge.bin")
        conn.recv(65536)
        # Plain ABOR on the control connection, as most clients send it.
        alice.putcmd("ABOR")
        first = alice.getline()
        second = alice.getline()
        conn.close()
        assert first.startswith("426"), first
        assert second.startswith("226"), second
        assert alice.sendcmd("NOOP").startswith("200")
        # ftplib's own abort(): Telnet IP + Synch with urgent data.
        conn = alice.transfercmd("RETR huge.bin")
        conn.recv(65536)
        resp = alice.abort()
        conn.close()
        assert resp.startswith("426")
        assert alice.getresp().startswith("226")
        assert alice.sendcmd("NOOP").startswith("200")
    finally:
        (root(daemon) / "huge.bin").unlink()


def test_abor_during_upload_and_idle(daemon, alice):
    conn = alice.transfercmd("STOR aborted.bin")
    conn.sendall(b"x" * 100_000)
    alice.putcmd("ABOR")
    assert alice.getline().startswith("426")
    assert alice.getline().startswith("226")
    conn.close()
    assert not (root(daemon) / "aborted.bin").exists()
    assert alice.sendcmd("ABOR").startswith("225")


def test_stat_during_transfer(daemon, alice):
    (root(daemon) / "stat.bin").write_bytes(os.urandom(32 << 20))
    try:
        conn = alice.transfercmd("RETR stat.bin")
        conn.recv(1000)
        status = alice.sendcmd("STAT")
        assert status.startswith("213") and "bytes transferred" in status
        alice.putcmd("ABOR")
        assert alice.getline().startswith("426")
        assert alice.getline().startswith("226")
        conn.close()
    finally:
        (root(daemon) / "stat.bin").unlink()


# -- TYPE A ------------------------------------------------------------------------------------


def test_ascii_mode_converts_line_ends(daemon, alice):
    alice.voidcmd("TYPE A")
    conn = alice.transfercmd("STOR ascii.txt")
    conn.sendall(b"line one\r\nline two\r\nlone\rcr\r\n")
    conn.close()
    alice.voidresp()
    assert (root(daemon) / "ascii.txt").read_bytes() == b"line one\nline two\nlone\rcr\n"
    (root(daemon) / "unix.txt").write_bytes(b"a\nb\r\nc\n" * 50_000)
    alice.voidcmd("TYPE A")
    conn = alice.transfercmd("RETR unix.txt")
    got = b""
    while chunk := conn.recv(65536):
        got += chunk
    conn.close()
    alice.voidresp()
    assert got == b"a\r\nb\r\nc\r\n" * 50_000
    alice.voidcmd("TYPE I")
    assert fetch(alice, "unix.txt") == b"a\nb\r\nc\n" * 50_000


# -- anonymous ---------------------------------------------------------------------------------


def test_anonymous_rules(daemon):
    pub = daemon.data_dir / "pub"
    (pub / "readme.txt").write_bytes(b"public")
    f = connect(FTP, daemon.port("ftp"), "anonymous", "guest@example.test")
    assert fetch(f, "readme.txt") == b"public"
    assert "readme.txt" in f.nlst()
    assert dict(f.mlsd())["readme.txt"]["perm"] == "r"
    for action in (lambda: store(f, "nope.txt", b"x"), lambda: f.delete("readme.txt"),
                   lambda: f.mkd("newdir"), lambda: f.rename("readme.txt", "x.txt"),
                   lambda: store(f, "readme.txt", b"x", verb="APPE")):
        with pytest.raises(ftplib.error_perm, match="^550"):
            action()
    assert (pub / "readme.txt").read_bytes() == b"public"
    # The upload folder: store new files, but not list, read, overwrite or delete.
    store(f, "incoming/drop.txt", b"dropped")
    assert (pub / "incoming" / "drop.txt").read_bytes() == b"dropped"
    with pytest.raises(ftplib.error_perm, match="^550"):
        store(f, "incoming/drop.txt", b"again")
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.nlst("incoming")
    with pytest.raises(ftplib.error_perm, match="^550"):
        fetch(f, "incoming/drop.txt")
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.delete("incoming/drop.txt")
    assert (pub / "incoming" / "drop.txt").read_bytes() == b"dropped"
    f.cwd("incoming")
    store(f, "second.txt", b"2")
    f.quit()
    g = connect(FTP, daemon.port("ftp"), "ftp", "")
    assert g.pwd() == "/"
    g.quit()


# -- hostile input -------------------------------------------------------------------------------


def test_bad_input_gets_errors_and_session_goes_on(daemon):
    c = raw(daemon.port("ftp"))
    assert c.cmd("USER alice").startswith("331")
    assert c.cmd("PASS " + USERS["alice"]).startswith("230")
    assert c.cmd(b"NOOP\x00evil").startswith("501")
    assert c.cmd(b"CWD a\x00b").startswith("501")
    assert c.cmd(b"X" * 10_000).startswith("500")
    assert c.cmd(b"RETR " + b"a" * 100_000).startswith("500")
    assert c.cmd(b"\xff\xfe\xfd").startswith("500")
    assert c.cmd(b"").startswith("500")
    assert c.cmd(b"FOOBARBAZQUUX").startswith("500")
    assert c.cmd(b"SITE CHMOD 777 x").startswith("502")
    assert c.cmd(b"RETR \xff\xfe-not-utf8").startswith("425")
    assert c.cmd(b"MKD " + "é".encode("latin-1")).startswith("257")
    assert c.cmd("TYPE X").startswith("504")
    assert c.cmd("MODE B").startswith("504")
    assert c.cmd("STRU R").startswith("504")
    assert c.cmd("PROT P").startswith("503")
    assert c.cmd("CWD").startswith("501")
    # Bare LF line endings are accepted too.
    c.send(b"PWD\n")
    assert c.reply().startswith('257 "/"')
    assert c.cmd("NOOP").startswith("200")
    c.close()
    other = connect(FTP, daemon.port("ftp"), "bob", USERS["bob"])
    other.voidcmd("NOOP")
    other.quit()


def test_pipelined_commands_answered_in_order(daemon):
    c = raw(daemon.port("ftp"))
    c.send(f"USER alice\r\nPASS {USERS['alice']}\r\nPWD\r\nTYPE I\r\nNOOP\r\n".encode())
    replies = [c.reply()[:3] for _ in range(5)]
    assert replies == ["331", "230", "257", "200", "200"]
    c.close()


def test_help_feat_stat_misc(alice):
    assert "RETR" in alice.sendcmd("HELP") and alice.sendcmd("HELP").startswith("214-")
    assert alice.sendcmd("HELP MLSD").startswith("214 Syntax: MLSD")
    feat = alice.sendcmd("FEAT")
    for f in ("MLST type*;size*;modify*;perm*;unique*;", "EPSV", "EPRT", "REST STREAM",
              "SIZE", "MDTM", "AUTH TLS", "PBSZ", "PROT", "UTF8"):
        assert f in feat
    stat = alice.sendcmd("STAT")
    assert stat.startswith("211-") and "alice" in stat
    store(alice, "statme.txt", b"abc")
    assert "statme.txt" in alice.sendcmd("STAT statme.txt")
    assert alice.sendcmd("ALLO 1000").startswith("202")
    assert alice.sendcmd("MODE S").startswith("200")
    assert alice.sendcmd("STRU F").startswith("200")
    assert alice.sendcmd("SYST") == "215 UNIX Type: L8"
    assert alice.sendcmd("REIN").startswith("220")
    with pytest.raises(ftplib.error_perm, match="^530"):
        alice.sendcmd("PWD")
    alice.login("alice", USERS["alice"])


# -- limits, timeouts, configuration ---------------------------------------------------


def test_connection_limit_per_address(make_daemon):
    d = make_daemon(config={"ftp": {"max_connections_per_address": 2}}, listeners=["ftp"])
    a, b = raw(d.port("ftp")), raw(d.port("ftp"))
    c = socket.create_connection(("127.0.0.1", d.port("ftp")), timeout=10)
    assert c.makefile("rb").readline().startswith(b"421 ")
    c.close()
    assert a.cmd("NOOP").startswith("200") and b.cmd("NOOP").startswith("200")
    a.close()
    b.close()


def test_idle_timeout(make_daemon):
    d = make_daemon(config={"ftp": {"idle_timeout": 1}}, listeners=["ftp"])
    c = raw(d.port("ftp"), timeout=20)
    assert c.reply().startswith("421")
    assert c.file.read() == b""
    c.close()


def test_passive_range_and_masquerade(make_daemon):
    d = make_daemon(config={"ftp": {"require_tls": False, "passive_port_min": 41000,
                                    "passive_port_max": 41010,
                                    "masquerade_address": "10.1.2.3"}},
                    listeners=["ftp"], users={"alice": "pw"})
    f = connect(FTP, d.port("ftp"), "alice", "pw")
    resp = f.sendcmd("PASV")
    assert "(10,1,2,3," in resp
    nums = resp.split("(")[1].split(")")[0].split(",")
    assert 41000 <= int(nums[4]) * 256 + int(nums[5]) <= 41010
    port = int(f.sendcmd("EPSV").split("|||")[1].rstrip("|)"))
    assert 41000 <= port <= 41010
    # ftplib ignores the announced address (trust_server_pasv_ipv4_address is off).
    store(f, "nat.txt", b"behind nat")
    assert fetch(f, "nat.txt") == b"behind nat"
    f.quit()


@pytest.mark.parametrize("section,key,reason", [
    ({"masquerade_address": "not-an-ip"}, "ftp.masquerade_address", "not an IP"),
    ({"passive_port_min": 100, "passive_port_max": 200}, "ftp.passive_port_min", "1024"),
    ({"passive_port_min": 5000}, "ftp.passive_port_min", "both"),
    ({"anonymous_upload_dir": "in"}, "ftp.anonymous_upload_dir", "anonymous_root"),
    ({"idle_timeout": 0}, "ftp.idle_timeout", "greater than 0"),
    ({"max_line_length": 10}, "ftp.max_line_length", "512"),
    ({"bogus": 1}, "ftp.bogus", "unknown key"),
])
def test_config_errors_name_key_and_reason(section, key, reason):
    from netsuite.config import ConfigError, load

    overrides = {f"ftp.{k}": v for k, v in section.items()}
    with pytest.raises(ConfigError) as info:
        load(None, overrides)
    assert info.value.key == key
    assert reason in str(info.value)


def test_command_flood_behind_slow_login(daemon):
    """Thousands of pipelined commands behind a login: all answered, in order."""
    c = raw(daemon.port("ftp"), timeout=60)
    c.send(f"USER alice\r\nPASS {USERS['alice']}\r\n".encode() + b"NOOP\r\n" * 3000 +
           b"PWD\r\n")
    assert c.reply().startswith("331")
    assert c.reply().startswith("230")
    for _ in range(3000):
        assert c.reply().startswith("200")
    assert c.reply().startswith('257 "/"')
    c.close()


def test_ipv6_data_channels(make_daemon):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no ::1")
    d = make_daemon(config={"ftp": {"require_tls": False},
                            "listen": {"ftp": ["tcp6:0:interface=\\:\\:1"]}},
                    listeners=["ftp"], users={"alice": "pw"})
    f = FTP(timeout=10)
    f.connect("::1", d.port("ftp"))
    f.login("alice", "pw")
    data = os.urandom(200_000)
    for mode in ("EPSV", "EPRT"):
        f.set_pasv(mode == "EPSV")  # ftplib uses EPSV/EPRT on IPv6 by itself
        store(f, f"v6-{mode}.bin", data)
        assert fetch(f, f"v6-{mode}.bin") == data
    # Permanent (5xx, RFC 2428): a 4xx would make clients retry PASV forever.
    with pytest.raises(ftplib.error_perm, match="^522 .*EPSV"):
        f.sendcmd("PASV")
    with pytest.raises(ftplib.error_perm, match="^500 Illegal PORT"):
        f.sendcmd("EPRT |2|::2|50000|")
    with pytest.raises(ftplib.error_perm, match="^500 Illegal PORT"):
        f.sendcmd("EPRT |1|127.0.0.1|50000|")
    with pytest.raises(ftplib.error_perm, match=r"^522 .*\(2\)"):
        f.sendcmd("EPSV 1")
    f.quit()


def test_names_over_name_max_get_553(daemon, alice):
    """ENAMETOOLONG is a bad file name (553), for every command, never a traceback."""
    long = "n" * 300
    nested = f"ok/{long}/x"
    alice.mkd("ok")
    store(alice, "ok/short.txt", b"short")
    for cmd in (f"MKD {long}", f"RMD {long}", f"DELE {long}", f"CWD {long}",
                f"SIZE {long}", f"MDTM {long}", f"MLST {long}", f"RNFR {long}",
                f"MKD {nested}", f"DELE {nested}"):
        with pytest.raises(ftplib.error_perm, match="^553 .*name"):
            alice.sendcmd(cmd)
    with pytest.raises(ftplib.error_perm, match="^553 .*name"):
        store(alice, long, b"data")
    with pytest.raises(ftplib.error_perm, match="^553 .*name"):
        store(alice, nested, b"data")
    with pytest.raises(ftplib.error_perm, match="^553 .*name"):
        fetch(alice, long)
    alice.sendcmd("RNFR ok/short.txt")
    with pytest.raises(ftplib.error_perm, match="^553 .*name"):
        alice.sendcmd(f"RNTO {long}")
    assert sorted(os.listdir(root(daemon) / "ok")) == ["short.txt"]
    assert "Traceback" not in daemon.log()
    alice.voidcmd("NOOP")


def test_data_connection_timeouts(make_daemon):
    d = make_daemon(config={"ftp": {"require_tls": False, "connect_timeout": 1,
                                    "data_timeout": 1}},
                    listeners=["ftp"], users={"alice": "pw"})
    f = connect(FTP, d.port("ftp"), "alice", "pw")
    (d.data_dir / "ftp" / "alice" / "stall.bin").write_bytes(os.urandom(48 << 20))
    # Nobody connects to the passive port.
    f.sendcmd("PASV")
    f.putcmd("RETR stall.bin")
    assert f.getline().startswith("150")
    assert f.getline().startswith("425")
    # The client connects but never reads: the stalled transfer is cut.
    conn = f.transfercmd("RETR stall.bin")
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert f.getline().startswith("426")
    conn.close()
    # An upload that stops sending is cut and leaves no file.
    conn = f.transfercmd("STOR stalled-up.bin")
    conn.sendall(b"x" * 1000)
    assert f.getline().startswith("426")
    conn.close()
    assert not (d.data_dir / "ftp" / "alice" / "stalled-up.bin").exists()
    assert f.sendcmd("NOOP").startswith("200")
    f.quit()


def test_nlst_and_list_with_patterns(daemon, alice):
    alice.mkd("globs")
    for name in ("a.txt", "b.txt", "c.bin", ".hidden.txt"):
        store(alice, f"globs/{name}", b"x")
    assert sorted(alice.nlst("globs/*.txt")) == ["a.txt", "b.txt"]
    alice.cwd("globs")
    assert sorted(alice.nlst("*.bin")) == ["c.bin"]
    assert alice.nlst("*.none") == []
    lines = []
    alice.retrlines("LIST ?.txt", lines.append)
    assert [line.split()[-1] for line in lines] == ["a.txt", "b.txt"]
    alice.cwd("/")


def test_failed_logins_throttled_through_portal(make_daemon):
    d = make_daemon(config={"ftp": {"require_tls": False},
                            "throttle": {"lock_after": 3, "lock_seconds": 600}},
                    listeners=["ftp"], users={"alice": "pw"})
    f = FTP(timeout=20)
    f.connect("127.0.0.1", d.port("ftp"))
    for _ in range(3):
        with pytest.raises((ftplib.error_perm, EOFError)):
            f.login("alice", "wrong")
    f.close()
    g = FTP(timeout=20)
    g.connect("127.0.0.1", d.port("ftp"))
    with pytest.raises(ftplib.error_perm, match="^530"):
        g.login("alice", "pw")  # locked: even the right password is refused
    g.close()
    assert "login refused, locked: protocol=ftp" in d.log()


def test_total_connection_limit(make_daemon):
    d = make_daemon(config={"ftp": {"max_connections": 1}}, listeners=["ftp"])
    a = raw(d.port("ftp"))
    b = socket.create_connection(("127.0.0.1", d.port("ftp")), timeout=10)
    assert b.makefile("rb").readline() == b"421 Too many connections, try later.\r\n"
    b.close()
    assert a.cmd("NOOP").startswith("200")
    a.close()


@pytest.mark.parametrize("enabled", [True, False])
def test_transfer_log_switch(make_daemon, enabled):
    """C{transfer_log} (vsftpd's xferlog_enable): a line per finished transfer, or none."""
    d = make_daemon(config={"ftp": {"require_tls": False, "transfer_log": enabled}},
                    listeners=["ftp"], users={"alice": "pw"})
    f = connect(FTP, d.port("ftp"), "alice", "pw")
    store(f, "logged.bin", b"hello")
    assert fetch(f, "logged.bin") == b"hello"
    # A refused PORT logs a warning after the transfers: once it is in the file,
    # so would their lines be.
    with pytest.raises(ftplib.error_perm):
        f.sendcmd("PORT 127,0,0,1,0,21")
    f.quit()
    assert d.wait_for(lambda: "refused active data connection" in d.log())
    log = d.log()
    assert ("RETR /logged.bin 5 bytes: user=alice" in log) is enabled
    assert ("STOR /logged.bin 5 bytes: user=alice" in log) is enabled


def test_retr_sizes_around_one_chunk(daemon, alice):
    """Files up to one chunk go out in one write, longer ones streamed: both byte-exact."""
    from netsuite.ftp.shell import CHUNK

    for size in (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7):
        data = os.urandom(size)
        (root(daemon) / f"s{size}.bin").write_bytes(data)
        assert sha(fetch(alice, f"s{size}.bin")) == sha(data), size
        if size > 10:
            assert fetch(alice, f"s{size}.bin", rest=size - 10) == data[-10:], size

"""
FTPS against the real daemon: AUTH TLS / PBSZ / PROT in all four data modes,
implicit FTPS, the session-reuse requirement on data connections, TLS required
for accounts, AUTH TLS command injection, and repeated uploads verified byte
for byte (a cut upload must never be answered 226).
"""

from __future__ import annotations

import ftplib
import os
import re
import socket
import ssl
from pathlib import Path

import pytest
from harness import Daemon
from test_ftp_helpers import (
    FTPS,
    ImplicitFTPS,
    StockFTPS,
    connect,
    fetch,
    raw,
    sha,
    store,
    tls_context,
)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """Embedded defaults: accounts must use TLS; session reuse required."""
    d = Daemon(tmp_path_factory.mktemp("ftps"), config={
        "ftp": {"max_connections_per_address": 40},
    }, listeners=["ftp", "ftps"])
    d.add_user("alice", "alice-pw")
    d.start()
    yield d
    d.stop()


def root(d):
    return d.data_dir / "ftp" / "alice"


@pytest.fixture
def alice(daemon):
    f = connect(FTPS, daemon.port("ftp"), "alice", "alice-pw", tls=True)
    yield f
    try:
        f.quit()
    except Exception:
        f.close()


SIZES = {"0B": 0, "1B": 1, "1MiB": 1 << 20}


@pytest.mark.parametrize("mode", ["PASV", "EPSV", "PORT", "EPRT"])
@pytest.mark.parametrize("size", list(SIZES))
def test_prot_p_round_trip(daemon, alice, mode, size):
    data = os.urandom(SIZES[size])
    alice.use(mode)
    name = f"tls-{mode}-{size}.bin"
    assert store(alice, name, data).startswith("226")
    assert (root(daemon) / name).read_bytes() == data
    assert fetch(alice, name) == data
    assert name in alice.nlst()
    assert name in dict(alice.mlsd())


@pytest.mark.parametrize("mode", ["PASV", "PORT"])
def test_implicit_ftps(daemon, mode):
    f = ImplicitFTPS(timeout=20)
    assert f.connect("127.0.0.1", daemon.port("ftps")).startswith("220")
    f.login("alice", "alice-pw")
    f._prot_p = True  # implicit FTPS protects data connections from the start
    f.use(mode)
    data = os.urandom(300_000)
    store(f, f"implicit-{mode}.bin", data)
    assert (root(daemon) / f"implicit-{mode}.bin").read_bytes() == data
    assert fetch(f, f"implicit-{mode}.bin") == data
    with pytest.raises(ftplib.error_perm, match="^503"):
        f.sendcmd("AUTH TLS")
    f.quit()


def test_tls_12_by_default(daemon, alice):
    """TLS 1.3 tickets on data connections cut uploads of clients that never read them."""
    assert alice.sock.version() == "TLSv1.2"
    ctx = tls_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    f = FTPS(context=ctx, timeout=10)
    f.connect("127.0.0.1", daemon.port("ftp"))
    with pytest.raises((ssl.SSLError, OSError)):
        f.auth()
    f.close()


def test_tls_13_when_allowed(make_daemon):
    d = make_daemon(config={"ftp": {"tls_max_version": "1.3"}}, listeners=["ftp"],
                    users={"alice": "pw"})
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = tls_context()
        ctx.minimum_version = ctx.maximum_version = version
        f = FTPS(context=ctx, timeout=20)
        f.connect("127.0.0.1", d.port("ftp"))
        f.auth()
        f.login("alice", "pw")
        f.prot_p()
        for mode in ("EPSV", "PORT"):
            f.use(mode)
            data = os.urandom(500_000)
            store(f, "v.bin", data)
            assert (d.data_dir / "ftp" / "alice" / "v.bin").read_bytes() == data
            assert fetch(f, "v.bin") == data
        assert f.sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                    ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        f.quit()


def test_tls_version_config_conflict(make_daemon):
    d = make_daemon(config={"tls": {"min_version": "1.3"}}, listeners=["ftp"], start=False)
    with pytest.raises(RuntimeError, match="ftp.tls_max_version"):
        d.start()


def test_many_tls_uploads_all_verified(daemon, alice):
    """Every upload answered 226 is on disk whole; none may be cut (TLS 1.3 tickets)."""
    blobs = [os.urandom(1 << 20) for _ in range(3)]
    for i in range(20):
        data = blobs[i % 3]
        alice.use("PASV" if i % 2 else "EPSV")
        assert store(alice, f"many-{i}.bin", data).startswith("226")
        assert sha((root(daemon) / f"many-{i}.bin").read_bytes()) == sha(data), i


def test_prot_c_clear_data(daemon, alice):
    alice.prot_c()
    store(alice, "clear.txt", b"clear data")
    assert fetch(alice, "clear.txt") == b"clear data"


REUSE_REFUSED = "^522 Data connection must resume the TLS session of the control connection"


@pytest.mark.parametrize("mode", ["PASV", "PORT"])
def test_stock_ftplib_without_session_reuse_gets_a_clear_522(daemon, mode):
    """
    Python's ftplib.FTP_TLS never resumes the session on data connections: its
    upload, download and listing end in a 522 reply saying so (ftplib.error_perm),
    not in ConnectionResetError, and nothing reaches the file system.
    """
    f = connect(StockFTPS, daemon.port("ftp"), "alice", "alice-pw", tls=True)
    f.set_pasv(mode == "PASV")
    store(connect(FTPS, daemon.port("ftp"), "alice", "alice-pw", tls=True),
          "kept.bin", b"kept")
    data = os.urandom(3 << 20)  # more than any socket buffer: all of it is read and dropped
    with pytest.raises(ftplib.error_perm, match=REUSE_REFUSED):
        store(f, f"stock-{mode}.bin", data)
    with pytest.raises(ftplib.error_perm, match=REUSE_REFUSED):
        fetch(f, "kept.bin")
    with pytest.raises(ftplib.error_perm, match=REUSE_REFUSED):
        f.nlst()
    # The refusal is reported and the session goes on.
    f.voidcmd("NOOP")
    f.quit()
    assert not (root(daemon) / f"stock-{mode}.bin").exists()
    assert not [p for p in root(daemon).iterdir() if p.name.startswith(".")]
    assert "Traceback" not in daemon.log()


def documented_ftplib_subclass():
    """The ftplib subclass docs/ftp.md tells users to copy, exactly as written there."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "ftp.md").read_text()
    block = re.search(r"```python\n(.*?class ReusingFTP_TLS.*?)```", text, re.S)
    assert block, "docs/ftp.md lost its ftplib example"
    namespace: dict = {}
    exec(block.group(1), namespace)
    return namespace["ReusingFTP_TLS"]


@pytest.mark.parametrize("mode", ["PASV", "PORT"])
def test_documented_ftplib_subclass_resumes_and_transfers(daemon, mode):
    cls = documented_ftplib_subclass()
    f = cls(context=tls_context(), timeout=20)
    f.connect("127.0.0.1", daemon.port("ftp"))
    f.login("alice", "alice-pw")  # FTP_TLS.login sends AUTH TLS first
    f.prot_p()
    f.set_pasv(mode == "PASV")
    data = os.urandom(1 << 20)
    assert store(f, f"documented-{mode}.bin", data).startswith("226")
    assert (root(daemon) / f"documented-{mode}.bin").read_bytes() == data
    assert fetch(f, f"documented-{mode}.bin") == data
    assert f"documented-{mode}.bin" in f.nlst()
    f.quit()


def test_stranger_without_session_cannot_take_transfer(daemon, alice):
    secret = os.urandom(200_000)
    store(alice, "protected.bin", secret)
    host, port = alice.makepasv()
    ctx = tls_context()
    plain = socket.create_connection(("127.0.0.1", port), timeout=10)
    alice.putcmd("RETR protected.bin")
    got = b""
    try:
        stranger = ctx.wrap_socket(plain)
        while chunk := stranger.recv(65536):
            got += chunk
    except (ssl.SSLError, OSError):
        pass
    plain.close()
    assert secret[:1000] not in got
    first = alice.getline()
    if first.startswith("150"):
        first = alice.getline()
    assert first.startswith("522"), first
    alice.voidcmd("NOOP")


def test_session_reuse_can_be_switched_off(make_daemon):
    d = make_daemon(config={"ftp": {"require_tls_session_reuse": False}}, listeners=["ftp"],
                    users={"alice": "pw"})
    f = connect(StockFTPS, d.port("ftp"), "alice", "pw", tls=True)
    store(f, "stock.bin", b"stock ftplib")
    assert fetch(f, "stock.bin") == b"stock ftplib"
    f.quit()


def test_require_tls_data(make_daemon):
    d = make_daemon(config={"ftp": {"require_tls_data": True}}, listeners=["ftp"],
                    users={"alice": "pw"})
    f = connect(FTPS, d.port("ftp"), "alice", "pw", tls=True)
    with pytest.raises(ftplib.error_perm, match="^534"):
        f.prot_c()
    f.quit()


def test_auth_tls_injection_discarded(daemon):
    c = raw(daemon.port("ftp"))
    c.send(b"AUTH TLS\r\nUSER alice\r\n")
    assert c.reply().startswith("234")
    tls = tls_context().wrap_socket(c.sock, server_hostname="127.0.0.1")
    tls.sendall(b"PASS alice-pw\r\n")
    reply = tls.recv(1000)
    assert reply.startswith(b"503"), reply
    tls.sendall(b"USER alice\r\nPASS alice-pw\r\n")
    got = b""
    while got.count(b"\r\n") < 2:
        got += tls.recv(1000)
    assert got.startswith(b"331") and b"\r\n230" in got
    tls.close()


def test_tls_commands_out_of_order(daemon):
    c = raw(daemon.port("ftp"))
    assert c.cmd("PBSZ 0").startswith("503")
    assert c.cmd("PROT P").startswith("503")
    assert c.cmd("AUTH KERBEROS").startswith("504")
    assert c.cmd("CCC").startswith("502")
    c.close()
    f = FTPS(timeout=10)
    f.connect("127.0.0.1", daemon.port("ftp"))
    f.auth()
    with pytest.raises(ftplib.error_perm, match="^503"):
        f.sendcmd("AUTH TLS")
    with pytest.raises(ftplib.error_perm, match="^503"):
        f.sendcmd("PROT P")  # PBSZ first
    f.sendcmd("PBSZ 0")
    with pytest.raises(ftplib.error_perm, match="^536"):
        f.sendcmd("PROT S")
    f.close()


def test_accounts_refused_without_tls_anonymous_allowed(make_daemon):
    d = make_daemon(config={"ftp": {"anonymous_root": "pub"}}, listeners=["ftp"],
                    users={"alice": "pw"})
    (d.data_dir / "pub" / "hello.txt").write_bytes(b"hi")
    f = ftplib.FTP(timeout=10)
    f.connect("127.0.0.1", d.port("ftp"))
    with pytest.raises(ftplib.error_perm, match="^530"):
        f.login("alice", "pw")
    f.login("anonymous", "x@y")
    assert f.nlst() == ["hello.txt"]
    f.quit()


def test_plaintext_allowed_by_server_setting(make_daemon):
    d = make_daemon(config={"server": {"allow_plaintext_auth": True}}, listeners=["ftp"],
                    users={"alice": "pw"})
    f = ftplib.FTP(timeout=10)
    f.connect("127.0.0.1", d.port("ftp"))
    assert f.login("alice", "pw").startswith("230")
    f.quit()


def test_tls_upload_without_close_notify_is_not_whole(daemon, alice):
    """A TLS data connection that ends without close_notify may be cut: 426, no file."""
    (root(daemon) / "kept.bin").write_bytes(b"previous version")
    for name in ("unclean.bin", "kept.bin"):
        conn = alice.transfercmd(f"STOR {name}")
        conn.sendall(os.urandom(500_000))
        conn.close()  # ssl.SSLSocket.close() sends no close_notify
        with pytest.raises(ftplib.error_temp, match="^426"):
            alice.voidresp()
    assert not (root(daemon) / "unclean.bin").exists()
    assert (root(daemon) / "kept.bin").read_bytes() == b"previous version"
    # The same upload closed properly is accepted.
    conn = alice.transfercmd("STOR clean.bin")
    data = os.urandom(500_000)
    conn.sendall(data)
    conn.unwrap().close()
    assert alice.voidresp().startswith("226")
    assert (root(daemon) / "clean.bin").read_bytes() == data


def test_abor_over_tls_and_session_survives(daemon, alice):
    (root(daemon) / "tls-huge.bin").write_bytes(os.urandom(48 << 20))
    try:
        for verb in ("RETR tls-huge.bin", "STOR tls-aborted.bin"):
            conn = alice.transfercmd(verb)
            if verb.startswith("RETR"):
                conn.recv(65536)
            else:
                conn.sendall(os.urandom(200_000))
            alice.putcmd("ABOR")
            assert alice.getline().startswith("426")
            assert alice.getline().startswith("226")
            conn.close()
        assert not (root(daemon) / "tls-aborted.bin").exists()
        # Later protected transfers still resume the control session.
        store(alice, "after-abor.bin", b"still works")
        assert fetch(alice, "after-abor.bin") == b"still works"
    finally:
        (root(daemon) / "tls-huge.bin").unlink()

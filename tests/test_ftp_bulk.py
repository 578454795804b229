"""
FTP under bulk load and at the edges of the download path, against the real
daemon: a burst of connections larger than Twisted's default accept queue,
downloads whose size is no multiple of any chunk, REST offsets, ABOR of a
large download, and a file that shrinks while it is being sent.
"""

from __future__ import annotations

import ftplib
import os
import select
import signal
import socket
import time

import pytest
from test_ftp_helpers import FTP, connect, fetch

#: More simultaneous connections than Twisted's default listen backlog (50).
BURST = 200


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    from harness import Daemon

    d = Daemon(tmp_path_factory.mktemp("ftpbulk"), config={
        "ftp": {"require_tls": False, "anonymous_root": "pub",
                "max_connections": 1000, "max_connections_per_address": 1000},
        "throttle": {"lock_after": 100000},
    }, listeners=["ftp"])
    d.add_user("alice", "alice-pw")
    d.start()
    yield d
    d.stop()


@pytest.fixture
def alice(daemon):
    f = connect(FTP, daemon.port("ftp"), "alice", "alice-pw")
    yield f
    try:
        f.quit()
    except Exception:
        f.close()


def root(daemon):
    path = daemon.data_dir / "ftp" / "alice"
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_connection_burst_beyond_default_backlog_all_get_a_banner(daemon):
    """
    While the server does not accept (stopped), BURST clients connect; once it
    runs again every one of them must get its 220.  With Twisted's backlog of
    50 the kernel completed the surplus handshakes by SYN cookie and dropped
    their final ACK: those clients sat on a connection the server never saw.
    """
    pid = daemon.proc.pid
    socks: list[socket.socket] = []
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(BURST):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", daemon.port("ftp")))
            except BlockingIOError:
                pass
            socks.append(s)
        # Let the handshakes finish (or be dropped) while nothing accepts.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            _, writable, _ = select.select([], socks, [], 0.5)
            if len(writable) == len(socks):
                break
    finally:
        os.kill(pid, signal.SIGCONT)
    banners: dict[int, bytes] = {}
    deadline = time.monotonic() + 30
    while len(banners) < len(socks) and time.monotonic() < deadline:
        waiting = [s for s in socks if s.fileno() not in banners]
        readable, _, _ = select.select(waiting, [], [], 1)
        for s in readable:
            try:
                banners[s.fileno()] = s.recv(100)
            except BlockingIOError:
                continue
            except OSError as e:
                banners[s.fileno()] = repr(e).encode()
    try:
        got = sorted(banners.values())
        assert len(banners) == BURST, f"{BURST - len(banners)} connections never got a banner"
        assert all(b.startswith(b"220 ") for b in got), got[:3]
    finally:
        for s in socks:
            s.close()


def _pasv_port(f: ftplib.FTP) -> int:
    nums = f.sendcmd("PASV").split("(")[1].split(")")[0].split(",")
    return int(nums[4]) * 256 + int(nums[5])


def test_stray_connection_to_a_kept_passive_port_is_not_the_next_transfer(daemon, alice):
    """
    A session keeps its passive port between transfers; a connection that
    came in between (here a second one to the same PASV) must be dropped, not
    taken as the next transfer's data connection.
    """
    (root(daemon) / "one.txt").write_bytes(b"one" * 1000)
    (root(daemon) / "two.txt").write_bytes(b"two" * 1000)
    port = _pasv_port(alice)
    data = socket.create_connection(("127.0.0.1", port), timeout=10)
    stray = socket.create_connection(("127.0.0.1", port), timeout=10)
    alice.sendcmd("TYPE I")
    alice.putcmd("RETR one.txt")
    assert alice.getresp().startswith("150")
    got = b""
    while chunk := data.recv(65536):
        got += chunk
    data.close()
    assert alice.voidresp().startswith("226")
    assert got == b"one" * 1000
    # The next transfer, through the same client: it must get its own connection.
    assert fetch(alice, "two.txt") == b"two" * 1000
    # The stray one never carried anything and was closed.
    stray.settimeout(10)
    assert stray.recv(100) == b""
    stray.close()


@pytest.mark.parametrize("size", [1, 65535, 262145, (4 << 20) + 7, (9 << 20) - 3])
def test_retr_sizes_not_multiples_of_a_chunk_are_byte_exact(daemon, alice, size):
    data = os.urandom(size)
    (root(daemon) / "odd.bin").write_bytes(data)
    assert fetch(alice, "odd.bin") == data


@pytest.mark.parametrize("offset", [0, 1, 262144, 262145, (6 << 20) - 1, 6 << 20])
def test_rest_retr_offsets(daemon, alice, offset):
    data = os.urandom(6 << 20)
    (root(daemon) / "rest.bin").write_bytes(data)
    assert fetch(alice, "rest.bin", rest=offset) == data[offset:]


def test_abor_during_large_retr_then_session_goes_on(daemon, alice):
    (root(daemon) / "large.bin").write_bytes(os.urandom(128 << 20))
    try:
        alice.voidcmd("TYPE I")
        conn = alice.transfercmd("RETR large.bin")
        conn.recv(65536)
        alice.putcmd("ABOR")
        assert alice.getline().startswith("426")
        assert alice.getline().startswith("226")
        conn.close()
        assert fetch(alice, "large.bin", rest=(128 << 20) - 10) \
            == (root(daemon) / "large.bin").read_bytes()[-10:]
    finally:
        (root(daemon) / "large.bin").unlink()


def test_file_truncated_during_retr_fails_clearly(daemon, alice):
    """
    A file cut short while it is sent: the client must get a failure reply
    (not 226 for fewer bytes than announced, and not a hang).
    """
    path = root(daemon) / "shrinking.bin"
    size = 64 << 20
    path.write_bytes(os.urandom(size))
    try:
        alice.voidcmd("TYPE I")
        conn = alice.transfercmd("RETR shrinking.bin")
        got = len(conn.recv(65536))
        os.truncate(path, 1 << 20)
        conn.settimeout(30)
        try:
            while chunk := conn.recv(1 << 20):
                got += len(chunk)
        except ConnectionResetError:
            pass  # the server may cut the data connection: the reply says why
        conn.close()
        with pytest.raises(ftplib.error_temp, match="^45"):
            alice.voidresp()
        assert got < size
        assert alice.sendcmd("NOOP").startswith("200")
    finally:
        path.unlink()

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

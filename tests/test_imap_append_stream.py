"""
IMAP APPEND literals stream into the folder's tmp/ as they arrive (the real
daemon): resident memory stays flat whatever the size, the message arrives
byte-exact, and a full disk answers OVERQUOTA with nothing left behind.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

USERS = {"alice": "wonderland"}
MiB = 1024 * 1024


class Client:
    """A raw plain-text IMAP client: enough for LITERAL+ APPEND."""

    def __init__(self, d, timeout: float = 120):
        self.sock = socket.create_connection(("127.0.0.1", d.port("imap")), timeout=timeout)
        self.f = self.sock.makefile("rb")
        assert self.f.readline().startswith(b"* OK")
        self.send(b'l LOGIN alice "wonderland"\r\n')
        assert self.tagged(b"l").startswith(b"l OK")

    def send(self, data) -> None:
        self.sock.sendall(data)

    def tagged(self, tag: bytes) -> bytes:
        while True:
            line = self.f.readline()
            assert line, "connection closed"
            if line.startswith(tag + b" "):
                return line

    def append(self, chunks, size: int, folder: bytes = b"INBOX", tag: bytes = b"a") -> bytes:
        self.send(tag + b" APPEND " + folder + b" {%d+}\r\n" % size)
        for chunk in chunks:
            self.send(chunk)
        self.send(b"\r\n")
        return self.tagged(tag)

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def big_message(index: int, size: int):
    """C{size} bytes of CRLF lines, unique per C{index}: (chunks, sha256 of the stored LF form)."""
    header = b"Subject: big %d\r\nFrom: a@example.test\r\n\r\n" % index
    line_len = 1024
    body_lines = (size - len(header)) // line_len
    tail = size - len(header) - body_lines * line_len
    digest = hashlib.sha256()

    def chunks():
        yield header
        digest.update(header.replace(b"\r\n", b"\n"))
        block = []
        for n in range(body_lines):
            stem = b"%d.%07d " % (index, n)
            block.append(stem + b"x" * (line_len - 2 - len(stem)) + b"\r\n")
            if len(block) == 256:
                data = b"".join(block)
                digest.update(data.replace(b"\r\n", b"\n"))
                block = []
                yield data
        data = b"".join(block) + b"t" * tail
        digest.update(data.replace(b"\r\n", b"\n"))
        yield data

    return chunks, digest


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def stored(d, user: str = "alice") -> list[Path]:
    root = d.maildir(user)
    return sorted(p for sub in ("new", "cur") for p in (root / sub).iterdir())


def stored_digests(d, user: str = "alice") -> list[str]:
    """SHA-256 of each stored body over 1 MiB (LF line ends, as stored), read in chunks."""
    if d.in_postgresql:
        import psycopg

        # Computed by PostgreSQL from the stored bytes, not taken from the key.
        with psycopg.connect(d.config["database"]["dsn"]) as conn:
            rows = conn.execute(
                "SELECT encode(sha256(b.body), 'hex'), encode(b.hash, 'hex') FROM messages m "
                "JOIN folders f ON f.id = m.folder_id JOIN accounts a ON a.id = f.account_id "
                "JOIN blobs b ON b.hash = m.content_hash WHERE a.name = %s AND b.size > %s",
                (user, MiB)).fetchall()
        assert all(body == key for body, key in rows), rows
        return sorted(body for body, _key in rows)
    got = []
    for p in stored(d, user):
        if p.stat().st_size > MiB:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while block := f.read(MiB):
                    h.update(block)
            got.append(h.hexdigest())
    return sorted(got)


def test_four_parallel_50_mib_appends_keep_memory_flat(make_daemon):
    d = make_daemon(listeners=["imap"], users=USERS,
                    config={"server": {"allow_plaintext_auth": True},
                            "imap": {"max_message_size": 60 * MiB}})
    pid = d.proc.pid
    # Log in first: a password check (argon2id) takes 64 MiB for a moment, and
    # that is not what is measured here.  A small append warms the session up.
    clients = [Client(d) for _ in range(4)]
    assert clients[0].append([b"Subject: warm\r\n\r\nhi\r\n"], 22).startswith(b"a OK")
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to VmRSS
        hwm_reset = True
    except OSError:
        hwm_reset = False
    baseline = rss_kib(pid)
    size = 50 * MiB
    messages = [big_message(i, size) for i in range(4)]
    results: list = [None] * 4
    peak = baseline

    def run(i):
        chunks, _digest = messages[i]
        try:
            results[i] = clients[i].append(chunks(), size, tag=b"b%d" % i)
        finally:
            clients[i].close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    give_up = time.monotonic() + 300
    while any(t.is_alive() for t in threads) and time.monotonic() < give_up:
        peak = max(peak, rss_kib(pid))
        threads[0].join(0.05)
    for t in threads:
        t.join(max(0.0, give_up - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "APPENDs did not finish in 300 s"
    if hwm_reset:
        peak = max(peak, rss_kib(pid, "VmHWM"))
    for i, result in enumerate(results):
        assert result is not None and result.startswith(b"b%d OK [APPENDUID" % i), result
    grew = (peak - baseline) / 1024
    assert grew < 32, f"RSS grew by {grew:.1f} MiB for 4 x 50 MiB APPENDs"
    # Byte-exact, and nothing left in tmp/ (delivered by rename, or sent to the database).
    assert stored_digests(d) == sorted(digest.hexdigest() for _chunks, digest in messages)
    assert d.tmp_files("alice") == []


def test_streamed_append_to_a_missing_folder_keeps_nothing(make_daemon):
    d = make_daemon(listeners=["imap"], users=USERS,
                    config={"server": {"allow_plaintext_auth": True}})
    c = Client(d)
    chunks, _ = big_message(0, 300_000)
    assert c.append(chunks(), 300_000, folder=b"Nope").startswith(b"a NO [TRYCREATE]")
    chunks, digest = big_message(1, 300_000)
    assert c.append(chunks(), 300_000, tag=b"b").startswith(b"b OK")
    c.close()
    [only] = d.messages("alice")
    assert hashlib.sha256(only).hexdigest() == digest.hexdigest()
    assert d.tmp_files("alice") == []


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs to be the daemon's mail directory; unmounted afterwards."""
    mount = tmp_path / "data" / "mail"
    mount.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs (needs root and mount rights): {done.stderr.strip()}")
    try:
        yield tmp_path
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.maildir_only  # the Maildir on a full file system
def test_append_on_a_full_disk_says_overquota_and_leaves_nothing(small_disk):
    from harness import Daemon

    d = Daemon(small_disk, {"server": {"allow_plaintext_auth": True}}, ["imap"])
    d.add_user("alice", USERS["alice"])
    d.start()
    try:
        c = Client(d)
        tmp = d.maildir("alice") / "tmp"
        # Streamed (past 64 KiB): the disk fills while the literal arrives.
        chunks, _ = big_message(0, 3 * MiB)
        reply = c.append(chunks(), 3 * MiB)
        assert reply.startswith(b"a NO [OVERQUOTA]"), reply
        assert list(tmp.iterdir()) == [] and stored(d) == []
        # In memory (small), on a disk with almost nothing left.
        filler = d.data_dir / "mail" / "filler"
        with open(filler, "wb", buffering=0) as f:
            try:
                while f.write(b"\0" * 4096):
                    pass
            except OSError:
                pass
        os.truncate(filler, max(0, filler.stat().st_size - 16384))
        chunks, _ = big_message(1, 60_000)
        reply = c.append(chunks(), 60_000, tag=b"b")
        assert reply.startswith(b"b NO [OVERQUOTA]"), reply
        assert list(tmp.iterdir()) == [] and stored(d) == []
        # Room again: the same APPEND works, so nothing half-done was kept.
        filler.unlink()
        chunks, digest = big_message(2, 60_000)
        assert c.append(chunks(), 60_000, tag=b"c").startswith(b"c OK [APPENDUID")
        [only] = stored(d)
        assert hashlib.sha256(only.read_bytes()).hexdigest() == digest.hexdigest()
        c.close()
    finally:
        d.stop()


def test_connection_lost_mid_append_removes_the_temporary_file(make_daemon):
    """The literal's file in tmp/ (the Maildir's, or the user's on PostgreSQL) goes with it."""
    d = make_daemon(listeners=["imap"], users=USERS,
                    config={"server": {"allow_plaintext_auth": True}})
    c = Client(d)
    tmp = d.maildir("alice") / "tmp"
    c.send(b"a APPEND INBOX {1000000+}\r\n" + b"x" * 300_000)
    assert d.wait_for(lambda: tmp.is_dir() and [p for p in tmp.iterdir() if p.stat().st_size])
    c.close()
    assert d.wait_for(lambda: list(tmp.iterdir()) == [])
    assert d.messages("alice") == []

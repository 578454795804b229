#!/usr/bin/env python3
"""
SMTP throughput: netsuite vs aiosmtpd (Maildir handler, the Python peer) vs
Postfix's smtp-sink (accepts and discards: the no-storage ceiling).

  1. MX delivery into local Maildirs: Postfix's C{smtp-source -s 20 -l 4096}
     sends --count messages to each server (one message per connection, as
     smtp-source does without -d).
  2. Submission with AUTH, relayed: C{smtp-source} cannot AUTH, so a small
     asyncio client in this file does it: --sessions sessions in parallel,
     each EHLO + AUTH PLAIN once, then MAIL/RCPT/DATA for its share of
     --count messages of --size bytes.  netsuite (plain-text AUTH allowed on
     loopback) queues each message durably and relays it to smtp-sink; we
     time acceptance (the 250s) and the drain (queue empty).  aiosmtpd with
     AUTH stores into a Maildir; smtp-sink shows the client's own ceiling.

Nothing is fsynced by aiosmtpd's Mailbox handler (Python's mailbox module);
netsuite fsyncs every message (Maildir: file + directory; queue: message,
envelope and directory) before it answers 250.

Run from the repository root (needs postfix's binaries and pip aiosmtpd; the
Postfix daemon itself is never started):

    python bench/smtp_bench.py                 # 2000 messages per run
    python bench/smtp_bench.py --count 5000
    python bench/smtp_bench.py --smoke         # 100 messages (CI)

Postfix itself, with virtual(8) into Maildir, end to end: bench/smtp_postfix_bench.py.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
USER, PASSWORD = "bench", "bench-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def count_files(path: Path) -> int:
    try:
        return len(os.listdir(path))
    except FileNotFoundError:
        return 0


# -- the servers ------------------------------------------------------------------------


def serve_aiosmtpd(port: int, maildir: str) -> None:
    """Runs in a child process: aiosmtpd + Mailbox handler, AUTH accepted for USER."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Mailbox
    from aiosmtpd.smtp import AuthResult

    def auth(server, session, envelope, mechanism, data):
        ok = (data.login, data.password) == (USER.encode(), PASSWORD.encode())
        return AuthResult(success=ok, handled=False)

    c = Controller(Mailbox(maildir), hostname="127.0.0.1", port=port, authenticator=auth,
                   auth_require_tls=False, ready_timeout=10)
    c.start()
    try:
        while True:
            time.sleep(3600)
    finally:
        c.stop()


def start_aiosmtpd(port: int, maildir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, "--serve-aiosmtpd", str(port),
                             str(maildir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


def start_sink(port: int) -> subprocess.Popen:
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # smtp-sink refuses root
    proc = subprocess.Popen([SMTP_SINK, *user, f"127.0.0.1:{port}", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_netsuite(base: Path, sink_port: int, extra: tuple[str, ...] = ()):
    """netsuite's MX and submission, sink.test relayed to C{sink_port}; C{extra}: twistd options."""
    from harness import Daemon

    d = Daemon(base / "netsuite", listeners=["smtp", "submission"], config={
        "server": {"allow_plaintext_auth": True},
        "queue": {"routes": {"sink.test": f"127.0.0.1:{sink_port}"},
                  "poll_interval": 0.2},
        "smtp": {"max_connections": 500, "max_connections_per_address": 500},
        "throttle": {"lock_after": 1000},
    })
    d.add_user(USER, PASSWORD)
    d.start(*extra)
    return d


# -- the loads ------------------------------------------------------------------------------


def smtp_source(port: int, count: int, sessions: int, size: int, to: str) -> float:
    """Seconds smtp-source takes for C{count} messages."""
    started = time.monotonic()
    subprocess.run([SMTP_SOURCE, "-s", str(sessions), "-l", str(size), "-m", str(count),
                    "-f", "load@source.test", "-t", to, f"127.0.0.1:{port}"],
                   check=True, stdout=subprocess.DEVNULL, timeout=600)
    return time.monotonic() - started


async def _session(port: int, messages: int, body: bytes, to: str, ready: list,
                   go: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> int:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != b"-":
                return int(line[:3])

    async def cmd(line: bytes, *want: int) -> None:
        writer.write(line + b"\r\n")
        code = await reply()
        if code not in want:
            raise RuntimeError(f"{line.split()[0]!r} answered {code}")

    assert await reply() == 220
    await cmd(b"EHLO load.test", 250)
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    await cmd(b"AUTH PLAIN " + token, 235, 250)  # smtp-sink says 250
    ready.append(time.monotonic())
    await go.wait()
    for _ in range(messages):
        await cmd(b"MAIL FROM:<bench@example.test>", 250)
        await cmd(b"RCPT TO:<" + to.encode() + b">", 250)
        await cmd(b"DATA", 354)
        writer.write(body)
        code = await reply()
        if code != 250:
            raise RuntimeError(f"end of data answered {code}")
    writer.write(b"QUIT\r\n")
    await reply()
    writer.close()


def submit_load(port: int, count: int, sessions: int, size: int, to: str
                ) -> tuple[float, float]:
    """
    Seconds for the C{sessions} logins (all at once), then for C{count}
    submissions over those sessions: netsuite's argon2 password check is slow
    on purpose, so logins are timed apart from the mail.
    """
    line = b"X" * 70 + b"\r\n"
    head = b"From: bench@example.test\r\nTo: " + to.encode() + b"\r\nSubject: bench\r\n\r\n"
    body = head + line * max(1, (size - len(head)) // len(line)) + b".\r\n"
    shares = [count // sessions + (1 if i < count % sessions else 0) for i in range(sessions)]

    times: list[float] = []

    async def run():
        ready: list[float] = []
        go = asyncio.Event()
        start = time.monotonic()
        jobs = [asyncio.ensure_future(_session(port, n, body, to, ready, go))
                for n in shares if n]
        while len(ready) < len(jobs):
            if any(j.done() for j in jobs):
                await asyncio.gather(*jobs)  # raise the failure
            await asyncio.sleep(0.005)
        times.append(time.monotonic() - start)
        start = time.monotonic()
        go.set()
        await asyncio.gather(*jobs)
        times.append(time.monotonic() - start)

    asyncio.run(run())
    return times[0], times[1]


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=2000, help="messages per run")
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--size", type=int, default=4096, help="message size in bytes")
    p.add_argument("--serve-aiosmtpd", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=None,
                   help="pass --workers N to twistd netsuite (not passed unless given)")
    p.add_argument("--smoke", action="store_true", help="100 messages: checks it runs (CI)")
    args = p.parse_args()
    if args.smoke:
        args.count = 100
    if args.serve_aiosmtpd:
        serve_aiosmtpd(int(args.serve_aiosmtpd[0]), args.serve_aiosmtpd[1])
        return 0
    for binary in (SMTP_SOURCE, SMTP_SINK):
        if not os.access(binary, os.X_OK):
            sys.exit(f"{binary} missing: apt-get install postfix (the daemon is not needed)")
    n, s, size = args.count, args.sessions, args.size
    base = Path(tempfile.mkdtemp(prefix="smtp-bench-"))
    results: dict[str, float] = {}
    sink_port = free_port()
    sink = start_sink(sink_port)
    d = None
    try:
        print(f"{n} messages of {size} bytes, {s} sessions; 2 cores shared by everything")
        # 1. MX delivery into Maildirs ---------------------------------------------------
        print("\n1. MX delivery (smtp-source, one message per connection)")
        results["sink1"] = n / smtp_source(sink_port, n, s, size, "x@sink.test")
        print(f"   smtp-sink (no storage)     {results['sink1']:8.0f} msgs/s")
        port = free_port()
        aio = start_aiosmtpd(port, base / "aiosmtpd-maildir")
        try:
            results["aio1"] = n / smtp_source(port, n, s, size, f"{USER}@example.test")
        finally:
            stop(aio)
        print(f"   aiosmtpd Maildir handler   {results['aio1']:8.0f} msgs/s")
        d = start_netsuite(base, sink_port, extra=("--workers", str(args.workers))
                           if args.workers is not None else ())
        t = smtp_source(d.port("smtp"), n, s, size, f"{USER}@example.test")
        stored = count_files(d.maildir(USER) / "new")
        assert stored == n, f"netsuite stored {stored} of {n}"
        results["ns1"] = n / t
        print(f"   netsuite (fsynced Maildir) {results['ns1']:8.0f} msgs/s")
        print(f"   netsuite/aiosmtpd {results['ns1'] / results['aio1']:.2f}   "
              f"netsuite/smtp-sink {results['ns1'] / results['sink1']:.2f}")

        # 2. Submission with AUTH, relayed through the queue ---------------------------------
        print("\n2. Submission with AUTH PLAIN (asyncio client: one login per session, "
              "then its messages)")
        results["sink2"] = n / submit_load(sink_port, n, s, size, "x@sink.test")[1]
        print(f"   smtp-sink (no storage)     {results['sink2']:8.0f} msgs/s")
        port = free_port()
        aio = start_aiosmtpd(port, base / "aiosmtpd-maildir2")
        try:
            results["aio2"] = n / submit_load(port, n, s, size, "x@sink.test")[1]
        finally:
            stop(aio)
        print(f"   aiosmtpd Maildir handler   {results['aio2']:8.0f} msgs/s")
        active = d.data_dir / "queue" / "active"
        logins, t = submit_load(d.port("submission"), n, s, size, "x@sink.test")
        started = time.monotonic() - t
        print(f"   (netsuite: {s} argon2id logins took {logins:.2f}s, not counted)")
        deadline = time.monotonic() + 600
        while count_files(active) and time.monotonic() < deadline:
            time.sleep(0.05)
        drained = time.monotonic() - started
        left = count_files(active) // 2
        results["ns2"] = n / t
        results["ns2drain"] = (n - left) / drained
        print(f"   netsuite accepted (queued, fsynced) {results['ns2']:8.0f} msgs/s")
        print(f"   netsuite end to end (relayed to smtp-sink, queue empty) "
              f"{results['ns2drain']:8.0f} msgs/s" + (f"  [{left} still queued]" if left else ""))
        print(f"   netsuite/aiosmtpd {results['ns2'] / results['aio2']:.2f}   "
              f"netsuite/smtp-sink {results['ns2'] / results['sink2']:.2f}")
    finally:
        if d is not None:
            d.stop()
        stop(sink)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

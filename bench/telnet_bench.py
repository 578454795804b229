#!/usr/bin/env python3
"""
TELNET benchmark: N concurrent logged-in sessions, keystroke-to-echo round
trip (p50/p99) and the server's memory, for netsuite and, side by side on
the same machine in the same run, inetutils telnetd (started per connection
by a tiny inetd on loopback, as inetd would).

Each session runs C{cat} on its pty, so every keystroke is echoed by the
kernel's line discipline: the figure is the server's own path (socket ->
TELNET decode -> pty -> echo -> pty -> TELNET encode -> socket).

Two measurements per server and size:
  - idle: one keystroke at a time, round-robin over the sessions;
  - burst: every session types at once, each echo timed.

Memory: the server process(es) only (netsuite's one twistd; the sum over
the per-connection telnetd processes), RSS and PSS; the shells are the same
on both sides and left out.

    python bench/telnet_bench.py                  # 50 sessions, 20 rounds
    python bench/telnet_bench.py --sessions 50 200 --rounds 30
    python bench/telnet_bench.py --no-telnetd
    python bench/telnet_bench.py --smoke              # 5 sessions, 4 rounds (CI)

telnetd runs as C{telnetd -h -E /bin/sh} (no /bin/login: the benchmark does
not create system accounts), so its side has no login process per session.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from netsuite.telnet.client import TelnetClient  # noqa: E402

TELNETD = "/usr/sbin/telnetd"


# -- memory -----------------------------------------------------------------------------


def memory_kb(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) summed over C{pids}, in KiB."""
    rss = pss = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return rss, pss


def children_named(parent: int, name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and comm == name:
            found.append(int(entry))
    return found


# -- sessions ------------------------------------------------------------------------------


def open_sessions(port: int, n: int, login: tuple[str, str] | None) -> list[TelnetClient]:
    """N clients at a C{cat} on their own pty."""
    clients = [TelnetClient("127.0.0.1", port, timeout=120) for _ in range(n)]
    if login:
        user, password = login
        for c in clients:
            c.expect(b"login: ")
            c.sendline(user)
        for c in clients:
            c.expect(b"Password: ")
            c.sendline(password)
    for c in clients:
        c.expect(rb"[$#] $")
        c.sendline("exec cat")
    for c in clients:
        c.expect(b"exec cat\r\n")
    settle_all(clients, 0.05, 5)
    for c in clients:
        c.buffer.clear()
    return clients


def settle_all(clients: list[TelnetClient], quiet: float, limit: float) -> None:
    """
    Read every session until none has sent anything for C{quiet} seconds.  All
    at once: settling one session after another cost N x C{quiet} of the
    bench's own waiting (10 s of the 200-session figure, on either server).
    """
    by_sock = {c.sock: c for c in clients}
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ready, _, _ = select.select(list(by_sock), [], [], quiet)
        if not ready:
            return
        for sock in ready:
            by_sock[sock].pump(0)


def wait_echo(c: TelnetClient, key: bytes, deadline: float) -> None:
    while key not in c.buffer:
        if time.monotonic() > deadline:
            raise TimeoutError("no echo")
        c.pump(0.5)
    del c.buffer[:c.buffer.index(key) + 1]


def idle_round_trips(clients: list[TelnetClient], rounds: int) -> list[float]:
    samples = []
    for r in range(rounds):
        for c in clients:
            key = b"abcdefghijklmnopqrstuvwxyz"[r % 26:r % 26 + 1]
            t0 = time.perf_counter()
            c.send(key)
            wait_echo(c, key, time.monotonic() + 30)
            samples.append(time.perf_counter() - t0)
    return samples


def burst_round_trips(clients: list[TelnetClient], rounds: int) -> list[float]:
    samples = []
    by_sock = {c.sock: c for c in clients}
    for r in range(rounds):
        key = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"[r % 26:r % 26 + 1]
        started = {}
        for c in clients:
            started[c] = time.perf_counter()
            c.send(key)
        pending = set(clients)
        deadline = time.monotonic() + 60
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} echoes missing")
            ready, _, _ = select.select([c.sock for c in pending], [], [], 1.0)
            now = time.perf_counter()
            for sock in ready:
                c = by_sock[sock]
                c.pump(0)
                if key in c.buffer:
                    del c.buffer[:c.buffer.index(key) + 1]
                    samples.append(now - started[c])
                    pending.discard(c)
        time.sleep(0.01)
        for c in clients:  # line-discipline echo of the Enter-less keys only
            c.buffer.clear()
    return samples


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def close_all(clients: list[TelnetClient]) -> None:
    for c in clients:
        c.close()


# -- the servers ------------------------------------------------------------------------------


class Netsuite:
    name = "netsuite"
    extra: tuple[str, ...] = ()  # more twistd netsuite options (--workers N)

    #: [auth] cache_size: 0 makes every session a first login (argon2id each time).
    cache_size = 1000

    def __init__(self, n: int):
        from harness import Daemon

        self.dir = Path(tempfile.mkdtemp(prefix="telnet-bench-"))
        self.daemon = Daemon(self.dir, {
            "server": {"auth": ["passwd"]},
            "auth": {"cache_size": self.cache_size},
            "telnet": {"max_connections": n + 10, "max_connections_per_address": n + 10,
                       "utmp": False,
                       # As root, a password-file user's shell would run as root:
                       # netsuite refuses that unless the config opts in.
                       "permit_root_login": os.geteuid() == 0,
                       "fail_delay": 0.1},
        }, ["telnet"])
        self.daemon.add_user("bench", "bench-pw")
        self.daemon.start(*self.extra)
        self.port = self.daemon.port("telnet")
        self.login = ("bench", "bench-pw")

    def server_pids(self) -> list[int]:
        return [self.daemon.proc.pid]

    def stop(self) -> None:
        self.daemon.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Telnetd:
    name = "inetutils telnetd"

    def __init__(self, n: int):
        self.proc = subprocess.Popen([sys.executable, __file__, "--inetd"],
                                     stdout=subprocess.PIPE, start_new_session=True)
        self.port = int(self.proc.stdout.readline())
        self.login = None

    def server_pids(self) -> list[int]:
        return children_named(self.proc.pid, "telnetd")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


def serve_inetd() -> None:
    """A minimal inetd: one telnetd per connection, its socket as stdin/stdout/stderr."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    print(listener.getsockname()[1], flush=True)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    while True:
        conn, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            for fd in (0, 1, 2):
                os.dup2(conn.fileno(), fd)
            os.execv(TELNETD, ["telnetd", "-h", "-E", "/bin/sh"])
        conn.close()


def measure(server_class, n: int, rounds: int) -> dict:
    server = server_class(n)
    try:
        t0 = time.monotonic()
        clients = open_sessions(server.port, n, server.login)
        setup = time.monotonic() - t0
        time.sleep(0.5)
        rss, pss = memory_kb(server.server_pids())
        idle = idle_round_trips(clients, max(1, rounds // 4))
        burst = burst_round_trips(clients, rounds)
        close_all(clients)
    finally:
        server.stop()
    return {"server": server.name, "sessions": n, "setup_s": setup, "rss_kb": rss,
            "pss_kb": pss, "idle": idle, "burst": burst}


def report(results: list[dict]) -> None:
    print()
    print(f"{'server':<20} {'N':>4} {'login+start s':>13} {'RSS MiB':>8} {'PSS MiB':>8} "
          f"{'idle p50 ms':>11} {'idle p99 ms':>11} {'burst p50 ms':>12} {'burst p99 ms':>12}")
    for r in results:
        print(f"{r['server']:<20} {r['sessions']:>4} {r['setup_s']:>13.2f} "
              f"{r['rss_kb'] / 1024:>8.1f} {r['pss_kb'] / 1024:>8.1f} "
              f"{percentile(r['idle'], 50) * 1e3:>11.3f} {percentile(r['idle'], 99) * 1e3:>11.3f} "
              f"{percentile(r['burst'], 50) * 1e3:>12.3f} "
              f"{percentile(r['burst'], 99) * 1e3:>12.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[50])
    parser.add_argument("--rounds", type=int, default=20,
                        help="burst rounds (idle rounds are a quarter of this)")
    parser.add_argument("--no-telnetd", action="store_true")
    parser.add_argument("--workers", type=int, default=None,
                        help="pass --workers N to twistd netsuite (not passed unless given)")
    parser.add_argument("--smoke", action="store_true",
                        help="5 sessions, 4 rounds: checks it runs (CI)")
    parser.add_argument("--no-auth-cache", action="store_true",
                        help="[auth] cache_size = 0: every session verifies argon2id "
                             "(by default the sessions, all one user, share one verification)")
    parser.add_argument("--inetd", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inetd:
        serve_inetd()
        return
    if args.smoke:
        args.sessions, args.rounds = [5], 4
    if args.workers is not None:
        Netsuite.extra = ("--workers", str(args.workers))
    if args.no_auth_cache:
        Netsuite.cache_size = 0
    servers = [Netsuite]
    if not args.no_telnetd:
        if os.path.exists(TELNETD):
            servers.append(Telnetd)
        else:
            print(f"{TELNETD} not found (apt-get install inetutils-telnetd): netsuite only")
    results = []
    for n in args.sessions:
        for server in servers:
            print(f"{server.name}: {n} sessions ...", flush=True)
            results.append(measure(server, n, args.rounds))
    report(results)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""
FTP benchmark: netsuite side by side with pyftpdlib (pip) and vsftpd (Debian),
same files, same machine, the servers alternating over several rounds.

  python bench/ftp_bench.py                      # modest defaults (a few minutes)
  python bench/ftp_bench.py --size-mib 500 --clients 200   # the full issue figures
  python bench/ftp_bench.py --servers netsuite,pyftpdlib
  python bench/ftp_bench.py --smoke              # one small round: checks it runs (CI)

Figures: RETR and STOR throughput of one large file with 1 and --parallel
clients (one process per client, so the client is not the bottleneck), and
--clients clients at once each logging in (anonymous on all three servers, so
no server pays for password hashing), listing a folder and fetching
--small-files small files.  All servers run at once (idle but for the one
measured); each round measures every server once, who goes first alternating
(A B C, C B A, ...), and every figure is quoted as the median over the rounds
with, per peer, the median of the paired netsuite/peer ratios: single runs on
a shared 2-core machine are noise.  Plain FTP on 127.0.0.1.

Exits non-zero if a server does not start, a transfer fails, or a netsuite
small-file session fails (any server's, with --smoke).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import ftplib
import importlib.util
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rounds import alternate, fmt_ratio, median, paired_ratios  # noqa: E402

USER, PASSWORD = "bench", "bench-pw"
BLOCK = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.recv(100)
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def populate(root: Path, size: int, small_files: int) -> None:
    """The same tree for every server: big.bin, small/f*.txt, upload/."""
    root.mkdir(parents=True, exist_ok=True)
    chunk = os.urandom(BLOCK)
    with open(root / "big.bin", "wb") as f:
        left = size
        while left > 0:
            f.write(chunk[:min(left, BLOCK)])
            left -= BLOCK
    (root / "small").mkdir(exist_ok=True)
    for i in range(small_files):
        (root / "small" / f"f{i}.txt").write_bytes(os.urandom(4096))
    (root / "upload").mkdir(exist_ok=True)


# -- servers -----------------------------------------------------------------------------


class Netsuite:
    name = "netsuite"
    extra: tuple[str, ...] = ()  # more twistd netsuite options (--workers N)

    def __init__(self, work: Path, size: int, small_files: int):
        from harness import Daemon

        self.daemon = Daemon(work / "netsuite", config={
            "ftp": {"require_tls": False, "anonymous_root": f"ftp/{USER}",
                    "anonymous_upload_dir": "upload", "max_connections": 2000,
                    "max_connections_per_address": 2000, "fsync_uploads": False,
                    # Neither peer logs transfers (xferlog_enable=NO, logging at ERROR).
                    "transfer_log": False},
            "throttle": {"lock_after": 100000},
        }, listeners=["ftp"])
        self.daemon.add_user(USER, PASSWORD)
        self.root = self.daemon.data_dir / "ftp" / USER
        populate(self.root, size, small_files)

    def start(self) -> int:
        self.daemon.start(*self.extra)
        return self.daemon.port("ftp")

    def stop(self) -> None:
        self.daemon.stop()


class PyFtpdlib:
    name = "pyftpdlib"

    def __init__(self, work: Path, size: int, small_files: int):
        self.root = work / "pyftpdlib"
        populate(self.root, size, small_files)
        self.proc = None

    def start(self) -> int:
        port = free_port()
        code = textwrap.dedent(f"""
            import logging
            from pyftpdlib.authorizers import DummyAuthorizer
            from pyftpdlib.handlers import FTPHandler
            from pyftpdlib.servers import FTPServer
            logging.basicConfig(level=logging.ERROR)
            a = DummyAuthorizer()
            a.add_user({USER!r}, {PASSWORD!r}, {str(self.root)!r}, perm="elradfmwMT")
            a.add_anonymous({str(self.root)!r}, perm="elrw")
            FTPHandler.authorizer = a
            FTPHandler.banner = "pyftpdlib ready"
            s = FTPServer(("127.0.0.1", {port}), FTPHandler)
            s.max_cons = 2000
            s.max_cons_per_ip = 0
            s.serve_forever()
        """)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(port)
        return port

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)


class Vsftpd:
    """vsftpd serves anonymous users only here (local users need system accounts)."""

    name = "vsftpd"
    anonymous_only = True

    def __init__(self, work: Path, size: int, small_files: int):
        self.work = work / "vsftpd"
        self.root = self.work / "root"
        populate(self.root, size, small_files)
        os.chmod(self.root, 0o755)
        shutil.chown(self.root / "upload", "ftp")
        self.proc = None

    def start(self) -> int:
        port = free_port()
        conf = self.work / "vsftpd.conf"
        conf.write_text(textwrap.dedent(f"""\
            listen=YES
            listen_ipv6=NO
            listen_address=127.0.0.1
            listen_port={port}
            background=NO
            anonymous_enable=YES
            no_anon_password=YES
            anon_root={self.root}
            local_enable=NO
            write_enable=YES
            anon_upload_enable=YES
            anon_world_readable_only=NO
            anon_umask=022
            max_clients=0
            max_per_ip=0
            seccomp_sandbox=NO
            xferlog_enable=NO
            use_localtime=NO
            pasv_address=127.0.0.1
            """))
        self.proc = subprocess.Popen(["/usr/sbin/vsftpd", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(port)
        return port

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)


# -- clients (module level, so worker processes can run them) ---------------------------------


def login(port: int, anonymous: bool) -> ftplib.FTP:
    f = ftplib.FTP(timeout=120)
    f.connect("127.0.0.1", port)
    if anonymous:
        f.login("anonymous", "bench@")
    else:
        f.login(USER, PASSWORD)
    return f


def retr_once(port: int, anonymous: bool, barrier=None) -> tuple[int, float, float]:
    """(bytes, start, end): the clock runs from the command to the 226, login excluded."""
    f = login(port, anonymous)
    f.voidcmd("TYPE I")
    if barrier is not None:
        barrier.wait()  # every client logged in: transfers start together
    start = time.time()
    conn = f.transfercmd("RETR big.bin")
    buf = bytearray(BLOCK)
    total = 0
    while n := conn.recv_into(buf):
        total += n
    conn.close()
    f.voidresp()
    end = time.time()
    f.quit()
    return total, start, end


def stor_once(port: int, anonymous: bool, size: int, tag: str,
              barrier=None) -> tuple[int, float, float]:
    f = login(port, anonymous)
    f.voidcmd("TYPE I")
    if barrier is not None:
        barrier.wait()
    start = time.time()
    conn = f.transfercmd(f"STOR upload/up-{tag}-{os.getpid()}-{time.monotonic_ns()}.bin")
    chunk = os.urandom(BLOCK)
    left = size
    while left > 0:
        conn.sendall(chunk[:min(left, BLOCK)])
        left -= BLOCK
    conn.close()
    f.voidresp()
    end = time.time()
    f.quit()
    return size, start, end


FAILURES: list[str] = []


def small_session(port: int, small_files: int) -> bool:
    try:
        f = login(port, True)
        names = f.nlst("small")
        if len(names) != small_files:
            return False
        for i in range(small_files):
            got = bytearray()
            f.retrbinary(f"RETR small/f{i}.txt", got.extend)
            if len(got) != 4096:
                return False
        f.quit()
        return True
    except Exception as e:
        FAILURES.append(f"{type(e).__name__}: {e}")
        return False


def throughput(kind: str, port: int, anonymous: bool, size: int, parallel: int) -> float:
    """MiB/s over all clients, from the first transfer command to the last 226."""
    with mp.Manager() as manager, cf.ProcessPoolExecutor(parallel) as pool:
        barrier = manager.Barrier(parallel)
        if kind == "RETR":
            futures = [pool.submit(retr_once, port, anonymous, barrier) for _ in range(parallel)]
        else:
            futures = [pool.submit(stor_once, port, anonymous, size, str(i), barrier)
                       for i in range(parallel)]
        results = [f.result() for f in futures]
    total = sum(r[0] for r in results)
    elapsed = max(r[2] for r in results) - min(r[1] for r in results)
    return total / elapsed / (1 << 20)


def many_clients(port: int, clients: int, small_files: int) -> tuple[float, int]:
    """(seconds for all sessions, failed sessions)."""
    with cf.ThreadPoolExecutor(clients) as pool:
        start = time.perf_counter()
        results = list(pool.map(lambda _: small_session(port, small_files), range(clients)))
        elapsed = time.perf_counter() - start
    return elapsed, results.count(False)


def figure(metric: str, value: float) -> str:
    if metric.endswith("failed"):
        return f"{value:.0f}"
    return f"{value:.3f}" if metric.endswith("seconds") else f"{value:.1f}"


def run_round(server, port: int, args, size: int, psize: int) -> dict[str, float]:
    """One round of every figure against one running server."""
    anonymous = getattr(server, "anonymous_only", False)
    r: dict[str, float] = {}
    # One RETR of the file takes tens of ms at loopback speed: one alone is noise.
    r["RETR 1 client MiB/s"] = statistics.median(
        throughput("RETR", port, anonymous, size, 1) for _ in range(args.repeat))
    r["STOR 1 client MiB/s"] = throughput("STOR", port, anonymous, size, 1)
    r[f"RETR {args.parallel} clients MiB/s"] = throughput(
        "RETR", port, anonymous, size, args.parallel)
    r[f"STOR {args.parallel} clients MiB/s"] = throughput(
        "STOR", port, anonymous, psize, args.parallel)
    secs, failed = many_clients(port, args.clients, args.small_files)
    r[f"{args.clients} sessions seconds"] = secs
    r[f"{args.clients} sessions failed"] = float(failed)
    if FAILURES:
        print(f"  {server.name}: first failure: {FAILURES[0]}", flush=True)
        FAILURES.clear()
    # Uploads would pile up round after round: the next round starts from the same tree.
    for p in (server.root / "upload").iterdir():
        p.unlink()
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=100, help="large file size (issue: 500)")
    ap.add_argument("--parallel", type=int, default=10, help="parallel large transfers")
    ap.add_argument("--clients", type=int, default=50, help="small-file sessions (issue: 200)")
    ap.add_argument("--small-files", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds; each runs every server once, who goes first alternating")
    ap.add_argument("--servers", default="netsuite,pyftpdlib,vsftpd")
    ap.add_argument("--repeat", type=int, default=3,
                    help="RETR 1 client: the median of this many transfers per round")
    ap.add_argument("--workers", type=int, default=None,
                    help="pass --workers N to twistd netsuite (not passed unless given)")
    ap.add_argument("--smoke", action="store_true",
                    help="one round, an 8 MiB file, 10 sessions: checks it runs (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.size_mib, args.parallel, args.clients, args.small_files, args.rounds = 8, 2, 10, 3, 1
        args.repeat = 1
    size = args.size_mib << 20
    # Parallel STOR/RETR use a tenth of the file each, so a run stays short.
    psize = max(size // args.parallel, 1 << 20)
    classes = {c.name: c for c in (Netsuite, PyFtpdlib, Vsftpd)}
    wanted = [s for s in args.servers.split(",") if s]
    if "vsftpd" in wanted and not os.path.exists("/usr/sbin/vsftpd"):
        print("vsftpd not installed (apt-get install vsftpd); skipping it")
        wanted.remove("vsftpd")
    if "pyftpdlib" in wanted and importlib.util.find_spec("pyftpdlib") is None:
        print("pyftpdlib not installed (pip install pyftpdlib); skipping it")
        wanted.remove("pyftpdlib")
    with tempfile.TemporaryDirectory(prefix="ftp-bench-") as tmp:
        servers = {}
        ports: dict[str, int] = {}
        try:
            for name in wanted:
                server = classes[name](Path(tmp), size, args.small_files)
                if name == "netsuite" and args.workers is not None:
                    server.extra = ("--workers", str(args.workers))
                ports[name] = server.start()
                servers[name] = server

            def runner(name: str):
                return lambda: run_round(servers[name], ports[name], args, size, psize)

            def show(r: int, name: str, figures: dict[str, float]) -> None:
                print(f"round {r + 1} {name}: " + ", ".join(
                    f"{k} = {figure(k, v)}" for k, v in figures.items()), flush=True)

            results = alternate(args.rounds, {name: runner(name) for name in servers}, show)
        finally:
            for server in servers.values():
                server.stop()
    print()
    workers = f", netsuite --workers {args.workers}" if args.workers is not None else ""
    print(f"large file {args.size_mib} MiB (parallel STOR: {psize >> 20} MiB each), "
          f"{args.clients} sessions x {args.small_files} small files, "
          f"{args.rounds} round(s){workers}")
    peers = [n for n in ("pyftpdlib", "vsftpd") if n in results and "netsuite" in results]
    metrics = list(next(iter(results.values()))[0])
    header = f"{'metric (median of rounds)':34}" + "".join(f"{n:>11}" for n in results)
    header += "".join(f"{'ns/' + p:>15}" for p in peers)
    print(header)
    for m in metrics:
        row = f"{m:34}" + "".join(f"{figure(m, median(rs, m)):>11}" for rs in results.values())
        if not m.endswith("failed"):
            for p in peers:
                ratios = paired_ratios(results["netsuite"], results[p], m)
                row += f"{fmt_ratio(statistics.median(ratios) if ratios else None):>15}"
        print(row)
    print("(ns/peer: the median of the paired ratios, round by round; "
          "for 'seconds' lower is better)")
    if "vsftpd" in peers and args.rounds > 1:
        ratios = paired_ratios(results["netsuite"], results["vsftpd"], "RETR 1 client MiB/s")
        print("RETR 1 client, netsuite/vsftpd by round: "
              + " ".join(f"{r:.2f}x" for r in ratios) + f"  (lowest {min(ratios):.2f}x)")
    status = 0
    failed_key = f"{args.clients} sessions failed"
    for name, rs in results.items():
        failed = sum(r[failed_key] for r in rs)
        # A peer that cannot take --clients sessions at once (vsftpd at 200) is its
        # figure; netsuite failing one, or anyone failing in the small smoke run, is a break.
        if failed and (name == "netsuite" or args.smoke):
            print(f"ftp_bench: {name}: {failed:.0f} small-file sessions failed", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

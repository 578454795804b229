#!/usr/bin/env python3
"""
Several hosts on one PostgreSQL, side by side in one run, rounds alternated
(bench/rounds.py), on this machine's loopback:

  - imaptest (Dovecot's stress tool, its default profile): two imaptest
    processes at once, users bench1 and bench2, C{--clients} each, against
    netsuite on Maildir (one process), netsuite on PostgreSQL with one host
    (both imaptests on host A), with two hosts (bench1's on A, bench2's on B:
    users spread over hosts as a director or a load balancer with affinity
    spreads them), and Dovecot as the reference; ops/s summed over both.
  - smtp-source end to end: two smtp-source processes at once (C{-s} half the
    sessions each, to bench1 and bench2; C{-l 4096}), every 250 given once the
    message is durable (Maildir: file and directory fsynced; PostgreSQL: the
    commit); msgs/s over both, the same three netsuite set-ups.

The cluster runs with C{fsync} and C{synchronous_commit} on (the tests' cluster,
tests/pg.py, turns them off): a commit is as durable as Maildir's fsyncs.
Printed: each round's figures, then the medians and the paired ratios the
targets name (PostgreSQL one host / Maildir, two hosts / one host, and each
against Dovecot for imaptest).

    python bench/pg_scale_bench.py               # 3 rounds, imaptest 20 s per run
    python bench/pg_scale_bench.py --smoke       # one short round: that it runs (CI)

Needs postgresql-15, dovecot-imapd, postfix (smtp-source) and imaptest's build
dependencies (see bench/imaptest_bench.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from harness import Daemon  # noqa: E402
from imaptest_bench import (  # noqa: E402
    BenchError,
    imaptest_command,
    imaptest_run,
    write_mbox,
)
from imaptest_build import DOVECOT_LIBS, build_imaptest, cache_root  # noqa: E402
from mail_read_bench import PASSWORD, Dovecot  # noqa: E402
from pg import Cluster  # noqa: E402
from rounds import alternate, fmt_ratio, median, median_ratio  # noqa: E402
from smtp_bench import SMTP_SOURCE  # noqa: E402

USERS = ["bench1", "bench2"]
DOMAIN = "example.test"


def netsuite(root: Path, name: str, dsn: str | None, init: bool = False) -> Daemon:
    """One netsuite process (a "host"), IMAP and SMTP, its mail in Maildir or at C{dsn}."""
    config: dict = {"server": {"allow_plaintext_auth": True},
                    "limits": {"max_connections_per_address": 400},
                    "imap": {"max_connections_per_address": 400},
                    "smtp": {"max_connections_per_address": 400}}
    if dsn:
        config.update({"store": {"backend": "postgresql"}, "database": {"dsn": dsn}})
    else:
        config["store"] = {"backend": "maildir"}
    d = Daemon(root / name, config, ["imap", "smtp"])
    for user in USERS:
        d.add_user(user, PASSWORD)
    if init:
        d.cli("db", "init")
    return d.start()


def durable_cluster() -> Cluster:
    """The throwaway cluster, with commits fsynced as a production server's are."""
    cluster = Cluster()
    cluster.stop()
    with (cluster.data / "postgresql.conf").open("a") as f:
        f.write("fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n")
    cluster.start()
    return cluster


def imaptest_pair(binary: Path, mbox: Path, ports: list[int], clients: int, secs: int,
                  work: Path, label: str) -> dict[str, float]:
    """imaptest for bench1 at C{ports[0]} and bench2 at C{ports[1]}, at once: summed figures."""
    env = dict(os.environ, LD_LIBRARY_PATH=DOVECOT_LIBS)
    procs = []
    for user, port in zip(USERS, ports, strict=True):
        out = work / f"imaptest-{label}-{user}-{time.monotonic_ns()}.tsv"
        cmd = imaptest_command(binary, port, mbox, clients, secs, out, user=user)
        procs.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       stdin=subprocess.DEVNULL, text=True, env=env), out, cmd))
    runs = []
    for proc, out, cmd in procs:
        try:
            stdout, stderr = proc.communicate(timeout=secs + 90)
        except subprocess.TimeoutExpired as e:
            proc.kill()
            raise BenchError(f"imaptest against {label} did not finish in {secs + 90}s") from e
        runs.append(imaptest_run(subprocess.CompletedProcess(cmd, proc.returncode, stdout,
                                                             stderr), out, secs, label))
    logins = sum(r.counts.get("Logi", 0) for r in runs)
    login_ms = (sum(r.login_ms * r.counts.get("Logi", 0) for r in runs) / logins
                if logins else 0.0)
    return {"ops_s": sum(r.ops_s for r in runs), "login_ms": login_ms,
            "errors": float(sum(r.errors for r in runs))}


def smtp_pair(ports: list[int], count: int, sessions: int, size: int, label: str
              ) -> dict[str, float]:
    """smtp-source to bench1 at C{ports[0]} and bench2 at C{ports[1]}, at once: msgs/s."""
    start = time.monotonic()
    procs = [subprocess.Popen([SMTP_SOURCE, "-s", str(max(1, sessions // 2)), "-l", str(size),
                               "-m", str(count // 2), "-f", "load@source.test",
                               "-t", f"{user}@{DOMAIN}", f"127.0.0.1:{port}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for user, port in zip(USERS, ports, strict=True)]
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired as e:
            proc.kill()
            raise BenchError(f"smtp-source against {label} did not finish in 600 s") from e
        if proc.returncode != 0:
            raise BenchError(f"smtp-source against {label} exited {proc.returncode}: "
                             f"{stdout[-1000:]}{stderr[-1000:]}")
    return {"msgs_s": 2 * (count // 2) / (time.monotonic() - start)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=int, default=20, help="imaptest seconds per run")
    ap.add_argument("--clients", type=int, default=5, help="imaptest clients per user")
    ap.add_argument("--count", type=int, default=2000, help="smtp-source messages per run")
    ap.add_argument("--sessions", type=int, default=20, help="smtp-source sessions per run")
    ap.add_argument("--size", type=int, default=4096, help="smtp-source -l")
    ap.add_argument("--smoke", action="store_true", help="one short round: checks it runs")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.secs, args.count, args.sessions = 1, 2, 40, 4
    for need in ("/usr/sbin/dovecot", SMTP_SOURCE):
        if not Path(need).exists():
            print(f"pg_scale_bench: {need} missing (apt-get install dovecot-imapd postfix)",
                  file=sys.stderr)
            return 2

    work = Path(tempfile.mkdtemp(prefix="pg-scale-bench-"))
    work.chmod(0o755)  # Dovecot's auth process (user dovecot) reads its passwd file
    made: list[Daemon] = []
    dovecot = cluster = None
    try:
        binary = build_imaptest(cache_root())
        mbox = work / "append.mbox"
        write_mbox(mbox)
        for user in USERS:
            for sub in ("cur", "new", "tmp"):
                (work / "dovecot-mail" / user / sub).mkdir(parents=True)
        subprocess.run(["chown", "-R", "mail:mail", str(work / "dovecot-mail")], check=True)
        dovecot = Dovecot(work / "dovecot", work / "dovecot-mail", USERS).start()
        cluster = durable_cluster()
        dsn = cluster.new_database()
        maildir = netsuite(work, "maildir", None)
        a = netsuite(work, "pg-a", dsn, init=True)
        b = netsuite(work, "pg-b", dsn)
        made += [maildir, a, b]
        imap_ports = {"maildir": [maildir.port("imap")] * 2, "pg 1 host": [a.port("imap")] * 2,
                      "pg 2 hosts": [a.port("imap"), b.port("imap")],
                      "dovecot": [dovecot.imap_port] * 2}
        smtp_ports = {"maildir": [maildir.port("smtp")] * 2, "pg 1 host": [a.port("smtp")] * 2,
                      "pg 2 hosts": [a.port("smtp"), b.port("smtp")]}
        print(f"imaptest {binary}: 2 x {args.clients} clients, {args.secs} s per run; "
              f"smtp-source 2 x -s {max(1, args.sessions // 2)} -m {args.count // 2} "
              f"-l {args.size}; {args.rounds} round(s), alternating", flush=True)

        def show_imap(r: int, name: str, f: dict[str, float]) -> None:
            print(f"  round {r + 1} imaptest {name:11} {f['ops_s']:9.1f} ops/s  "
                  f"LOGIN {f['login_ms']:7.1f} ms  errors {int(f['errors'])}", flush=True)

        def show_smtp(r: int, name: str, f: dict[str, float]) -> None:
            print(f"  round {r + 1} smtp     {name:11} {f['msgs_s']:9.1f} msgs/s", flush=True)

        imap = alternate(args.rounds, {
            name: (lambda name=name, ports=ports: imaptest_pair(
                binary, mbox, ports, args.clients, args.secs, work, name))
            for name, ports in imap_ports.items()}, show_imap)
        smtp = alternate(args.rounds, {
            name: (lambda name=name, ports=ports: smtp_pair(
                ports, args.count, args.sessions, args.size, name))
            for name, ports in smtp_ports.items()}, show_smtp)
    except (BenchError, RuntimeError) as e:  # RuntimeError: a server did not start
        print(f"pg_scale_bench: {e}", file=sys.stderr)
        for d in made:
            print(d.log()[-2000:], file=sys.stderr)
        return 1
    finally:
        for d in made:
            d.stop()
        if dovecot is not None:
            dovecot.stop()
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'median of rounds':28}{'maildir':>10}{'pg 1 host':>11}{'pg 2 hosts':>12}"
          f"{'dovecot':>10}{'pg1/maildir':>13}{'pg2/pg1':>9}")
    for label, runs, key in (("imaptest ops/s", imap, "ops_s"),
                             ("imaptest LOGIN ms", imap, "login_ms"),
                             ("smtp-source msgs/s", smtp, "msgs_s")):
        dc = f"{median(runs['dovecot'], key):10.1f}" if "dovecot" in runs else f"{'-':>10}"
        print(f"{label:28}{median(runs['maildir'], key):10.1f}"
              f"{median(runs['pg 1 host'], key):11.1f}{median(runs['pg 2 hosts'], key):12.1f}"
              f"{dc}{fmt_ratio(median_ratio(runs['pg 1 host'], runs['maildir'], key)):>13}"
              f"{fmt_ratio(median_ratio(runs['pg 2 hosts'], runs['pg 1 host'], key)):>9}")
    for name in imap:
        if name != "dovecot":
            print(f"imaptest {name} / dovecot: "
                  f"{fmt_ratio(median_ratio(imap[name], imap['dovecot'], 'ops_s'))}; "
                  f"errors per run {median(imap[name], 'errors'):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

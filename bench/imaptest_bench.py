#!/usr/bin/env python3
"""
IMAP under Dovecot's own stress tool: imaptest's default profile against
netsuite and Dovecot, alternately, over several rounds.

Builds imaptest once with the steering repository's C{shared/imaptest/build.sh}
(C{../shared} beside the repository; the binary is cached under
C{~/.cache/netsuite-bench/}, rebuilt only if missing or if the build inputs
change), generates an mbox for imaptest to APPEND from, starts both servers on
loopback (the same helpers as C{bench/mail_read_bench.py}: Dovecot from Debian
with a throw-away config, netsuite with twistd through the test harness), then
for each round runs imaptest once per server (who goes first alternates):

    imaptest host=127.0.0.1 port=P user=bench pass=... mbox=FILE clients=10 secs=N

Printed per server: IMAP operations per second (every command imaptest
completed within the N seconds, LOGIN and LOGOUT included), imaptest's error
count (its C{Error:} lines: a server answering wrong, e.g. C{NO} to a FETCH
of messages that remain), and imaptest's mean LOGIN time; then the median of
the paired netsuite/Dovecot ratios.

    python bench/imaptest_bench.py                  # 3 rounds x 20 s per server
    python bench/imaptest_bench.py --workers 2      # twistd netsuite --workers 2
    python bench/imaptest_bench.py --smoke          # one round of 2 s (CI)

Exits non-zero if a server or imaptest fails to start or run, if a run
completes no command or no LOGIN, or (with --max-errors N) if imaptest reports
more than N errors for a server.  Needs dovecot-imapd and, to build imaptest,
dovecot-dev build-essential autoconf automake libtool pkg-config.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from imaptest_build import DOVECOT_LIBS, build_imaptest, cache_root  # noqa: E402
from mail_read_bench import PASSWORD, Dovecot, make_message, start_netsuite  # noqa: E402
from rounds import alternate, fmt_ratio, median, median_ratio  # noqa: E402

USER = "bench"


class BenchError(Exception):
    """A benchmark that broke: the script exits non-zero with this message."""


# -- imaptest --------------------------------------------------------------------------------


def write_mbox(path: Path, count: int = 200) -> None:
    """The mbox imaptest APPENDs from: the same messages mail_read_bench generates."""
    import random

    rnd = random.Random(3)
    with open(path, "wb") as f:
        for i in range(count):
            f.write(b"From sender@example.test Mon Mar  2 10:00:00 2026\n")
            f.write(make_message(i, rnd))
            f.write(b"\n")


@dataclass
class Run:
    ops_s: float
    login_ms: float
    errors: int
    counts: dict[str, int]
    messages: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, float]:
        return {"ops_s": self.ops_s, "login_ms": self.login_ms, "errors": float(self.errors)}


ERROR = re.compile(r"Error: (?:\S+\[\d+\]: )?(.*)")


def totals(stdout: str) -> dict[str, int]:
    """
    imaptest's closing C{Totals:} block: a line of short state names (Logi,
    Sele, Fetc, ...), the probabilities, then the commands completed per state.
    """
    lines = stdout.split("Totals:", 1)[1].strip("\n").splitlines()
    names = lines[0].split()
    for line in lines[1:]:
        values = line.split()
        if len(values) == len(names) and all(v.isdigit() for v in values):
            return dict(zip(names, map(int, values), strict=True))
    raise BenchError(f"imaptest's Totals block has no counts:\n{stdout[-1000:]}")


def parse_results(text: str, states: list[str], secs: int) -> tuple[dict[str, int], float, float]:
    """
    imaptest's C{output=} file: a header line (which can name states the run
    then leaves out, so the Totals block's C{states} give the columns), then one
    row a second of three numbers per state: commands completed, commands
    timed, milliseconds they took.  Returns the commands per state within the
    first C{secs} rows, the ops/s over them, and the mean LOGIN time over
    every row.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    rows = [[int(v) for v in line.split("\t")] for line in lines[1:]]
    if not rows:
        raise BenchError("imaptest wrote no result rows")
    counts = dict.fromkeys(states, 0)
    login_n = login_ms = 0
    for n, row in enumerate(rows):
        if len(row) != 3 * len(states):
            raise BenchError(f"imaptest result row {n + 1} has {len(row)} values for "
                             f"{len(states)} states")
        for i, state in enumerate(states):
            done, timed, msecs = row[3 * i:3 * i + 3]
            if n < secs:
                counts[state] += done
            if state == "Logi":
                login_n += timed
                login_ms += msecs
    seconds = min(secs, len(rows))
    return counts, sum(counts.values()) / seconds, (login_ms / login_n if login_n else 0.0)


def imaptest_command(binary: Path, port: int, mbox: Path, clients: int, secs: int,
                     out: Path, user: str = USER) -> list[str]:
    return [str(binary), "host=127.0.0.1", f"port={port}", f"user={user}", f"pass={PASSWORD}",
            f"mbox={mbox}", f"clients={clients}", f"secs={secs}", f"output={out}"]


def imaptest_run(done: subprocess.CompletedProcess, out: Path, secs: int, label: str) -> Run:
    """One finished imaptest's figures (see L{parse_results}); L{BenchError} if it failed."""
    if done.returncode != 0 or "Totals:" not in done.stdout:
        raise BenchError(f"imaptest against {label} exited {done.returncode}:\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    states = list(totals(done.stdout))
    counts, ops_s, login_ms = parse_results(out.read_text(), states, secs)
    messages = [m.group(1) for m in map(ERROR.search, done.stderr.splitlines()) if m]
    if not sum(counts.values()):
        raise BenchError(f"imaptest completed no command against {label}:\n{done.stderr[-2000:]}")
    if not counts.get("Logi"):
        raise BenchError(f"no LOGIN succeeded against {label}:\n{done.stderr[-2000:]}")
    return Run(ops_s, login_ms, len(messages), counts, messages)


def run_imaptest(binary: Path, port: int, mbox: Path, clients: int, secs: int,
                 work: Path, label: str) -> Run:
    out = work / f"imaptest-{label}-{time.monotonic_ns()}.tsv"
    cmd = imaptest_command(binary, port, mbox, clients, secs, out)
    env = dict(os.environ, LD_LIBRARY_PATH=DOVECOT_LIBS)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              stdin=subprocess.DEVNULL, timeout=secs + 90)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"imaptest against {label} did not finish in {secs + 90}s") from e
    return imaptest_run(done, out, secs, label)


def common_errors(messages: list[str], n: int = 3) -> list[tuple[int, str]]:
    """The most frequent error texts, with numbers and tags blurred so alike ones group."""
    tally: dict[str, int] = {}
    for m in messages:
        key = re.sub(r"\b\d+\b", "N", m)[:160]
        tally[key] = tally.get(key, 0) + 1
    return sorted(((c, k) for k, c in tally.items()), reverse=True)[:n]


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds (each runs every server once)")
    ap.add_argument("--secs", type=int, default=20, help="imaptest seconds per run")
    ap.add_argument("--clients", type=int, default=10, help="imaptest clients")
    ap.add_argument("--workers", type=int, default=None,
                    help="pass --workers N to twistd netsuite (not passed unless given)")
    ap.add_argument("--max-errors", type=int, default=None,
                    help="exit non-zero if imaptest reports more errors than this for a server")
    ap.add_argument("--smoke", action="store_true", help="one round of 2 s: checks it runs")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.secs = 1, 2
    if not Path("/usr/sbin/dovecot").exists():
        print("dovecot not installed: apt-get install dovecot-imapd", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="imaptest-bench-"))
    work.chmod(0o755)  # Dovecot's auth process (user dovecot) reads its passwd file
    dovecot = ours = None
    try:
        binary = build_imaptest(cache_root())
        mbox = work / "append.mbox"
        write_mbox(mbox)
        for side in ("ours", "theirs"):
            for sub in ("cur", "new", "tmp"):
                (work / side / USER / sub).mkdir(parents=True)
        # Dovecot refuses to serve mail as root: its copy belongs to the 'mail' user.
        subprocess.run(["chown", "-R", "mail:mail", str(work / "theirs")], check=True)
        dovecot = Dovecot(work / "dovecot", work / "theirs", [USER]).start()
        extra = ("--workers", str(args.workers)) if args.workers is not None else ()
        ours = start_netsuite(work / "netsuite", work / "ours", [USER], extra=extra)
        ports = {"netsuite": ours.port("imap"), "dovecot": dovecot.imap_port}
        workers = f", --workers {args.workers}" if args.workers is not None else ""
        print(f"imaptest {binary}\n{args.clients} clients, {args.secs} s per run, "
              f"{args.rounds} round(s), servers alternating{workers}", flush=True)
        runs: dict[str, list[Run]] = {name: [] for name in ports}

        def runner(name: str):
            def run() -> dict[str, float]:
                r = run_imaptest(binary, ports[name], mbox, args.clients, args.secs, work, name)
                runs[name].append(r)
                return r.figures()
            return run

        def show(r: int, name: str, f: dict[str, float]) -> None:
            print(f"  round {r + 1} {name:9} {f['ops_s']:9.1f} ops/s   "
                  f"LOGIN {f['login_ms']:8.1f} ms   errors {int(f['errors'])}", flush=True)

        results = alternate(args.rounds, {name: runner(name) for name in ports}, show)
    except (BenchError, RuntimeError) as e:  # RuntimeError: a server did not start
        print(f"imaptest_bench: {e}", file=sys.stderr)
        if ours is not None:
            print(ours.log()[-3000:], file=sys.stderr)
        return 1
    finally:
        if ours is not None:
            ours.stop()
        if dovecot is not None:
            dovecot.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    ns, dc = results["netsuite"], results["dovecot"]
    print()
    print(f"{'measure (median of rounds)':34} {'netsuite':>10} {'dovecot':>10} "
          f"{'ratio':>8}  (median of paired ratios)")
    for key, label in (("ops_s", "imaptest ops/s (higher is better)"),
                       ("login_ms", "LOGIN mean ms (lower is better)"),
                       ("errors", "imaptest errors per run")):
        ratio = median_ratio(ns, dc, key) if key != "errors" else None
        print(f"{label:34} {median(ns, key):10.1f} {median(dc, key):10.1f} "
              f"{fmt_ratio(ratio) if key != 'errors' else '':>8}")
    status = 0
    for name, server_runs in runs.items():
        messages = [m for r in server_runs for m in r.messages]
        if not messages:
            continue
        print(f"\n{name}: {len(messages)} imaptest errors over {len(server_runs)} run(s); "
              "most frequent:")
        for count, text in common_errors(messages):
            print(f"  {count:6} x {text}")
        worst = max(r.errors for r in server_runs)
        if args.max_errors is not None and worst > args.max_errors:
            print(f"imaptest_bench: {name}: {worst} errors in a run, more than "
                  f"--max-errors {args.max_errors}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

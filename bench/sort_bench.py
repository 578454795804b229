#!/usr/bin/env python3
"""
SORT / THREAD benchmark: netsuite vs Dovecot on the same generated Maildir.

Both servers start on loopback as in bench/mail_read_bench.py (its Dovecot
set-up, netsuite start-up and message generator are imported, not copied).
The folder holds --size messages in threads (a References: chain, "Re:"
subjects).  Each round, on a folder neither server has sorted yet, one
session runs SORT (SUBJECT), SORT (DATE), SORT (FROM) and THREAD=REFERENCES,
then all four again: "first" reads the headers (Dovecot fills its cache,
netsuite its message cache), "again" is answered from the caches.  Servers
alternate round by round (bench/rounds.py); the ratio is the median of the
paired netsuite/Dovecot ratios (lower is better for netsuite).  The answers
of both servers are compared once and printed (equal or not).

    python bench/sort_bench.py             # 10k messages, 3 rounds
    python bench/sort_bench.py --smoke     # 300 messages, 1 round (CI)

Needs dovecot-imapd (apt-get install dovecot-imapd).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mail_read_bench import TAG, Dovecot, Raw, imap_login, make_message, start_netsuite  # noqa: E402
from rounds import alternate, fmt_ratio, median, median_ratio  # noqa: E402

COMMANDS = [
    ("SORT (SUBJECT)", b"SORT (SUBJECT) US-ASCII ALL"),
    ("SORT (DATE)", b"SORT (DATE) US-ASCII ALL"),
    ("SORT (FROM)", b"SORT (FROM) US-ASCII ALL"),
    ("THREAD=REFERENCES", b"THREAD REFERENCES US-ASCII ALL"),
]


def threaded_message(i: int, rnd: random.Random) -> bytes:
    """mail_read_bench's message i, made part of a thread: every 4th one starts one."""
    data = make_message(i, rnd)
    root = i - i % 4
    subject = f"Subject: {'Re: ' if i != root else ''}Thread {root // 4} of the bench"
    data = re.sub(rb"^Subject: [^\n]*", subject.encode(), data, count=1, flags=re.M)
    if i != root:
        refs = " ".join(f"<{j}.bench@example.test>" for j in range(root, i))
        data = data.replace(b"\n\n", f"\nReferences: {refs}\n\n".encode(), 1)
    return data


def write_folder(path: Path, count: int, seed: int = 3) -> None:
    rnd = random.Random(seed)
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    base = 1_700_000_000
    for i in range(count):
        data = threaded_message(i, rnd)
        p = path / "cur" / f"{base + i}.M{i}P1.sortbench,S={len(data)}:2,S"
        p.write_bytes(data)
        os.utime(p, (base + i, base + i))


def answer(c: Raw, cmd: bytes) -> bytes:
    """The untagged lines of one command (SORT/THREAD answers have no literals)."""
    c.sock.sendall(TAG + b" " + cmd + b"\r\n")
    lines = []
    while True:
        line = c.readline()
        if line.startswith(TAG + b" "):
            if not line.startswith(TAG + b" OK"):
                raise RuntimeError(line.decode(errors="replace"))
            return b"\r\n".join(lines)
        if line.startswith((b"* SORT", b"* THREAD")):
            lines.append(line)


def run_once(port: int, folder: str) -> dict[str, float]:
    c = imap_login(port, "bench")
    c.command(b"SELECT " + folder.encode())
    figures: dict[str, float] = {}
    for when in ("first", "again"):
        for name, cmd in COMMANDS:
            t = time.perf_counter()
            c.command(cmd)
            figures[f"{name} {when}"] = time.perf_counter() - t
        # Dovecot reads the header fields each key needs when first sorted by it, netsuite
        # all keys at the first: the sum of the four is the fair "first" figure.
        figures[f"all four {when}"] = sum(figures[f"{n} {when}"] for n, _ in COMMANDS)
    c.close()
    return figures


def answers(port: int, folder: str) -> list[bytes]:
    c = imap_login(port, "bench")
    c.command(b"SELECT " + folder.encode())
    out = [answer(c, cmd) for _, cmd in COMMANDS]
    c.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=10_000, help="messages in the folder")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--smoke", action="store_true", help="300 messages, 1 round (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.size, args.rounds = 300, 1
    if not Path("/usr/sbin/dovecot").exists():
        print("dovecot not installed: apt-get install dovecot-imapd")
        return 2

    work = Path(tempfile.mkdtemp(prefix="sortbench-"))
    work.chmod(0o755)  # Dovecot's auth process (user dovecot) reads the passwd file
    print(f"generating {args.rounds + 1} folders of {args.size} messages in {work} ...",
          flush=True)
    t = time.perf_counter()
    bench = work / "ours" / "bench"
    for sub in ("cur", "new", "tmp"):
        (bench / sub).mkdir(parents=True, exist_ok=True)
    folders = [f"s{r}" for r in range(args.rounds + 1)]  # the last one: answers compared
    write_folder(bench / f".{folders[0]}", args.size)
    for name in folders[1:]:
        shutil.copytree(bench / f".{folders[0]}", bench / f".{name}")
    shutil.copytree(work / "ours", work / "theirs")
    # Dovecot refuses to serve mail as root: its copy belongs to the 'mail' user.
    subprocess.run(["chown", "-R", "mail:mail", str(work / "theirs")], check=True)
    print(f"  done in {time.perf_counter() - t:.1f}s", flush=True)

    dovecot = Dovecot(work / "dovecot", work / "theirs", ["bench"]).start()
    ours = start_netsuite(work / "netsuite", work / "ours", ["bench"])
    try:
        ip, dp = ours.port("imap"), dovecot.imap_port
        rounds = {"netsuite": iter(folders), "dovecot": iter(folders)}

        def show(r: int, name: str, figures: dict[str, float]) -> None:
            print(f"  round {r + 1} {name:9} " + "  ".join(
                f"{k} {v:.3f}" for k, v in figures.items() if k.endswith("first")), flush=True)

        results = alternate(args.rounds, {
            "netsuite": lambda: run_once(ip, next(rounds["netsuite"])),
            "dovecot": lambda: run_once(dp, next(rounds["dovecot"])),
        }, show)
        same = [a == b for a, b in zip(answers(ip, folders[-1]), answers(dp, folders[-1]),
                                       strict=True)]
    finally:
        ours.stop()
        dovecot.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'measure (' + str(args.size) + ' messages, seconds)':40} {'netsuite':>10} "
          f"{'dovecot':>10} {'ratio':>7}")
    for when in ("first", "again"):
        for name in [n for n, _ in COMMANDS] + ["all four"]:
            key = f"{name} {when}"
            print(f"{key:40} {median(results['netsuite'], key):10.3f} "
                  f"{median(results['dovecot'], key):10.3f} "
                  f"{fmt_ratio(median_ratio(results['netsuite'], results['dovecot'], key)):>7}")
    print()
    for (name, _), ok in zip(COMMANDS, same, strict=True):
        print(f"answers equal to Dovecot's: {name:20} {'yes' if ok else 'NO'}")
    print(f"\nmedians of {args.rounds} rounds; ratio: median of paired netsuite/Dovecot "
          "(lower is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

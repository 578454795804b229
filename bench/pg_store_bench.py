"""
The PostgreSQL mail store beside the Maildir store, one host each, rounds
alternated (bench/rounds.py), on a throwaway cluster (tests/pg.py):

  - SMTP delivery: messages/s, C{--senders} connections at once, each waiting
    for its 250 (so every message is committed: fsync for Maildir, a commit for
    PostgreSQL);
  - a folder of C{--messages}: the first SELECT + FETCH 1:* (UID FLAGS) (the
    mirror or the index read), and the same again (warm);
  - two PostgreSQL hosts: a delivery through A until IDLE on B says EXISTS (ms).

The machine is shared: the figures are rough; quote the paired ratios.  The
throwaway cluster runs with fsync off (tests/pg.py): PostgreSQL's commits here
cost less than on a real server, Maildir's fsyncs do not.
"""

from __future__ import annotations

import argparse
import imaplib
import select
import smtplib
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import Daemon  # noqa: E402
from pg import Cluster  # noqa: E402
from rounds import alternate, fmt_ratio, median, median_ratio  # noqa: E402

USER, PASSWORD = "bench", "bench secret"
BODY = b"From: a@remote.test\r\nTo: bench@example.test\r\nSubject: bench\r\n\r\n" + \
    b"a line of text for the benchmark\r\n" * 40


def daemon(root: Path, name: str, dsn: str | None) -> Daemon:
    config: dict = {"server": {"allow_plaintext_auth": True}}
    if dsn:
        config.update({"store": {"backend": "postgresql"}, "database": {"dsn": dsn}})
    else:
        config["store"] = {"backend": "maildir"}
    d = Daemon(root / name, config, ["imap", "smtp"])
    d.add_user(USER, PASSWORD)
    if dsn:
        d.cli("db", "init", check=False)
    return d.start()


def deliveries(d: Daemon, n: int, senders: int) -> float:
    """Messages/s over C{senders} connections."""
    per = n // senders

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=60) as s:
            for _ in range(per):
                s.sendmail("a@remote.test", [f"{USER}@example.test"], BODY)

    threads = [threading.Thread(target=send) for _ in range(senders)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return per * senders / (time.perf_counter() - start)


def select_flags(d: Daemon) -> float:
    """Seconds for LOGIN + SELECT INBOX + UID FETCH 1:* (FLAGS)."""
    start = time.perf_counter()
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=120)
    m.login(USER, PASSWORD)
    m.select("INBOX")
    typ, data = m.uid("FETCH", "1:*", "(FLAGS)")
    took = time.perf_counter() - start
    assert typ == "OK" and data
    m.logout()
    return took


def idle_latency(a: Daemon, b: Daemon, n: int) -> float:
    """Median ms from A's 250 to B's EXISTS."""
    sock = socket.create_connection(("127.0.0.1", b.port("imap")), timeout=30)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(f"1 LOGIN {USER} \"{PASSWORD}\"\r\n2 SELECT INBOX\r\n3 IDLE\r\n".encode())
    while not f.readline().startswith(b"+"):
        pass
    out = []
    with smtplib.SMTP("127.0.0.1", a.port("smtp"), timeout=30) as s:
        for _ in range(n):
            s.sendmail("a@remote.test", [f"{USER}@example.test"], BODY)
            sent = time.perf_counter()
            while True:
                ready, _, _ = select.select([sock], [], [], 5)
                assert ready, "no EXISTS within 5 s"
                if b"EXISTS" in f.readline():
                    break
            out.append((time.perf_counter() - sent) * 1000)
    sock.sendall(b"DONE\r\n4 LOGOUT\r\n")
    sock.close()
    return statistics.median(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--deliveries", type=int, default=400)
    p.add_argument("--senders", type=int, default=8)
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--smoke", action="store_true", help="a few seconds: that it runs")
    args = p.parse_args()
    if args.smoke:
        args.rounds, args.deliveries, args.senders, args.messages = 1, 16, 4, 100
    root = Path(tempfile.mkdtemp(prefix="pg-store-bench-"))
    cluster = Cluster()
    made: list[Daemon] = []
    try:
        dsn = cluster.new_database()
        hosts = {"maildir": daemon(root, "maildir", None), "postgresql": daemon(root, "pg", dsn)}
        made.extend(hosts.values())
        for d in hosts.values():  # the big folder, put in as another delivery agent would
            d.deliver_many(USER, (b"Subject: %d\n\nbody %d\n" % (i, i)
                                  for i in range(args.messages)))

        def measure(name: str) -> dict[str, float]:
            d = hosts[name]
            d.stop()
            d.start()  # a fresh process: the first SELECT reads the folder
            first = select_flags(d)
            again = select_flags(d)
            return {"msgs_s": deliveries(d, args.deliveries, args.senders),
                    "first_s": first, "again_s": again}

        results = alternate(args.rounds, {n: (lambda n=n: measure(n)) for n in hosts},
                            show=lambda r, n, f: print(
                                f"  round {r + 1} {n:10} {f['msgs_s']:7.1f} msgs/s  "
                                f"first {f['first_s']:.3f}s  again {f['again_s']:.3f}s",
                                flush=True))
        b = daemon(root, "pg-b", dsn)
        made.append(b)
        latency = idle_latency(hosts["postgresql"], b, 5 if args.smoke else 30)
    finally:
        for d in made:
            d.stop()
        cluster.destroy()
    pg, md = results["postgresql"], results["maildir"]
    print(f"\n{args.deliveries} deliveries over {args.senders} connections; a folder of "
          f"{args.messages}; median of {args.rounds} rounds (busy machine: rough figures; "
          f"the cluster has fsync off)")
    print(f"{'':32}{'maildir':>10}{'postgresql':>12}{'pg/maildir':>12}")
    for key, label in (("msgs_s", "SMTP deliveries msgs/s"),
                       ("first_s", "SELECT+FETCH FLAGS first s"),
                       ("again_s", "SELECT+FETCH FLAGS again s")):
        print(f"{label:32}{median(md, key):10.3f}{median(pg, key):12.3f}"
              f"{fmt_ratio(median_ratio(pg, md, key)):>12}")
    print(f"{'delivery on A to IDLE on B ms':32}{'':10}{latency:12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

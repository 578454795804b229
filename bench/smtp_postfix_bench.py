#!/usr/bin/env python3
"""
SMTP end to end against Postfix: C{smtp-source -s 20 -m 2000 -l 4096} into
netsuite and into Postfix 3.7 with virtual(8) delivering into a Maildir,
alternately over several rounds.

"End to end" is accepted AND on disk: the clock runs from smtp-source's start
until every message is a file in the recipient's Maildir (C{new/} and C{cur/}
counted).  netsuite fsyncs the file and the folder before its 250; Postfix's
cleanup(8) fsyncs the queue file before smtpd's 250, and virtual(8) fsyncs
each Maildir file before its rename into C{new/}.

Postfix is started by the benchmark as a private instance: its own main.cf and
master.cf (generated, every service unchrooted) in a temporary config
directory, its own queue directory, smtpd on a free loopback port, and
C{postfix -c DIR start-fg} / C{postfix -c DIR stop}.  Must run as root (Postfix's
master needs it), as CI does; the system's Postfix (if any) is not touched.

    python bench/smtp_postfix_bench.py                 # 3 rounds of 2000 messages
    python bench/smtp_postfix_bench.py --workers 2     # twistd netsuite --workers 2
    python bench/smtp_postfix_bench.py --smoke         # one round of 100 (CI)

Exits non-zero if a server does not start, smtp-source fails, or a server has
not stored every message within --deadline seconds.  Needs Debian's postfix
(for the daemons and smtp-source).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from rounds import alternate, fmt_ratio, free_port, median, median_ratio, wait_port  # noqa: E402
from smtp_bench import SMTP_SOURCE, USER, start_netsuite  # noqa: E402

POSTFIX = "/usr/sbin/postfix"
DOMAIN = "example.test"
#: Postfix's services a private instance needs, with chroot off ("n") for every one.
MASTER_CF = """\
{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class BenchError(Exception):
    """A benchmark that broke: the script exits non-zero with this message."""


def count_messages(maildir: Path) -> int:
    n = 0
    for sub in ("new", "cur"):
        try:
            n += sum(1 for name in os.listdir(maildir / sub) if not name.startswith("."))
        except FileNotFoundError:
            pass
    return n


class Postfix:
    """
    A private Postfix instance: config, queue and Maildirs under C{work}.
    C{settings} are main.cf lines after the benchmark's own (Postfix takes the
    last), for other uses of the instance (tests/test_lmtp_postfix.py).
    """

    name = "postfix"

    def __init__(self, work: Path, settings: dict[str, str] | None = None):
        self.work = work
        self.conf = work / "etc"
        self.queue = work / "queue"
        self.mail = work / "vmail"
        self.maildir = self.mail / USER
        self.log_path = work / "postfix.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        owner = pwd.getpwnam("nobody")
        for p in (self.conf, self.queue, work / "data", self.mail):
            p.mkdir(parents=True, exist_ok=True)
        for sub in ("cur", "new", "tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "-R", f"{owner.pw_uid}:{owner.pw_gid}", str(self.mail)],
                       check=True)
        shutil.chown(work / "data", "postfix", "postfix")  # master's lock, as Debian has it
        (self.conf / "vmailbox").write_text(f"{USER}@{DOMAIN} {USER}/\n")
        (self.conf / "main.cf").write_text(textwrap.dedent(f"""\
            compatibility_level = 3.6
            queue_directory = {self.queue}
            data_directory = {work / "data"}
            maillog_file = {self.log_path}
            maillog_file_prefixes = {work}
            myhostname = postfix.bench.test
            mydomain = bench.test
            mydestination =
            relay_domains =
            local_recipient_maps =
            inet_interfaces = 127.0.0.1
            inet_protocols = ipv4
            mynetworks = 127.0.0.0/8
            smtpd_peername_lookup = no
            smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
            virtual_mailbox_domains = {DOMAIN}
            virtual_mailbox_base = {self.mail}
            virtual_mailbox_maps = texthash:{self.conf / "vmailbox"}
            virtual_minimum_uid = 1
            virtual_uid_maps = static:{owner.pw_uid}
            virtual_gid_maps = static:{owner.pw_gid}
            smtpd_client_connection_count_limit = 0
            """) + "".join(f"{k} = {v}\n" for k, v in (settings or {}).items()))
        (self.conf / "master.cf").write_text(MASTER_CF.format(port=f"127.0.0.1:{self.port}"))

    def start(self) -> "Postfix":
        self.proc = subprocess.Popen([POSTFIX, "-c", str(self.conf), "start-fg"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_port(self.port, 30, self.proc)
        except RuntimeError as e:
            out = self.proc.stdout.read().decode(errors="replace") if self.proc.poll() else ""
            self.stop()
            raise BenchError(f"postfix did not start: {e}\n{out}\n{self.log()[-2000:]}") from e
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                subprocess.run([POSTFIX, "-c", str(self.conf), "stop"], capture_output=True,
                               timeout=60)
                self.proc.wait(30)
            except subprocess.TimeoutExpired:  # a master that does not answer: its group goes
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def end_to_end(port: int, maildir: Path, count: int, sessions: int, size: int,
               deadline: float, label: str, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """
    smtp-source's C{count} messages, timed until the last of them is in
    C{maildir}: msgs/s end to end, and msgs/s accepted (smtp-source's own end).
    C{extra}: more smtp-source options (C{-F file}: that message, not its own;
    C{size} 0 then).
    """
    before = count_messages(maildir)
    start = time.monotonic()
    try:
        length = ("-l", str(size)) if size else ()  # none with -F
        done = subprocess.run([SMTP_SOURCE, "-s", str(sessions), *length,
                               "-m", str(count), "-f", "load@source.test",
                               "-t", f"{USER}@{DOMAIN}", *extra, f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=deadline)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"smtp-source against {label} did not finish in {deadline}s") from e
    accepted = time.monotonic() - start
    if done.returncode != 0:
        raise BenchError(f"smtp-source against {label} exited {done.returncode}: "
                         f"{done.stdout[-1000:]}{done.stderr[-1000:]}")
    until = start + deadline
    while (stored := count_messages(maildir) - before) < count:
        if time.monotonic() > until:
            raise BenchError(f"{label}: {stored} of {count} messages on disk after {deadline}s")
        time.sleep(0.01)
    elapsed = time.monotonic() - start
    if stored != count:
        raise BenchError(f"{label}: {stored} messages on disk for {count} sent")
    return {"msgs_s": count / elapsed, "accepted_s": count / accepted}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=2000, help="messages per run (smtp-source -m)")
    ap.add_argument("--sessions", type=int, default=20, help="smtp-source -s")
    ap.add_argument("--size", type=int, default=4096, help="smtp-source -l")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None,
                    help="pass --workers N to twistd netsuite (not passed unless given)")
    ap.add_argument("--deadline", type=float, default=600, help="seconds a run may take")
    ap.add_argument("--smoke", action="store_true", help="one round of 100 messages (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.count = 1, 100
    for binary in (SMTP_SOURCE, POSTFIX):
        if not os.access(binary, os.X_OK):
            print(f"{binary} missing: apt-get install postfix", file=sys.stderr)
            return 2
    if os.geteuid() != 0:
        print("Postfix's master must run as root: run this benchmark as root", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="smtp-postfix-bench-"))
    work.chmod(0o755)  # virtual(8) runs as nobody below it
    postfix = ours = None
    try:
        postfix = Postfix(work / "postfix").start()
        extra = ("--workers", str(args.workers)) if args.workers is not None else ()
        ours = start_netsuite(work, free_port(), extra=extra)
        targets = {"netsuite": (ours.port("smtp"), ours.maildir(USER)),
                   "postfix": (postfix.port, postfix.maildir)}
        workers = f", netsuite --workers {args.workers}" if args.workers is not None else ""
        print(f"smtp-source -s {args.sessions} -m {args.count} -l {args.size}, end to end "
              f"(accepted and in the Maildir), {args.rounds} round(s), servers "
              f"alternating{workers}", flush=True)

        def runner(name: str):
            port, maildir = targets[name]
            return lambda: end_to_end(port, maildir, args.count, args.sessions, args.size,
                                      args.deadline, name)

        def show(r: int, name: str, f: dict[str, float]) -> None:
            print(f"  round {r + 1} {name:9} {f['msgs_s']:8.0f} msgs/s end to end   "
                  f"({f['accepted_s']:.0f} msgs/s accepted)", flush=True)

        results = alternate(args.rounds, {name: runner(name) for name in targets}, show)
    except (BenchError, RuntimeError) as e:  # RuntimeError: a server did not start
        print(f"smtp_postfix_bench: {e}", file=sys.stderr)
        return 1
    finally:
        if ours is not None:
            ours.stop()
        if postfix is not None:
            postfix.stop()
        shutil.rmtree(work, ignore_errors=True)

    ns, pf = results["netsuite"], results["postfix"]
    print()
    print(f"{'measure (median of rounds)':34} {'netsuite':>10} {'postfix':>10} "
          f"{'ratio':>8}  (median of paired ratios)")
    for key, label in (("msgs_s", "msgs/s end to end"), ("accepted_s", "msgs/s accepted")):
        print(f"{label:34} {median(ns, key):10.0f} {median(pf, key):10.0f} "
              f"{fmt_ratio(median_ratio(ns, pf, key)):>8}")
    print("(higher is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

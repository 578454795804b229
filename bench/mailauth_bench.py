#!/usr/bin/env python3
"""
What the MX's mail checks cost (issue 13): C{smtp-source -s 20 -l 4096} end to
end (accepted and in the Maildir) into netsuite's MX three ways, alternately
over several rounds:

  - C{off}:     no checks, no rspamd (netsuite's default);
  - C{checks}:  C{[checks]} on: SPF, both DKIM signatures, DMARC (and ARC: none);
  - C{rspamd}:  the same checks, then Debian's rspamd (a private instance, as
                tests/test_rspamd.py starts it) on every message.

With C{--postfix} (as root): also a private Postfix 3.7 (bench/smtp_postfix_bench.py's,
virtual(8) into a Maildir) plain, and with Debian's OpenDKIM 2.11 as its
milter verifying both signatures (keys from the same records, OpenDKIM's
C{TestDNSData}): OpenDKIM does DKIM only, no SPF or DMARC.

Every message is the same file (C{smtp-source -F}): from news@source.test,
signed by source.test with Ed25519 and RSA-2048 (keys from C{netsuite dkim
generate}); the SPF, DKIM and DMARC records are served by a twisted.names zone
on loopback (tests/dns_zone.py), so each check really asks DNS and passes
(the script checks one stored message says C{dkim=pass}, twice, C{spf=pass}
and C{dmarc=pass} before it times anything).  rspamd asks the same zone.

    python bench/mailauth_bench.py                 # 3 rounds of 1000 messages
    python bench/mailauth_bench.py --postfix       # and Postfix, Postfix + OpenDKIM
    python bench/mailauth_bench.py --smoke         # one round of 50 (CI)

The checks keep DNS answers (their TTL, at most 5 minutes), so after the
first message of a round they cost no lookups: one sender over and over,
as an MX sees from a busy list; many different senders would cost more.

Exits non-zero if a server does not start, smtp-source fails, or the checks
did not pass.  Needs Debian's postfix (smtp-source) and rspamd, dkimpy.
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
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the zone, the daemon harness, rspamd's setup

import dkim  # noqa: E402
from dns_zone import DNSServer  # noqa: E402
from harness import Daemon  # noqa: E402
from mail_fixtures import records  # noqa: E402
from rounds import alternate, fmt_ratio, free_port, median, median_ratio, wait_port  # noqa: E402
from smtp_bench import SMTP_SOURCE, USER  # noqa: E402
from smtp_postfix_bench import DOMAIN, BenchError, Postfix, end_to_end  # noqa: E402
from test_rspamd import CONFIG, RSPAMD, Rspamd  # noqa: E402

SENDER_DOMAIN = "source.test"
MODES = ("off", "checks", "rspamd")
OPENDKIM = "/usr/sbin/opendkim"


class OpenDKIM:
    """OpenDKIM as a verifying milter on loopback, the keys from C{published}."""

    def __init__(self, work: Path, published: dict[str, str]):
        self.port = free_port()
        keys = work / "opendkim-keys"
        keys.write_text("".join(f"{name} {text}\n" for name, text in published.items()))
        self.conf = work / "opendkim.conf"
        self.conf.write_text(f"Mode v\nSyslog no\nBackground no\nAlwaysAddARHeader yes\n"
                             f"Socket inet:{self.port}@127.0.0.1\nTestDNSData file:{keys}\n"
                             f"PidFile {work / 'opendkim.pid'}\n")
        self.proc = subprocess.Popen([OPENDKIM, "-f", "-x", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_port(self.port, 20, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def signed_message(work: Path, size: int) -> tuple[Path, dict[str, str]]:
    """The message file smtp-source sends (LF: it adds the CRLF), and the DKIM records."""
    keys = Daemon(work / "keys", listeners=[])
    published = records(keys.cli("dkim", "generate", SENDER_DOMAIN).stdout)
    folder = keys.data_dir / "dkim" / SENDER_DOMAIN
    head = (f"From: News <news@{SENDER_DOMAIN}>\r\nTo: {USER}@{DOMAIN}\r\n"
            f"Subject: checks bench\r\nDate: Wed, 02 Dec 2026 12:00:00 +0000\r\n"
            f"Message-ID: <bench@{SENDER_DOMAIN}>\r\n\r\n").encode()
    line = b"x" * 70 + b"\r\n"
    body = head + line * max(1, (size - len(head)) // len(line))
    out = body
    for alg, name in (("rsa", "netsuite-rsa.key"), ("ed25519", "netsuite-ed25519.key")):
        key = (folder / name).read_bytes().strip()
        out = dkim.sign(body, f"netsuite-{alg}".encode(), SENDER_DOMAIN.encode(), key,
                        canonicalize=(b"relaxed", b"relaxed"),
                        signature_algorithm=f"{alg}-sha256".encode()) + out
    path = work / "message.eml"
    path.write_bytes(out.replace(b"\r\n", b"\n"))
    return path, published


def zone(work: Path, published: dict[str, str]) -> DNSServer:
    txt = {name: [text] for name, text in published.items()}
    txt[SENDER_DOMAIN] = ["v=spf1 ip4:127.0.0.1 -all"]
    txt[f"_dmarc.{SENDER_DOMAIN}"] = ["v=DMARC1; p=reject"]
    (work / "zone").mkdir()
    return DNSServer(work / "zone", txt)


def start_mx(work: Path, mode: str, dns: DNSServer, rspamd: Rspamd | None) -> Daemon:
    config: dict = {"smtp": {"max_connections": 500, "max_connections_per_address": 500},
                    "throttle": {"lock_after": 1000},
                    "dns": {"nameservers": [dns.address], "timeout": 2.0}}
    if mode != "off":
        config["checks"] = {"enabled": True}
    if mode == "rspamd" and rspamd is not None:
        config["rspamd"] = {"enabled": True, "url": rspamd.url, "fail": "closed"}
    d = Daemon(work / f"netsuite-{mode}", listeners=["smtp"], config=config)
    d.add_user(USER, "bench-pw")
    return d.start()


def check_results(d: Daemon, mode: str) -> None:
    """One stored message of each mode shows the checks did run and pass."""
    stored = d.messages(USER)
    if not stored:
        raise BenchError(f"{mode}: nothing stored")
    head = stored[-1].split(b"\n\n", 1)[0].decode(errors="replace").replace("\n\t", " ")
    if mode == "off":
        if "Authentication-Results:" in head:
            raise BenchError("off: checks ran")
        return
    for want in ("spf=pass", "dmarc=pass"):
        if want not in head:
            raise BenchError(f"{mode}: no {want} in\n{head}")
    if head.count("dkim=pass") != 2:
        raise BenchError(f"{mode}: not two dkim=pass in\n{head}")
    if mode == "rspamd" and "X-Spamd-Result:" not in head:
        raise BenchError(f"rspamd: no X-Spamd-Result in\n{head}")


def check_opendkim(maildir: Path) -> None:
    """Postfix's copy carries OpenDKIM's two dkim=pass."""
    files = [p for sub in ("new", "cur") for p in (maildir / sub).iterdir()]
    if not files:
        raise BenchError("postfix+opendkim: nothing stored")
    head = max(files, key=lambda p: p.stat().st_mtime_ns).read_bytes().split(b"\n\n", 1)[0]
    if head.count(b"dkim=pass") != 2:
        raise BenchError(f"postfix+opendkim: not two dkim=pass in\n{head.decode()[:3000]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1000, help="messages per run (smtp-source -m)")
    ap.add_argument("--sessions", type=int, default=20, help="smtp-source -s")
    ap.add_argument("--size", type=int, default=4096, help="message size in bytes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--deadline", type=float, default=600, help="seconds a run may take")
    ap.add_argument("--smoke", action="store_true", help="one round of 50 messages (CI)")
    ap.add_argument("--postfix", action="store_true",
                    help="also Postfix, and Postfix with OpenDKIM as milter (needs root)")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.count = 1, 50
    if not os.access(SMTP_SOURCE, os.X_OK):
        print(f"{SMTP_SOURCE} missing: apt-get install postfix", file=sys.stderr)
        return 2
    if RSPAMD is None:
        print("rspamd missing: apt-get install rspamd", file=sys.stderr)
        return 2

    if args.postfix and (os.geteuid() != 0 or not os.access(OPENDKIM, os.X_OK)):
        print("--postfix: run as root, with postfix and opendkim installed", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="mailauth-bench-"))
    work.chmod(0o755)  # virtual(8) runs as nobody below it
    dns = rspamd = opendkim = None
    servers: dict[str, Daemon] = {}
    postfixes: dict[str, Postfix] = {}
    try:
        message, published = signed_message(work, args.size)
        dns = zone(work, published)
        (work / "rspamd").mkdir()
        rspamd = Rspamd(work / "rspamd")
        # rspamd's own lookups (SPF, DKIM, RBLs) go to the zone too, not to nowhere.
        rspamd.conf.write_text(CONFIG.format(dir=rspamd.dir, port=rspamd.port)
                               .replace("127.0.0.1:9", dns.address))
        rspamd.start()
        for mode in MODES:
            servers[mode] = start_mx(work, mode, dns, rspamd)
        targets = {mode: (d.port("smtp"), d.maildir(USER)) for mode, d in servers.items()}
        if args.postfix:
            opendkim = OpenDKIM(work, published)
            postfixes["postfix"] = Postfix(work / "postfix").start()
            postfixes["postfix+opendkim"] = Postfix(work / "postfix-opendkim", settings={
                "smtpd_milters": f"inet:127.0.0.1:{opendkim.port}",
                "milter_default_action": "tempfail"}).start()
            targets.update({name: (p.port, p.maildir) for name, p in postfixes.items()})
        extra = ("-F", str(message))
        for mode, (port, maildir) in targets.items():  # one message each first: checks pass
            end_to_end(port, maildir, 1, 1, 0, 60, mode, extra)
            if mode in servers:
                check_results(servers[mode], mode)
        if args.postfix:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # Postfix's 250 comes before virtual(8)'s file
                try:
                    check_opendkim(postfixes["postfix+opendkim"].maildir)
                    break
                except BenchError:
                    time.sleep(0.1)
            check_opendkim(postfixes["postfix+opendkim"].maildir)
        print(f"smtp-source -s {args.sessions} -m {args.count} (a {message.stat().st_size}-byte "
              f"message signed Ed25519 + RSA-2048), end to end into netsuite's MX, "
              f"{args.rounds} round(s), modes alternating; 2 busy cores: rough figures",
              flush=True)

        def runner(mode: str):
            port, maildir = targets[mode]
            return lambda: end_to_end(port, maildir, args.count, args.sessions, 0,
                                      args.deadline, mode, extra)

        def show(r: int, mode: str, f: dict[str, float]) -> None:
            print(f"  round {r + 1} {mode:16} {f['msgs_s']:8.0f} msgs/s end to end", flush=True)

        results = alternate(args.rounds, {mode: runner(mode) for mode in targets}, show)
    except (BenchError, RuntimeError) as e:  # RuntimeError: a server did not start
        print(f"mailauth_bench: {e}", file=sys.stderr)
        return 1
    finally:
        for d in servers.values():
            d.stop()
        for p in postfixes.values():
            p.stop()
        if opendkim is not None:
            opendkim.stop()
        if rspamd is not None:
            rspamd.stop()
        if dns is not None:
            dns.stop()
        shutil.rmtree(work, ignore_errors=True)

    off = results["off"]
    print()
    print(f"{'msgs/s end to end (median)':34} {'msgs/s':>8} {'vs off':>8}  "
          f"(median of paired ratios)")
    for mode, label in (("off", "checks off"), ("checks", "SPF+DKIM+DMARC"),
                        ("rspamd", "SPF+DKIM+DMARC + rspamd")):
        ratio = fmt_ratio(median_ratio(results[mode], off, "msgs_s"))
        print(f"{label:34} {median(results[mode], 'msgs_s'):8.0f} {ratio:>8}")
    if args.postfix:
        plain = results["postfix"]
        print(f"{'Postfix (no milter)':34} {median(plain, 'msgs_s'):8.0f} "
              f"{fmt_ratio(median_ratio(plain, off, 'msgs_s')):>8}")
        both = results["postfix+opendkim"]
        print(f"{'Postfix + OpenDKIM milter':34} {median(both, 'msgs_s'):8.0f} "
              f"{fmt_ratio(median_ratio(both, off, 'msgs_s')):>8}  "
              f"({fmt_ratio(median_ratio(both, plain, 'msgs_s'))} of plain Postfix)")
        print(f"{'netsuite checks / Postfix+OpenDKIM':34} {'':8} "
              f"{fmt_ratio(median_ratio(results['checks'], both, 'msgs_s')):>8}")
    print("(higher is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

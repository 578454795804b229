#!/usr/bin/env python3
"""
What the MX's mail checks cost (issue 13): C{smtp-source -s 20 -l 4096} end to
end (accepted and in the Maildir) into netsuite's MX three ways, alternately
over several rounds:

  - C{off}:     no checks, no rspamd (netsuite's default);
  - C{checks}:  C{[checks]} on: SPF, both DKIM signatures, DMARC (and ARC: none);
  - C{rspamd}:  the same checks, then Debian's rspamd (a private instance, as
                tests/test_rspamd.py starts it) on every message.

Every message is the same file (C{smtp-source -F}): from news@source.test,
signed by source.test with Ed25519 and RSA-2048 (keys from C{netsuite dkim
generate}); the SPF, DKIM and DMARC records are served by a twisted.names zone
on loopback (tests/dns_zone.py), so each check really asks DNS and passes
(the script checks one stored message says C{dkim=pass}, twice, C{spf=pass}
and C{dmarc=pass} before it times anything).  rspamd asks the same zone.

    python bench/mailauth_bench.py                 # 3 rounds of 1000 messages
    python bench/mailauth_bench.py --smoke         # one round of 50 (CI)

Exits non-zero if a server does not start, smtp-source fails, or the checks
did not pass.  Needs Debian's postfix (smtp-source) and rspamd, dkimpy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the zone, the daemon harness, rspamd's setup

import dkim  # noqa: E402
from dns_zone import DNSServer  # noqa: E402
from harness import Daemon  # noqa: E402
from mail_fixtures import records  # noqa: E402
from rounds import alternate, fmt_ratio, median, median_ratio  # noqa: E402
from smtp_bench import SMTP_SOURCE, USER  # noqa: E402
from smtp_postfix_bench import DOMAIN, BenchError, end_to_end  # noqa: E402
from test_rspamd import CONFIG, RSPAMD, Rspamd  # noqa: E402

SENDER_DOMAIN = "source.test"
MODES = ("off", "checks", "rspamd")


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1000, help="messages per run (smtp-source -m)")
    ap.add_argument("--sessions", type=int, default=20, help="smtp-source -s")
    ap.add_argument("--size", type=int, default=4096, help="message size in bytes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--deadline", type=float, default=600, help="seconds a run may take")
    ap.add_argument("--smoke", action="store_true", help="one round of 50 messages (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.count = 1, 50
    if not os.access(SMTP_SOURCE, os.X_OK):
        print(f"{SMTP_SOURCE} missing: apt-get install postfix", file=sys.stderr)
        return 2
    if RSPAMD is None:
        print("rspamd missing: apt-get install rspamd", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="mailauth-bench-"))
    dns = rspamd = None
    servers: dict[str, Daemon] = {}
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
        extra = ("-F", str(message))
        for mode, d in servers.items():  # one message each first: the checks pass
            end_to_end(d.port("smtp"), d.maildir(USER), 1, 1, 0, 60, mode, extra)
            check_results(d, mode)
        print(f"smtp-source -s {args.sessions} -m {args.count} (a {message.stat().st_size}-byte "
              f"message signed Ed25519 + RSA-2048), end to end into netsuite's MX, "
              f"{args.rounds} round(s), modes alternating; 2 busy cores: rough figures",
              flush=True)

        def runner(mode: str):
            d = servers[mode]
            return lambda: end_to_end(d.port("smtp"), d.maildir(USER), args.count,
                                      args.sessions, 0, args.deadline, mode, extra)

        def show(r: int, mode: str, f: dict[str, float]) -> None:
            print(f"  round {r + 1} {mode:7} {f['msgs_s']:8.0f} msgs/s end to end", flush=True)

        results = alternate(args.rounds, {mode: runner(mode) for mode in MODES}, show)
    except (BenchError, RuntimeError) as e:  # RuntimeError: a server did not start
        print(f"mailauth_bench: {e}", file=sys.stderr)
        return 1
    finally:
        for d in servers.values():
            d.stop()
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
    print("(higher is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

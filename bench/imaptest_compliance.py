#!/usr/bin/env python3
"""
imaptest's scripted compliance groups against netsuite and Dovecot, side by
side, with the same imaptest build (bench/imaptest_build.py): the summary lines
the closing note of issue 11 quotes.

For each server (Dovecot from Debian with URLAUTH configured: imap_urlauth_host
and a mail_attribute_dict for its URLAUTH keys; netsuite through the test
harness), both on loopback:

  1. every group in one run, as the issue's reference run plus user2=:
       imaptest host=127.0.0.1 port=P user=U user2=U2 pass=... test=DIR/src/tests
     then imaptest's three summary lines, and the groups whose capabilities:
     header the server does not advertise (imaptest skips those silently);
  2. urlauth2 once more the only way it can run (box=INBOX over two messages
     APPENDed first: the script has no messages: header and user 2 SELECTs
     box= in its own account; see tests/test_imaptest.py BROKEN_GROUPS).

    python bench/imaptest_compliance.py           # about a minute per server
    python bench/imaptest_compliance.py --keep    # keep the work directory (logs)

Exits non-zero if a server does not start or imaptest prints no summary.  Needs
dovecot-imapd and imaptest's build dependencies (see bench/imaptest_bench.py).
"""

from __future__ import annotations

import argparse
import imaplib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from imaptest_build import DOVECOT_LIBS, build_imaptest, cache_root, groups_in_tree  # noqa: E402
from mail_read_bench import PASSWORD, Dovecot, start_netsuite  # noqa: E402

USER, USER2 = "imaptest", "imaptest2"
#: urlauth2's pair: their INBOX is filled for it and no other group touches it.
UA1, UA2 = "urlauth-a", "urlauth-b"
USERS = [USER, USER2, UA1, UA2]

#: What Dovecot needs to advertise and serve URLAUTH (it stores URLAUTH keys
#: as mailbox attributes, so GENURLAUTH fails without an attribute dict).
DOVECOT_URLAUTH = """
imap_urlauth_host = 127.0.0.1
mail_attribute_dict = file:%h/dovecot-attributes
"""

SUMMARY = re.compile(r"^(\d+ test groups: .*|base protocol: .*|extensions: .*)$", re.MULTILINE)


def header_capabilities(script: Path) -> list[str]:
    for line in script.read_text(errors="replace").splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        if key.strip().lower() == "capabilities":
            return value.split()
    return []


def capabilities(port: int) -> set[str]:
    m = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    m.login(USER, PASSWORD)
    # After LOGIN: Dovecot's greeting lists fewer than it advertises once logged in.
    _, data = m.capability()
    m.logout()
    caps = {c.upper() for c in data[0].decode().split()}
    return caps


def fill_inbox(port: int, user: str, count: int) -> None:
    m = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    m.login(user, PASSWORD)
    for i in range(count):
        m.append("INBOX", None, None,
                 f"From: a@example.test\r\nSubject: urlauth2 {i}\r\n\r\nbody {i}\r\n".encode())
    m.logout()


#: imaptest writes its failure reports ("*** Test urlauth2 initialization failed: ...") to stderr.
FAILED_GROUP = re.compile(r"^\s*\*\*\* Test (\S+) ", re.MULTILINE)


def imaptest(binary: Path, port: int, *args: str, timeout: float = 900) -> list[str]:
    cmd = [str(binary), "host=127.0.0.1", f"port={port}", f"pass={PASSWORD}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL,
                          env=dict(os.environ, LD_LIBRARY_PATH=DOVECOT_LIBS))
    lines = SUMMARY.findall(done.stdout)
    if len(lines) != 3:  # groups run/failed, base and extension commands failed
        raise RuntimeError(f"imaptest {' '.join(args)} exited {done.returncode} without its "
                           f"summary:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    failed = sorted(set(FAILED_GROUP.findall(done.stdout + "\n" + done.stderr)))
    return lines + [f"groups with a failed command: {' '.join(failed) or 'none'}"]


def report(name: str, binary: Path, port: int) -> list[str]:
    tests = binary.parent / "tests"
    caps = capabilities(port)
    unrun = [g for g in groups_in_tree(binary)
             if any(c.upper() not in caps for c in header_capabilities(tests / g))]
    out = [f"{name}:",
           f"  imaptest user={USER} user2={USER2} test=src/tests  (every group, one run)"]
    out += [f"    {line}" for line in imaptest(binary, port, f"user={USER}", f"user2={USER2}",
                                                f"test={tests}")]
    out.append(f"    groups skipped for a capability not advertised: {len(unrun)}"
               + (f" ({' '.join(unrun)})" if unrun else ""))
    fill_inbox(port, UA1, 2)
    out.append(f"  imaptest user={UA1} user2={UA2} box=INBOX test=src/tests/urlauth2"
               "  (INBOX holding 2 messages)")
    out += [f"    {line}" for line in imaptest(binary, port, f"user={UA1}", f"user2={UA2}",
                                                "box=INBOX", f"test={tests / 'urlauth2'}",
                                                timeout=300)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if not Path("/usr/sbin/dovecot").exists():
        print("dovecot not installed: apt-get install dovecot-imapd", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="imaptest-compliance-"))
    work.chmod(0o755)  # Dovecot's auth process (user dovecot) reads its passwd file
    dovecot = ours = None
    lines: list[str] = []
    try:
        binary = build_imaptest(cache_root())
        for side in ("ours", "theirs"):
            for u in USERS:
                for sub in ("cur", "new", "tmp"):
                    (work / side / u / sub).mkdir(parents=True)
        subprocess.run(["chown", "-R", "mail:mail", str(work / "theirs")], check=True)
        dovecot = Dovecot(work / "dovecot", work / "theirs", USERS)
        dovecot.conf.write_text(dovecot.conf.read_text() + DOVECOT_URLAUTH)
        dovecot.start()
        ours = start_netsuite(work / "netsuite", work / "ours", USERS)
        print(f"imaptest {binary}", flush=True)
        for name, port in (("netsuite", ours.port("imap")),
                           (f"dovecot {dovecot_version()}", dovecot.imap_port)):
            lines = report(name, binary, port)
            print("\n".join(lines), flush=True)
    except RuntimeError as e:
        print(f"imaptest_compliance: {e}", file=sys.stderr)
        return 1
    finally:
        if ours is not None:
            ours.stop()
        if dovecot is not None:
            dovecot.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}", file=sys.stderr)
    return 0


def dovecot_version() -> str:
    done = subprocess.run(["/usr/sbin/dovecot", "--version"], capture_output=True, text=True)
    return done.stdout.split()[0] if done.stdout else "?"


if __name__ == "__main__":
    sys.exit(main())

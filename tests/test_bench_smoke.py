"""
Every benchmark in bench/, once, in its --smoke mode (seconds, not minutes).

This asserts nothing about speed: only that each benchmark still runs to the
end against netsuite and its peers, exits 0 and prints its figures, which the
test writes to the terminal so they are in every CI log.  A regression the size
of the POP3 RETR one (0.006x Dovecot) is then seen the day it lands, and a
benchmark that broke (a server that no longer starts, a client error) fails CI
instead of rotting until someone runs it.  The failure paths are checked too: a
benchmark whose server stores nothing, or whose tool never gets an answer,
must exit non-zero.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tools import need_file, need_imaptest_build, require

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

NUM = r"\d+(?:\.\d+)?"
RATIO = NUM + "x"


def need_module(name: str) -> None:
    if importlib.util.find_spec(name) is None:
        message = f"python module {name} is missing (pip install -e '.[test]' installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("Postfix's master needs root (CI runs as root)")


def run_bench(script: str, *args: str, timeout: float = 240,
              env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})), stdin=subprocess.DEVNULL)


#: (script, prerequisites, lines the figures must appear on: one regex each)
BENCHES = {
    "imaptest_bench.py": (
        need_imaptest_build,
        [rf"^imaptest ops/s.*\s{NUM}\s+{NUM}\s+{RATIO}$",
         rf"^LOGIN mean ms.*\s{NUM}\s+{NUM}\s+{RATIO}$",
         r"^imaptest errors per run\s"]),
    "smtp_postfix_bench.py": (
        lambda: (need_root(), require("postfix"), need_file("/usr/sbin/smtp-source", "postfix")),
        [rf"^msgs/s end to end\s+{NUM}\s+{NUM}\s+{RATIO}$",
         rf"^msgs/s accepted\s+{NUM}\s+{NUM}\s+{RATIO}$"]),
    "smtp_bench.py": (
        lambda: (need_file("/usr/sbin/smtp-source", "postfix"),
                 need_file("/usr/sbin/smtp-sink", "postfix"), need_module("aiosmtpd")),
        [rf"^\s+netsuite \(fsynced Maildir\)\s+{NUM} msgs/s$",
         rf"^\s+netsuite accepted \(queued, fsynced\)\s+{NUM} msgs/s$",
         rf"^\s+netsuite end to end \(relayed to smtp-sink, queue empty\)\s+{NUM} msgs/s$"]),
    "mailauth_bench.py": (
        lambda: (need_file("/usr/sbin/smtp-source", "postfix"), require("rspamd"),
                 need_module("dkim")),
        [rf"^checks off\s+{NUM}\s+{RATIO}$",
         rf"^SPF\+DKIM\+DMARC\s+{NUM}\s+{RATIO}$",
         rf"^SPF\+DKIM\+DMARC \+ rspamd\s+{NUM}\s+{RATIO}$"]),
    "mail_read_bench.py": (
        lambda: (need_file("/usr/sbin/dovecot", "dovecot-imapd"),
                 need_file("/usr/lib/dovecot/pop3", "dovecot-pop3d")),
        [rf"^SELECT\+FETCH 1:\* \(UID FLAGS\)\s+200 again\s+{NUM}\s+{NUM}\s+{RATIO}$",
         rf"^FETCH BODY.PEEK\[\] random.*\s{NUM}\s+{NUM}\s+{RATIO}$",
         rf"^POP3 RETR msgs/s.*\s{NUM}\s+{NUM}\s+{RATIO}$"]),
    "sort_bench.py": (
        lambda: need_file("/usr/sbin/dovecot", "dovecot-imapd"),
        [rf"^SORT \(SUBJECT\) first\s+{NUM}\s+{NUM}\s+{RATIO}$",
         rf"^THREAD=REFERENCES again\s+{NUM}\s+{NUM}\s+{RATIO}$",
         r"^answers equal to Dovecot's: SORT \(SUBJECT\)\s+yes$",
         r"^answers equal to Dovecot's: SORT \(DATE\)\s+yes$",
         r"^answers equal to Dovecot's: SORT \(FROM\)\s+yes$",
         r"^answers equal to Dovecot's: THREAD=REFERENCES\s+yes$"]),
    "ftp_bench.py": (
        lambda: (need_file("/usr/sbin/vsftpd", "vsftpd"), need_module("pyftpdlib")),
        # netsuite, pyftpdlib, vsftpd, then the two paired ratios.
        [rf"^RETR 1 client MiB/s\s+{NUM}\s+{NUM}\s+{NUM}\s+{RATIO}\s+{RATIO}$",
         rf"^10 sessions seconds\s+{NUM}\s+{NUM}\s+{NUM}\s+{RATIO}\s+{RATIO}$",
         r"^10 sessions failed\s+0\s+0\s+0$"]),
    "ssh_bench.py": (
        lambda: (need_root(), need_file("/usr/sbin/sshd", "openssh-server"),
                 need_file("/usr/lib/openssh/sftp-server", "openssh-server")),
        [rf"^get MiB/s\s+{NUM}\s+{NUM}\s+{RATIO}$",
         rf"^put MiB/s\s+{NUM}\s+{NUM}\s+{RATIO}$",
         rf"^logins seconds\s+{NUM}\s+{NUM}\s+{RATIO}$",
         r"^logins failed\s+0\.00\s+0\.00\s+n/a$"]),
    "db_bench.py": (
        lambda: need_file("/usr/lib/postgresql/15/bin/initdb", "postgresql-15"),
        [rf"^queries/s\s+{NUM}\s+{NUM}\s+{NUM}\s+{RATIO}\s+{RATIO}$",
         rf"^client CPU us/query\s+{NUM}\s+{NUM}\s+{NUM}\s+{RATIO}\s+{RATIO}$"]),
    "pg_store_bench.py": (
        lambda: need_file("/usr/lib/postgresql/15/bin/initdb", "postgresql-15"),
        [rf"^SMTP deliveries msgs/s\s+{NUM}\s+{NUM}\s+{RATIO}$",
         rf"^SELECT\+FETCH FLAGS again s\s+{NUM}\s+{NUM}\s+{RATIO}$",
         rf"^delivery on A to IDLE on B ms\s+{NUM}$"]),
    "telnet_bench.py": (
        lambda: need_file("/usr/sbin/telnetd", "inetutils-telnetd"),
        [rf"^netsuite\s+5\s+{NUM}(\s+{NUM}){{6}}$",
         rf"^inetutils telnetd\s+5\s+{NUM}(\s+{NUM}){{6}}$"]),
}


@pytest.mark.parametrize("script", list(BENCHES))
def test_bench_smoke(script: str, capsys) -> None:
    prerequisites, figures = BENCHES[script]
    prerequisites()
    done = run_bench(script, "--smoke")
    with capsys.disabled():  # the figures belong in the CI log, test passed or not
        print(f"\n--- bench/{script} --smoke (exit {done.returncode}) ---\n{done.stdout}",
              end="" if done.stdout.endswith("\n") else "\n")
        if done.returncode:
            print(done.stderr[-4000:])
    assert done.returncode == 0, f"bench/{script} --smoke exited {done.returncode}"
    for pattern in figures:
        assert re.search(pattern, done.stdout, re.MULTILINE), \
            f"bench/{script} printed no line matching {pattern!r}"


# -- a benchmark that breaks must say so with its exit status ----------------------------------


def test_imaptest_bench_fails_without_its_build_inputs(tmp_path) -> None:
    need_file("/usr/sbin/dovecot", "dovecot-imapd")
    empty = tmp_path / "shared"
    empty.mkdir()
    done = run_bench("imaptest_bench.py", "--smoke", timeout=60,
                     env={"NETSUITE_SHARED": str(empty), "XDG_CACHE_HOME": str(tmp_path)})
    assert done.returncode != 0
    assert "build.sh not found" in done.stderr


def test_imaptest_run_fails_when_no_command_completes(tmp_path) -> None:
    """imaptest against a port where nothing answers exits 0 with zero counts: a break."""
    need_imaptest_build()
    import imaptest_bench
    from rounds import free_port

    binary = imaptest_bench.build_imaptest(imaptest_bench.cache_root())
    mbox = tmp_path / "append.mbox"
    imaptest_bench.write_mbox(mbox, 5)
    with pytest.raises(imaptest_bench.BenchError, match="completed no command"):
        imaptest_bench.run_imaptest(binary, free_port(), mbox, 2, 1, tmp_path, "nothing")


def test_smtp_postfix_bench_fails_when_mail_is_not_stored(tmp_path) -> None:
    """smtp-sink accepts every message and stores none: 'on disk' must catch that."""
    need_file("/usr/sbin/smtp-source", "postfix")
    sink_binary = "/usr/sbin/smtp-sink"
    need_file(sink_binary, "postfix")
    import smtp_postfix_bench
    from rounds import free_port, wait_port

    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    sink = subprocess.Popen([sink_binary, *user, f"127.0.0.1:{port}", "16"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=sink)
        (tmp_path / "new").mkdir()
        with pytest.raises(smtp_postfix_bench.BenchError, match="0 of 20 messages on disk"):
            smtp_postfix_bench.end_to_end(port, tmp_path, 20, 2, 1024, 3.0, "smtp-sink")
    finally:
        sink.terminate()
        sink.wait(10)


def test_mailauth_bench_fails_when_the_checks_do_not_pass(tmp_path) -> None:
    """A stored message without the passing results: the bench must refuse to time it."""
    import mailauth_bench
    from harness import Daemon

    d = Daemon(tmp_path / "d", listeners=[])
    box = d.maildir(mailauth_bench.USER) / "new"
    box.mkdir(parents=True)
    (box / "1").write_bytes(b"Authentication-Results: mx.test; dkim=pass;\n\tspf=pass;"
                            b" dmarc=fail\n\nbody\n")
    with pytest.raises(mailauth_bench.BenchError, match="no dmarc=pass"):
        mailauth_bench.check_results(d, "checks")
    with pytest.raises(mailauth_bench.BenchError, match="off: checks ran"):
        mailauth_bench.check_results(d, "off")


def test_paired_ratios_take_the_median_round_by_round() -> None:
    from rounds import median_ratio, order

    ours = [{"x": 10.0}, {"x": 30.0}, {"x": 20.0}]
    theirs = [{"x": 20.0}, {"x": 10.0}, {"x": 20.0}]
    assert median_ratio(ours, theirs, "x") == 1.0
    # pairs 3.0 and 0.5: their median, not the ratio of the medians (5 / 2.5 = 2.0)
    assert median_ratio([{"x": 9.0}, {"x": 1.0}], [{"x": 3.0}, {"x": 2.0}], "x") == 1.75
    assert order(0, ["a", "b", "c"]) == ["a", "b", "c"]
    assert order(1, ["a", "b", "c"]) == ["c", "b", "a"]

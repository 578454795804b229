"""
docs/operations.md's backup procedure, done while the daemon runs: a server
started on the copy shows the same mailboxes (UIDVALIDITY, UIDs, flags), the
same users and the same queue.
"""

from __future__ import annotations

import imaplib
import re
import shutil
import smtplib
import subprocess
from pathlib import Path

import pytest
from harness import Daemon

CONFIG = {"server": {"allow_plaintext_auth": True},
          "mail": {"local_domains": ["example.test"]},
          # A remote route nobody answers: the message stays queued.
          "queue": {"routes": {"remote.test": "127.0.0.1:9"}}}


def backup(data: Path, dest: Path) -> None:
    """The commands of docs/operations.md ('Backups'), in their order."""
    if shutil.which("rsync") is None:
        pytest.skip("rsync (Debian) makes the backup")
    run = ["rsync", "-a", "--exclude=/run/"]
    # 1. indexes first, so that no index names a message the copy lacks a newer UID for
    subprocess.run([*run, "--include=*/", "--include=netsuite-*", "--exclude=*",
                    f"{data}/", f"{dest}/"], check=True)
    # 2. everything, twice: the second pass catches files renamed (flag changes) in the first
    for _ in range(2):
        subprocess.run([*run, f"{data}/", f"{dest}/"], check=True)


def uids_and_flags(port: int) -> tuple[str, dict[int, str]]:
    m = imaplib.IMAP4("127.0.0.1", port, timeout=15)
    m.login("alice", "alice-pw")
    m.select("INBOX")
    validity = m.response("UIDVALIDITY")[1][0].decode()
    _, data = m.uid("FETCH", "1:*", "(FLAGS)")
    m.logout()
    found = {}
    for line in data:
        text = line.decode() if isinstance(line, bytes) else line[0].decode()
        match = re.search(r"UID (\d+) FLAGS \(([^)]*)\)", text)
        if match:
            found[int(match.group(1))] = " ".join(sorted(match.group(2).split()))
    return validity, found


def test_backup_of_a_running_server_restores(make_daemon, tmp_path):
    d = make_daemon(CONFIG, listeners=["smtp", "submission", "imap"],
                    users={"alice": "alice-pw"})
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=15) as s:
        for n in range(12):
            s.sendmail("bob@elsewhere.test", ["alice@example.test"],
                       f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode())
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=15)
    m.login("alice", "alice-pw")
    m.select("INBOX")
    m.uid("STORE", "2:4", "+FLAGS", r"(\Seen $Important)")
    m.uid("STORE", "5", "+FLAGS", r"(\Deleted)")
    m.expunge()
    m.logout()
    with smtplib.SMTP("127.0.0.1", d.port("submission"), timeout=15) as s:
        s.login("alice", "alice-pw")
        s.sendmail("alice@example.test", ["carol@remote.test"], b"Subject: out\r\n\r\nq\r\n")
    before = uids_and_flags(d.port("imap"))
    assert len(before[1]) == 11 and 5 not in before[1]
    queued = d.cli("queue", "list").stdout
    assert "carol@remote.test" in queued

    r = Daemon(tmp_path / "restored", CONFIG, ["smtp", "submission", "imap"])
    backup(d.data_dir, r.data_dir)
    d.stop()
    assert not (r.data_dir / "run").exists()
    r.start()
    try:
        assert uids_and_flags(r.port("imap")) == before
        assert "carol@remote.test" in r.cli("queue", "list").stdout
    finally:
        r.stop()

"""
mbsync (isync) against the real daemon over IMAPS: a two-way sync of a folder
with flags and deletions on both sides, as a mail user runs it.
"""

from __future__ import annotations

import imaplib
import shutil
import subprocess
from pathlib import Path

import pytest
from rawsmtp import insecure_context as tls_context

USERS = {"alice": "wonderland"}

pytestmark = pytest.mark.skipif(shutil.which("mbsync") is None,
                                reason="mbsync is not installed (apt-get install isync)")


def message(n: int) -> bytes:
    return (b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: sync %d\r\n"
            b"Message-ID: <sync%d@example.test>\r\n\r\nbody %d\r\n" % (n, n, n))


def imap(d) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", d.port("imaps"), ssl_context=tls_context(), timeout=10)
    m.login("alice", USERS["alice"])
    return m


def server_state(d) -> dict[bytes, bytes]:
    """Subject -> FLAGS of every message in the server's INBOX."""
    m = imap(d)
    m.select("INBOX")
    typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    m.logout()
    out = {}
    for item in data:
        if isinstance(item, tuple):
            flags = item[0].split(b"FLAGS (", 1)[1].split(b")", 1)[0]
            out[item[1].strip().split(b": ", 1)[1]] = flags
    return out


def local_state(inbox: Path) -> dict[bytes, str]:
    """Subject -> Maildir info letters of every message mbsync keeps locally."""
    out = {}
    for sub in ("cur", "new"):
        for f in (inbox / sub).iterdir():
            subject = next(line for line in f.read_bytes().splitlines()
                           if line.startswith(b"Subject: "))[9:]
            out[subject] = f.name.partition(":2,")[2]
    return out


def test_two_way_sync_with_flags_and_deletions(make_daemon, tmp_path):
    # mbsync matches the certificate's DNS names only (not its IP addresses): the
    # generated certificate names the server's hostname, so make that localhost.
    d = make_daemon(listeners=["imaps"], users=USERS, config={"server": {"hostname": "localhost"}})
    m = imap(d)
    for n in range(4):
        m.append("INBOX", "(\\Flagged)" if n == 1 else "", None, message(n))
    m.logout()
    local = tmp_path / "local"
    (local / "INBOX").mkdir(parents=True)
    rc = tmp_path / "mbsyncrc"
    rc.write_text(f"""
IMAPAccount netsuite
Host localhost
Port {d.port("imaps")}
User alice
Pass {USERS["alice"]}
SSLType IMAPS
SystemCertificates no
CertificateFile {d.data_dir / "tls" / "cert.pem"}

IMAPStore far
Account netsuite

MaildirStore near
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel sync
Far :far:
Near :near:
Patterns INBOX
Create Both
Expunge Both
Sync All
SyncState *
""")

    def mbsync() -> None:
        done = subprocess.run(["mbsync", "-c", str(rc), "-a"], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

    mbsync()
    inbox = local / "INBOX"
    assert local_state(inbox) == {b"sync 0": "", b"sync 1": "F", b"sync 2": "", b"sync 3": ""}

    # Near side: read one, delete another (trashed); far side: flag and answer one.
    # As a mail reader does: out of new/ into cur/ with the flags in the name.
    for f in [*(inbox / "new").iterdir(), *(inbox / "cur").iterdir()]:
        text = f.read_bytes()
        base = f.name.partition(":2,")[0]
        if b"Subject: sync 0" in text:
            f.rename(inbox / "cur" / (base + ":2,S"))
        elif b"Subject: sync 2" in text:
            f.rename(inbox / "cur" / (base + ":2,T"))
    m = imap(d)
    m.select("INBOX")
    m.store("4", "+FLAGS", "(\\Answered)")
    m.append("INBOX", "", None, message(4))
    m.logout()
    mbsync()

    far = server_state(d)
    assert set(far) == {b"sync 0", b"sync 1", b"sync 3", b"sync 4"}  # sync 2 expunged
    assert b"\\Seen" in far[b"sync 0"] and b"\\Flagged" in far[b"sync 1"]
    assert b"\\Answered" in far[b"sync 3"]
    assert local_state(inbox) == {b"sync 0": "S", b"sync 1": "F", b"sync 3": "R",
                                  b"sync 4": ""}
    # A third run with nothing changed changes nothing.
    mbsync()
    assert server_state(d) == far and set(local_state(inbox)) == set(far)

"""
Faults against the real daemon: a full disk under the mail store (a 2 MiB
tmpfs mounted as DATA/mail) during DATA, BDAT and IMAP reads.
"""

from __future__ import annotations

import errno
import imaplib
import os
import shutil
import smtplib
import subprocess
import time

import pytest
from harness import Daemon
from rawsmtp import RawSMTP, insecure_context

TMPFS_SIZE = 2 * 1024 * 1024


def _mount_tmpfs(path) -> str | None:
    """Mount a small tmpfs on C{path}; the reason when this machine does not allow it."""
    if shutil.which("mount") is None:
        return "no mount(8)"
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700",
                             "tmpfs", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        return f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}"
    return None


@pytest.fixture
def small_disk(tmp_path):
    """A daemon whose mail store is a 2 MiB tmpfs; stopped, then unmounted."""
    d = Daemon(tmp_path / "d", listeners=["smtp", "smtps", "imaps"])
    mail = d.data_dir / "mail"
    mail.mkdir(parents=True)
    why = _mount_tmpfs(mail)
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    try:
        d.add_user("alice", "alice-pw")
        d.start()
        yield d
    finally:
        d.stop()
        subprocess.run(["umount", str(mail)], check=False)


def fill(path) -> int:
    """Write a filler file until the disk is full, to the last byte; its size."""
    written = 0
    size = 65536
    with open(path, "wb", buffering=0) as f:
        while size >= 1:
            try:
                while True:
                    written += f.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
            size //= 2
    return written


def tmp_files(d: Daemon, user: str = "alice") -> list[str]:
    tmp = d.maildir(user) / "tmp"
    return sorted(os.listdir(tmp)) if tmp.is_dir() else []


def big_message(size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    return b"Subject: big\r\n\r\n" + line * (size // len(line))


def test_full_disk_during_data_is_452_and_the_session_goes_on(small_disk):
    d = small_disk
    raw = RawSMTP(d.port("smtp"))
    raw.cmd(b"EHLO remote.test")
    assert raw.cmd(b"MAIL FROM:<a@remote.test>")[0] == 250
    assert raw.cmd(b"RCPT TO:<alice@example.test>")[0] == 250
    assert raw.cmd(b"DATA")[0] == 354
    code, text = raw.cmd(b"Subject: first\r\n\r\nkept\r\n.")
    assert code == 250, text
    first = d.messages("alice")
    assert len(first) == 1

    assert raw.cmd(b"MAIL FROM:<a@remote.test>")[0] == 250
    assert raw.cmd(b"RCPT TO:<alice@example.test>")[0] == 250
    assert raw.cmd(b"DATA")[0] == 354
    raw.send(big_message(3 * TMPFS_SIZE))
    code, text = raw.cmd(b".")
    assert code == 452 and text.startswith(b"4.3.1"), (code, text, d.log()[-2000:])
    assert tmp_files(d) == []

    # The same session, the space freed: a small message fits.
    assert raw.cmd(b"MAIL FROM:<a@remote.test>")[0] == 250
    assert raw.cmd(b"RCPT TO:<alice@example.test>")[0] == 250
    assert raw.cmd(b"DATA")[0] == 354
    code, text = raw.cmd(b"Subject: after\r\n\r\nsmall\r\n.")
    assert code == 250, text
    raw.close()
    msgs = d.messages("alice")
    assert msgs[0] == first[0] and len(msgs) == 2 and msgs[1].endswith(b"\nsmall\n")
    assert "Unhandled" not in d.log() and "Traceback" not in d.log()


def test_full_disk_with_a_small_message_held_until_commit_is_452(small_disk):
    """A small message is first written in the commit thread: the full disk is seen there."""
    d = small_disk
    fill(d.data_dir / "mail" / "filler")
    raw = RawSMTP(d.port("smtp"))
    raw.cmd(b"EHLO remote.test")
    assert raw.cmd(b"MAIL FROM:<a@remote.test>")[0] == 250
    assert raw.cmd(b"RCPT TO:<alice@example.test>")[0] == 250
    assert raw.cmd(b"DATA")[0] == 354
    code, text = raw.cmd(b"Subject: small\r\n\r\n" + b"x" * 20000 + b"\r\n.")
    assert code == 452 and text.startswith(b"4.3.1"), (code, text, d.log()[-2000:])
    assert tmp_files(d) == [] and d.messages("alice") == []
    os.unlink(d.data_dir / "mail" / "filler")
    assert raw.cmd(b"MAIL FROM:<a@remote.test>")[0] == 250
    assert raw.cmd(b"RCPT TO:<alice@example.test>")[0] == 250
    assert raw.cmd(b"DATA")[0] == 354
    code, text = raw.cmd(b"Subject: after\r\n\r\nsmall\r\n.")
    assert code == 250, text
    raw.close()
    assert [m.endswith(b"\nsmall\n") for m in d.messages("alice")] == [True]
    assert "Unhandled" not in d.log() and "Traceback" not in d.log()


def test_full_disk_during_bdat_is_452_and_the_session_goes_on(small_disk):
    d = small_disk
    raw = RawSMTP(d.port("smtp"))
    raw.cmd(b"EHLO remote.test")
    assert raw.cmd(b"MAIL FROM:<a@remote.test>")[0] == 250
    assert raw.cmd(b"RCPT TO:<alice@example.test>")[0] == 250
    chunk = big_message(TMPFS_SIZE)
    for _ in range(2):
        raw.send(b"BDAT %d\r\n" % len(chunk) + chunk)
        code, text = raw.reply()
        assert code == 250, text
    raw.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    code, text = raw.reply()
    assert code == 452 and text.startswith(b"4.3.1"), (code, text)
    assert tmp_files(d) == []
    assert raw.cmd(b"MAIL FROM:<a@remote.test>")[0] == 250
    assert raw.cmd(b"RCPT TO:<alice@example.test>")[0] == 250
    small = b"Subject: s\r\n\r\nfits\r\n"
    raw.send(b"BDAT %d LAST\r\n" % len(small) + small)
    assert raw.reply()[0] == 250
    raw.close()
    assert [m.endswith(b"\nfits\n") for m in d.messages("alice")] == [True]


def test_full_disk_submission_with_two_mailboxes_keeps_nothing_partial(small_disk):
    d = small_disk
    d.add_user("bob", "bob-pw")
    with smtplib.SMTP_SSL("127.0.0.1", d.port("smtps"), timeout=20,
                          context=insecure_context()) as s:
        s.login("alice", "alice-pw")
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("alice@example.test", ["alice@example.test", "bob@example.test"],
                       big_message(TMPFS_SIZE))
        assert e.value.smtp_code == 452
        assert s.noop()[0] == 250
    assert tmp_files(d, "alice") == [] and tmp_files(d, "bob") == []
    assert d.messages("alice") == [] and d.messages("bob") == []


#: More than a page of change-log records (an append into a page already
#: allocated succeeds on a full disk).
OTHERS = 200


def test_imap_reads_keep_working_when_the_index_cannot_be_saved(small_disk):
    d = small_disk
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=10) as s:
        s.sendmail("a@remote.test", ["alice@example.test"], b"Subject: one\r\n\r\nfirst\r\n")
    m = imaplib.IMAP4_SSL("127.0.0.1", d.port("imaps"), ssl_context=insecure_context(),
                          timeout=10)
    m.login("alice", "alice-pw")
    assert m.select("INBOX") == ("OK", [b"1"])
    # Messages written by another program, renamed into new/ once the disk is full:
    # enough of them that their index records need more room than the disk has.
    box = d.maildir("alice")
    others = [f"1.M{i}P1.other" for i in range(1, OTHERS + 1)]
    for i, name in enumerate(others):
        (box / "tmp" / name).write_bytes(b"Subject: two\n\nsecond\n" if i == 0 else b"x\n")
    fill(d.data_dir / "mail" / "filler")
    for name in others:
        os.rename(box / "tmp" / name, box / "new" / name)
    typ, data = m.noop()
    assert typ == "OK", (typ, data, d.log()[-2000:])
    assert m.response("EXISTS")[1][-1] == b"%d" % (OTHERS + 1)
    typ, data = m.fetch("2", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1].endswith(b"second\r\n")
    m.logout()
    # A new session selects and reads from memory too.
    m = imaplib.IMAP4_SSL("127.0.0.1", d.port("imaps"), ssl_context=insecure_context(),
                          timeout=10)
    m.login("alice", "alice-pw")
    assert m.select("INBOX") == ("OK", [b"%d" % (OTHERS + 1)])
    typ, data = m.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1].endswith(b"first\r\n")
    m.logout()
    assert d.log().count("cannot save the index of") == 1
    # Space again: the index is saved on the next refresh.
    os.unlink(d.data_dir / "mail" / "filler")
    m = imaplib.IMAP4_SSL("127.0.0.1", d.port("imaps"), ssl_context=insecure_context(),
                          timeout=10)
    m.login("alice", "alice-pw")
    m.select("INBOX")
    m.noop()
    m.logout()
    assert d.wait_for(lambda: "saved again" in d.log(), 10)
    assert "Unhandled" not in d.log()


# -- leftovers in tmp/ after a crash ---------------------------------------------------------

HOURS = 3600


def _aged(path, hours: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"partial")
    then = time.time() - hours * HOURS
    os.utime(path, (then, then))


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_tmp_leftovers_are_cleaned_at_startup(make_daemon):
    from netsuite.store.maildir import _HOST

    d = make_daemon(listeners=["smtp"], users={"alice": "alice-pw"}, start=False)
    box = d.maildir("alice")
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True, exist_ok=True)
        (box / ".Sent" / sub).mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    old = box / "tmp" / "1000.M1P1Q1.otherhost"
    old_in_folder = box / ".Sent" / "tmp" / "1000.M2P1Q1.otherhost"
    fresh_foreign = box / "tmp" / f"{now}.M3P1Q1.otherhost"           # another MDA, writing
    crashed = box / "tmp" / f"{now}.M4P{_dead_pid()}Q1.{_HOST}"       # ours, writer gone
    alive = box / "tmp" / f"{now}.M5P{os.getpid()}Q1.{_HOST}"        # ours? its writer lives
    old_message = box / "cur" / "1000.M6P1Q1.otherhost:2,S"           # cur/ is never touched
    _aged(old, 40)
    _aged(old_in_folder, 37)
    _aged(old_message, 400)
    for path in (fresh_foreign, crashed, alive):
        _aged(path, 0)
    spilled = d.data_dir / "queue" / "tmp" / "0123456789abcdef"
    _aged(spilled, 0)
    d.start()
    assert d.wait_for(lambda: not old.exists() and not crashed.exists(), 10), d.log()[-2000:]
    assert not old_in_folder.exists() and not spilled.exists()
    assert fresh_foreign.exists() and alive.exists() and old_message.exists()
    assert "tmp cleanup: removed 3 leftover file(s)" in d.log()


def test_tmp_leftovers_are_cleaned_by_age_while_running(tmp_path):
    """The hourly pass: what was fresh at start-up goes once it is 36 hours old."""
    from netsuite.queue.spool import Spool
    from netsuite.store.maildir import TMP_MAX_AGE, MaildirStore

    store = MaildirStore(tmp_path / "mail")
    partial = tmp_path / "mail" / "alice" / "tmp" / "1.M1P1Q1.otherhost"
    _aged(partial, 0)
    assert store.clean_tmp() == 0 and partial.exists()
    assert store.clean_tmp(now=time.time() + TMP_MAX_AGE + 60) == 1
    assert not partial.exists()
    spool = Spool(tmp_path / "queue")
    spilled = spool.tmp / "0123456789abcdef"
    _aged(spilled, 0)
    assert spool.clean_tmp(TMP_MAX_AGE) == 0 and spilled.exists()
    assert spool.clean_tmp(TMP_MAX_AGE, now=time.time() + TMP_MAX_AGE + 60) == 1
    assert not spilled.exists()

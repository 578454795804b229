"""A slow disk flush in one session does not hold up another session's commands."""

from __future__ import annotations

import os
import smtplib
import threading
import time
from pathlib import Path

from test_imap import USERS, RawIMAP

ROOT = Path(__file__).resolve().parent.parent
HOOK = Path(__file__).resolve().parent / "hooks" / "fsync_stall"


def _wait(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


def test_an_fsync_stall_during_delivery_does_not_delay_a_noop(make_daemon, tmp_path):
    stall = tmp_path / "stall"
    stall.mkdir()
    d = make_daemon(listeners=["smtp", "imaps"], users=USERS, env={
        "NETSUITE_TEST_FSYNC_STALL": str(stall),
        "PYTHONPATH": os.pathsep.join([str(HOOK), str(ROOT), str(ROOT / "examples")])})
    other = RawIMAP(d)
    other.login()
    other.send(b"s SELECT INBOX\r\n")
    assert other.until_tagged(b"s")[-1].startswith(b"s OK")
    (stall / "armed").touch()

    errors: list = []

    def deliver():
        try:
            with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=30) as s:
                s.sendmail("bob@remote.test", ["alice@example.test"],
                           b"Subject: slow disk\r\n\r\nbody\r\n")
        except Exception as e:
            errors.append(e)

    smtp = threading.Thread(target=deliver)
    smtp.start()
    replies: list[bytes] = []
    # The delivery's fsyncs: the message, new/, the folder's index log.  While
    # each stalls, the other session's NOOP is answered.
    for n in (1, 2, 3):
        started = stall / f"start-{n}"
        assert _wait(started.exists), (n, errors)
        other.send(b"n%d NOOP\r\n" % n)
        replies += other.until_tagged(b"n%d" % n)
        assert replies[-1].startswith(b"n%d OK" % n)
        assert not (stall / f"done-{n}").exists(), \
            f"NOOP answered only after fsync {n} ({started.read_text()}) ended"
    smtp.join(30)
    assert not errors, errors
    other.send(b"e NOOP\r\n")
    replies += other.until_tagged(b"e")
    assert b"* 1 EXISTS\r\n" in replies
    other.close()

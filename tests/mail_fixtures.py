"""
What the outgoing-mail and mail-authentication tests share (the remote MX,
aiosmtpd from tests/queue_remote.py, is conftest.py's C{remote} fixture): the fast queue timings,
submission of a message through the daemon, the queue's ids, the DKIM
records C{netsuite dkim generate} prints (and a dkimpy lookup over them), and
our C{Authentication-Results} header of a stored message.
"""

from __future__ import annotations

import re
import smtplib

from rawsmtp import insecure_context

#: Queue timings that keep retries within a test's patience.
FAST = {"min_backoff": 0.3, "max_backoff": 0.6, "poll_interval": 0.1,
        "connect_timeout": 5, "command_timeout": 10}


def submit(d, rcpts, body: bytes, sender="alice@example.test", user="alice",
           password="alice-pw", **kw):
    """Submit over SMTPS with AUTH; returns smtplib's refused-recipients dict."""
    with smtplib.SMTP_SSL("127.0.0.1", d.port("smtps"), timeout=20,
                          context=insecure_context()) as s:
        s.login(user, password)
        return s.sendmail(sender, rcpts, body, **kw)


def message(subject: str, text: str = "hello\r\n", to: str = "someone@remote.test") -> bytes:
    return (f"From: alice@example.test\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@example.test>\r\n\r\n{text}").encode()


def queue_ids(d) -> list[str]:
    """The ids C{netsuite queue list} shows."""
    out = d.cli("queue", "list").stdout
    return [line.split()[0] for line in out.splitlines()
            if line and not line.startswith((" ", "-", "queue"))]


def records(output: str) -> dict[str, str]:
    """The TXT records `dkim generate` printed: DNS name -> record text."""
    found = {}
    for line in output.splitlines():
        m = re.match(r"^(\S+)\. 3600 IN TXT (.*)$", line)
        if m:
            found[m.group(1)] = "".join(re.findall(r'"([^"]*)"', m.group(2)))
    return found


def dnsfunc(published: dict[str, str]):
    """dkimpy's C{dnsfunc} answering from C{published} (name -> TXT text)."""
    def lookup(name, timeout=5):
        return published.get(name.decode().rstrip("."), "").encode()

    return lookup


def auth_results(stored: bytes, authserv_id: str = "mx.test") -> str:
    """Our one Authentication-Results header of a stored (LF) message, unfolded."""
    head = stored.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    ours = [h for h in head.replace("\n\t", " ").split("\n")
            if h.startswith(f"Authentication-Results: {authserv_id};")]
    assert len(ours) == 1, head
    return ours[0]

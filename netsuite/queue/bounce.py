"""
Delivery status notifications (RFC 3464 multipart/report), rendered as pure
functions; Twisted's C{mail/bounce.py} lacks the required per-recipient
fields (Action, Status) and the Reporting-MTA.
"""

from __future__ import annotations

import email.utils
import secrets
import time
from dataclasses import dataclass

from netsuite.queue.wire import ascii_text, header_block


@dataclass
class Failed:
    """One recipient in a report."""

    recipient: str
    action: str  # "failed" or "delayed"
    status: str  # RFC 3463, e.g. "5.1.1"
    diagnostic: str  # the remote reply or our own reason
    remote_mta: str | None = None
    last_attempt: float | None = None


def render_dsn(*, hostname: str, queue_id: str, sender: str, arrival: float,
               recipients: list[Failed], original: bytes, now: float | None = None,
               max_headers: int = 64 * 1024) -> bytes:
    """
    The notification for C{sender} about C{recipients} of a queued message,
    with the original message's headers attached (text/rfc822-headers).
    LF line endings, like every message in the spool.
    """
    now = time.time() if now is None else now
    delayed = all(r.action == "delayed" for r in recipients)
    boundary = f"{int(now)}/{secrets.token_hex(8)}/{hostname}"
    date = email.utils.formatdate(now, localtime=True)
    subject = ("Delayed Mail (still being retried)" if delayed
               else "Undelivered Mail Returned to Sender")
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: <{int(now)}.{secrets.token_hex(6)}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\n\tboundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"This is the mail system at host {hostname}.",
        "",
    ]
    if delayed:
        lines += ["Your message could not be delivered yet. It will be retried",
                  "until it is delivered or expires; you need not send it again.", ""]
    else:
        lines += ["I'm sorry to have to inform you that your message could not",
                  "be delivered to one or more recipients. It's attached below.", ""]
    for r in recipients:
        lines.append(f"<{ascii_text(r.recipient)}>: {ascii_text(r.diagnostic)}")
    lines += ["", f"--{boundary}",
              "Content-Description: Delivery report",
              "Content-Type: message/delivery-status",
              "",
              f"Reporting-MTA: dns; {hostname}",
              f"X-Netsuite-Queue-ID: {queue_id}",
              f"Arrival-Date: {email.utils.formatdate(arrival, localtime=True)}"]
    for r in recipients:
        lines += ["", f"Final-Recipient: rfc822; {ascii_text(r.recipient)}",
                  f"Action: {r.action}",
                  f"Status: {r.status}"]
        if r.remote_mta:
            lines.append(f"Remote-MTA: dns; {ascii_text(r.remote_mta)}")
        lines.append(f"Diagnostic-Code: smtp; {ascii_text(r.diagnostic)}")
        if r.last_attempt:
            lines.append("Last-Attempt-Date: "
                         + email.utils.formatdate(r.last_attempt, localtime=True))
        if r.action == "delayed":
            pass
    lines += ["", f"--{boundary}",
              "Content-Description: Undelivered Message Headers",
              "Content-Type: text/rfc822-headers", ""]
    text = "\n".join(lines).encode("ascii") + b"\n"
    headers = header_block(original)[:max_headers]
    if headers and not headers.endswith(b"\n"):
        headers += b"\n"
    return text + headers + f"\n--{boundary}--\n".encode("ascii")

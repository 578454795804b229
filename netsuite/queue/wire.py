"""
The outgoing side of SMTP as pure functions: no transport, no disk.

Queued messages are stored with LF line endings (as the SMTP server hands
them over); L{to_wire} turns one into the CRLF, dot-stuffed DATA payload, and
L{downgrade_8bit} rewrites an 8-bit message as quoted-printable for a server
that does not offer 8BITMIME (RFC 6152 3).
"""

from __future__ import annotations

import email
import email.policy
import quopri
import re
from dataclasses import dataclass

#: Enhanced status code at the start of a reply text (RFC 3463).
ENHANCED = re.compile(rb"^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")

_RECEIVED = re.compile(rb"^received:", re.I | re.M)
_HOSTPORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+))"
                       r"(?::(?P<port>\d{1,5}))?$")


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: C{code} (or -1 for 'no reply': a connection problem)."""

    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def status(self) -> str:
        """The RFC 3463 status for a DSN: the reply's own, else derived from the code."""
        m = ENHANCED.match(self.text.encode("utf-8", "replace"))
        if m:
            return b".".join(m.groups()).decode()
        if self.ok:
            return "2.0.0"
        return "5.0.0" if self.permanent else "4.0.0"

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.code > 0 else self.text


def parse_hostport(text: str, default_port: int = 25) -> tuple[str, int]:
    """C{"mx.example:2525"} / C{"[::1]:25"} / C{"host"} -> (host, port); ValueError if bad."""
    m = _HOSTPORT.match(text.strip())
    if not m:
        raise ValueError(f"expected host:port, got {text!r}")
    port = int(m.group("port")) if m.group("port") else default_port
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return m.group("v6") or m.group("host"), port


def parse_ehlo(resp: bytes) -> dict[bytes, bytes]:
    """The extensions in an EHLO reply (first line is the greeting): upper-cased keyword -> args."""
    items: dict[bytes, bytes] = {}
    for line in resp.split(b"\n")[1:]:
        word, _, args = line.strip().partition(b" ")
        if word:
            items[word.upper()] = args.strip()
    return items


def header_block(message: bytes) -> bytes:
    """The header section of an LF-terminated message (without the empty line)."""
    if message.startswith(b"\n"):
        return b""
    end = message.find(b"\n\n")
    return message if end < 0 else message[: end + 1]


def count_received(message: bytes) -> int:
    """How many C{Received:} trace headers a message carries (loop detection)."""
    return len(_RECEIVED.findall(header_block(message)))


def has_8bit(data: bytes) -> bool:
    return not data.isascii()


def to_wire(message: bytes) -> bytes:
    """LF message -> DATA payload: CRLF line ends, leading dots doubled, CRLF.CRLF end."""
    if message and not message.endswith(b"\n"):
        message += b"\n"
    lines = message.split(b"\n")[:-1] if message else []
    out = [b"." + line if line.startswith(b".") else line for line in lines]
    out = [line[:-1] if line.endswith(b"\r") else line for line in out]
    return b"\r\n".join(out + [b".", b""])


def downgrade_8bit(message: bytes) -> bytes:
    """
    Re-encode every leaf part whose body has 8-bit bytes as quoted-printable,
    keeping the headers (RFC 6152 3: a relay converts rather than send 8-bit
    data to a 7-bit server).  Input and output use LF line endings.
    """
    if not has_8bit(message):
        return message
    msg = email.message_from_bytes(message, policy=email.policy.compat32)
    for part in msg.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=False)
        raw = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
        if not payload or not _part_is_8bit(part, raw):
            continue
        body = part.get_payload(decode=True) or b""
        assert isinstance(body, bytes)  # decode=True on a non-multipart part
        encoded = quopri.encodestring(body.replace(b"\r\n", b"\n"))
        del part["Content-Transfer-Encoding"]
        part["Content-Transfer-Encoding"] = "quoted-printable"
        part.set_payload(encoded.decode("ascii"))
    from email.generator import BytesGenerator
    from io import BytesIO

    out = BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=email.policy.compat32.clone(linesep="\n")
                   ).flatten(msg)
    return out.getvalue()


def _part_is_8bit(part, raw: bytes) -> bool:
    cte = (part.get("Content-Transfer-Encoding") or "").strip().lower()
    if cte in ("base64", "quoted-printable"):
        return False
    return has_8bit(raw)


def mail_command(sender: bytes, size: int | None, body_8bit: bool, smtputf8: bool) -> bytes:
    """C{MAIL FROM:<a@b> SIZE=n BODY=8BITMIME SMTPUTF8}, parameters only where offered."""
    line = b"MAIL FROM:<" + sender + b">"
    if size is not None:
        line += b" SIZE=%d" % size
    if body_8bit:
        line += b" BODY=8BITMIME"
    if smtputf8:
        line += b" SMTPUTF8"
    return line


def rcpt_command(recipient: bytes) -> bytes:
    return b"RCPT TO:<" + recipient + b">"


def backoff(attempts: int, minimum: float, maximum: float) -> float:
    """Seconds until the next try after C{attempts} tries: doubling, within [min, max]."""
    if attempts <= 1:
        return minimum
    return min(maximum, minimum * (2 ** min(attempts - 1, 30)))


def ascii_text(text: str, limit: int = 900) -> str:
    """A reply or error made safe for a header or DSN field: printable ASCII, one line."""
    text = " ".join(text.split())
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text[:limit]

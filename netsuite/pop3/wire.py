"""
POP3 wire format as pure functions: command parsing, response codes,
dot-stuffing, TOP, SASL PLAIN.  No transport, no disk.
"""

from __future__ import annotations

from netsuite.store.folder import to_wire

#: RFC 2449 4: a command line is at most 255 octets; SASL responses may be longer.
MAX_COMMAND = 255


class CommandError(ValueError):
    """A malformed command line; the text is the -ERR reason."""


def parse_command(line: bytes) -> tuple[str, list[bytes]]:
    """C{b"RETR 1"} -> C{("RETR", [b"1"])}; raises L{CommandError}."""
    if b"\x00" in line:
        raise CommandError("NUL byte in command")
    parts = line.split(b" ")
    word = parts[0]
    if not word or len(word) > 8 or not word.isalpha():
        raise CommandError("Unknown command")
    return word.decode("ascii").upper(), parts[1:]


def ok(text: str | bytes = b"") -> bytes:
    if isinstance(text, str):
        text = text.encode("utf-8")
    return b"+OK " + text + b"\r\n" if text else b"+OK\r\n"


def err(text: str | bytes, code: str | None = None) -> bytes:
    if isinstance(text, str):
        text = text.encode("utf-8")
    prefix = f"[{code}] ".encode("ascii") if code else b""
    return b"-ERR " + prefix + text + b"\r\n"


def message_number(arg: bytes) -> int:
    """A 1-based message number, or L{CommandError}."""
    if not arg.isdigit() or len(arg) > 9:
        raise CommandError("Invalid message number")
    n = int(arg)
    if n < 1:
        raise CommandError("Invalid message number")
    return n


def dot_stuff(wire: bytes) -> bytes:
    """
    A message in wire form (CRLF) as a multi-line POP3 response body: lines
    starting with '.' get another '.', the body ends with CRLF, then '.CRLF'.
    """
    body = wire.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


class Stuffer:
    """
    L{dot_stuff} of the wire form, chunk by chunk, for streaming a stored
    message (LF or CRLF line ends) of any size: the result of all L{feed}s
    and L{finish} equals C{dot_stuff(to_wire(whole))}.  A CR at the end of a
    chunk is held back, so a CRLF is never split between two chunks.
    """

    def __init__(self) -> None:
        self._line_start = True
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        data = self._carry + data
        self._carry = b""
        if data.endswith(b"\r"):
            data, self._carry = data[:-1], b"\r"
        out = to_wire(data)
        if not out:
            return b""
        if self._line_start and out.startswith(b"."):
            out = b"." + out
        out = out.replace(b"\r\n.", b"\r\n..")
        self._line_start = out.endswith(b"\r\n")
        return out

    def finish(self) -> bytes:
        """The held-back CR if any, a final CRLF if needed, and the terminating dot."""
        out, self._carry = self._carry, b""
        if out:
            self._line_start = False
        return out + (b"" if self._line_start else b"\r\n") + b".\r\n"


def top(wire: bytes, lines: int) -> bytes:
    """The header, the blank line, and the first C{lines} lines of the body."""
    if wire.startswith(b"\r\n"):  # no header at all: the blank line comes first
        head, sep, body = b"", b"\r\n", wire[2:]
    else:
        head, sep, body = wire.partition(b"\r\n\r\n")
    if not sep:
        return wire
    if lines == 0:
        return head + sep
    kept = body.split(b"\r\n")
    if len(kept) > lines:
        kept = kept[:lines]
        return head + sep + b"\r\n".join(kept) + b"\r\n"
    return head + sep + body


def uidl_for(base: str) -> str:
    """A unique-id (RFC 1939: 1-70 chars 0x21-0x7E) from a Maildir base name."""
    if 0 < len(base) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in base):
        return base
    import hashlib

    return hashlib.sha1(base.encode("utf-8", "surrogateescape")).hexdigest()

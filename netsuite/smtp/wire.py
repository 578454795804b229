"""
SMTP on the wire, as pure functions and small state machines: no transport,
no disk, so each piece can be tested and fuzzed alone.

- L{parse_path} / L{parse_params}: C{MAIL FROM:<a@b> SIZE=1 BODY=8BITMIME}.
- L{reply}: replies with RFC 3463 enhanced status codes.
- L{DataReader}: the DATA phase: dot-unstuffing, only C{CRLF.CRLF} ends it
  (a bare-LF dot line never does: the SMTP smuggling class of CVE-2023-51764),
  size counted without buffering the excess.
- L{ChunkReader}: the BDAT phase (RFC 3030): exact byte counts, no stuffing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

CRLF = b"\r\n"

# RFC 5321 4.1.2 (with RFC 6531 UTF-8 allowed where the caller says so).
_ATEXT = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_UTF8 = rb"[\x80-\xff]"
_DOT_ATOM = rb"(?:%s|%s)+(?:\.(?:%s|%s)+)*" % (_ATEXT, _UTF8, _ATEXT, _UTF8)
_QUOTED = rb'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\x20-\x7e])*"'
_LABEL = rb"(?:[A-Za-z0-9\x80-\xff](?:[A-Za-z0-9\x80-\xff-]{0,61}[A-Za-z0-9\x80-\xff])?)"
_DOMAIN = rb"%s(?:\.%s)*" % (_LABEL, _LABEL)
_LITERAL = rb"\[[\x21-\x5a\x5e-\x7e]{1,253}\]"
_MAILBOX = re.compile(rb"^(%s|%s)@(%s|%s)$" % (_DOT_ATOM, _QUOTED, _DOMAIN, _LITERAL))
_ROUTE = re.compile(rb"^@[^:,]+(?:,@[^:,]+)*:")
_KEYWORD = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9-]*$")
_VALUE = re.compile(rb"^[\x21-\x3c\x3e-\x7e\x80-\xff]+$")

#: A reply text that already starts with an enhanced status code.
ENHANCED = re.compile(rb"^[245]\.\d{1,3}\.\d{1,3}( |$)")

MAX_LOCALPART = 64
MAX_DOMAIN = 255
MAX_PATH = 256


class WireError(ValueError):
    """A syntax error; C{code} and C{enhanced} say how to answer it."""

    def __init__(self, code: int, enhanced: str, text: str):
        super().__init__(text)
        self.code = code
        self.enhanced = enhanced
        self.text = text


@dataclass(frozen=True)
class Path:
    """A reverse- or forward-path; C{null} for C{<>}."""

    local: bytes = b""
    domain: bytes = b""

    @property
    def null(self) -> bool:
        return not self.local and not self.domain

    def __bytes__(self) -> bytes:
        return b"" if self.null else self.local + b"@" + self.domain

    def __str__(self) -> str:
        return bytes(self).decode("utf-8", "replace")

    @property
    def ascii(self) -> bool:
        return bytes(self).isascii()


def split_command(line: bytes) -> tuple[bytes, bytes]:
    """C{b"MAIL FROM:<a@b>"} -> C{(b"MAIL", b"FROM:<a@b>")}; the verb upper-cased."""
    verb, _, rest = line.strip(b" \t").partition(b" ")
    return verb.upper(), rest.strip(b" \t")


def parse_path(text: bytes, prefix: bytes, allow_null: bool = False,
               allow_bare_postmaster: bool = False) -> tuple[Path, bytes]:
    """
    Parse C{FROM:<path> params} (or C{TO:...}): return the path and the rest.
    Raises L{WireError} with a 501/553 answer.
    """
    if text[: len(prefix)].upper() != prefix:
        raise WireError(501, "5.5.4", f"Syntax: {prefix.decode()}<address>")
    text = text[len(prefix):].lstrip(b" ")
    if not text.startswith(b"<"):
        raise WireError(501, "5.5.4", "Syntax: address must be in angle brackets")
    end = _closing_bracket(text)
    if end < 0:
        raise WireError(501, "5.5.4", "Syntax: unbalanced angle brackets")
    inner, rest = text[1:end], text[end + 1:]
    if rest and not rest.startswith(b" "):
        raise WireError(501, "5.5.4", "Syntax: space expected after the address")
    inner = _ROUTE.sub(b"", inner)  # RFC 5321 4.1.2: source routes are ignored
    if not inner:
        if allow_null:
            return Path(), rest.strip()
        raise WireError(501, "5.1.3", "Null address not allowed here")
    if allow_bare_postmaster and inner.lower() == b"postmaster":
        return Path(b"postmaster", b""), rest.strip()
    if len(inner) > MAX_PATH:
        raise WireError(501, "5.1.3", "Address too long")
    m = _MAILBOX.match(inner)
    if not m:
        raise WireError(501, "5.1.3", "Bad address syntax")
    local, domain = m.group(1), m.group(2)
    if len(local) > MAX_LOCALPART or len(domain) > MAX_DOMAIN:
        raise WireError(501, "5.1.3", "Address too long")
    if local.startswith(b'"'):
        local = _unquote(local)
    return Path(local, domain), rest.strip()


def _closing_bracket(text: bytes) -> int:
    """Index of the C{>} closing C{<...>}, honouring quoted strings."""
    quoted = escaped = False
    for i in range(1, len(text)):
        c = text[i : i + 1]
        if escaped:
            escaped = False
        elif c == b"\\" and quoted:
            escaped = True
        elif c == b'"':
            quoted = not quoted
        elif c == b">" and not quoted:
            return i
    return -1


def _unquote(local: bytes) -> bytes:
    """Remove quoting where it is not needed, so C{"alice"} is C{alice}."""
    inner = re.sub(rb"\\(.)", rb"\1", local[1:-1])
    if re.fullmatch(_DOT_ATOM, inner):
        return inner
    return local


def parse_params(text: bytes) -> dict[str, bytes | None]:
    """C{SIZE=10 BODY=8BITMIME SMTPUTF8} -> C{{"SIZE": b"10", ...}} (RFC 5321 4.1.2)."""
    params: dict[str, bytes | None] = {}
    for word in text.split():
        key, eq, value = word.partition(b"=")
        if not _KEYWORD.match(key) or (eq and not _VALUE.match(value)):
            raise WireError(501, "5.5.4", "Bad parameter syntax")
        name = key.upper().decode("ascii")
        if name in params:
            raise WireError(501, "5.5.4", f"Duplicate parameter {name}")
        params[name] = value if eq else None
    return params


def parse_bdat(text: bytes) -> tuple[int, bool]:
    """C{BDAT 1000 LAST} -> C{(1000, True)}."""
    parts = text.split()
    if not parts or len(parts) > 2 or not parts[0].isdigit() or len(parts[0]) > 12:
        raise WireError(501, "5.5.4", "Syntax: BDAT <size> [LAST]")
    if len(parts) == 2 and parts[1].upper() != b"LAST":
        raise WireError(501, "5.5.4", "Syntax: BDAT <size> [LAST]")
    return int(parts[0]), len(parts) == 2


def reply(code: int, enhanced: str | None, text: str | bytes) -> bytes:
    """
    Render a reply, multi-line if C{text} has newlines; the enhanced code
    (RFC 2034) prefixes every line when given.
    """
    if isinstance(text, str):
        text = text.encode("utf-8")
    lines = text.split(b"\n") or [b""]
    prefix = (enhanced.encode("ascii") + b" ") if enhanced else b""
    out = []
    for i, line in enumerate(lines):
        sep = b" " if i == len(lines) - 1 else b"-"
        out.append(b"%d%s%s%s\r\n" % (code, sep, prefix, line))
    return b"".join(out)


@dataclass
class DataReader:
    """
    The DATA phase.  L{feed} takes raw bytes and returns the complete,
    dot-unstuffed lines (without line endings) and whether the final C{.}
    was seen; bytes after it are left in L{rest} for the command parser.

    Only C{CRLF . CRLF} ends the message.  A bare LF inside a line is kept in
    the line; lines whose total passes C{limit} are not returned but counted,
    so an oversized message is read to its end without being buffered.
    """

    limit: int
    size: int = 0
    too_big: bool = False
    done: bool = False
    rest: bytes = b""
    _buf: bytearray = field(default_factory=bytearray)
    _midline: bool = False

    def feed(self, data: bytes) -> list[bytes]:
        if self._buf:
            if not _ends_line(self._buf, data):
                # Still inside one line: grow it in place, never re-copy what is held.
                return self._grow(data)
            buf = bytes(self._buf) + data
            self._buf = bytearray()
        else:
            buf = data
        lines: list[bytes] = []
        start = 0
        while True:
            end = buf.find(CRLF, start)
            if end < 0:
                break
            line = buf[start:end]
            start = end + 2
            if self._midline:
                # The end of a line whose start was dropped (too big): never a dot line.
                self._midline = False
                self.size += len(line) + 2
                continue
            if line[:1] == b".":
                if line == b".":
                    self.done = True
                    self.rest = buf[start:]
                    self._buf = bytearray()
                    return lines
                line = line[1:]
            self.size += len(line) + 2
            if self.size > self.limit:
                self.too_big = True
            if not self.too_big:
                lines.append(line)
        self._buf = bytearray()
        self._grow(memoryview(buf)[start:])
        return lines

    def _grow(self, data) -> list[bytes]:
        if not data:
            return []
        whole = len(self._buf) + len(data)
        if not self._midline and whole <= 2 and bytes(self._buf) + bytes(data) in (b".", b".\r"):
            self._buf += data  # perhaps the final dot: it adds nothing, judge it later
            return []
        partial = whole
        if not self._midline and (self._buf[:1] if self._buf else data[:1]) == b".":
            partial -= 1  # a stuffed dot: not part of the message
        if self.size + partial > self.limit:
            # A partial line past the limit: keep only a possible CR, and
            # remember that what is kept does not start a line.
            self.too_big = True
            keep = b"\r" if data[-1:] == b"\r" else b""
            self.size += partial - len(keep)
            self._buf = bytearray(keep)
            self._midline = True
        else:
            self._buf += data
        return []


@dataclass
class ChunkReader:
    """
    The BDAT phase: turns the exact bytes of successive chunks into lines
    (split on CRLF, as L{DataReader} gives them), with no dot-stuffing.
    """

    limit: int
    size: int = 0
    too_big: bool = False
    _carry: bytearray = field(default_factory=bytearray)
    _lines: list[bytes] = field(default_factory=list)

    def feed(self, data: bytes) -> list[bytes]:
        self.size += len(data)
        if self.size > self.limit:
            self.too_big = True
        if self.too_big:
            self._carry = bytearray()
            return []
        if not _ends_line(self._carry, data):
            self._carry += data  # inside one line: no re-copy of what is held
            return []
        parts = (bytes(self._carry) + data if self._carry else data).split(CRLF)
        self._carry = bytearray(parts.pop())
        return parts

    def finish(self) -> list[bytes]:
        """The last, unterminated line, if any."""
        carry, self._carry = bytes(self._carry), bytearray()
        return [carry] if carry and not self.too_big else []


def _ends_line(held: bytes | bytearray, data: bytes) -> bool:
    """Does C{held + data} contain a CRLF that C{held} alone does not?"""
    return CRLF in data or (held[-1:] == b"\r" and data[:1] == b"\n")

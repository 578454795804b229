"""
One framer for every line-based protocol (SMTP, POP3, IMAP, FTP).

Pure: no transport, no reactor, no disk.  Time comes in as an argument, so
the deadlines are tested with plain numbers.  Sessions feed the bytes they
receive and pull whole units back out:

- L{LineFramer}: lines (LF ends a line, one CR before it is dropped), a line
  length cap (an overlong line is skipped to its end without being buffered
  and reported once as L{Overlong}), raw byte counts for bodies (SMTP DATA and
  BDAT, IMAP literals), L{LineFramer.discard} for the STARTTLS rule (what was
  pipelined in plain text is never run), and a whole-line deadline: the first
  byte of a line starts a clock that only the line's end stops, so a client
  trickling one byte at a time cannot hold a session open (the idle timer
  resets on every byte; this one does not).
- L{IMAPFramer}: whole IMAP commands with their literals (synchronising
  C{{n}} with a continuation request, LITERAL+ C{{n+}}), limits checked before
  a byte of a literal is read, big literals handed to a sink (a temporary file)
  as they arrive.

The buffer is a read offset into the chunk as it came (no copy), which turns
into a C{bytearray} only when a partial line must grow: every byte is copied
at most once on the way in and once on the way out, so a 50 MiB stream costs
linear time (the old C{bytes +=} buffers were quadratic).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

_LITERAL_AT_END = re.compile(rb"\{(\d{1,20})(\+?)\}\r?$")

#: Bytes of an overlong line kept for the reply (an IMAP tag, say).
HEAD = 64


@dataclass(frozen=True)
class Overlong:
    """A line longer than the cap was skipped; C{head} is its first bytes."""

    head: bytes


class LineFramer:
    """
    Lines and raw bytes out of a byte stream; see the module docstring.

    C{max_line} is the longest line accepted, its line end (CRLF or LF)
    excluded.  C{timeout} is the whole-line deadline in seconds (C{None}: none).
    """

    def __init__(self, max_line: int, timeout: float | None = None):
        self.max_line = max_line
        self.timeout = timeout
        #: The head of an overlong line: the same bytes however the line was split.
        self._head = min(HEAD, max_line + 1)
        #: The received bytes from C{_pos} on: a chunk as it came (C{bytes}, no
        #: copy) until a partial line must grow, then a C{bytearray}.
        self._buf: bytes | bytearray = b""
        self._pos = 0
        #: Where the search for LF resumes (no LF in C{_buf[_pos:_scan]}).
        self._scan = 0
        #: Head of the overlong line being skipped, or None.
        self._overlong: bytes | None = None
        #: When the unit now being read began (None: nothing pending).
        self._since: float | None = None
        self._last = 0.0
        #: Extra seconds the current unit may take (a long literal).
        self._allowance = 0.0
        self._hold = False

    # -- input ---------------------------------------------------------------------

    def feed(self, data: bytes, now: float = 0.0) -> None:
        """Bytes received at time C{now}."""
        self._last = now
        if not data:
            return
        if self._since is None:
            self._since = now
        buf = self._buf
        if self._pos >= len(buf):
            self._buf = bytes(data)
            self._pos = self._scan = 0
            return
        if type(buf) is bytes:
            # A partial line grows: from now on in place, amortised linear.
            self._buf = buf = bytearray(memoryview(buf)[self._pos:])
            self._scan -= self._pos
            self._pos = 0
        buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken out."""
        return len(self._buf) - self._pos

    def discard(self) -> None:
        """Drop everything buffered: the STARTTLS rule (RFC 3207 4.2, RFC 2595 4)."""
        self._buf = b""
        self._pos = self._scan = 0
        self._overlong = None
        self._since = None
        self._allowance = 0.0
        self._hold = False

    # -- output --------------------------------------------------------------------

    def line(self) -> bytes | Overlong | None:
        """The next line (without its line end), an L{Overlong}, or None for 'need more'."""
        buf = self._buf
        start = self._pos
        nl = buf.find(b"\n", self._scan)
        if nl < 0:
            if self._overlong is None and len(buf) - start > self.max_line + 1:
                self._overlong = bytes(buf[start:start + self._head])
            if self._overlong is not None:
                # Skipping: nothing of an overlong line is kept.
                self._buf = b""
                self._pos = self._scan = 0
            else:
                self._scan = len(buf)
            return None
        self._pos = self._scan = nl + 1
        end = nl - 1 if nl > start and buf[nl - 1] == 0x0D else nl
        if self._overlong is not None or end - start > self.max_line:
            head = self._overlong or bytes(buf[start:start + self._head])
            self._overlong = None
            self._taken()
            return Overlong(head)
        line = buf[start:end]
        # _taken(), inlined: this is the per-command path.
        if nl + 1 >= len(buf):
            self._buf = b""
            self._pos = self._scan = 0
            if not self._hold:
                self._since = None
        else:
            self._taken()
        return line if type(line) is bytes else bytes(line)

    def take(self, limit: int | None = None) -> bytes:
        """Up to C{limit} raw bytes (all buffered when None); C{b""} when none."""
        buf = self._buf
        avail = len(buf) - self._pos
        n = avail if limit is None or limit > avail else limit
        if n <= 0:
            return b""
        if self._pos == 0 and n == len(buf):
            data = buf if type(buf) is bytes else bytes(buf)  # a whole chunk: no copy
        else:
            data = bytes(memoryview(buf)[self._pos:self._pos + n])
        self._pos += n
        self._scan = max(self._scan, self._pos)
        self._taken()
        return data

    def unread(self, data: bytes) -> None:
        """Put bytes a body reader did not use back in front (once per body)."""
        if data:
            rest = memoryview(self._buf)[self._pos:]
            self._buf = bytes(data) + rest.tobytes() if len(rest) else bytes(data)
            self._pos = self._scan = 0
            if self._since is None:
                self._since = self._last

    def _taken(self) -> None:
        if self._pos >= len(self._buf):
            self._buf = b""
            self._pos = self._scan = 0
            if not self._hold:
                self._since = None
            return
        if (self._pos > 65536 and self._pos * 2 > len(self._buf)
                and isinstance(self._buf, bytearray)):
            del self._buf[:self._pos]
            self._scan -= self._pos
            self._pos = 0
        if not self._hold:
            # What is left arrived by the last feed at the latest.
            self._since = self._last

    # -- the deadline ----------------------------------------------------------------

    def hold(self, allowance: float = 0.0) -> None:
        """One unit spans several takes (a literal): its clock starts now-ish, with extra time."""
        self._hold = True
        self._allowance = allowance
        self._since = self._last if self.buffered else None

    def release(self) -> None:
        """The held unit is complete."""
        self._hold = False
        self._allowance = 0.0
        self._since = self._last if self.buffered else None

    def restart(self, now: float) -> None:
        """The session did not read for a while (it waited on itself): the client is not late."""
        if self._since is not None:
            self._since = max(self._since, now)

    def deadline(self) -> float | None:
        """When the unit now pending must be complete, or None."""
        if self.timeout is None or (self._since is None and self._overlong is None):
            return None
        since = self._since if self._since is not None else self._last
        return since + self.timeout + self._allowance

    def expired(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline


# -- IMAP -----------------------------------------------------------------------------


class Sink(Protocol):
    """Where a big literal goes as it arrives (a temporary file)."""

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


class DiscardSink:
    """A literal counted away, never kept (an APPEND that cannot succeed)."""

    error = None

    def __init__(self, why: bytes = b""):
        self.why = why
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass


@dataclass
class Command:
    """A whole IMAP command: text with each literal replaced by one NUL, and the literals."""

    text: bytes
    literals: list[Any]


@dataclass
class Continue:
    """A synchronising literal was accepted: the session sends C{+}."""


@dataclass
class Refused:
    """Answer C{tag status text}; C{close}: then hang up (the client will send anyway)."""

    tag: bytes
    status: bytes
    text: bytes
    close: bool = False


@dataclass
class _Pending:
    parts: list[bytes] = field(default_factory=list)
    literals: list[Any] = field(default_factory=list)
    size: int = 0
    reject: bytes | None = None


def _tag_of(text: bytes) -> bytes:
    return text.split(b" ", 1)[0]


class IMAPFramer:
    """
    Whole IMAP commands; see the module docstring.

    C{max_literal} limits the literals of one command, C{max_append} those of
    APPEND.  C{sink}, when set, is called as C{sink(text, literals, size)} for
    an accepted literal of at least C{stream_above} bytes; a non-None return
    receives the literal's bytes and stands for it in L{Command.literals}.
    """

    #: Seconds a literal gets on top of the deadline, per byte (at least 16 KiB/s).
    SECONDS_PER_BYTE = 1 / 16384

    def __init__(self, max_line: int, max_literal: int, max_append: int,
                 timeout: float | None = None, stream_above: int = 65536,
                 sink: Callable[[bytes, list, int], Sink | None] | None = None):
        self.lines = LineFramer(max_line, timeout)
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_append = max_append
        self.stream_above = stream_above
        self.sink = sink
        self._cmd = _Pending()
        self._need = 0
        self._skip = 0
        self._chunks: list[bytes] = []
        self._sink: Sink | None = None
        self._in_literal = False

    def feed(self, data: bytes, now: float = 0.0) -> None:
        self.lines.feed(data, now)

    @property
    def in_command(self) -> bool:
        """Part of a command (a line with a literal) has been read."""
        return bool(self._cmd.parts) or self._in_literal or self._skip > 0

    def discard(self) -> None:
        """STARTTLS: drop what is buffered and any command half read."""
        self.lines.discard()
        self._abort_command()

    def reset(self) -> None:
        """The connection is gone: give back what a half-read command holds."""
        self._abort_command()

    def _abort_command(self) -> None:
        for lit in self._cmd.literals:
            if not isinstance(lit, bytes):
                lit.abort()
        if self._sink is not None:
            self._sink.abort()
        self._cmd = _Pending()
        self._sink = None
        self._chunks = []
        self._need = self._skip = 0
        self._in_literal = False

    def next(self) -> Command | Continue | Refused | None:
        """The next event, or None when more input is needed."""
        while True:
            if self._skip:
                self._skip -= len(self.lines.take(self._skip))
                if self._skip:
                    return None
                self.lines.release()
                continue
            if self._in_literal:
                if not self._read_literal():
                    return None
                continue
            line = self.lines.line()
            if line is None:
                return None
            event = self._line(line)
            if event is not None:
                return event

    def _read_literal(self) -> bool:
        data = self.lines.take(self._need)
        if data:
            self._need -= len(data)
            if self._sink is not None:
                self._sink.write(data)
            else:
                self._chunks.append(data)
        if self._need:
            return False
        if self._sink is not None:
            self._sink.finish()
            self._cmd.literals.append(self._sink)
            self._sink = None
        else:
            self._cmd.literals.append(b"".join(self._chunks))
            self._chunks = []
        self._in_literal = False
        self.lines.release()
        return True

    def _refuse(self, line: bytes, status: bytes, text: bytes, close: bool = False) -> Refused:
        tag = _tag_of(self._cmd.parts[0] if self._cmd.parts else line)
        self._abort_command()
        return Refused(tag, status, text, close)

    def _line(self, line: bytes | Overlong):
        cmd = self._cmd
        if isinstance(line, Overlong):
            return self._refuse(line.head, b"BAD", b"Command line too long")
        if b"\x00" in line:
            return self._refuse(line, b"BAD", b"NUL byte in command")
        m = _LITERAL_AT_END.search(line) if line.endswith(b"}") else None
        if m is None:
            cmd.parts.append(line)
            if cmd.reject is not None:
                return self._refuse(line, b"BAD", cmd.reject)
            self._cmd = _Pending()
            return Command(b"\x00".join(cmd.parts), cmd.literals)
        size, nonsync = int(m.group(1)), bool(m.group(2))
        cmd.parts.append(line[:m.start()])
        if len(cmd.parts) > 1000 or sum(map(len, cmd.parts)) > 4 * self.max_line:
            # Many small literals must not grow one command without bound.
            cmd.reject = cmd.reject or b"Command too long"
        first = cmd.parts[0].split(b" ", 3)
        verb = first[1].upper() if len(first) > 1 else b""
        limit = self.max_append if verb == b"APPEND" else self.max_literal
        if verb == b"APPEND":
            # The limit is per message (RFC 7889 APPENDLIMIT), several in one
            # MULTIAPPEND (RFC 3502); what is held in memory stays within it.
            if size < self.stream_above or self.sink is None:
                cmd.size += size
            over = size > limit or cmd.size > limit
        else:
            cmd.size += size
            over = cmd.size > limit
        if over:
            # Refused before a byte of it is read; a LITERAL+ client sends it
            # anyway, so the connection ends there (RFC 7888 4).
            return self._refuse(line, b"NO", b"[TOOBIG] Literal too large (limit %d octets)"
                                % limit, close=nonsync)
        if cmd.reject is not None:
            if not nonsync:
                return self._refuse(line, b"NO", cmd.reject)
            # The client sends it anyway: count it away, never store it.
            cmd.literals.append(b"")
            if size:
                self._skip = size
                self.lines.hold(size * self.SECONDS_PER_BYTE)
            return None
        sink = None
        if size and size >= self.stream_above and self.sink is not None:
            sink = self.sink(b"\x00".join(cmd.parts), list(cmd.literals), size)
        if size == 0:
            cmd.literals.append(b"")
        else:
            self._in_literal = True
            self._need = size
            self._sink = sink
            self.lines.hold(size * self.SECONDS_PER_BYTE)
        return None if nonsync else Continue()

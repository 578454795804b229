"""
Seeded hostile input for the real daemon: a line generator shared by every protocol's
fuzz test, and a bounded runner that pipelines sessions of it over raw sockets.

The seed is fixed so that a failure reproduces; C{NETSUITE_FUZZ_SEED} overrides it
for exploration.  Each protocol draws from its own stream (seed and protocol name),
so adding a case to one protocol does not change what another one receives.
"""

from __future__ import annotations

import os
import random
import re
import select
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

SEED = int(os.environ.get("NETSUITE_FUZZ_SEED", "20261122"))
#: Lines each protocol's fuzz sends at least.
LINES = 2000

#: Pieces that break parsers of every protocol.
COMMON = [b" ", b"  ", b"\t", b"\x00", b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", "ü".encode(),
          b"\r", b"\n", b"\r\r\n", b"-1", b"0", b"4294967296", b"9" * 40, b"1e9", b"0x10",
          b"A" * 300, b"A" * 3000, b'"', b'"unterminated', b"\\", b"(", b")", b"[", b"]",
          b"{", b"}", b"%", b"*", b"..", b"../x", b"a/../../b", b"/", b"~", b"%s%n", b"=",
          b"=?utf-8?b?AAAA?="]

#: Log lines that mean the daemon crashed somewhere.
CRASH = re.compile(r"Traceback|Unhandled [Ee]rror|\bCRITICAL\b")


def rng_for(protocol: str, seed: int | None = None) -> random.Random:
    return random.Random(f"{SEED if seed is None else seed}-{protocol}")


def line(rng: random.Random, verbs: Sequence[bytes], pieces: Sequence[bytes],
         end: bytes = b"\r\n", most: int = 6) -> bytes:
    """A verb and up to C{most} arguments: known pieces, common poison, random bytes."""
    parts = [rng.choice(verbs)]
    for _ in range(rng.randrange(0, most + 1)):
        roll = rng.random()
        if roll < 0.55:
            piece = rng.choice(pieces)
        elif roll < 0.85:
            piece = rng.choice(COMMON)
        else:
            piece = rng.randbytes(rng.randrange(1, 40))
        parts.append((b" " if rng.random() < 0.8 else b"") + piece)
    text = b"".join(parts)
    # Never more than two levels of "..": a jail bug must not reach beyond the test's tmp dir.
    while text.count(b"..") > 2:
        text = text.replace(b"..", b".", 1)
    return text + (end if rng.random() < 0.95 else b"")


@dataclass
class Session:
    """One connection's worth of input: C{opening} (e.g. a valid login), then C{lines}."""

    lines: list[bytes]
    opening: list[bytes] = field(default_factory=list)
    closing: bytes = b""   # sent last, e.g. QUIT; empty: the client just drops the line
    welcome: bytes = b""  # what the server says once the opening's login has succeeded

    def data(self) -> bytes:
        return b"".join(self.opening) + b"".join(self.lines) + self.closing


@dataclass
class Run:
    sent: int = 0          # lines generated and handed to the socket
    sessions: int = 0
    welcomed: int = 0      # sessions whose opening login was answered with their welcome
    crashes: list[str] = field(default_factory=list)


def drain(sock: socket.socket, quiet: float, limit: float, until: bytes | None = None) -> bytes:
    """
    Read until the server closes, or says nothing for C{quiet} s, or C{until} has
    arrived (at most C{limit} s).
    """
    got = bytearray()
    end = time.monotonic() + limit
    while time.monotonic() < end and not (until is not None and until in got):
        ready, _, _ = select.select([sock], [], [], quiet)
        if not ready:
            break
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    return bytes(got)


def blast(port: int, sessions: Iterable[Session], log: Callable[[], str], *,
          lines: int = LINES, budget: float = 90.0, chunk: int = 8,
          connect: Callable[[int], socket.socket] | None = None) -> Run:
    """
    Run sessions one after another until C{lines} lines have gone to open connections
    (a server may hang up early), everything pipelined C{chunk} lines at a time,
    reading whatever the server has answered in between.  A session with a C{closing}
    line waits (boundedly) for the server to hang up; one without drops the connection
    at once, work in flight or not.  After each session the daemon's log is checked, so
    that a crash names the input that caused it.  C{budget} seconds is a safety bound
    for a badly stuck daemon (a normal run takes a fraction of it); the caller checks
    that every line was sent.
    """
    run = Run()
    deadline = time.monotonic() + budget
    seen = 0
    for number, session in enumerate(sessions):
        if run.sent >= lines or time.monotonic() > deadline:
            break
        run.sessions += 1
        try:
            sock = (connect or _connect)(port)
        except OSError:
            continue
        with sock:
            try:
                drain(sock, 2.0, 2.0, until=b"\n")   # the greeting
                if session.opening:
                    sock.sendall(b"".join(session.opening))
                    # The login completes before the garbage: what follows runs logged in.
                    if session.welcome:
                        got = drain(sock, 10.0, 10.0, until=session.welcome)
                        run.welcomed += session.welcome in got
                for i in range(0, len(session.lines), chunk):
                    batch = session.lines[i:i + chunk]
                    sock.sendall(b"".join(batch))
                    run.sent += len(batch)
                    drain(sock, 0, 1.0)
                if session.closing:
                    sock.sendall(session.closing)
                    drain(sock, 0.5, 2.0)
            except OSError:
                pass  # the server hung up on us: that is allowed
        text = log()
        crashes = CRASH.findall(text)
        if len(crashes) > seen:
            seen = len(crashes)
            run.crashes.append(f"session {number}: {session.data()[:2000]!r}\n"
                               f"{tail_from_crash(text)}")
    return run


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def tail_from_crash(text: str, size: int = 3000) -> str:
    """The log from its last crash marker on."""
    found = list(CRASH.finditer(text))
    if not found:
        return ""
    start = text.rfind("\n", 0, found[-1].start()) + 1
    return text[start:start + size]


def report(protocol: str, run: Run) -> str:
    return (f"{protocol} fuzz (seed {SEED}, NETSUITE_FUZZ_SEED to change): "
            f"{run.sent} lines in {run.sessions} sessions ({run.welcomed} logged in)\n"
            + "\n\n".join(run.crashes))

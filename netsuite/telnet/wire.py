"""
The TELNET wire: option codes, an incremental decoder for the client's byte
stream, the NVT output encoder and the subnegotiation payloads (NAWS, TTYPE,
NEW-ENVIRON).

Everything here is pure: bytes in, values or bytes out, no transport.  The
decoder replaces C{twisted.conch.telnet.Telnet.dataReceived}, which raises
C{ValueError("Stumped")} on IAC EOF/SUSP/ABORT (and any other unknown command
byte), walks the input one byte at a time, and applies the CR NUL rule even
in BINARY mode.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# -- commands (RFC 854, 885, 1184) ---------------------------------------------

IAC = 255
DONT = 254
DO = 253
WONT = 252
WILL = 251
SB = 250
GA = 249
EL = 248
EC = 247
AYT = 246
AO = 245
IP = 244
BRK = 243
DM = 242
NOP = 241
SE = 240
EOR = 239
ABORT = 238
SUSP = 237
EOF = 236

NEGOTIATION = (WILL, WONT, DO, DONT)

# -- options ---------------------------------------------------------------------

BINARY = 0  # RFC 856
ECHO = 1  # RFC 857
SGA = 3  # RFC 858
TIMING_MARK = 6  # RFC 860
TTYPE = 24  # RFC 1091
NAWS = 31  # RFC 1073
LINEMODE = 34  # RFC 1184
ENVIRON = 36  # RFC 1408 (the old one; refused)
NEW_ENVIRON = 39  # RFC 1572

COMMAND_NAMES = {
    DONT: "DONT", DO: "DO", WONT: "WONT", WILL: "WILL", SB: "SB", GA: "GA", EL: "EL",
    EC: "EC", AYT: "AYT", AO: "AO", IP: "IP", BRK: "BRK", DM: "DM", NOP: "NOP", SE: "SE",
    EOR: "EOR", ABORT: "ABORT", SUSP: "SUSP", EOF: "EOF",
}
OPTION_NAMES = {
    BINARY: "BINARY", ECHO: "ECHO", SGA: "SGA", TIMING_MARK: "TIMING-MARK",
    TTYPE: "TTYPE", NAWS: "NAWS", LINEMODE: "LINEMODE", ENVIRON: "ENVIRON",
    NEW_ENVIRON: "NEW-ENVIRON",
}

# TTYPE subnegotiation (RFC 1091)
TTYPE_IS = 0
TTYPE_SEND = 1

# NEW-ENVIRON subnegotiation (RFC 1572)
ENV_IS = 0
ENV_SEND = 1
ENV_INFO = 2
ENV_VAR = 0
ENV_VALUE = 1
ENV_ESC = 2
ENV_USERVAR = 3


def option_name(option: int) -> str:
    return OPTION_NAMES.get(option, str(option))


def command(cmd: int, option: int | None = None) -> bytes:
    """C{IAC cmd [option]}."""
    return bytes((IAC, cmd)) if option is None else bytes((IAC, cmd, option))


def subnegotiation(option: int, payload: bytes) -> bytes:
    """C{IAC SB option payload IAC SE}, with IAC doubled inside the payload."""
    return bytes((IAC, SB, option)) + payload.replace(b"\xff", b"\xff\xff") + bytes((IAC, SE))


# -- decoding the client's stream -------------------------------------------------


class Data(NamedTuple):
    """Application bytes, with the NVT newline rule already applied."""

    data: bytes


class Command(NamedTuple):
    """C{IAC cmd} (option None) or C{IAC WILL/WONT/DO/DONT option}."""

    cmd: int
    option: int | None = None


class Subnegotiation(NamedTuple):
    """C{IAC SB option payload IAC SE}, payload unescaped."""

    option: int
    payload: bytes


class Overflow(NamedTuple):
    """A subnegotiation grew past the limit without C{IAC SE}: a protocol violation."""

    limit: int


Event = Data | Command | Subnegotiation | Overflow

_DATA_SPECIAL = re.compile(b"[\xff\r]")

_S_DATA, _S_IAC, _S_OPTION, _S_SB, _S_SB_IAC = range(5)


class Decoder:
    """
    Incremental TELNET decoder: C{feed(bytes)} returns the events in order.

    Newlines: outside BINARY mode, CR LF and CR NUL both become a single CR
    (the terminal's Enter key; the pseudo-terminal's ICRNL turns it into a
    newline for line-mode programs), and a bare LF is passed as is, so a raw
    socket client sending LF works too.  The CR is delivered at once and the
    following LF or NUL dropped when it arrives, so nothing waits for the
    next packet.  With BINARY on in the client's direction, bytes pass
    untouched (RFC 856).

    Malformed input never raises: an unknown command byte after IAC is
    dropped, IAC followed by anything but SE or IAC inside a subnegotiation
    ends it (as BSD telnetd does) and the byte is read as a command, and a
    subnegotiation longer than C{max_subnegotiation} yields L{Overflow} and
    the decoder stops.
    """

    def __init__(self, max_subnegotiation: int = 4096):
        self.max_subnegotiation = max_subnegotiation
        #: The client sends binary (we said DO BINARY and it agreed).
        self.binary = False
        self._state = _S_DATA
        self._after_cr = False
        self._cmd = 0
        self._sb = bytearray()
        self._dead = False

    def feed(self, data: bytes) -> list[Event]:
        if self._dead:
            return []
        events: list[Event] = []
        out = bytearray()

        def flush() -> None:
            if out:
                events.append(Data(bytes(out)))
                out.clear()

        i, n = 0, len(data)
        while i < n:
            state = self._state
            if state == _S_DATA:
                if self._after_cr:
                    self._after_cr = False
                    if data[i] in (0, 10):
                        i += 1
                        continue
                if self.binary:
                    j = data.find(b"\xff", i)
                else:
                    m = _DATA_SPECIAL.search(data, i)
                    j = m.start() if m else -1
                if j < 0:
                    out += data[i:]
                    break
                out += data[i:j]
                if data[j] == 13:
                    out.append(13)
                    self._after_cr = True
                else:
                    self._state = _S_IAC
                i = j + 1
            elif state == _S_IAC:
                b = data[i]
                i += 1
                self._state = _S_DATA
                if b == IAC:
                    out.append(IAC)
                elif b in NEGOTIATION:
                    self._cmd = b
                    self._state = _S_OPTION
                elif b == SB:
                    self._sb.clear()
                    self._state = _S_SB
                elif b in COMMAND_NAMES:
                    flush()
                    events.append(Command(b))
                # else: not a TELNET command; dropped.
            elif state == _S_OPTION:
                flush()
                events.append(Command(self._cmd, data[i]))
                i += 1
                self._state = _S_DATA
            elif state == _S_SB:
                j = data.find(b"\xff", i)
                end = n if j < 0 else j
                self._sb += data[i:end]
                if len(self._sb) > self.max_subnegotiation:
                    flush()
                    events.append(Overflow(self.max_subnegotiation))
                    self._dead = True
                    return events
                if j < 0:
                    break
                self._state = _S_SB_IAC
                i = j + 1
            else:  # _S_SB_IAC
                b = data[i]
                if b == IAC:
                    self._sb.append(IAC)
                    self._state = _S_SB
                    i += 1
                    continue
                flush()
                if self._sb:
                    events.append(Subnegotiation(self._sb[0], bytes(self._sb[1:])))
                self._sb.clear()
                if b == SE:
                    self._state = _S_DATA
                    i += 1
                else:
                    # IAC x inside SB: end the subnegotiation, read x as a command.
                    self._state = _S_IAC
        flush()
        return events


# -- encoding what the program writes ------------------------------------------------

_BARE_CR = re.compile(b"\r(?!\n)")


class Encoder:
    """
    NVT output: IAC doubled always; outside BINARY mode a CR not followed by
    LF becomes CR NUL (RFC 854).  A CR at the end of a chunk is sent at once
    and its NUL, if the next chunk does not start with LF, in front of it.
    """

    def __init__(self) -> None:
        #: We send binary (the client said DO BINARY).
        self.binary = False
        self._pending_cr = False

    def encode(self, data: bytes) -> bytes:
        if not data:
            return b""
        data = data.replace(b"\xff", b"\xff\xff")
        if self.binary:
            self._pending_cr = False
            return data
        prefix = b""
        if self._pending_cr:
            self._pending_cr = False
            if data[:1] != b"\n":
                prefix = b"\0"
        if data.endswith(b"\r"):
            self._pending_cr = True
            return prefix + _BARE_CR.sub(b"\r\0", data[:-1]) + b"\r"
        return prefix + _BARE_CR.sub(b"\r\0", data)


# -- subnegotiation payloads -------------------------------------------------------------


def parse_naws(payload: bytes) -> tuple[int, int] | None:
    """RFC 1073: C{(columns, rows)}, or None for a malformed payload."""
    if len(payload) != 4:
        return None
    return int.from_bytes(payload[:2], "big"), int.from_bytes(payload[2:], "big")


def naws(columns: int, rows: int) -> bytes:
    """The client's NAWS subnegotiation (for tests and the benchmark)."""
    return subnegotiation(NAWS, columns.to_bytes(2, "big") + rows.to_bytes(2, "big"))


_TERM_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,63}$")


def parse_ttype(payload: bytes) -> str | None:
    """
    RFC 1091 C{IS name}: the terminal type, lower-cased for terminfo, or
    None when it is malformed or not a plausible terminfo name (it becomes
    an environment value, so nothing odd gets through).
    """
    if not payload or payload[0] != TTYPE_IS:
        return None
    try:
        name = payload[1:].decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    return name if _TERM_RE.match(name) else None


def ttype_send() -> bytes:
    return subnegotiation(TTYPE, bytes((TTYPE_SEND,)))


def ttype_is(name: str) -> bytes:
    """The client's answer (for tests)."""
    return subnegotiation(TTYPE, bytes((TTYPE_IS,)) + name.encode("ascii"))


def environ_send(names: list[str] | None = None) -> bytes:
    """
    RFC 1572 C{SEND}: with no names, "send me everything you export"; the
    server filters what comes back.
    """
    body = bytearray((ENV_SEND,))
    for name in names or ():
        body.append(ENV_VAR)
        body += _env_escape(name.encode("utf-8"))
    return subnegotiation(NEW_ENVIRON, bytes(body))


def _env_escape(raw: bytes) -> bytes:
    out = bytearray()
    for b in raw:
        if b in (ENV_VAR, ENV_VALUE, ENV_ESC, ENV_USERVAR):
            out.append(ENV_ESC)
        out.append(b)
    return bytes(out)


def environ_is(variables: list[tuple[str, str | None]], user_vars: bool = False) -> bytes:
    """The client's C{IS} answer (for tests): C{[(name, value-or-None)]}."""
    body = bytearray((ENV_IS,))
    for name, value in variables:
        body.append(ENV_USERVAR if user_vars else ENV_VAR)
        body += _env_escape(name.encode("utf-8"))
        if value is not None:
            body.append(ENV_VALUE)
            body += _env_escape(value.encode("utf-8"))
    return subnegotiation(NEW_ENVIRON, bytes(body))


def parse_environ(payload: bytes) -> tuple[int, list[tuple[str, str | None]]] | None:
    """
    RFC 1572 C{IS}/C{INFO}: C{(kind, [(name, value-or-None), ...])}.  Names
    and values are decoded as UTF-8 (invalid bytes replaced); None for a
    payload that is neither IS nor INFO.  VAR and USERVAR are not told apart:
    the caller's whitelist decides by name alone.
    """
    if not payload or payload[0] not in (ENV_IS, ENV_INFO):
        return None
    result: list[tuple[str, str | None]] = []
    name: bytearray | None = None
    value: bytearray | None = None
    escaped = False

    def finish() -> None:
        if name is not None:
            result.append((name.decode("utf-8", "replace"),
                           None if value is None else value.decode("utf-8", "replace")))

    for b in payload[1:]:
        if escaped:
            escaped = False
        elif b == ENV_ESC:
            escaped = True
            continue
        elif b in (ENV_VAR, ENV_USERVAR):
            finish()
            name, value = bytearray(), None
            continue
        elif b == ENV_VALUE:
            if name is not None and value is None:
                value = bytearray()
            continue
        if value is not None:
            value.append(b)
        elif name is not None:
            name.append(b)
    finish()
    return payload[0], result

"""
The FTP wire: command parsing and reply rendering as pure functions.

Nothing here touches a transport or the disk, so every function can be tested
(and fuzzed) alone.  Names travel as UTF-8 (RFC 2640); bytes that are not
UTF-8 survive as surrogate escapes, the way Python's C{os} functions carry
undecodable file names, so such a name can still be listed and fetched.
"""

from __future__ import annotations

import ipaddress
import stat as statmod
import time
from collections.abc import Iterable
from dataclasses import dataclass

ENCODING = "utf-8"
ERRORS = "surrogateescape"


class CommandError(ValueError):
    """A line that cannot be a command, or an argument that does not parse."""

    def __init__(self, code: int, text: str):
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


# -- commands -----------------------------------------------------------------

#: Telnet IP (interrupt process) and DM (data mark / Synch) that RFC 959
#: clients send before ABOR; IAC IAC stands for a literal 0xFF.
_IAC = 0xFF
_TELNET_DROP = {0xF4, 0xF2, 0xF1}  # IP, DM, NOP


def strip_telnet(line: bytes) -> bytes:
    """Remove Telnet IP/DM/NOP sequences (and a stray IAC) from a command line."""
    if b"\xff" not in line and not (line[:1] and line[0] in _TELNET_DROP):
        return line
    out = bytearray()
    i = 0
    n = len(line)
    while i < n:
        c = line[i]
        if c == _IAC:
            nxt = line[i + 1] if i + 1 < n else None
            if nxt == _IAC:
                out.append(_IAC)
                i += 2
                continue
            if nxt in _TELNET_DROP:
                i += 2
                continue
            i += 1  # stray IAC (the urgent DM byte may have been taken out of band)
            continue
        out.append(c)
        i += 1
    # A DM delivered inline without its IAC (urgent byte, SO_OOBINLINE) leads the line.
    while out[:1] and out[0] in _TELNET_DROP:
        del out[0]
    return bytes(out)


def parse_command(line: bytes) -> tuple[str, str]:
    """
    Split a command line (delimiter already removed) into an upper-case verb
    and its argument text.  Raises L{CommandError} for lines no command can be.
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    line = strip_telnet(line)
    if b"\x00" in line:
        raise CommandError(501, "NUL bytes are not allowed in commands.")
    if b"\r" in line:
        raise CommandError(501, "Bare CR in command.")
    verb, _, arg = line.partition(b" ")
    if not verb:
        raise CommandError(500, "Empty command.")
    if len(verb) > 8 or not verb.isalpha() or not verb.isascii():
        raise CommandError(500, "Unknown command.")
    try:
        text = arg.decode(ENCODING, ERRORS)
    except UnicodeDecodeError:  # pragma: no cover - surrogateescape never fails
        raise CommandError(501, "Bad encoding.") from None
    return verb.decode("ascii").upper(), text


def render_reply(code: int, text: str | Iterable[str]) -> bytes:
    """
    One reply: C{code text} or, for several lines, the RFC 959 multi-line form
    (C{code-first}, middle lines, C{code last}).  Line breaks inside a text are
    rendered as separate lines; CR inside a name becomes CR NUL (RFC 2640 3.1).
    """
    if isinstance(text, str) and "\n" not in text and "\r" not in text:
        return f"{code} {text}\r\n".encode(ENCODING, ERRORS)  # most replies
    lines = [text] if isinstance(text, str) else list(text)
    flat: list[str] = []
    for item in lines:
        flat.extend(item.replace("\r", "\r\x00").split("\n") if item else [""])
    if len(flat) == 1:
        return f"{code} {flat[0]}\r\n".encode(ENCODING, ERRORS)
    middle = []
    for item in flat[1:-1]:
        # A middle line that starts with digits could be mistaken for the end.
        middle.append(" " + item if item[:1].isdigit() else item)
    out = f"{code}-{flat[0]}\r\n" + "".join(f"{m}\r\n" for m in middle) + \
        f"{code} {flat[-1]}\r\n"
    return out.encode(ENCODING, ERRORS)


def quote_path(path: str) -> str:
    """A path for a 257 reply: in double quotes, inner quotes doubled (RFC 959 App. II)."""
    return '"' + path.replace('"', '""') + '"'


# -- data-connection addresses -------------------------------------------------


def parse_port(arg: str) -> tuple[str, int]:
    """C{h1,h2,h3,h4,p1,p2} -> (dotted quad, port)."""
    parts = arg.strip().split(",")
    if len(parts) != 6:
        raise CommandError(501, "Syntax: PORT h1,h2,h3,h4,p1,p2")
    try:
        nums = [int(p.strip()) for p in parts]
    except ValueError:
        raise CommandError(501, "Syntax: PORT h1,h2,h3,h4,p1,p2") from None
    if any(n < 0 or n > 255 for n in nums) or any(not p.strip().isdigit() for p in parts):
        raise CommandError(501, "PORT values must be 0-255.")
    host = ".".join(str(n) for n in nums[:4])
    return host, nums[4] * 256 + nums[5]


def parse_eprt(arg: str) -> tuple[int, str, int]:
    """C{|1|132.235.1.2|6275|} (any delimiter, RFC 2428) -> (family 1/2, host, port)."""
    arg = arg.strip()
    if len(arg) < 7:
        raise CommandError(501, "Syntax: EPRT |proto|address|port|")
    delim = arg[0]
    if not (33 <= ord(delim) <= 126) or delim.isalnum():
        raise CommandError(501, "Bad EPRT delimiter.")
    fields = arg.split(delim)
    if len(fields) != 5 or fields[0] or fields[4]:
        raise CommandError(501, "Syntax: EPRT |proto|address|port|")
    proto, host, port_text = fields[1:4]
    if proto not in ("1", "2"):
        raise CommandError(522, "Network protocol not supported, use (1,2)")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise CommandError(501, "Bad EPRT address.") from None
    if (addr.version == 4) != (proto == "1"):
        raise CommandError(501, "EPRT address does not match its protocol.")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise CommandError(501, "Bad EPRT port.")
    return int(proto), str(addr), int(port_text)


def render_pasv(host: str, port: int) -> str:
    """The text of a 227 reply."""
    h = host.replace(".", ",")
    return f"Entering Passive Mode ({h},{port >> 8},{port & 0xFF})."


def render_epsv(port: int) -> str:
    """The text of a 229 reply."""
    return f"Entering Extended Passive Mode (|||{port}|)"


def ipv4_of(host: str) -> str | None:
    """The IPv4 address of C{host}, unwrapping IPv4-mapped IPv6; None for real IPv6."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if addr.version == 6:
        mapped = addr.ipv4_mapped
        return str(mapped) if mapped else None
    return str(addr)


def same_host(a: str, b: str) -> bool:
    """Whether two address strings name the same host (IPv4-mapped counts as IPv4)."""
    if a == b:
        return True  # the common case (every passive data connection): no parsing
    try:
        x = ipaddress.ip_address(a.split("%", 1)[0])
        y = ipaddress.ip_address(b.split("%", 1)[0])
    except ValueError:
        return a == b
    if x.version == 6 and x.ipv4_mapped:
        x = x.ipv4_mapped
    if y.version == 6 and y.ipv4_mapped:
        y = y.ipv4_mapped
    return x == y


# -- listings -----------------------------------------------------------------


@dataclass
class Entry:
    """What a listing says about one name; built by the shell from a stat."""

    name: str
    size: int
    directory: bool
    mode: int
    nlink: int
    mtime: float
    unique: str
    #: RFC 3659 perm fact letters for this session.
    perm: str = ""


_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def safe_name(name: str) -> str:
    """A name as it may appear inside a listing line (no line breaks)."""
    return name.replace("\r", "?").replace("\n", "?")


def format_list_line(e: Entry, now: float | None = None) -> str:
    """One C{ls -l} line as clients parse it (owner and group are not disclosed)."""
    now = time.time() if now is None else now
    t = time.gmtime(e.mtime)
    if abs(now - e.mtime) > 180 * 86400:
        when = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d}  {t.tm_year}"
    else:
        when = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}"
    kind = "d" if e.directory else "-"
    perms = statmod.filemode(e.mode)[1:]
    return f"{kind}{perms} {e.nlink:3d} ftp      ftp      {e.size:>12d} {when} {safe_name(e.name)}"


def format_time(mtime: float) -> str:
    """RFC 3659 time-val: UTC C{YYYYMMDDHHMMSS}."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(mtime))


#: Facts this server knows, in FEAT order.
MLST_FACTS = ("type", "size", "modify", "perm", "unique")


def format_facts(e: Entry, selected: Iterable[str] = MLST_FACTS, kind: str | None = None) -> str:
    """C{type=file;size=3;modify=...;perm=r;unique=...; NAME} for MLSD/MLST."""
    values = {
        "type": kind or ("dir" if e.directory else "file"),
        "size": str(e.size),
        "modify": format_time(e.mtime),
        "perm": e.perm,
        "unique": e.unique,
    }
    facts = "".join(f"{f}={values[f]};" for f in MLST_FACTS if f in selected)
    return f"{facts} {safe_name(e.name)}"


def parse_mlst_opts(arg: str) -> list[str]:
    """C{OPTS MLST type;size;} -> the known facts asked for (unknown ones ignored)."""
    wanted = [f.lower() for f in arg.strip().split(";") if f]
    return [f for f in MLST_FACTS if f in wanted]


def feat_mlst(selected: Iterable[str]) -> str:
    chosen = set(selected)
    return "MLST " + "".join(f"{f}{'*' if f in chosen else ''};" for f in MLST_FACTS)


def split_list_args(arg: str) -> tuple[list[str], str]:
    """
    Separate C{ls}-style options from the path in LIST/NLST/STAT arguments
    (C{LIST -la dir}); a name that really starts with '-' can be given as C{./-x}.
    """
    opts: list[str] = []
    rest = arg
    while rest.startswith("-"):
        word, _, rest = rest.partition(" ")
        opts.append(word)
        rest = rest.lstrip(" ")
    return opts, rest


def is_glob(name: str) -> bool:
    """Whether a LIST/NLST argument's last part is a shell pattern (C{*.txt})."""
    return any(c in name for c in "*?[")


def glob_match(name: str, pattern: str) -> bool:
    """C{fnmatch} without case folding; dot files only for a pattern starting with '.'."""
    import fnmatch

    if name.startswith(".") and not pattern.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, pattern)


# -- TYPE A ---------------------------------------------------------------------


class ToNetASCII:
    """Disk to wire for TYPE A: every bare LF becomes CRLF; chunk borders are safe."""

    def __init__(self) -> None:
        self._last_cr = False

    def __call__(self, data: bytes) -> bytes:
        if not data:
            return data
        out = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if self._last_cr and data[:1] == b"\n":
            out = out[1:]  # the CR before this LF already went out
        self._last_cr = data[-1:] == b"\r"
        return out


class FromNetASCII:
    """Wire to disk for TYPE A: CRLF becomes LF; a lone CR is kept."""

    def __init__(self) -> None:
        self._held_cr = False

    def __call__(self, data: bytes) -> bytes:
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._held_cr = True
        return data.replace(b"\r\n", b"\n")

    def flush(self) -> bytes:
        """What is still held at the end of the transfer (a final lone CR)."""
        if self._held_cr:
            self._held_cr = False
            return b"\r"
        return b""


# -- help ------------------------------------------------------------------------

HELP: dict[str, str] = {
    "ABOR": "ABOR (abort the running transfer)",
    "ALLO": "ALLO <bytes> (ignored)",
    "APPE": "APPE <file> (append)",
    "AUTH": "AUTH TLS",
    "CDUP": "CDUP",
    "CLNT": "CLNT <client name>",
    "CWD": "CWD <dir>",
    "DELE": "DELE <file>",
    "EPRT": "EPRT |proto|address|port|",
    "EPSV": "EPSV [1|2|ALL]",
    "FEAT": "FEAT",
    "HELP": "HELP [command]",
    "LIST": "LIST [path]",
    "MDTM": "MDTM <file>",
    "MKD": "MKD <dir>",
    "MLSD": "MLSD [dir]",
    "MLST": "MLST [path]",
    "MODE": "MODE S",
    "NLST": "NLST [path]",
    "NOOP": "NOOP",
    "OPTS": "OPTS UTF8 ON | OPTS MLST facts",
    "PASS": "PASS <password>",
    "PASV": "PASV",
    "PBSZ": "PBSZ 0",
    "PORT": "PORT h1,h2,h3,h4,p1,p2",
    "PROT": "PROT P|C",
    "PWD": "PWD",
    "QUIT": "QUIT",
    "REIN": "REIN",
    "REST": "REST <offset>",
    "RETR": "RETR <file>",
    "RMD": "RMD <dir>",
    "RNFR": "RNFR <path>",
    "RNTO": "RNTO <path>",
    "SIZE": "SIZE <file>",
    "STAT": "STAT [path]",
    "STOR": "STOR <file>",
    "STOU": "STOU",
    "STRU": "STRU F",
    "SYST": "SYST",
    "TYPE": "TYPE A|I",
    "USER": "USER <name>",
    "XCUP": "XCUP",
    "XCWD": "XCWD <dir>",
    "XMKD": "XMKD <dir>",
    "XPWD": "XPWD",
    "XRMD": "XRMD <dir>",
}


def help_lines() -> list[str]:
    """The 214 multi-line body: the recognised commands, eight per line."""
    names = sorted(HELP)
    rows = [" " + " ".join(f"{n:<5}" for n in names[i:i + 8]).rstrip()
            for i in range(0, len(names), 8)]
    return ["The following commands are recognized.", *rows, "Help OK."]

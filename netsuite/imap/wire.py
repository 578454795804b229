"""
IMAP4rev1 wire format as pure functions and small classes: argument parsing
(quoted strings with escapes, literals, nested lists, sequence sets, FETCH
attributes, SEARCH keys) and rendering (strings, literals, lists, dates).
No transport, no disk.

A command arrives as text with its literals taken out: the session reader
replaces every C{{n}} / C{{n+}} literal by one NUL byte (NUL cannot occur in
command text; the reader rejects it) and hands the literal bodies alongside,
so the parser never deals with octet counts.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

LITERAL_MARK = 0  # the NUL byte standing for a literal
_ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(0x20)) | {0x7F}
_LITERAL_AT_END = re.compile(rb"\{(\d{1,20})(\+?)\}\r?$")
_SYSTEM_FLAGS = {"\\answered", "\\flagged", "\\deleted", "\\seen", "\\draft", "\\recent"}
_TAG_BAD = set(b'(){ %*"\\+') | set(range(0x20)) | {0x7F}


class ParseError(ValueError):
    """Syntax error: the command gets a tagged BAD with this text."""


def literal_at_end(line: bytes) -> tuple[int, bool] | None:
    """C{b'A APPEND x {12+}'} -> (12, True): size and non-synchronizing."""
    m = _LITERAL_AT_END.search(line)
    if m is None:
        return None
    return int(m.group(1)), bool(m.group(2))


def strip_literal(line: bytes) -> bytes:
    return _LITERAL_AT_END.sub(b"", line)


def valid_tag(tag: bytes) -> bool:
    return bool(tag) and len(tag) <= 64 and not any(c in _TAG_BAD or c > 0x7E for c in tag)


def split_tag(line: bytes) -> tuple[bytes, bytes, bytes]:
    """C{b'a1 UID FETCH ...'} -> (tag, command, rest) or ParseError."""
    tag, _, rest = line.partition(b" ")
    if not valid_tag(tag):
        raise ParseError("Invalid tag")
    cmd, _, rest = rest.partition(b" ")
    if not cmd or not cmd.isalpha():
        raise ParseError("Missing or invalid command")
    return tag, cmd.upper(), rest


@dataclass
class Cursor:
    """Reads arguments from command text with literals spliced out."""

    text: bytes
    literals: list[bytes] = field(default_factory=list)
    pos: int = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> int | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def expect(self, b: bytes) -> None:
        if not self.text.startswith(b, self.pos):
            raise ParseError(f"Expected {b.decode()!r}")
        self.pos += len(b)

    def sp(self) -> None:
        self.expect(b" ")

    def maybe(self, b: bytes) -> bool:
        if self.text.startswith(b, self.pos):
            self.pos += len(b)
            return True
        return False

    def end(self) -> None:
        if not self.at_end():
            raise ParseError("Unexpected extra arguments")

    def _take_while(self, ok) -> bytes:
        start = self.pos
        while self.pos < len(self.text) and ok(self.text[self.pos]):
            self.pos += 1
        return self.text[start:self.pos]

    def atom(self) -> bytes:
        a = self._take_while(lambda c: c not in _ATOM_SPECIALS and c < 0x80)
        if not a:
            raise ParseError("Expected an atom")
        return a

    def _literal(self) -> bytes:
        self.pos += 1
        if not self.literals:
            raise ParseError("Missing literal")
        return self.literals.pop(0)

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        while True:
            c = self.peek()
            if c is None or c in (0x0A, 0x0D, LITERAL_MARK):
                raise ParseError("Unterminated quoted string")
            self.pos += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                nxt = self.peek()
                if nxt not in (0x22, 0x5C):
                    raise ParseError("Bad escape in quoted string")
                self.pos += 1
                out.append(nxt)
            else:
                out.append(c)

    def string(self) -> bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == LITERAL_MARK:
            return self._literal()
        raise ParseError("Expected a string")

    def astring(self) -> bytes:
        c = self.peek()
        if c in (0x22, LITERAL_MARK):
            return self.string()
        a = self._take_while(lambda c: (c not in _ATOM_SPECIALS or c == 0x5D) and c < 0x80)
        if not a:
            raise ParseError("Expected a string or atom")
        return a

    def list_mailbox(self) -> bytes:
        """list-mailbox: like astring but '%' and '*' allowed."""
        c = self.peek()
        if c in (0x22, LITERAL_MARK):
            return self.string()
        a = self._take_while(lambda c: (c not in _ATOM_SPECIALS or c in b"%*]") and c < 0x80)
        if not a:
            raise ParseError("Expected a mailbox pattern")
        return a

    def number(self) -> int:
        d = self._take_while(lambda c: 0x30 <= c <= 0x39)
        if not d or len(d) > 10:
            raise ParseError("Expected a number")
        n = int(d)
        if n > 0xFFFFFFFF:
            raise ParseError("Number out of range")
        return n

    def nz_number(self) -> int:
        n = self.number()
        if n == 0:
            raise ParseError("Expected a non-zero number")
        return n

    def seqset(self) -> "SeqSet":
        if self.maybe(b"$"):  # SEARCHRES (RFC 5182): the saved search result
            return SeqSet([], saved=True)
        text = self._take_while(lambda c: c in b"0123456789:*,")
        return SeqSet.parse(text)

    def plist(self) -> list:
        """A parenthesised list of atoms, strings and nested lists."""
        self.expect(b"(")
        items: list[Any] = []
        while True:
            c = self.peek()
            if c is None:
                raise ParseError("Unbalanced parentheses")
            if c == 0x29:
                self.pos += 1
                return items
            if items:
                self.sp()
                c = self.peek()
            if c == 0x28:
                items.append(self.plist())
            elif c in (0x22, LITERAL_MARK):
                items.append(self.string())
            elif c == 0x5C:
                self.pos += 1
                items.append(b"\\" + self.atom())
            else:
                items.append(self.astring())

    def flag_list(self) -> list[str]:
        """C{(\\Seen $Label)} or bare flags, for STORE and APPEND: atoms only."""
        raw: list[bytes] = []
        if self.maybe(b"("):
            while not self.maybe(b")"):
                if raw:
                    self.sp()
                raw.append(self.flag())
        else:
            raw.append(self.flag())
            while self.maybe(b" "):
                raw.append(self.flag())
        flags = []
        for f in raw:
            name = f.decode("ascii")
            if name.startswith("\\") and name.lower() not in _SYSTEM_FLAGS:
                raise ParseError(f"Invalid system flag {name}")
            flags.append(name)
        return flags

    def flag(self) -> bytes:
        if self.maybe(b"\\"):
            return b"\\" + self.atom()
        return self.atom()


@dataclass
class SeqSet:
    """A sequence set; C{None} stands for '*'; C{saved}: C{$}, the saved result (UIDs)."""

    ranges: list[tuple[int | None, int | None]]
    saved: bool = False

    @classmethod
    def parse(cls, text: bytes) -> "SeqSet":
        if not text:
            raise ParseError("Expected a sequence set")
        ranges = []
        for item in text.split(b","):
            lo, sep, hi = item.partition(b":")
            try:
                a = None if lo == b"*" else int(lo)
                b = a if not sep else (None if hi == b"*" else int(hi))
            except ValueError:
                raise ParseError("Bad sequence set") from None
            if a == 0 or b == 0 or (a is not None and a > 0xFFFFFFFF) or \
                    (b is not None and b > 0xFFFFFFFF):
                raise ParseError("Bad sequence set")
            ranges.append((a, b))
        return cls(ranges)

    def contains(self, n: int, star: int) -> bool:
        for a, b in self.ranges:
            lo = star if a is None else a
            hi = star if b is None else b
            if lo > hi:
                lo, hi = hi, lo
            if lo <= n <= hi:
                return True
        return False

    def resolve(self, values, star: int) -> list[int]:
        """Members of C{values} (sorted ascending) that are in the set, in order."""
        import bisect

        picked: set[int] = set()
        for a, b in self.ranges:
            lo = star if a is None else a
            hi = star if b is None else b
            if lo > hi:
                lo, hi = hi, lo
            i = bisect.bisect_left(values, lo)
            j = bisect.bisect_right(values, hi)
            picked.update(values[i:j])
        return sorted(picked)


# -- FETCH attributes ----------------------------------------------------------------------

@dataclass
class Section:
    """BODY[section]<partial>."""

    part: tuple[int, ...] = ()
    #: "", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"
    kind: str = ""
    fields: tuple[bytes, ...] = ()
    peek: bool = False
    partial: tuple[int, int] | None = None
    #: How the item was asked for (BODY[...], RFC822, ...) and is echoed back.
    label: bytes = b""


@dataclass
class FetchAtt:
    name: str  # UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY SECTION
    section: Section | None = None


_MACROS = {
    b"ALL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"],
    b"FAST": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"],
    b"FULL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"],
}
_SIMPLE = {b"UID", b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODYSTRUCTURE",
           b"BODY", b"MODSEQ"}
#: OBJECTID (RFC 8474) and SAVEDATE (RFC 8514).
_SIMPLE |= {b"EMAILID", b"THREADID", b"SAVEDATE"}


def parse_fetch_atts(cur: Cursor) -> list[FetchAtt]:
    """fetch-att / "(" fetch-att *(SP fetch-att) ")" / ALL / FAST / FULL."""
    if cur.maybe(b"("):
        atts = [_fetch_att(cur)]
        while not cur.maybe(b")"):
            cur.sp()
            atts.append(_fetch_att(cur))
        return atts
    word = _fetch_word(cur).upper()
    if word in _MACROS:
        return [FetchAtt(n.decode()) for n in _MACROS[word]]
    cur.pos -= len(word)
    return [_fetch_att(cur)]


def _fetch_word(cur: Cursor) -> bytes:
    return cur._take_while(lambda c: c not in b" ()[<" and c not in _ATOM_SPECIALS)


def _fetch_att(cur: Cursor) -> FetchAtt:
    word = _fetch_word(cur).upper()
    if word in (b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT"):
        kind = {b"RFC822": "", b"RFC822.HEADER": "HEADER", b"RFC822.TEXT": "TEXT"}[word]
        return FetchAtt("SECTION", Section(kind=kind, peek=word == b"RFC822.HEADER",
                                           label=word))
    if word in (b"BODY", b"BODY.PEEK") and cur.peek() == 0x5B:
        sec = _section(cur)
        sec.peek = word == b"BODY.PEEK"
        if cur.maybe(b"<"):
            start = cur.number()
            cur.expect(b".")
            length = cur.nz_number()
            cur.expect(b">")
            sec.partial = (start, length)
        return FetchAtt("SECTION", sec)
    if word in (b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE") and cur.peek() == 0x5B:
        # RFC 3516: section-binary is part numbers only; BINARY.SIZE takes no partial.
        sec = _section(cur)
        if sec.kind:
            raise ParseError("BINARY takes part numbers only")
        sec.peek = word != b"BINARY"
        if word != b"BINARY.SIZE" and cur.maybe(b"<"):
            start = cur.number()
            cur.expect(b".")
            length = cur.nz_number()
            cur.expect(b">")
            sec.partial = (start, length)
        return FetchAtt("BINARY.SIZE" if word == b"BINARY.SIZE" else "BINARY", sec)
    if word in _SIMPLE:
        return FetchAtt(word.decode())
    raise ParseError(f"Unknown FETCH attribute {word.decode(errors='replace')!r}")


def _section(cur: Cursor) -> Section:
    cur.expect(b"[")
    text = cur._take_while(lambda c: c not in b"] (")
    sec = Section()
    parts = []
    rest = text.upper()
    while rest and rest[:1].isdigit():
        num, _, rest = rest.partition(b".")
        if not num.isdigit() or int(num) == 0:
            raise ParseError("Bad section part")
        parts.append(int(num))
    sec.part = tuple(parts)
    if rest in (b"", b"HEADER", b"TEXT", b"MIME", b"HEADER.FIELDS", b"HEADER.FIELDS.NOT"):
        sec.kind = rest.decode()
    else:
        raise ParseError("Bad section")
    if sec.kind == "MIME" and not parts:
        raise ParseError("MIME needs a part number")
    if sec.kind.startswith("HEADER.FIELDS"):
        cur.sp()
        names = cur.plist()
        if not names or not all(isinstance(n, bytes) for n in names):
            raise ParseError("Bad header list")
        sec.fields = tuple(n.upper() for n in names)
    cur.expect(b"]")
    return sec


def parse_section_text(text: bytes) -> Section:
    """A section spec on its own (C{1.2.HEADER}), as an IMAP URL's C{;SECTION=} names it."""
    cur = Cursor(b"[" + text + b"]", [])
    sec = _section(cur)
    cur.end()
    return sec


def section_label(sec: Section) -> bytes:
    """How a section is named in the response: BODY[1.HEADER.FIELDS (A B)]<0>."""
    if sec.label:
        return sec.label
    spec = ".".join(str(p) for p in sec.part)
    if sec.kind:
        spec = f"{spec}.{sec.kind}" if spec else sec.kind
    out = b"BODY[" + spec.encode()
    if sec.fields:
        out += b" (" + b" ".join(sec.fields) + b")"
    out += b"]"
    if sec.partial is not None:
        out += b"<%d>" % sec.partial[0]
    return out


# -- SEARCH -----------------------------------------------------------------------------------

_NO_ARG = {"ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN",
           "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN"}
_STRING_ARG = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
_DATE_ARG = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
_NUM_ARG = {"LARGER", "SMALLER"}
_ATOM_ARG = {"KEYWORD", "UNKEYWORD"}
#: SAVEDATE (RFC 8514).
_DATE_ARG |= {"SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"}
_NO_ARG |= {"SAVEDATESUPPORTED"}


def parse_search(cur: Cursor) -> list:
    """Search keys -> a list of nodes (implicitly ANDed); each node a tuple."""
    keys = [_search_key(cur)]
    while cur.maybe(b" "):
        keys.append(_search_key(cur))
    cur.end()
    return keys


def _search_key(cur: Cursor):
    if cur.maybe(b"("):
        keys = [_search_key(cur)]
        while not cur.maybe(b")"):
            cur.sp()
            keys.append(_search_key(cur))
        return ("AND", keys)
    c = cur.peek()
    if c == 0x24:  # $ (RFC 5182)
        cur.pos += 1
        return ("SAVED",)
    if c is not None and (0x30 <= c <= 0x39 or c == 0x2A):
        return ("SEQ", cur.seqset())
    word = cur.atom().upper().decode()
    if word in _NO_ARG:
        return (word,)
    if word == "NOT":
        cur.sp()
        return ("NOT", _search_key(cur))
    if word == "OR":
        cur.sp()
        a = _search_key(cur)
        cur.sp()
        return ("OR", a, _search_key(cur))
    cur.sp()
    if word in _STRING_ARG:
        return (word, cur.astring())
    if word == "HEADER":
        name = cur.astring()
        cur.sp()
        return (word, name, cur.astring())
    if word in _DATE_ARG:
        return (word, parse_date(cur.astring()))
    if word in _NUM_ARG:
        return (word, cur.number())
    if word in _ATOM_ARG:
        return (word, cur.flag().decode())
    if word == "UID":
        ids = cur.seqset()
        return ("SAVED",) if ids.saved else ("UID", ids)
    if word == "MODSEQ":
        return ("MODSEQ", _search_modseq(cur))
    raise ParseError(f"Unknown search key {word}")


_ENTRY_TYPES = {b"PRIV", b"SHARED", b"ALL"}


def _search_modseq(cur: Cursor) -> int:
    """RFC 7162 3.1.5: C{MODSEQ [entry-name SP entry-type-req SP] n}; the entry is not
    told apart (one MODSEQ per message, as the RFC allows)."""
    if cur.peek() in (0x22, LITERAL_MARK):
        name = cur.string()
        if not name.startswith(b"/flags/"):
            raise ParseError("Bad MODSEQ entry name")
        cur.sp()
        if cur.atom().upper() not in _ENTRY_TYPES:
            raise ParseError("Bad MODSEQ entry type")
        cur.sp()
    return mod_sequence(cur, zero=True)


_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def parse_date(raw: bytes):
    """date = 1*2DIGIT "-" month "-" 4DIGIT, e.g. 1-Feb-1994."""
    import datetime as dt

    try:
        d, m, y = raw.decode("ascii").split("-")
        return dt.date(int(y), _MONTHS.index(m.capitalize()) + 1, int(d))
    except (ValueError, UnicodeDecodeError):
        raise ParseError("Bad date") from None


def parse_datetime(raw: bytes) -> float:
    """date-time = "dd-Mon-yyyy hh:mm:ss +zzzz" -> Unix time."""
    try:
        text = raw.decode("ascii").strip()
        dpart, tpart, zone = text.split(" ")
        d, m, y = dpart.split("-")
        hh, mm, ss = (int(x) for x in tpart.split(":"))
        sign = -1 if zone[0] == "-" else 1
        if zone[0] not in "+-" or len(zone) != 5:
            raise ValueError(zone)
        offset = sign * (int(zone[1:3]) * 60 + int(zone[3:5]))
        when = datetime(int(y), _MONTHS.index(m.capitalize()) + 1, int(d), hh, mm, ss,
                        tzinfo=timezone(timedelta(minutes=offset)))
        return when.timestamp()
    except (ValueError, IndexError, UnicodeDecodeError):
        raise ParseError("Bad date-time") from None


def format_datetime(ts: float) -> bytes:
    """Unix time -> C{"17-Jul-1996 02:44:25 +0000"} in local time with its offset."""
    t = time.localtime(ts)
    off = t.tm_gmtoff // 60
    sign = "+" if off >= 0 else "-"
    off = abs(off)
    return (f'"{t.tm_mday:2d}-{_MONTHS[t.tm_mon - 1]}-{t.tm_year:04d} '
            f'{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {sign}{off // 60:02d}{off % 60:02d}"'
            ).encode()


# -- CONDSTORE / QRESYNC (RFC 7162) ----------------------------------------------------------

#: mod-sequence-value: a positive 63-bit number.
MAX_MODSEQ = (1 << 63) - 1


def mod_sequence(cur: Cursor, zero: bool = False) -> int:
    """mod-sequence-value (C{zero}: mod-sequence-valzer, 0 allowed)."""
    d = cur._take_while(lambda c: 0x30 <= c <= 0x39)
    if not d or len(d) > 19 or int(d) > MAX_MODSEQ:
        raise ParseError("Expected a mod-sequence")
    n = int(d)
    if n == 0 and not zero:
        raise ParseError("Expected a non-zero mod-sequence")
    return n


@dataclass
class QResync:
    """SELECT's QRESYNC parameter: what the client knew of the mailbox."""

    uidvalidity: int
    modseq: int
    known_uids: SeqSet | None = None
    #: (known sequence numbers, their UIDs), to find expunges without a history.
    seq_match: tuple[SeqSet, SeqSet] | None = None


@dataclass
class SelectParams:
    condstore: bool = False
    qresync: QResync | None = None


def parse_select_params(cur: Cursor) -> SelectParams:
    """After the mailbox name: C{[SP "(" select-param *(SP select-param) ")"]}."""
    params = SelectParams()
    if cur.at_end():
        return params
    cur.sp()
    cur.expect(b"(")
    first = True
    while not cur.maybe(b")"):
        if not first:
            cur.sp()
        first = False
        name = cur.atom().upper()
        if name == b"CONDSTORE":
            params.condstore = True
        elif name == b"QRESYNC" and params.qresync is None:
            cur.sp()
            params.qresync = _qresync(cur)
        else:
            raise ParseError(f"Unknown SELECT parameter {name.decode(errors='replace')}")
    cur.end()
    return params


def _qresync(cur: Cursor) -> QResync:
    cur.expect(b"(")
    q = QResync(cur.nz_number(), 0)
    cur.sp()
    q.modseq = mod_sequence(cur)
    if cur.maybe(b" "):
        if cur.peek() != 0x28:
            q.known_uids = _uid_set(cur)
            if not cur.maybe(b" "):
                cur.expect(b")")
                return q
        cur.expect(b"(")
        seqs = cur.seqset()
        cur.sp()
        uids = _uid_set(cur)
        cur.expect(b")")
        q.seq_match = (seqs, uids)
    cur.expect(b")")
    return q


def _uid_set(cur: Cursor) -> SeqSet:
    """A sequence set without '*' (known-uids, RFC 7162)."""
    s = cur.seqset()
    if any(n is None for r in s.ranges for n in r):
        raise ParseError("'*' is not allowed here")
    return s


@dataclass
class FetchModifiers:
    changedsince: int | None = None
    vanished: bool = False


def parse_fetch_modifiers(cur: Cursor) -> FetchModifiers:
    """After the FETCH attributes: C{[SP "(" CHANGEDSINCE n [SP VANISHED] ")"]}, any order."""
    mods = FetchModifiers()
    if cur.at_end():
        return mods
    cur.sp()
    cur.expect(b"(")
    seen: set[bytes] = set()
    while not cur.maybe(b")"):
        if seen:
            cur.sp()
        name = cur.atom().upper()
        if name in seen:
            raise ParseError("FETCH modifier given twice")
        seen.add(name)
        if name == b"CHANGEDSINCE":
            cur.sp()
            mods.changedsince = mod_sequence(cur)
        elif name == b"VANISHED":
            mods.vanished = True
        else:
            raise ParseError(f"Unknown FETCH modifier {name.decode(errors='replace')}")
    if not seen:
        raise ParseError("Empty FETCH modifier list")
    if mods.vanished and mods.changedsince is None:
        raise ParseError("VANISHED needs CHANGEDSINCE")
    cur.end()
    return mods


def parse_store_modifiers(cur: Cursor) -> int | None:
    """Before the STORE item: C{"(" UNCHANGEDSINCE n ")" SP}; the number, or None."""
    if not cur.maybe(b"("):
        return None
    name = cur.atom().upper()
    if name != b"UNCHANGEDSINCE":
        raise ParseError(f"Unknown STORE modifier {name.decode(errors='replace')}")
    cur.sp()
    n = mod_sequence(cur, zero=True)
    cur.expect(b")")
    cur.sp()
    return n


def sequence_set(numbers) -> bytes:
    """
    Numbers -> a sequence set, runs of consecutive ascending numbers collapsed
    and the order kept (C{[1, 2, 3, 7, 5]} -> C{b"1:3,7,5"}; ascending input
    gives the shortest set, and COPYUID's pairs stay in step); b"" for none.
    """
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return b",".join(b"%d" % a if a == b else b"%d:%d" % (a, b) for a, b in runs)


# -- rendering ----------------------------------------------------------------------------------

def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def literal8(data: bytes) -> bytes:
    """BINARY content: C{~{n}} (RFC 3516) when it holds a NUL, else an ordinary literal."""
    if b"\x00" in data:
        return b"~{%d}\r\n" % len(data) + data
    return literal(data)


def binary_label(sec: Section, size: bool = False) -> bytes:
    """C{BINARY[1.2]<0>} or C{BINARY.SIZE[1.2]}, as a response names the item."""
    spec = ".".join(str(p) for p in sec.part).encode()
    if size:
        return b"BINARY.SIZE[" + spec + b"]"
    out = b"BINARY[" + spec + b"]"
    if sec.partial is not None:
        out += b"<%d>" % sec.partial[0]
    return out


def string(data: bytes | str | None) -> bytes:
    """A quoted string when safe, else a literal; None -> NIL."""
    if data is None:
        return b"NIL"
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > 1024 or any(c > 0x7E or c in (0x0A, 0x0D, 0x00) for c in data):
        return literal(data)
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def astring(data: bytes | str) -> bytes:
    """An atom when the text is one, else a string (for mailbox names)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if data and not any(c in _ATOM_SPECIALS or c > 0x7E for c in data) and \
            data.upper() != b"NIL":
        return data
    return string(data)


def flags(names) -> bytes:
    return b"(" + " ".join(names).encode("ascii", "replace") + b")"

"""
Grammar and renderings of SORT, THREAD (RFC 5256, RFC 5957), the SEARCH
return options of ESEARCH / ESORT (RFC 4731, RFC 5267) and SEARCHRES's
SAVE (RFC 5182); and the RFC 5256 base-subject extraction every one of
them sorts or groups by.  Pure functions of a L{Cursor} or of values: no
transport, no disk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from netsuite.imap.wire import Cursor, ParseError, sequence_set, string

SORT_KEYS = {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO"}
#: RFC 5957 (SORT=DISPLAY).
DISPLAY_KEYS = {"DISPLAYFROM", "DISPLAYTO"}
THREAD_ALGORITHMS = {"ORDEREDSUBJECT", "REFERENCES"}
RETURN_OPTIONS = {"MIN", "MAX", "ALL", "COUNT", "SAVE", "UPDATE", "CONTEXT", "PARTIAL"}
#: The options that ask for result data (the others alone imply ALL).
RESULT_OPTIONS = {"MIN", "MAX", "ALL", "COUNT", "PARTIAL"}
CHARSETS = {b"US-ASCII", b"UTF-8"}


class ReturnOptions(list):
    """The RETURN options' names (a list of str), and PARTIAL's range if given."""

    partial: tuple[int, int] | None = None
    #: ALL was not asked for but implied (RFC 4731 3.1, RFC 5267).
    implied_all = False


def parse_return(cur: Cursor) -> ReturnOptions | None:
    """
    C{RETURN (MIN COUNT) } before search keys -> ["MIN", "COUNT"], or None
    when there is no RETURN (a plain SEARCH).  C{RETURN ()} means ALL
    (RFC 4731 3.1), and so does UPDATE or CONTEXT without a result option
    (RFC 5267); C{PARTIAL 4:2} gives C{.partial == (2, 4)}.  The space
    after the list is consumed.
    """
    if cur.text[cur.pos:cur.pos + 7].upper() != b"RETURN ":
        return None
    cur.pos += 7
    cur.expect(b"(")
    options = ReturnOptions()
    first = True
    while not cur.maybe(b")"):
        if not first:
            cur.sp()
        first = False
        word = cur.atom().upper().decode()
        if word not in RETURN_OPTIONS:
            raise ParseError(f"Unknown search return option {word}")
        if word == "PARTIAL":
            cur.sp()
            lo = cur.nz_number()
            cur.expect(b":")
            hi = cur.nz_number()
            options.partial = (min(lo, hi), max(lo, hi))
        if word not in options:
            options.append(word)
    cur.sp()
    if not any(o in options for o in RESULT_OPTIONS):
        options.append("ALL")
        options.implied_all = True
    return options


def parse_sort_criteria(cur: Cursor, display: bool = True) -> list[tuple[str, bool]]:
    """C{(REVERSE DATE SUBJECT)} -> [("DATE", True), ("SUBJECT", False)]."""
    cur.expect(b"(")
    keys: list[tuple[str, bool]] = []
    reverse = False
    while True:
        word = cur.atom().upper().decode()
        if word == "REVERSE":
            if reverse:
                raise ParseError("REVERSE twice")
            reverse = True
            cur.sp()
            continue
        if word not in SORT_KEYS and not (display and word in DISPLAY_KEYS):
            raise ParseError(f"Unknown sort key {word}")
        keys.append((word, reverse))
        reverse = False
        if cur.maybe(b")"):
            return keys
        cur.sp()


def parse_charset(cur: Cursor, utf8_only: bool = False) -> bytes:
    """
    The charset argument of SORT and THREAD (an astring), upper-cased.
    C{utf8_only} (after ENABLE UTF8=ACCEPT): any other is BAD (RFC 6855 erratum 4029).
    """
    charset = cur.astring().upper()
    if utf8_only and charset != b"UTF-8":
        raise ParseError("The charset must be UTF-8 after ENABLE UTF8=ACCEPT")
    return charset


def parse_thread_algorithm(cur: Cursor) -> str:
    word = cur.atom().upper().decode()
    if word not in THREAD_ALGORITHMS:
        raise ParseError(f"Unknown thread algorithm {word}")
    return word


# -- rendering -------------------------------------------------------------------------------

def esearch(tag: bytes, uid: bool, options: Sequence[str], found: Sequence[int],
            extra: Iterable[bytes] = ()) -> bytes:
    """
    The C{* ESEARCH} response (RFC 4731) for C{found} (ascending for SEARCH,
    in sort order for SORT: RFC 5267 3.1 takes MIN/MAX as the first/last).
    C{extra} is more return data already rendered (C{b"MODSEQ 7"}, ...),
    appended as is.
    """
    out = [b"* ESEARCH (TAG " + string(tag) + b")"]
    if uid:
        out.append(b"UID")
    ordered = list(found)
    if ordered:
        if "MIN" in options:
            out.append(b"MIN %d" % ordered[0])
        if "MAX" in options:
            out.append(b"MAX %d" % ordered[-1])
    if "COUNT" in options:
        out.append(b"COUNT %d" % len(ordered))
    if ordered and "ALL" in options:
        out.append(b"ALL " + sequence_set(ordered))
    partial = getattr(options, "partial", None)
    if partial is not None:
        lo, hi = partial
        picked = sequence_set(ordered[lo - 1:hi]) or b"NIL"
        out.append(b"PARTIAL (%d:%d " % (lo, hi) + picked + b")")
    out.extend(extra)
    return b" ".join(out)


def context_update(tag: bytes, uid: bool, kind: bytes, nums: Sequence[int]) -> bytes:
    """C{* ESEARCH (TAG "t") UID ADDTO (0 3:5)}: a search context changed (RFC 5267 4.3;
    the position of an unsorted SEARCH's change is 0, as Dovecot sends it)."""
    return (b"* ESEARCH (TAG " + string(tag) + b")" + (b" UID " if uid else b" ") + kind +
            b" (0 " + sequence_set(sorted(nums)) + b")")


def to_save(options: Sequence[str], found: Sequence[int]) -> list[int]:
    """What SAVE keeps (RFC 5182 2.1): only MIN and/or MAX if those alone are asked."""
    if not found or "ALL" in options or "COUNT" in options or \
            not ("MIN" in options or "MAX" in options):
        return list(found)
    kept = []
    if "MIN" in options:
        kept.append(found[0])
    if "MAX" in options and found[-1] not in kept:
        kept.append(found[-1])
    return kept


# -- RFC 5256 2.1: the base subject ----------------------------------------------------------

_WSP = re.compile(r"[ \t\r\n]+")
_TRAILER = re.compile(r"(?:\s|\(fwd\))+$", re.I)
_BLOB = r"\[[^\[\]]*\][ \t]*"
_LEADER = re.compile(r"^(?:[ \t]+|(?:" + _BLOB + r")*(?:re|fwd?)[ \t]*(?:" + _BLOB + r")?:)",
                     re.I)
_PLAIN_LEADERS = re.compile(r"(?:[ \t]*(?:re|fwd?)[ \t]*:)*[ \t]*", re.I)
_LEADING_BLOB = re.compile(r"^" + _BLOB)
_FWD_WRAPPER = re.compile(r"^\[fwd:(.*)\]$", re.I | re.S)


def base_subject(subject: str) -> tuple[str, bool]:
    """
    RFC 5256 2.1 on an already RFC 2047-decoded subject: (base subject, whether
    it was a reply or forward), the base upper-cased (i;ascii-casemap, and as
    Dovecot compares).
    """
    text = _WSP.sub(" ", subject)
    if "[" not in text and "(" not in text:
        # No blob, trailer or wrapper can occur: only "Re:"-style leaders (most subjects).
        leaders = _PLAIN_LEADERS.match(text)
        assert leaders is not None  # the pattern matches the empty string
        return text[leaders.end():].strip(" ").upper(), ":" in leaders.group(0)
    return _base_subject(text)


def _base_subject(text: str) -> tuple[str, bool]:
    """L{base_subject}'s every step, on whitespace-collapsed text."""
    refwd = False
    while True:
        # (2) trailers
        stripped = _TRAILER.sub("", text)
        if "(fwd)" in text[len(stripped):].lower():
            refwd = True
        text = stripped
        while True:
            changed = False
            # (3) leaders, repeated
            while True:
                m = _LEADER.match(text)
                if m is None or not m.group(0):
                    break
                if m.group(0).strip():
                    refwd = True
                text = text[m.end():]
                changed = True
            # (4) a leading blob, if something remains after it
            m = _LEADING_BLOB.match(text)
            if m is not None and text[m.end():].strip():
                text = text[m.end():]
                changed = True
            if not changed:
                break
        # (6) the [fwd: ...] wrapper
        m = _FWD_WRAPPER.match(text)
        if m is None:
            break
        text = m.group(1)
        refwd = True
    return text.strip(" ").upper(), refwd

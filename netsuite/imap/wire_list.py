"""
The grammar of LIST with RFC 5258 (LIST-EXTENDED), RFC 5819 (LIST-STATUS) and
RFC 6154 (SPECIAL-USE) options, as a pure function of a L{Cursor}.

  list = "LIST" [SP "(" sel-opts ")"] SP mailbox SP
         (list-mailbox / "(" list-mailbox *(SP list-mailbox) ")")
         [SP "RETURN" SP "(" ret-opts ")"]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netsuite.imap.names import pattern_from_wire
from netsuite.imap.wire import Cursor, ParseError

SELECT_OPTIONS = {b"SUBSCRIBED", b"REMOTE", b"RECURSIVEMATCH", b"SPECIAL-USE"}
RETURN_OPTIONS = {b"SUBSCRIBED", b"CHILDREN", b"SPECIAL-USE", b"STATUS"}


@dataclass
class ListCommand:
    """One parsed LIST: what to select, which names, what to return."""

    ref: str
    patterns: list[str]
    select: set[bytes] = field(default_factory=set)
    returns: set[bytes] = field(default_factory=set)
    #: RETURN (STATUS (...)) items, upper case (RFC 5819).
    status: list[str] = field(default_factory=list)
    #: Any extended syntax used (options, pattern list, RETURN): the LIST-EXTENDED rules apply.
    extended: bool = False


def parse_list(cur: Cursor, utf8: bool = False) -> ListCommand:
    """
    The arguments of LIST (the cursor is after C{LIST }); L{ParseError} for BAD.
    C{utf8}: names are UTF-8, not modified UTF-7 (L{netsuite.imap.names}).
    """

    def _decode(raw: bytes) -> str:
        return pattern_from_wire(raw, utf8)

    extended = False
    select: set[bytes] = set()
    if cur.peek() == 0x28:
        extended = True
        for opt in cur.plist():
            if not isinstance(opt, bytes) or opt.upper() not in SELECT_OPTIONS:
                raise ParseError("Unknown LIST selection option")
            select.add(opt.upper())
        cur.sp()
        # RFC 5258 3.1: RECURSIVEMATCH needs an option it can recurse on (REMOTE is not one).
        if b"RECURSIVEMATCH" in select and not select & {b"SUBSCRIBED", b"SPECIAL-USE"}:
            raise ParseError("RECURSIVEMATCH needs another selection option")
    ref = _decode(cur.astring())
    cur.sp()
    if cur.peek() == 0x28:
        extended = True
        cur.pos += 1
        patterns = [_decode(cur.list_mailbox())]
        while cur.maybe(b" "):
            patterns.append(_decode(cur.list_mailbox()))
        cur.expect(b")")
    else:
        patterns = [_decode(cur.list_mailbox())]
    returns: set[bytes] = set()
    status: list[str] = []
    if cur.maybe(b" "):
        word = cur.atom()
        if word.upper() != b"RETURN":
            raise ParseError("Expected RETURN")
        extended = True
        cur.sp()
        opts = cur.plist()
        i = 0
        while i < len(opts):
            opt = opts[i]
            if not isinstance(opt, bytes) or opt.upper() not in RETURN_OPTIONS:
                raise ParseError("Unknown LIST return option")
            opt = opt.upper()
            if opt == b"STATUS":
                i += 1
                if i >= len(opts) or not isinstance(opts[i], list) or not opts[i]:
                    raise ParseError("RETURN STATUS needs a list of items")
                if any(not isinstance(s, bytes) for s in opts[i]):
                    raise ParseError("Bad STATUS item")
                status = [s.upper().decode("ascii", "replace") for s in opts[i]]
            returns.add(opt)
            i += 1
    cur.end()
    return ListCommand(ref, patterns, select, returns, status, extended)

"""
SORT and THREAD as pure functions (RFC 5256, RFC 5957): the per-message sort
keys taken from a header block (L{SortInfo}, small enough to keep in the
message cache), the sort order, THREAD=ORDEREDSUBJECT, THREAD=REFERENCES
and the rendering of a thread tree.  No session, no disk.

The thread tree is walked with explicit stacks, never by recursion: one
reply chain of thousands of messages is an ordinary mailing-list folder.
"""

from __future__ import annotations

import calendar
import email.utils
import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from netsuite.imap.message import _split_groups, decoded
from netsuite.imap.wire_sort import base_subject

_MSGID = re.compile(rb"<([^<>]*)>")
#: The header fields the keys come from, each with its continuation lines (LF or CRLF).
_FIELDS = re.compile(rb"^(subject|from|to|cc|date|message-id|references|in-reply-to)[ \t]*:"
                     rb"([^\n]*(?:\n[ \t][^\n]*)*)", re.I | re.M)
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
#: The usual Date: form (RFC 5322 3.3), parsed without email.utils (4x faster).
_DATE = re.compile(rb"\s*(?:[A-Za-z]{3},\s*)?(\d{1,2})\s+([A-Za-z]{3})\s+(\d{4})\s+"
                   rb"(\d\d):(\d\d)(?::(\d\d))?\s+([+-])(\d\d)(\d\d)\s*(?:\([^()]*\))?\s*$")
_MONTHS = {m: n for n, m in enumerate(
    [b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
     b"dec"], 1)}


def casemap(text: str) -> str:
    """i;unicode-casemap (RFC 5051) as Dovecot applies it: upper case, decomposed (NFKD)."""
    return text if text.isascii() else unicodedata.normalize("NFKD", text.upper())


#: Key groups of a L{SortInfo}, each derived from its own header fields only when a
#: SORT or THREAD first needs it (as Dovecot reads only the fields a sort key needs).
SUBJECT, DATE, FROM, TO, CC, IDS = 1, 2, 4, 8, 16, 32
EVERY = SUBJECT | DATE | FROM | TO | CC | IDS
#: The header fields kept for the groups not derived yet, in L{SortInfo.raw} order.
RAW_FIELDS = (b"subject", b"date", b"from", b"to", b"cc", b"message-id", b"references",
              b"in-reply-to")
_RAW_INDEX = {name: i for i, name in enumerate(RAW_FIELDS)}
#: The same, also by the names' usual spellings (most headers: no lower() per field).
_SPELT = {**_RAW_INDEX, **{n.title(): i for n, i in _RAW_INDEX.items()},
          b"Message-ID": 5, b"In-Reply-To": 7, b"CC": 4}
#: The group each of RAW_FIELDS is for.
_RAW_GROUP = (SUBJECT, DATE, FROM, TO, CC, IDS, IDS, IDS)
#: The groups each sort key and thread algorithm needs.
NEEDS = {"ARRIVAL": 0, "SIZE": 0, "SUBJECT": SUBJECT, "DATE": DATE, "FROM": FROM,
         "DISPLAYFROM": FROM, "TO": TO, "DISPLAYTO": TO, "CC": CC,
         "REFERENCES": IDS | SUBJECT | DATE, "ORDEREDSUBJECT": SUBJECT | DATE}


@dataclass(slots=True)
class SortInfo:
    """
    What SORT and THREAD need of one message's header (all of it derived, none
    raw), or of the groups in C{todo} not yet: their header fields wait in C{raw}
    until L{derive} is asked for them.
    """

    subject: str = ""        #: base subject, upper-cased
    refwd: bool = False      #: the subject was a reply or forward
    date: float | None = None  #: Date: as Unix time, None if missing or bad
    from_: str = ""          #: addr-mailbox of the first From address, upper-cased
    to: str = ""
    cc: str = ""
    display_from: str = ""   #: RFC 5957 display name (or address), upper-cased
    display_to: str = ""
    msgid: str = ""          #: Message-ID without the brackets, "" if none
    #: Parent chain, oldest first (an empty one is C{()}: no list per message).
    refs: Sequence[str] = ()
    todo: int = 0            #: key groups not derived yet
    #: The RAW_FIELDS values as in the header (None if absent) while C{todo}: a tuple
    #: of bytes, which the collector stops tracking (10k messages: 10k objects fewer
    #: for each of its full passes, and fewer of those passes).
    raw: tuple[bytes | None, ...] | None = None

    def encode(self) -> bytes:
        """
        JSON of the derived keys; if some are not derived yet, then C{todo} and,
        after a line end, their header fields as header lines (re-read by
        L{header_fields}).  Nothing derived yet (a first read): only those lines,
        after a line end (no JSON and no escaping to pay for at a first read).
        """
        raw = self.raw
        todo = self.todo
        if todo and raw is not None:
            lines = b"\n".join([RAW_FIELDS[i] + b":" + r for i, r in enumerate(raw)
                                if r is not None and todo & _RAW_GROUP[i]])
            if todo == EVERY:
                return b"\n" + lines
        v: list[Any] = [self.subject, self.refwd, self.date, self.from_, self.to, self.cc,
                        self.display_from, self.display_to, self.msgid, self.refs]
        if not self.todo or raw is None:
            return _JSON.encode(v).encode("utf-8", "surrogatepass")
        v.append(self.todo)
        return _JSON.encode(v).encode("utf-8", "surrogatepass") + b"\n" + lines

    @classmethod
    def decode(cls, data: bytes) -> "SortInfo | None":
        keys, _, fields = data.partition(b"\n")  # (JSON escapes every line end it holds)
        if not keys:
            return header_fields(fields)
        try:
            v = json.loads(keys)
            info = cls(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9] or ())
            if len(v) > 10:
                info.todo = int(v[10]) & EVERY
                info.raw = header_fields(fields).raw
        except (ValueError, IndexError, TypeError):
            return None
        return info


def _message_ids(value: bytes | None) -> list[str]:
    if not value:
        return []
    return [m.decode("utf-8", "replace").strip() for m in _MSGID.findall(value)
            if m.strip() and b" " not in m.strip()]


#: The usual first address: C{Name <local@domain>}, C{"Name" <local@domain>} or
#: C{local@domain}, followed by a comma or the end (anything else: the full parser).
_NAME_ADDR = re.compile(r'\s*(?:"([^"\\]*)"|([^",<>()@;:\\\[\]]*?))\s*'
                        r'<([^<>@\s",;:()]+)@([^<>\s",;:()]*)>\s*(?:,|$)')
_ADDR_SPEC = re.compile(r'\s*([^<>@\s",;:()\[\]]+)@([^<>\s",;:()\[\]]+)\s*(?:,|$)')


def _decoded(value: str) -> str:
    """RFC 2047 decoding, skipped (it is slow) when there is no encoded word."""
    return decoded(value.encode("utf-8", "surrogateescape")) if "=?" in value else value


def _first_address(value: bytes | None) -> tuple[str, str]:
    """(addr-mailbox, RFC 5957 display string) of the first address of a header."""
    if not value:
        return "", ""
    text = value.decode("utf-8", "surrogateescape")
    m = _NAME_ADDR.match(text) if "<" in text else None  # (it needs one: a bare address skips it)
    if m is not None:
        name = _decoded((m.group(1) if m.group(1) is not None else m.group(2)).strip())
        return m.group(3), name.strip() or f"{m.group(3)}@{m.group(4)}"
    m = _ADDR_SPEC.match(text)
    if m is not None:
        return m.group(1), f"{m.group(1)}@{m.group(2)}"
    for group, members in _split_groups(text):
        if group is not None:
            # As Dovecot: a group's first "address" is the group name.
            return group, decoded(group.encode("utf-8", "surrogateescape"))
        for name, addr in email.utils.getaddresses([members]):
            if not (name or addr):
                continue
            mailbox = addr.rpartition("@")[0] if "@" in addr else addr
            shown = decoded(name.encode("utf-8", "surrogateescape")).strip() if name else ""
            return mailbox, shown or addr
        break
    return "", ""


def header_fields(header: bytes) -> SortInfo:
    """
    A message's keys still to derive (L{derive}): only the header fields they come
    from, each its first occurrence (from a header block, LF or CRLF ends).
    """
    raw: list[bytes | None] = [None] * len(RAW_FIELDS)
    spelt = _SPELT
    for name, value in reversed(_FIELDS.findall(header)):  # (reversed: the first one stays)
        i = spelt.get(name)
        raw[i if i is not None else _RAW_INDEX[name.lower()]] = value
    return SortInfo(todo=EVERY, raw=tuple(raw))


def _unfolded(value: bytes | None) -> bytes | None:
    """A raw field's value unfolded and stripped (done when derived: most are never)."""
    if value is None:
        return None
    return (_FOLD.sub(b" ", value) if b"\n" in value else value).strip()


def sort_info(header: bytes) -> SortInfo:
    """The sort keys of a message from its header block (LF or CRLF line ends), all derived."""
    info = header_fields(header)
    derive(info, EVERY)
    return info


def _date(date: bytes | None) -> float | None:
    m = _DATE.match(date) if date else None
    month = _MONTHS.get(m.group(2).lower()) if m else None
    if m is not None and month is not None:
        day, year, hh, mm = int(m.group(1)), int(m.group(3)), int(m.group(4)), int(m.group(5))
        offset = (int(m.group(8)) * 60 + int(m.group(9))) * (-60 if m.group(7) == b"-" else 60)
        try:
            return float(calendar.timegm((year, month, day, hh, mm,
                                          int(m.group(6) or 0), 0, 0, 0)) - offset)
        except (ValueError, OverflowError):
            return None
    if date:
        try:
            parsed = email.utils.parsedate_tz(date.decode("ascii", "replace"))
            return None if parsed is None else float(email.utils.mktime_tz(parsed))
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return None


def derive(info: SortInfo, need: int) -> None:
    """Derive the key groups of C{need} that C{info} does not have yet, from its C{raw}."""
    want = info.todo & need
    raw = info.raw
    if not want or raw is None:
        return
    if want & SUBJECT:
        subj = _unfolded(raw[0])
        text = "" if subj is None else subj.decode("utf-8", "replace")
        subject, info.refwd = base_subject(_decoded(text) if b"=?" in (subj or b"") else text)
        info.subject = casemap(subject)
    if want & DATE:
        info.date = _date(_unfolded(raw[1]))
    if want & FROM:
        frm, display = _first_address(_unfolded(raw[2]))
        info.from_, info.display_from = frm.upper(), casemap(display.upper())
    if want & TO:
        to, display = _first_address(_unfolded(raw[3]))
        info.to, info.display_to = to.upper(), casemap(display.upper())
    if want & CC:
        info.cc = _first_address(_unfolded(raw[4]))[0].upper()
    if want & IDS:
        ids = _message_ids(_unfolded(raw[5]))
        info.msgid = ids[0] if ids else ""
        info.refs = _message_ids(_unfolded(raw[6])) or _message_ids(_unfolded(raw[7]))[:1] or ()
    info.todo &= ~want
    if not info.todo:
        info.raw = None


# -- SORT --------------------------------------------------------------------------------------

@dataclass(slots=True)
class Item:
    """One message to sort or thread: its number in the answer and its keys."""

    num: int        #: message number or UID, as the answer gives it
    seq: int        #: message sequence number (the final tie-break)
    uid: int
    info: SortInfo
    arrival: float  #: INTERNALDATE
    size: int

    @property
    def sent(self) -> float:
        """RFC 5256: the Date: header, or INTERNALDATE if it has none that parses."""
        return self.info.date if self.info.date is not None else self.arrival


#: Each sort key's value, from a message's keys, INTERNALDATE and size (RFC 5256: DATE is
#: the Date: header, or the INTERNALDATE if it has none that parses).
COLUMNS: dict[str, Callable[[SortInfo, float, int], Any]] = {
    "ARRIVAL": lambda info, arrival, size: arrival,
    "CC": lambda info, arrival, size: info.cc,
    "DATE": lambda info, arrival, size: info.date if info.date is not None else arrival,
    "FROM": lambda info, arrival, size: info.from_,
    "SIZE": lambda info, arrival, size: size,
    "SUBJECT": lambda info, arrival, size: info.subject,
    "TO": lambda info, arrival, size: info.to,
    "DISPLAYFROM": lambda info, arrival, size: info.display_from,
    "DISPLAYTO": lambda info, arrival, size: info.display_to,
}


def sort_order(columns: Sequence[tuple[Sequence[Any], bool]], count: int) -> list[int]:
    """
    The positions 0..count-1 of messages in sequence order, in SORT order: each
    criterion gives its key values (a column, by position) and whether it is
    REVERSE.  Stable sorts from the last criterion to the first, so ties keep
    sequence order, and REVERSE reverses its key only.  Columns of plain values,
    not an object per message: nothing for the collector to walk.
    """
    order = list(range(count))
    for column, reverse in reversed(columns):
        order.sort(key=column.__getitem__, reverse=reverse)
    return order


def sort_items(items: Sequence[Item], criteria: Sequence[tuple[str, bool]]) -> list[Item]:
    """C{items} in SORT order (L{sort_order} over their keys)."""
    ordered = sorted(items, key=lambda i: i.seq)
    order = sort_order([([COLUMNS[name](i.info, i.arrival, i.size) for i in ordered], reverse)
                        for name, reverse in criteria], len(ordered))
    return [ordered[k] for k in order]


# -- THREAD ------------------------------------------------------------------------------------

class Node:
    """A thread container: a message (C{item}) or a dummy (None)."""

    __slots__ = ("item", "parent", "children")

    def __init__(self, item: Item | None = None):
        self.item = item
        self.parent: Node | None = None
        self.children: list[Node] = []


def _link(parent: Node, child: Node) -> None:
    child.parent = parent
    parent.children.append(child)


def _unlink(child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
        child.parent = None


def _reaches(node: Node | None, target: Node) -> bool:
    """Whether C{target} is C{node} or one of its ancestors."""
    while node is not None:
        if node is target:
            return True
        node = node.parent
    return False


def _postorder(roots: Sequence[Node]) -> list[Node]:
    """Every node under C{roots} (not the roots), children before their parent."""
    order: list[Node] = []
    stack = [k for r in roots for k in r.children]
    while stack:
        n = stack.pop()
        order.append(n)
        stack.extend(n.children)
    order.reverse()
    return order


def release(roots: Sequence[Node]) -> None:
    """
    Unlink a thread tree once rendered: its parent/child links are cycles, which
    only the collector's full (slow, whole-heap) pass would free; unlinked, the
    nodes go at once and do not bring that pass on.
    """
    for n in _postorder(roots):
        n.parent = None
        n.children = []
    for r in roots:
        r.children = []


def _date_key(node: Node) -> tuple[float, int]:
    while node.item is None:  # a dummy sorts as its first child
        node = node.children[0]
    return node.item.sent, node.item.seq


def _sort_siblings(roots: list[Node]) -> None:
    for n in _postorder(roots):
        if len(n.children) > 1:
            n.children.sort(key=_date_key)
    for r in roots:
        if len(r.children) > 1:
            r.children.sort(key=_date_key)
    roots.sort(key=_date_key)


def thread_references(items: Sequence[Item]) -> list[Node]:
    """RFC 5256 THREAD=REFERENCES: the sorted root set."""
    table: dict[str, Node] = {}
    every: list[Node] = []
    for it in sorted(items, key=lambda i: i.seq):
        info = it.info
        # (1A) the message's container; a duplicate Message-ID gets a unique one.
        node = table.get(info.msgid) if info.msgid else None
        if node is None or node.item is not None:
            node = Node()
            every.append(node)
            if info.msgid and info.msgid not in table:
                table[info.msgid] = node
        node.item = it
        # (1B) link the references, oldest first, without changing existing links.
        prev: Node | None = None
        for ref in info.refs:
            c = table.get(ref)
            if c is None:
                c = table[ref] = Node()
                every.append(c)
            if prev is not None and c.parent is None and not _reaches(prev, c):
                _link(prev, c)
            prev = c
        # (1C) the last reference is the parent: this replaces any presumed one.
        _unlink(node)
        if prev is not None and not _reaches(prev, node):
            _link(prev, node)
    # (2) the root set, (3) pruned.
    roots = _prune([n for n in every if n.parent is None])
    # (4) sorted by date.
    _sort_siblings(roots)
    # (5) grouped by base subject.
    roots = _group_by_subject(roots)
    # (6) every set of siblings sorted by date.
    _sort_siblings(roots)
    return roots


def _prune(roots: list[Node]) -> list[Node]:
    """RFC 5256 step 3: dummies without children go, others give their children up."""

    def kept(children: list[Node], top: bool) -> list[Node]:
        out: list[Node] = []
        for k in children:
            if k.item is not None:
                out.append(k)
            elif not k.children:
                continue
            elif top and len(k.children) > 1:
                out.append(k)
            else:
                out.extend(k.children)
        return out

    for n in _postorder(roots):
        if n.children:
            n.children = kept(n.children, False)
            for k in n.children:
                k.parent = n
    for r in roots:
        if r.children:
            r.children = kept(r.children, False)
            for k in r.children:
                k.parent = r
    out = kept(roots, True)
    for r in out:
        r.parent = None
    return out


def _first_info(node: Node) -> SortInfo:
    item = node.item if node.item is not None else node.children[0].item
    assert item is not None  # a dummy's children are messages after pruning
    return item.info


def _group_by_subject(roots: list[Node]) -> list[Node]:
    """RFC 5256 step 5: roots with the same base subject become one thread."""
    table: dict[str, Node] = {}
    for r in roots:
        subject = _first_info(r).subject
        if not subject:
            continue
        old = table.get(subject)
        if old is None or (old.item is not None and (
                r.item is None or (old.item.info.refwd and not r.item.info.refwd))):
            table[subject] = r
    result: list[Node | None] = list(roots)
    where = {id(r): i for i, r in enumerate(roots)}
    for r in roots:
        if r.parent is not None:  # wrapped under a new dummy already
            continue
        subject = _first_info(r).subject
        t = table.get(subject) if subject else None
        if t is None or t is r:
            continue
        result[where.pop(id(r))] = None
        if t.item is None and r.item is None:
            for k in r.children:
                k.parent = None
                _link(t, k)
            r.children = []
        elif t.item is None or (r.item is not None and r.item.info.refwd and
                                not t.item.info.refwd):
            _link(t, r)
        else:
            d = Node()
            i = where.pop(id(t))
            _link(d, t)
            _link(d, r)
            result[i] = d
            where[id(d)] = i
            table[subject] = d
    return [n for n in result if n is not None]


def thread_ordered_subject(items: Sequence[Item]) -> list[Node]:
    """RFC 5256 THREAD=ORDEREDSUBJECT: by base subject, then date; one level deep."""
    ordered = sorted(items, key=lambda i: (i.info.subject, i.sent, i.seq))
    roots: list[Node] = []
    last: str | None = None
    for it in ordered:
        if roots and it.info.subject == last:
            _link(roots[-1], Node(it))
        else:
            roots.append(Node(it))
            last = it.info.subject
    roots.sort(key=_date_key)
    return roots


def render_threads(roots: Sequence[Node]) -> bytes:
    """The THREAD response's thread lists: C{(3 2)(1 (4)(5))}."""
    out: list[bytes] = []
    stack: list[Node | bytes] = list(reversed(roots))
    while stack:
        top = stack.pop()
        if isinstance(top, bytes):
            out.append(top)
            continue
        node = top
        nums: list[bytes] = []
        while node.item is not None:
            nums.append(b"%d" % node.item.num)
            if len(node.children) != 1:
                break
            node = node.children[0]
        out.append(b"(" + b" ".join(nums))
        stack.append(b")")
        kids = node.children
        if kids:
            stack.extend(reversed(kids))
            if nums:
                stack.append(b" ")
    return b"".join(out)

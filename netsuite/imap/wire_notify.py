"""
The NOTIFY command's grammar (RFC 5465 8), as a pure function of a Cursor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netsuite.imap.wire import Cursor, FetchAtt, ParseError, parse_fetch_atts

#: Events netsuite delivers (RFC 5465 5); any other is refused with BADEVENT.
SUPPORTED = ("MessageNew", "MessageExpunge", "FlagChange", "MailboxName", "SubscriptionChange")
_KNOWN = {e.upper(): e for e in SUPPORTED + (
    "AnnotationChange", "MailboxMetadataChange", "ServerMetadataChange")}
_FILTERS = ("SELECTED", "SELECTED-DELAYED", "INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE",
            "MAILBOXES")


@dataclass
class EventGroup:
    #: SELECTED, SELECTED-DELAYED, INBOXES, PERSONAL, SUBSCRIBED, SUBTREE or MAILBOXES.
    filter: str
    #: The mailbox names of SUBTREE and MAILBOXES (as on the wire: not yet canonical).
    mailboxes: tuple[bytes, ...] = ()
    #: Event names as RFC 5465 spells them; empty for NONE.
    events: list[str] = field(default_factory=list)
    #: MessageNew's fetch attributes (only meaningful for the selected mailbox).
    fetch: list[FetchAtt] = field(default_factory=list)


@dataclass
class NotifySpec:
    status: bool
    groups: list[EventGroup]


def parse_notify(cur: Cursor) -> NotifySpec | None:
    """C{SET [STATUS] (filter events)...} -> a NotifySpec; C{NONE} -> None."""
    word = cur.atom().upper()
    if word == b"NONE":
        cur.end()
        return None
    if word != b"SET":
        raise ParseError("NOTIFY takes SET or NONE")
    cur.sp()
    status = False
    if cur.text[cur.pos:cur.pos + 7].upper() == b"STATUS ":
        cur.pos += 7
        status = True
    groups = [_group(cur)]
    while cur.maybe(b" "):
        groups.append(_group(cur))
    cur.end()
    return NotifySpec(status, groups)


def _group(cur: Cursor) -> EventGroup:
    cur.expect(b"(")
    name = cur.atom().upper().decode("ascii", "replace")
    if name not in _FILTERS:
        raise ParseError(f"Unknown NOTIFY mailbox filter {name}")
    group = EventGroup(name)
    if name in ("SUBTREE", "MAILBOXES"):
        cur.sp()
        if cur.maybe(b"("):
            boxes = [cur.astring()]
            while not cur.maybe(b")"):
                cur.sp()
                boxes.append(cur.astring())
        else:
            boxes = [cur.astring()]
        group.mailboxes = tuple(boxes)
    cur.sp()
    if cur.text[cur.pos:cur.pos + 4].upper() == b"NONE":
        cur.pos += 4
    else:
        cur.expect(b"(")
        while True:
            word = cur.atom().decode("ascii", "replace")
            event = _KNOWN.get(word.upper(), word)
            group.events.append(event)
            if event == "MessageNew" and cur.text[cur.pos:cur.pos + 2] == b" (":
                cur.pos += 1
                group.fetch = parse_fetch_atts(cur)
            if cur.maybe(b")"):
                break
            cur.sp()
    cur.expect(b")")
    return group

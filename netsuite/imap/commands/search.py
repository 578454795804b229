"""
SEARCH: every RFC 3501 key, a big folder searched a batch per reactor turn.
"""

from __future__ import annotations

import datetime as dt

from netsuite.imap import wire
from netsuite.imap.commands import SessionBase
from netsuite.imap.commands.fetch import FETCH_BATCH
from netsuite.imap.message import Part, decoded, sent_date
from netsuite.imap.wire import ParseError


class SearchCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    def imap_SEARCH(self, tag, cur, uid=False):
        if cur.text[cur.pos:cur.pos + 8].upper() == b"CHARSET ":
            cur.pos += 8
            charset = cur.astring().upper()
            cur.sp()
            if charset not in (b"US-ASCII", b"UTF-8"):
                self._tagged(tag, b"NO", b"[BADCHARSET (US-ASCII UTF-8)] Unsupported charset",
                             allow_expunge=uid)
                return
        keys = wire.parse_search(cur)
        mbox = self.mbox
        uids = list(mbox.uids)
        found: list[int] = []
        star_seq = len(uids)
        star_uid = uids[-1] if uids else 0

        def scan():
            for seq, u in enumerate(uids, 1):
                msg = mbox.message(u)
                if msg is not None:
                    ctx = _SearchContext(mbox, seq, msg, star_seq, star_uid)
                    if all(ctx.match(k) for k in keys):
                        found.append(u if uid else seq)
                if seq % FETCH_BATCH == 0:
                    yield None

        def done(_=None):
            self.send(b"* SEARCH" + b"".join(b" %d" % n for n in found))
            self._tagged(tag, b"OK", b"SEARCH completed", allow_expunge=uid)

        if len(uids) <= FETCH_BATCH:
            for _ in scan():
                pass
            done()
            return None
        # A big folder is searched a batch per reactor turn: other sessions go on.
        return self._cooperate(scan()).addCallback(done)


class _SearchContext:
    """Evaluates search keys for one message, reading its file only if a key needs it."""

    def __init__(self, mbox, seq: int, msg, star_seq: int, star_uid: int):
        self.mbox = mbox
        self.seq = seq
        self.msg = msg
        self.star_seq = star_seq
        self.star_uid = star_uid
        self._part: Part | None = None

    @property
    def part(self) -> Part:
        if self._part is None:
            try:
                self._part = Part(self.mbox.read(self.msg))
            except KeyError:
                self._part = Part(b"\r\n")
        return self._part

    def _text(self, value: bytes) -> str:
        return value.decode("utf-8", "replace").lower()

    def match(self, key) -> bool:
        op = key[0]
        m = self.msg
        mbox = self.mbox
        if op == "ALL":
            return True
        if op == "AND":
            return all(self.match(k) for k in key[1])
        if op == "NOT":
            return not self.match(key[1])
        if op == "OR":
            return self.match(key[1]) or self.match(key[2])
        if op == "SEQ":
            return key[1].contains(self.seq, self.star_seq)
        if op == "UID":
            return key[1].contains(m.uid, self.star_uid)
        flag = {"ANSWERED": "\\Answered", "DELETED": "\\Deleted", "DRAFT": "\\Draft",
                "FLAGGED": "\\Flagged", "SEEN": "\\Seen"}
        if op in flag:
            return m.has(flag[op])
        if op.startswith("UN") and op[2:] in flag:
            return not m.has(flag[op[2:]])
        if op == "KEYWORD":
            return m.has(key[1])
        if op == "UNKEYWORD":
            return not m.has(key[1])
        if op == "RECENT":
            return m.uid in mbox.recent
        if op == "OLD":
            return m.uid not in mbox.recent
        if op == "NEW":
            return m.uid in mbox.recent and not m.has("\\Seen")
        if op == "LARGER":
            return mbox.size_of(m) > key[1]
        if op == "SMALLER":
            return mbox.size_of(m) < key[1]
        if op in ("BEFORE", "ON", "SINCE"):
            day = dt.date.fromtimestamp(mbox.date_of(m))
            return _compare_date(op, day, key[1])
        if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            day = sent_date(self.part)
            return day is not None and _compare_date(op[4:], day, key[1])
        if op in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
            needle = self._text(key[1])
            return any(needle in decoded(v).lower() for v in self.part.get_all(op.lower().encode()))
        if op == "HEADER":
            name = key[1].lower()
            needle = self._text(key[2])
            values = self.part.get_all(name)
            return bool(values) and any(needle in decoded(v).lower() for v in values)
        if op == "BODY":
            return self._text(key[1]) in self._text(self.part.body)
        if op == "TEXT":
            needle = self._text(key[1])
            return needle in self._text(self.part.data) or any(
                needle in decoded(v).lower() for _, v in self.part.fields)
        raise ParseError(f"Unknown search key {op}")


def _compare_date(op: str, day, ref) -> bool:
    if op == "BEFORE":
        return day < ref
    if op == "ON":
        return day == ref
    return day >= ref

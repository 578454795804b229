"""
SEARCH: every RFC 3501 key, a big folder searched a batch per reactor turn; the
RETURN options of ESEARCH (RFC 4731) and SEARCHRES (RFC 5182).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from twisted.internet import defer

from netsuite.imap import wire, wire_sort
from netsuite.imap.commands import SessionBase
from netsuite.imap.commands.fetch import FETCH_BATCH
from netsuite.imap.message import Part, address_text, decoded, sent_date
from netsuite.imap.objectid import save_date
from netsuite.imap.wire import ParseError


class SearchCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    if TYPE_CHECKING:  # ContextCommands provides it
        def _start_context(self, tag: bytes, keys: list, uid: bool,
                           matched: list[int]) -> bytes | None: ...

    def imap_SEARCH(self, tag, cur, uid=False):
        options = wire_sort.parse_return(cur)
        if cur.text[cur.pos:cur.pos + 8].upper() == b"CHARSET ":
            cur.pos += 8
            if b"UTF8=ACCEPT" in self.enabled:  # RFC 6855 3: conflicting charset labels
                if options is not None and "SAVE" in options:
                    self.mbox.saved = set()
                raise ParseError("No CHARSET in SEARCH after ENABLE UTF8=ACCEPT (RFC 6855 3)")
            charset = cur.astring().upper()
            cur.sp()
            if charset not in (b"US-ASCII", b"UTF-8"):
                if options is not None and "SAVE" in options:
                    self.mbox.saved = set()  # RFC 5182 2.1: a failed SEARCH empties $
                self._tagged(tag, b"NO", b"[BADCHARSET (US-ASCII UTF-8)] Unsupported charset",
                             allow_expunge=uid)
                return
        keys = self._parse_search_keys(cur, options)
        if options is None and self._rev2():
            options = wire_sort.ReturnOptions(["ALL"])  # RFC 9051 6.4.4: ESEARCH, ALL
        #: RFC 7162 3.1.5: a MODSEQ key makes the answer carry the highest MODSEQ found.
        with_modseq = _uses_modseq(keys)
        if with_modseq:
            self._condstore_used()

        def done(pairs):
            extra = self._modseq_data(pairs, options) if with_modseq else b""
            if options is None:
                self.send(b"* SEARCH" + b"".join(b" %d" % (u if uid else seq)
                                                 for seq, u in pairs) +
                          (b" (" + extra + b")" if extra else b""))
            else:
                self._search_return(tag, uid, options, [u if uid else seq for seq, u in pairs],
                                    [u for _, u in pairs], (extra,) if extra else ())
                if "UPDATE" in options:  # CONTEXT=SEARCH (RFC 5267)
                    refused = self._start_context(tag, keys, uid, [u for _, u in pairs])
                    if refused is not None:
                        self._tagged(tag, b"OK", refused, allow_expunge=uid)
                        return
            self._tagged(tag, b"OK", b"SEARCH completed", allow_expunge=uid)

        return then(self._search_pairs(keys), done)

    def _parse_search_keys(self, cur, options) -> list:
        """Search keys; a SEARCH ... RETURN (SAVE) that fails empties $ (RFC 5182 2.1)."""
        try:
            keys = wire.parse_search(cur)
            self._rev2_check_keys(keys)  # no RECENT, NEW, OLD after ENABLE IMAP4rev2
            return keys
        except ParseError:
            if options is not None and "SAVE" in options:
                self.mbox.saved = set()
            raise

    def _modseq_data(self, pairs, options) -> bytes:
        """
        C{MODSEQ n}: the highest MODSEQ of the matches, or, for an ESEARCH
        returning only MIN and/or MAX, of the messages it returns (RFC 7162
        3.1.5, 3.1.10); nothing when nothing matched.
        """
        if not pairs:
            return b""
        chosen = pairs
        if options is not None and options and set(options) <= {"MIN", "MAX"}:
            chosen = ([pairs[0]] if "MIN" in options else []) + \
                ([pairs[-1]] if "MAX" in options else [])
        mbox = self.mbox
        top = max(mbox.modseq_of(m) for m in (mbox.message(u) for _, u in chosen)
                  if m is not None)
        return b"MODSEQ %d" % top

    def _search_return(self, tag: bytes, uid: bool, options, nums: list[int],
                       uids: list[int], extra: tuple[bytes, ...] = ()) -> None:
        """
        The answer of a SEARCH/SORT with RETURN options: C{nums} as the client
        numbers them (in the command's order), C{uids} the same messages' UIDs.
        """
        if "SAVE" in options:
            self.mbox.saved = set(wire_sort.to_save(options, uids))
            if len(options) == 2 and getattr(options, "implied_all", False):
                return  # SAVE alone: no ESEARCH (RFC 5182 2.1)
        self.send(wire_sort.esearch(tag, uid, options, nums, extra))

    def _search_pairs(self, keys):
        """
        (seq, uid) of the messages matching C{keys}, in order: a list, or a
        Deferred of one when the folder is big (a batch per reactor turn) or
        when keys that read the messages must wait for their bodies
        (L{netsuite.store.IMailFolder.bodies_ready}).
        """
        if _reads_text(keys):
            by_uid = self.mbox.message
            ready = self.mbox.bodies_ready(
                m for u in list(self.mbox.uids) if (m := by_uid(u)) is not None)
            if ready is not None:
                return ready.addCallback(lambda _: self._search_scan(keys))
        return self._search_scan(keys)

    def _search_scan(self, keys):
        mbox = self.mbox
        uids = list(mbox.uids)
        found: list[tuple[int, int]] = []
        star_seq = len(uids)
        star_uid = uids[-1] if uids else 0

        def scan():
            for seq, u in enumerate(uids, 1):
                msg = mbox.message(u)
                if msg is not None:
                    ctx = _SearchContext(mbox, seq, msg, star_seq, star_uid)
                    if all(ctx.match(k) for k in keys):
                        found.append((seq, u))
                if seq % FETCH_BATCH == 0:
                    yield None

        if keys == [("ALL",)]:  # SORT/THREAD ... ALL, the usual: nothing to evaluate
            if uids == mbox.folder.uids:  # and every message still there
                return list(enumerate(uids, 1))
            by_uid = mbox.message
            return [(seq, u) for seq, u in enumerate(uids, 1) if by_uid(u) is not None]
        if len(uids) <= FETCH_BATCH:
            for _ in scan():
                pass
            return found
        # A big folder is searched a batch per reactor turn: other sessions go on.
        return self._cooperate(scan()).addCallback(lambda _: found)


def then(value, f):
    """C{f(value)}, or C{f} added to C{value}'s callbacks if it is a Deferred."""
    if isinstance(value, defer.Deferred):
        return value.addCallback(f)
    return f(value)


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
        if op == "MODSEQ":
            return mbox.modseq_of(m) >= key[1]
        if op == "SAVED":  # $ (RFC 5182)
            return m.uid in mbox.saved
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
        if op == "SAVEDATESUPPORTED":
            return True
        if op in ("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):
            # RFC 8514 4: a message without a save date is searched by its internal date.
            saved = save_date(m)
            day = dt.date.fromtimestamp(mbox.date_of(m) if saved is None else saved)
            return _compare_date(op[5:], day, key[1])
        if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            day = sent_date(self.part)
            return day is not None and _compare_date(op[4:], day, key[1])
        if op in ("FROM", "TO", "CC", "BCC"):
            # The header as written, or its addresses written out again: the latter
            # finds user@domain.org in <user (comment)@ domain.org> as Dovecot does.
            needle = self._text(key[1])
            return any(needle in decoded(v).lower() or needle in address_text(v).lower()
                       for v in self.part.get_all(op.lower().encode()))
        if op == "SUBJECT":
            needle = self._text(key[1])
            return any(needle in decoded(v).lower() for v in self.part.get_all(b"subject"))
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


#: Search keys that read the message (its headers or text), not only the index.
_TEXT_KEYS = frozenset({"SENTBEFORE", "SENTON", "SENTSINCE", "FROM", "TO", "CC", "BCC",
                        "SUBJECT", "HEADER", "BODY", "TEXT"})


def _reads_text(keys) -> bool:
    """Whether any key reads the messages themselves (L{_TEXT_KEYS})."""
    return _has_key(keys, _TEXT_KEYS)


def _uses_modseq(keys) -> bool:
    """Whether a MODSEQ key occurs anywhere in parsed search keys."""
    return _has_key(keys, {"MODSEQ"})


def _has_key(keys, ops) -> bool:
    """Whether a key named in C{ops} occurs anywhere in parsed search keys (AND, NOT, OR)."""
    for key in keys:
        op = key[0]
        if op in ops:
            return True
        if op == "AND" and _has_key(key[1], ops):
            return True
        if op in ("NOT", "OR") and _has_key(key[1:], ops):
            return True
    return False


def _compare_date(op: str, day, ref) -> bool:
    if op == "BEFORE":
        return day < ref
    if op == "ON":
        return day == ref
    return day >= ref

"""
CONTEXT=SEARCH (RFC 5267): C{SEARCH RETURN (UPDATE)} keeps the search as a
context and the session tells the client, with C{ESEARCH ADDTO/REMOVEFROM},
whenever the set of matching messages changes; CANCELUPDATE ends it.

A context is evaluated again (the whole folder, synchronously) when a
command completes and the folder changed since its last look (HIGHESTMODSEQ,
message count, next UID and this session's view say so).  That is bounded:
at most L{MAX_CONTEXTS} per session, and contexts times messages at most
L{MAX_WATCHED}; beyond, the search is answered with C{[NOUPDATE]} (which
RFC 5267 4.2 allows).  SORT's contexts are always refused that way: only
PARTIAL of CONTEXT=SORT is done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from netsuite.imap import wire, wire_sort
from netsuite.imap.commands import SessionBase
from netsuite.imap.commands.search import _SearchContext

MAX_CONTEXTS = 8
#: Messages evaluated per command at most (contexts x folder size): bounds the
#: reactor turn a change costs.
MAX_WATCHED = 40_000


@dataclass
class SearchUpdate:
    """One search context: its keys, how it numbers, what matched at the last look."""

    keys: list
    uid: bool
    matched: set[int] = field(default_factory=set)
    signature: tuple = ()


def noupdate(tag: bytes, what: bytes) -> bytes:
    return b"[NOUPDATE " + wire.string(tag) + b"] " + what + b" completed, no updates"


class ContextCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    def imap_CANCELUPDATE(self, tag, cur):
        tags = [cur.string()]
        while cur.maybe(b" "):
            tags.append(cur.string())
        cur.end()
        contexts = self.mbox.contexts
        for t in tags:
            contexts.pop(t, None)
        self._tagged(tag, b"OK", b"CANCELUPDATE completed", allow_expunge=False)

    def _start_context(self, tag: bytes, keys: list, uid: bool, matched: list[int]) -> bytes | None:
        """Keep a SEARCH RETURN (UPDATE); the tagged OK text if it cannot be kept."""
        mbox = self.mbox
        watched = (len(mbox.contexts) + 1) * len(mbox.folder.messages)
        if len(mbox.contexts) >= MAX_CONTEXTS or watched > MAX_WATCHED:
            return noupdate(tag, b"SEARCH")
        mbox.contexts[tag] = SearchUpdate(keys, uid, set(matched), self._signature())
        return None

    def _signature(self) -> tuple:
        mbox = self.mbox
        folder = mbox.folder
        return (folder.highest_modseq, len(folder.messages), folder.next_uid, len(mbox.uids))

    def _context_changes(self) -> Callable[[], list[bytes]] | None:
        """
        Send REMOVEFROM for every context that lost messages, numbered as the
        client knows them now (before the EXPUNGEs about to go out); return
        what gives the ADDTOs, to be called once EXISTS went out.
        """
        mbox = self.mbox
        signature = self._signature()
        changed = [(t, c) for t, c in mbox.contexts.items() if c.signature != signature]
        if not changed:
            return None
        view = list(mbox.uids)
        last = view[-1] if view else 0
        fresh = [m.uid for m in mbox.folder.messages if m.uid > last]
        every = view + fresh
        star_seq, star_uid = len(every), every[-1] if every else 0
        later: list[tuple[bytes, SearchUpdate, list[int]]] = []
        for tag, ctx in changed:
            now = set()
            for seq, u in enumerate(every, 1):
                msg = mbox.message(u)
                if msg is not None:
                    sc = _SearchContext(mbox, seq, msg, star_seq, star_uid)
                    if all(sc.match(k) for k in ctx.keys):
                        now.add(u)
            gone = ctx.matched - now
            if gone:
                nums = list(gone) if ctx.uid else [s for u in gone if (s := mbox.seq(u))]
                if nums:
                    self.send(wire_sort.context_update(tag, ctx.uid, b"REMOVEFROM", nums))
            added = now - ctx.matched
            ctx.matched = now
            ctx.signature = signature
            if added:
                later.append((tag, ctx, sorted(added)))

        def additions() -> list[bytes]:
            out = []
            for tag, ctx, added in later:
                nums = added if ctx.uid else [s for u in added if (s := mbox.seq(u))]
                if nums:
                    out.append(wire_sort.context_update(tag, ctx.uid, b"ADDTO", nums))
            return out

        return additions

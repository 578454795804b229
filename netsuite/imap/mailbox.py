"""
A selected folder as one IMAP session sees it.

The store's L{Folder} is shared; each session keeps its own sequence-number
map (C{uids}) and queues what other sessions, deliveries and other programs
changed, so that EXPUNGE, EXISTS and FETCH FLAGS reach the client only where
RFC 3501 7.4.1 allows them (L{SessionMailbox.updates}).
"""

from __future__ import annotations

import bisect
import io
import weakref

from twisted.mail import imap4
from zope.interface import Attribute, implementer

from netsuite.imap import wire
from netsuite.imap.objectid import mailbox_id
from netsuite.store.cache import MessageCache, cache_for
from netsuite.store.folder import SYSTEM_FLAGS, Changes, Folder, Message


class ISessionMailbox(imap4.IMailboxInfo):
    """
    What netsuite's IMAP server needs of a selected folder.  Not Twisted's
    C{IMailbox}: netsuite renders FETCH, STORE, SEARCH and COPY itself (Twisted's
    renderings are wrong in places, TWISTED-GAPS.md), so only C{IMailboxInfo}
    of Twisted's interfaces is claimed.  Costs are for the Maildir store.
    """

    uids = Attribute("This session's message numbers: UIDs in order (list).")
    recent = Attribute("UIDs that are \\Recent in this session (set).")

    def updates(allow_expunge):
        """Untagged responses for what others changed (O(changes))."""

    def flags_update():
        """FLAGS and PERMANENTFLAGS again if the folder has keywords not yet announced."""

    def vanished_since(modseq, within, seq_match):
        """UIDs expunged after C{modseq} (QRESYNC): a sequence set (O(expunges) or O(n))."""

    def message(uid):
        """The index entry of C{uid}, or None (a bisect)."""

    def messages(uids):
        """Index entries of the C{uids} that still exist, in order."""

    def holds(folder):
        """Whether C{folder} (from the account) is the one selected."""

    def bodies_ready(msgs):
        """None, or a Deferred to wait for before reading many bodies (IMailFolder's)."""

    def copy_to(msgs, dest):
        """Copy into another folder: [(old uid, new uid)] (a hard link per message)."""

    def copy_many(msgs, dest):
        """L{copy_to} as a Deferred that fires once the copies are durable (fsyncs in a thread)."""

    def size_of(msg):
        """RFC822.SIZE (read once if the name does not say it)."""

    def date_of(msg):
        """INTERNALDATE, Unix seconds (a stat once)."""

    def snapshot():
        """The folder's messages if they are exactly this session's, else None (O(n))."""

    def refresh():
        """Pick up changes on disk (two stats when nothing changed)."""

    def set_flags(msgs, flags, mode):
        """STORE by this session: its own FETCH answers report it, not updates()."""

    def expunge_uids(uids):
        """Remove messages (one index write)."""

    def deleted():
        """UIDs of this session's messages flagged \\Deleted (O(n))."""

    def cached(msg, field):
        """A rendering of C{msg} kept in the folder's cache, or None (a dict lookup)."""

    def remember(msg, field, value):
        """Keep a rendering in the cache (buffered; see flush_cache)."""

    def flush_cache():
        """Write the cache's buffered records (one append)."""


class RenderedFlags:
    """
    Rendered C{FETCH 1:* (UID FLAGS)} chunks of one whole folder, shared by the
    sessions of this process: a client that re-reads a big folder's flags gets
    bytes rendered once.  Any change to the folder (the store calls every
    listener on every change, IMailStore.watch) drops them all; C{version}
    lets a FETCH that spans reactor turns keep only what it rendered before
    any change.
    """

    def __init__(self) -> None:
        self.version = 0
        self.chunks: dict[tuple, bytes] = {}

    def changed(self, folder: Folder, changes: Changes) -> None:
        self.version += 1
        self.chunks.clear()


_rendered: "weakref.WeakKeyDictionary[Folder, RenderedFlags]" = weakref.WeakKeyDictionary()


def rendered_flags(store, folder: Folder) -> RenderedFlags:
    found = _rendered.get(folder)
    if found is None:
        found = _rendered[folder] = RenderedFlags()
        store.watch(folder, found.changed)
    return found


@implementer(ISessionMailbox)
class SessionMailbox:
    """One session's view of one folder; see the module docstring."""

    def __init__(self, store, user: str, folder: Folder, writeable: bool):
        #: The mail store (not C{store}: that is IMailbox.store, the STORE command).
        self._store = store
        self.user = user
        self.folder = folder
        self.writeable = writeable
        folder.refresh()
        self.uids: list[int] = list(folder.uids)
        #: EXAMINE shows what is \Recent without taking it (RFC 3501 6.3.2): a later
        #: SELECT, here or elsewhere, still gets it.
        self.recent: set[int] = folder.claim_recent() if writeable else self._unclaimed()
        self._expunged: set[int] = set()
        self._flag_changed: set[int] = set()
        self._grown = False
        #: Keywords this session's client was told of in FLAGS (see flags_update).
        self._announced: set[str] = set(folder.keywords)
        #: Set while this session changes flags itself (it reports them itself).
        self.quiet = False
        #: RFC 7162, set by the session: flag updates carry MODSEQ (CONDSTORE),
        #: expunges are told as VANISHED (QRESYNC).
        self.condstore = False
        self.qresync = False
        #: IMAP4rev2 (RFC 9051) has no \Recent: what the session claims is not shown,
        #: and no RECENT response is sent (set by the session, see set_no_recent).
        self.no_recent = False
        self.on_change = None
        store.watch(folder, self._changed)
        self._rendered = rendered_flags(store, folder)
        self._cache: MessageCache | None = None
        #: SEARCHRES's saved result, C{$} (RFC 5182): UIDs; a new selection starts empty.
        self.saved: set[int] = set()
        #: CONTEXT=SEARCH's searches kept up to date, by tag (netsuite.imap.commands.context).
        self.contexts: dict = {}

    def close(self) -> None:
        self._store.unwatch(self.folder, self._changed)

    # -- change tracking -------------------------------------------------------------

    def _changed(self, folder: Folder, changes: Changes) -> None:
        if changes.expunged:
            self._expunged.update(changes.expunged)
        if changes.added:
            self._grown = True
        if changes.flags and not self.quiet:
            self._flag_changed.update(m.uid for m in changes.flags)
        if self.on_change is not None:
            self.on_change()

    def pending(self) -> bool:
        return bool(self._expunged or self._flag_changed or self._grown)

    def updates(self, allow_expunge: bool) -> list[bytes]:
        """Untagged responses for what changed since the last call."""
        out = self.flags_update()
        if self._flag_changed:
            for uid in sorted(self._flag_changed):
                seq = self.seq(uid)
                msg = self.folder.by_uid(uid)
                if seq and msg is not None:
                    modseq = b" MODSEQ (%d)" % self.modseq_of(msg) if self.condstore else b""
                    out.append(b"* %d FETCH (UID %d%s FLAGS %s)" % (
                        seq, uid, modseq, self.flag_bytes(msg)))
            self._flag_changed.clear()
        if allow_expunge and self._expunged:
            vanished = []
            for uid in sorted(self._expunged, reverse=True):
                seq = self.seq(uid)
                if seq:
                    del self.uids[seq - 1]
                    self.recent.discard(uid)
                    if self.qresync:
                        vanished.append(uid)
                    else:
                        out.append(b"* %d EXPUNGE" % seq)
            if vanished:  # RFC 7162 3.2.10: one line for them all, by UID
                out.append(b"* VANISHED " + wire.sequence_set(reversed(vanished)))
            self._expunged.clear()
        if self._grown:
            self._grown = False
            last = self.uids[-1] if self.uids else 0
            fresh = [m.uid for m in
                     self.folder.messages[bisect.bisect_right(self.folder.uids, last):]]
            if fresh:
                self.uids.extend(fresh)
                claimed = self.folder.claim_recent() if self.writeable else self._unclaimed()
                if not self.no_recent:
                    self.recent.update(claimed)
                out.append(b"* %d EXISTS" % len(self.uids))
                if not self.no_recent:
                    out.append(b"* %d RECENT" % len(self.recent))
        return out

    def set_no_recent(self) -> None:
        """IMAP4rev2 from now on: nothing is \\Recent here any more (RFC 9051 2.3.2)."""
        self.no_recent = True
        self.recent = set()

    def _unclaimed(self) -> set[int]:
        """UIDs still \\Recent for whoever selects the folder next (a bisect)."""
        folder = self.folder
        return set(folder.uids[bisect.bisect_left(folder.uids, folder.first_recent):])

    # -- lookups ---------------------------------------------------------------------------

    def seq(self, uid: int) -> int:
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else 0

    def message(self, uid: int) -> Message | None:
        return self.folder.by_uid(uid)

    def flag_list(self, msg: Message) -> list[str]:
        flags = msg.flags
        if msg.uid in self.recent:
            flags = flags + ["\\Recent"]
        return flags

    def flag_bytes(self, msg: Message) -> bytes:
        return ("(" + " ".join(self.flag_list(msg)) + ")").encode("utf-8", "replace")

    def unseen_first(self) -> int:
        for n, uid in enumerate(self.uids, 1):
            msg = self.folder.by_uid(uid)
            if msg is not None and not msg.has("\\Seen"):
                return n
        return 0

    def modseq_of(self, msg: Message) -> int:
        """The message's MODSEQ as IMAP tells it: positive (RFC 7162 mod-sequence-value)."""
        return msg.modseq or 1

    @property
    def highest_modseq(self) -> int | None:
        """HIGHESTMODSEQ, or None when the store keeps none (the session says NOMODSEQ)."""
        value = getattr(self.folder, "highest_modseq", None)
        return None if value is None else max(value, 1)

    def vanished_since(self, modseq: int, within: wire.SeqSet | None = None,
                       seq_match: tuple[wire.SeqSet, wire.SeqSet] | None = None) -> bytes:
        """
        The UIDs expunged after C{modseq} among C{within} (all if None) that this
        session does not still count, as a sequence set (QRESYNC's VANISHED (EARLIER)).
        When the store no longer knows that far back, every UID below UIDNEXT that is
        not in the folder, as RFC 7162 3.2.5.2 allows; C{seq_match} (the client's
        sequence numbers and their UIDs) then narrows it: below the last pair that
        still matches, nothing was expunged.
        """
        top = self.folder.next_uid - 1
        ranges = [(1, top)] if within is None else [
            (min(lo, hi), max(lo, hi)) for a, b in within.ranges
            for lo, hi in [(top if a is None else a, top if b is None else b)]]
        present = self.uids if self.uids == self.folder.uids else \
            sorted(set(self.uids) | set(self.folder.uids))
        known = self.folder.expunged_since(modseq)
        if known is not None:
            merged: list[list[int]] = []
            for lo, hi in sorted(ranges):
                if merged and lo <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], hi)
                else:
                    merged.append([lo, hi])
            starts = [lo for lo, _ in merged]
            return wire.sequence_set(
                u for u in known
                if (i := bisect.bisect_right(starts, u) - 1) >= 0 and u <= merged[i][1] and
                not _holds(present, u))
        floor = 0
        if seq_match is not None:
            seqs, uids = _members(seq_match[0]), _members(seq_match[1])
            if len(seqs) == len(uids):
                for n, u in zip(seqs, uids, strict=True):
                    if n > len(self.uids) or self.uids[n - 1] != u:
                        break
                    floor = u
        gaps: list[tuple[int, int]] = []  # (first, last) runs of missing UIDs
        for lo, hi in sorted(ranges):
            lo = max(lo, floor + 1, gaps[-1][1] + 1 if gaps else 1)
            i = bisect.bisect_left(present, lo)
            while lo <= hi:
                nxt = present[i] if i < len(present) else hi + 1
                if nxt > lo:
                    gaps.append((lo, min(nxt - 1, hi)))
                lo = nxt + 1
                i += 1
        return b",".join(b"%d" % a if a == b else b"%d:%d" % (a, b) for a, b in gaps)

    def all_flags(self) -> list[str]:
        return list(SYSTEM_FLAGS) + sorted(self._announced)

    def flags_update(self) -> list[bytes]:
        """
        FLAGS (and PERMANENTFLAGS) again if the folder gained keywords since
        the client was last told: a keyword must be in FLAGS before a FETCH
        shows it (RFC 3501 7.2.6; imaptest checks).  Keywords are never taken
        back out, as Dovecot does.
        """
        new = self.folder.keywords - self._announced
        if not new:
            return []
        self._announced |= new
        flags = " ".join(self.all_flags()).encode()
        out = [b"* FLAGS (" + flags + b")"]
        if self.writeable:
            out.append(b"* OK [PERMANENTFLAGS (" + flags + b" \\*)] Flags permitted")
        return out

    # -- twisted.mail.imap4.IMailbox -----------------------------------------------------

    def getFlags(self):
        return self.all_flags()

    def getHierarchicalDelimiter(self):
        return "."

    def getUIDValidity(self):
        return self.folder.uidvalidity

    def getUIDNext(self):
        return self.folder.next_uid

    def getUID(self, message):
        return self.uids[message - 1]

    def getMessageCount(self):
        return len(self.uids)

    def getRecentCount(self):
        return len(self.recent)

    def getUnseenCount(self):
        return sum(1 for u in self.uids
                   if (m := self.folder.by_uid(u)) is not None and not m.has("\\Seen"))

    def isWriteable(self):
        return self.writeable

    def destroy(self):
        raise imap4.MailboxException("Use DELETE on the account")

    def requestStatus(self, names):
        return status(self.folder, names)

    def expunge(self):
        doomed = self.deleted()
        seqs = [self.seq(u) for u in doomed]
        self.folder.expunge(doomed)
        return seqs

    # -- what IMAPServer does to the folder, through this session ------------------------

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def uidvalidity(self) -> int:
        return self.folder.uidvalidity

    @property
    def next_uid(self) -> int:
        return self.folder.next_uid

    def refresh(self) -> None:
        self.folder.refresh()

    def messages(self, uids) -> list[Message]:
        by_uid = self.folder.by_uid
        return [m for u in uids if (m := by_uid(u)) is not None]

    def bodies_ready(self, msgs):
        return self.folder.bodies_ready(msgs)

    def snapshot(self) -> list[Message] | None:
        folder = self.folder
        if self.uids == folder.uids:
            return list(folder.messages)
        return None

    def rendered(self) -> RenderedFlags | None:
        """The folder's shared FETCH (UID FLAGS) renderings, if this session may use them:
        not while it holds \\Recent messages (those render differently here)."""
        return None if self.recent else self._rendered

    def set_flags(self, msgs, flags, mode: int, unchanged_since: int | None = None) -> list:
        """The messages changed; with C{unchanged_since} only those whose MODSEQ is
        not above it (STORE UNCHANGEDSINCE, checked under the folder lock)."""
        self.quiet = True
        try:
            if unchanged_since is None:
                return self.folder.set_flags(msgs, flags, mode)
            return self.folder.set_flags(msgs, flags, mode, unchanged_since=unchanged_since)
        finally:
            self.quiet = False

    def expunge_uids(self, uids) -> None:
        self.folder.expunge(uids)

    def deleted(self) -> list[int]:
        by_uid = self.folder.by_uid
        return [u for u in self.uids if (m := by_uid(u)) is not None and m.has("\\Deleted")]

    def holds(self, folder) -> bool:
        """Whether C{folder} (from the account) is this session's folder."""
        return folder is self.folder

    def copy_to(self, msgs, dest):
        return self.folder.copy_to(msgs, dest)

    def copy_many(self, msgs, dest):
        return self.folder.copy_many(msgs, dest)

    def size_of(self, msg: Message) -> int:
        return self.folder.size_of(msg)

    def date_of(self, msg: Message) -> int:
        return self.folder.date_of(msg)

    # -- the folder's message cache (netsuite.store.cache) ------------------------------

    def message_cache(self) -> MessageCache:
        """The folder's message cache, for a loop that looks up thousands of messages."""
        return self._message_cache()

    def _message_cache(self) -> MessageCache:
        if self._cache is None:
            self._cache = cache_for(self.folder)
        return self._cache

    def cached(self, msg: Message, field: str) -> bytes | None:
        """A value this package rendered from C{msg} before (this or an earlier process)."""
        return self._message_cache().get(msg.base, field)

    def remember(self, msg: Message, field: str, value: bytes) -> None:
        self._message_cache().put(msg.base, field, value)

    def flush_cache(self) -> None:
        """Write what L{remember} buffered (once per FETCH batch)."""
        if self._cache is not None:
            self._cache.flush()

    def read(self, msg: Message) -> bytes:
        return self.folder.read_wire(msg)

    def open(self, msg: Message):
        return io.BytesIO(self.read(msg))


def status(folder: Folder, names) -> dict[str, int | str]:
    """STATUS items for a folder (refreshed first)."""
    folder.refresh()
    out: dict[str, int | str] = {}
    for name in names:
        name = name.upper()
        if name == "MESSAGES":
            out[name] = len(folder.messages)
        elif name == "RECENT":
            out[name] = sum(1 for m in folder.messages if m.uid >= folder.first_recent)
        elif name == "UIDNEXT":
            out[name] = folder.next_uid
        elif name == "UIDVALIDITY":
            out[name] = folder.uidvalidity
        elif name == "UNSEEN":
            out[name] = sum(1 for m in folder.messages if "S" not in m.letters)
        elif name == "SIZE":  # RFC 8438: the index's sizes, a file read only for unknown ones
            out[name] = sum(folder.size_of(m) for m in folder.messages)
        elif name == "MAILBOXID":
            out[name] = f"({mailbox_id(folder)})"
        elif name == "DELETED":
            out[name] = sum(1 for m in folder.messages if "T" in m.letters)
        elif name == "DELETED-STORAGE":  # in units of 1024 octets (RFC 9208 4.4)
            out[name] = sum(folder.size_of(m) for m in folder.messages if "T" in m.letters) // 1024
        elif name == "HIGHESTMODSEQ":
            out[name] = max(folder.highest_modseq, 1)
        else:
            raise ValueError(name)
    return out


def _holds(values: list[int], n: int) -> bool:
    i = bisect.bisect_left(values, n)
    return i < len(values) and values[i] == n


def _members(uids: wire.SeqSet) -> list[int]:
    """The numbers of a set without '*', in the client's order (bounded: a seq-match
    list is as long as the client wrote it, ranges aside)."""
    out: list[int] = []
    for a, b in uids.ranges:
        lo, hi = (a or 0), (b or 0)
        step = 1 if hi >= lo else -1
        if abs(hi - lo) > 100000:
            return []
        out.extend(range(lo, hi + step, step))
    return out

"""
A folder of the PostgreSQL store: an in-memory mirror of its rows (UIDs,
flags, MODSEQs, sizes, dates), as Dovecot and Stalwart keep an index in memory.

  - Reading (C{messages}, C{by_uid}, flags, sizes) is served from the mirror;
    bodies from the host's local cache of bodies (L{LocalBodies}), filled off
    the reactor as messages become known.
  - L{append_many} and L{copy_to} (Deferreds) are one transaction each, which
    gives the UIDs on the folder row: their Deferred fires once committed.
  - L{set_flags} and L{expunge} are synchronous: the mirror changes at once,
    and the change is written through, in order, by the account's write queue
    (one at a time per account); it is durable shortly after (as Maildir's
    flag renames are not fsynced either).  The MODSEQ the mirror shows at once
    is the next after the highest it knows; the write asks the folder row for
    at least that one, and the mirror takes the row's answer when the write
    returns (the same, unless another host changed the folder meanwhile: then a
    higher one, which a CONDSTORE client sees as one more change of the
    message; a MODSEQ never goes down).
  - Others' changes (other hosts, deliveries) come as the rows changed after
    the MODSEQ the mirror is complete up to (L{refresh}, on every NOTIFY).
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import io
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psycopg
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netsuite.db.errors import DatabaseUnavailable
from netsuite.store import IMailFolder
from netsuite.store.folder import (
    FLAG_TO_LETTER,
    Changes,
    FolderGone,
    IncomingMessage,
    Message,
    to_disk,
    to_wire,
    wire_size,
)
from netsuite.store.pg import sql
from netsuite.store.pg.blobs import LocalBodies

log = Logger(namespace="netsuite.store")

#: Bodies at most this big are fetched into the local cache as soon as they are known.
WARM_MAX = 4 << 20
#: Messages whose bodies a first load fetches (the newest).
WARM_ON_LOAD = 200
#: While LISTEN is up, a refresh asked for within this long of the last read is not made.
REFRESH_SECONDS = 1.0
#: Seconds before a failed write or refresh is followed by another read of the rows.
RETRY_SECONDS = 1.0


class StoreUnavailable(OSError):
    """
    The database could not take a message (unreachable, or the transaction
    failed): an I/O error as the protocols know them from a disk, so that SMTP
    answers 451 4.3.0 and APPEND answers NO, and nothing is acknowledged.
    """


def unavailable(failure: Failure) -> Failure:
    """An errback: the database's failures as L{StoreUnavailable}; others (KeyError) as they are."""
    if failure.check(DatabaseUnavailable, psycopg.Error):
        raise StoreUnavailable(errno.EIO, f"mail store unavailable: {failure.getErrorMessage()}")
    return failure


def _letters(flags: Iterable[str]) -> str:
    return "".join(sorted(FLAG_TO_LETTER[f.lower()] for f in flags
                          if f.lower() in FLAG_TO_LETTER))


@implementer(IMailFolder)
class PgFolder:
    """One folder's mirror, shared by every session of this process; see the module docstring."""

    def __init__(self, store: Any, account: Any, name: str, cache_dir: Path):
        self.store = store
        self.account = account
        self.name = name
        #: The folder row's id (None until the row is known).
        self.id: int | None = None
        #: A local directory for what IMAP keeps beside a folder (netsuite-cache).
        self.path = cache_dir
        self.uidvalidity = 0
        self.next_uid = 1
        self.highest_modseq = 0
        #: Every change up to this MODSEQ is in the mirror.
        self.synced = 0
        self.first_recent = 1
        self.messages: list[Message] = []
        self._uids: list[int] = []
        self.digests: dict[int, bytes] = {}
        self.email_ids: dict[int, int] = {}
        self.keywords: set[str] = set()
        self.listeners: list[Callable] = []
        self.loaded = False
        self._loading: defer.Deferred | None = None
        self._refresh_queued = False
        #: Writes not yet returned: their messages are not overwritten by older rows.
        self._pending_flags: Counter[int] = Counter()
        self._expunging: set[int] = set()
        #: (uid, modseq) of expunges known, for QRESYNC; below C{_gone_floor}: unknown.
        self._gone: dict[int, int] = {}
        self._gone_floor = 0
        self.deleted = False
        #: A failed write or refresh: the next try, and whether that was said in the log.
        self._retry: Any = None
        self._failing = False
        #: When the folder's changes were last read (the reactor's clock).
        self._read_at = 0.0

    # -- loading and catching up -------------------------------------------------------------

    @property
    def bodies(self) -> LocalBodies:
        return self.store.bodies

    def load(self) -> defer.Deferred:
        """The mirror read (once; later calls wait for the same read): a Deferred of self."""
        if self.loaded:
            return defer.succeed(self)
        if self._loading is None:
            self._loading = self.account.queue(self._load_work, self._loaded)
        d: defer.Deferred = defer.Deferred()

        def fire(result):
            if not self.loaded:
                self._loading = None  # failed: the next open tries again
            d.callback(result)
            return None if isinstance(result, Failure) else result

        self._loading.addBoth(fire)
        return d

    def _resolve(self, conn) -> int:
        """The folder id, on a database thread (the account queue has made it by now)."""
        if self.id is None:
            fid = self.account.folder_id(self.name)
            if fid is None:
                row = conn.execute("SELECT f.id FROM folders f JOIN accounts a ON "
                                   "a.id = f.account_id WHERE a.name = %s AND f.name = %s",
                                   (self.account.user, self.name)).fetchone()
                if row is None:
                    raise sql.FolderMissing(self.name)
                fid = row[0]
            self.id = fid
        return self.id

    def _load_work(self, conn) -> tuple[sql.Delta, dict]:
        fid = self._resolve(conn)
        delta = sql.delta(conn, fid, 0, first=True)
        newest = [r for r in delta.rows[-WARM_ON_LOAD:] if r[5] <= WARM_MAX]
        return delta, self._fetch_bodies(conn, newest)

    def _fetch_bodies(self, conn, rows) -> dict:
        """Bodies of C{rows} missing from the local cache, fetched and written there."""
        missing = [r[6] for r in rows if not self.bodies.has(r[6])]
        got = self.store.blobs.get(conn, missing) if missing else {}
        for digest, body in got.items():
            self.bodies.write(digest, body)
        return got

    def _loaded(self, result) -> PgFolder:
        delta, _bodies = result
        self.messages, self._uids, self.digests, self.email_ids = [], [], {}, {}
        self._gone = dict(delta.gone)
        self._gone_floor = min(self._gone.values()) if delta.truncated else 0
        self.uidvalidity = delta.uidvalidity
        self.next_uid = delta.uidnext
        self.first_recent = delta.first_recent
        for row in delta.rows:
            self._insert(self._message(row), row[6])
        self.highest_modseq = self.synced = delta.highestmodseq
        self._read_at = self.store.reactor.seconds()
        self.loaded = True
        self.store.folder_loaded(self)
        os.makedirs(self.path, exist_ok=True)
        return self

    def _message(self, row: tuple) -> Message:
        uid, modseq, flags, keywords, date, size, _digest, email_id, saved = row
        self.email_ids[uid] = email_id
        # The base name starts with the save time, as a Maildir name does (SAVEDATE).
        return Message(uid, f"{saved}.P{uid}V{self.uidvalidity}:2,{_letters(flags)}", "cur",
                       size, date, tuple(keywords), modseq)

    def _insert(self, msg: Message, digest: bytes) -> None:
        i = bisect.bisect_left(self._uids, msg.uid)
        self._uids.insert(i, msg.uid)
        self.messages.insert(i, msg)
        self.digests[msg.uid] = digest
        self.keywords.update(msg.keywords)

    def refresh(self, notify: bool = True, force: bool = False) -> Changes:
        """
        Take in others' changes: asks the database off the reactor (once, however
        often it is called meanwhile) and tells the listeners when the rows come;
        what it returns now is empty (the changes reach the listeners).
        L{FolderGone} once the folder is known to be deleted (here or elsewhere).
        """
        if self.deleted:
            raise FolderGone(self.name)
        if (not force and self.store.listening()
                and self.store.reactor.seconds() - self._read_at < REFRESH_SECONDS):
            # Others' changes reach this host by NOTIFY: a session's NOOP, SELECT or
            # STATUS need not ask again (each would be one more trip through the
            # account's queue); asked anyway now and then, in case one was missed.
            return Changes()
        if self.loaded and not self._refresh_queued:
            self._refresh_queued = True
            d = self.account.queue(self._delta_work, self._caught_up)
            d.addErrback(self._failed, "refreshing")
        return Changes()

    def catch_up(self) -> defer.Deferred:
        """Every change committed so far in the mirror (after this host's queued writes)."""
        return self.account.queue(self._delta_work, self._caught_up).addCallback(lambda _: self)

    def _delta_work(self, conn) -> sql.LaterDelta:
        self._refresh_queued = False  # a NOTIFY from now on needs another look

        def fetch(conn, delta: sql.Delta) -> None:
            self._fetch_bodies(conn, [r for r in delta.rows if r[5] <= WARM_MAX
                                             and r[0] not in self.digests])

        return self.account.delta_later(conn, self._resolve(conn), self.synced, then=fetch)

    def _caught_up(self, later: sql.LaterDelta) -> Changes:
        self._failing = False
        return self._apply_later(later)

    def _apply_later(self, later: sql.LaterDelta, notify: bool = True) -> Changes:
        assert later.delta is not None  # (read at the end of its batch)
        return self._apply(later.delta, notify)

    def _apply(self, delta: sql.Delta, notify: bool = True) -> Changes:
        """The rows of C{delta} into the mirror; listeners hear what changed."""
        changes = Changes()
        gone_now = set()
        for uid, modseq in delta.gone:
            if modseq > self._gone_floor:
                self._gone[uid] = max(modseq, self._gone.get(uid, 0))
            if uid in self.digests and uid not in self._expunging:
                gone_now.add(uid)
        if gone_now:
            self._drop(gone_now)
            changes.expunged = sorted(gone_now)
        for row in delta.rows:
            uid = row[0]
            msg = self.by_uid(uid)
            if msg is None:
                if uid in self._expunging or uid in gone_now:
                    continue
                msg = self._message(row)
                self._insert(msg, row[6])
                changes.added.append(msg)
                continue
            if self._pending_flags[uid]:
                continue  # a write of this host's is on its way: its answer is newer
            fresh = self._message(row)
            msg.modseq = max(msg.modseq, fresh.modseq)
            if fresh.name != msg.name or fresh.keywords != msg.keywords:
                msg.name, msg.keywords = fresh.name, fresh.keywords
                self.keywords.update(fresh.keywords)
                changes.flags.append(msg)
        self.next_uid = max(self.next_uid, delta.uidnext)
        self.first_recent = max(self.first_recent, delta.first_recent)  # others' claims
        self.highest_modseq = max(self.highest_modseq, delta.highestmodseq)
        self.synced = max(self.synced, delta.highestmodseq)
        self._read_at = self.store.reactor.seconds()
        if changes and notify:
            self._notify(changes)
        return changes

    def _drop(self, gone: set[int]) -> None:
        keep = [m for m in self.messages if m.uid not in gone]
        self.messages = keep
        self._uids = [m.uid for m in keep]
        for uid in gone:
            self.digests.pop(uid, None)
            self.email_ids.pop(uid, None)

    def _notify(self, changes: Changes) -> None:
        for listener in list(self.listeners):
            try:
                listener(self, changes)
            except Exception:
                log.failure("folder listener failed")

    def _failed(self, failure, what: str) -> None:
        self._refresh_queued = False  # (the work may not have run at all)
        if failure.check(sql.FolderMissing):
            self.deleted = True
            self.store.folder_gone(self)
            return None
        if not self._failing:  # once until it works again, not once a second
            self._failing = True
            log.warn("PostgreSQL store: {what} {user}/{folder} failed: {error}", what=what,
                     user=self.account.user, folder=self.name, error=failure.getErrorMessage())
        if what != "refreshing":
            # The mirror may be ahead of the rows now: read them whole again.
            self.synced = 0
            self._pending_flags.clear()
            self._expunging.clear()
        if self._retry is None or not self._retry.active():
            self._retry = self.store.reactor.callLater(RETRY_SECONDS, self._refresh_again)
        return None

    def _refresh_again(self) -> None:
        if not self.deleted:
            self.refresh(force=True)

    # -- lookups -----------------------------------------------------------------------------

    @property
    def uids(self) -> list[int]:
        return self._uids

    def by_uid(self, uid: int) -> Message | None:
        i = bisect.bisect_left(self._uids, uid)
        if i < len(self._uids) and self._uids[i] == uid:
            return self.messages[i]
        return None

    def size_of(self, msg: Message) -> int:
        return msg.size

    def date_of(self, msg: Message) -> int:
        return msg.date

    def learn_sizes(self) -> defer.Deferred:
        """Sizes are always known; before a POP3 session, every body is fetched to the cache."""
        if self.deleted:
            return defer.fail(FolderGone(self.name))

        def work(conn, rows: list[tuple]) -> None:
            self._fetch_bodies(conn, rows)

        def fetch(_) -> defer.Deferred:
            rows = [(0, 0, 0, 0, 0, 0, d) for d in self.digests.values()]  # (on the reactor)
            return self.store.db.run(work, rows)

        return self.load().addCallback(fetch)

    #: Bodies fetched per query by L{bodies_ready} (bounds the memory a big FETCH takes).
    FETCH_GROUP = 64

    def bodies_ready(self, msgs) -> defer.Deferred | None:
        """
        None if this host has every body cached; otherwise a Deferred fired
        once the missing ones are fetched into the cache, off the reactor,
        L{FETCH_GROUP} per query (so that L{read} never waits on the database).
        """
        missing = sorted({d for m in msgs if (d := self.digests.get(m.uid)) is not None
                          and not self.bodies.has(d)})
        if not missing:
            return None

        def work(conn) -> None:
            for i in range(0, len(missing), self.FETCH_GROUP):
                for digest, body in self.store.blobs.get(
                        conn, missing[i:i + self.FETCH_GROUP]).items():
                    self.bodies.write(digest, body)

        return self.store.db.run(work).addErrback(unavailable)

    def file_path(self, msg: Message) -> Path:
        """The body's file in the local cache (fetched if missing): EMAILID's stat."""
        digest = self._digest(msg)
        if not self.bodies.has(digest):
            self.read(msg)
        return self.bodies.path(digest)

    def email_id(self, msg: Message) -> str:
        """
        RFC 8474 EMAILID from the row's C{email_id}: the same on every host, kept
        by COPY and MOVE (the copy takes the original's), new for a new message
        even with the same bytes.
        """
        email_id = self.email_ids.get(msg.uid)
        if email_id is None:
            raise KeyError(msg.uid)
        return "M" + hashlib.blake2b(b"%d" % email_id, digest_size=12).hexdigest()

    def _digest(self, msg: Message) -> bytes:
        digest = self.digests.get(msg.uid)
        if digest is None:
            raise KeyError(msg.uid)
        return digest

    def read(self, msg: Message) -> bytes:
        """
        The body as stored (LF line ends), from the local cache.  A body not
        cached yet (a message older than the folder's first load here) is
        fetched from the database there and then: the one read that waits.
        """
        digest = self._digest(msg)
        body = self.bodies.read(digest, msg.size)
        if body is not None:
            return body

        def fetch(conn) -> bytes | None:
            return self.store.blobs.get(conn, [digest]).get(digest)

        # (A caller that reads many waits for bodies_ready first: this is the odd one.)
        body = self.store.db.run_blocking(fetch)
        if body is None:
            raise KeyError(msg.uid)
        self.bodies.write(digest, body)
        return body

    def read_upto(self, msg: Message, limit: int) -> bytes:
        return self.read(msg)

    def read_wire(self, msg: Message) -> bytes:
        return to_wire(self.read(msg))

    def open(self, msg: Message):
        """The cached body's file (a big RETR streams it instead of holding it whole)."""
        path = self.file_path(msg)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            return io.BytesIO(self.read(msg))

    def claim_recent(self) -> set[int]:
        """
        UIDs \\Recent for the caller: claimed in the mirror at once, the claim
        written through (so a session on another host that selects the folder
        later does not get them; one selecting it within the write's delay may).
        """
        uids = self._uids
        recent = set(uids[bisect.bisect_left(uids, self.first_recent):])
        if uids and uids[-1] >= self.first_recent:
            self.first_recent = upto = uids[-1] + 1

            def work(conn) -> None:
                sql.claim_recent(conn, self._resolve(conn), upto)

            self.account.queue(work).addErrback(self._failed, "claiming \\Recent in")
        return recent

    def save_if_dirty(self) -> None:
        """Nothing is only in memory but \\Recent (this host's)."""

    def compact(self) -> None:
        """The rows are the index: nothing to compact."""

    def expunged_since(self, modseq: int) -> list[int] | None:
        if modseq < self._gone_floor:
            return None
        return sorted(u for u, m in self._gone.items() if m > modseq)

    # -- changing ----------------------------------------------------------------------------

    def _next_modseq(self) -> int:
        self.highest_modseq += 1
        return self.highest_modseq

    def set_flags(self, msgs, flags, mode: int, unchanged_since=None) -> list:
        """
        In the mirror at once (the listeners hear it), written through by the
        account's queue.  C{unchanged_since} is checked against the mirror:
        another host's change not seen here yet (within the NOTIFY's delay) is
        not known to it.
        """
        system, keywords = sql.split_flags(flags)
        letters = _letters(system)
        changed: list[Message] = []
        for msg in list(msgs):
            assert isinstance(msg, Message)
            if self.by_uid(msg.uid) is not msg:
                continue
            if unchanged_since is not None and msg.modseq > unchanged_since:
                continue
            base, _sep, old = msg.name.partition(":2,")
            kws = list(msg.keywords)
            if mode == 0:
                new, new_kw = letters, list(keywords)
            elif mode > 0:
                new = "".join(sorted(set(old) | set(letters)))
                new_kw = kws + [k for k in keywords if k.lower() not in
                                {x.lower() for x in kws}]
            else:
                new = "".join(sorted(set(old) - set(letters)))
                drop = {k.lower() for k in keywords}
                new_kw = [k for k in kws if k.lower() not in drop]
            if new == old and tuple(new_kw) == msg.keywords:
                continue
            msg.name = f"{base}:2,{new}"
            msg.keywords = tuple(new_kw)
            self.keywords.update(new_kw)
            changed.append(msg)
        if not changed:
            return []
        modseq = self._next_modseq()
        uids = [m.uid for m in changed]
        for m in changed:
            m.modseq = modseq
            self._pending_flags[m.uid] += 1

        def work(conn):
            fid = self._resolve(conn)
            since = self.synced
            final = sql.set_flags(conn, fid, uids, system, keywords, mode, modseq)
            # The folder row was at `since`: this change is the only one, no expunge to read.
            return self.account.delta_later(conn, fid, since, gone=final != since + 1)

        def done(later: sql.LaterDelta) -> None:
            for uid in uids:
                self._pending_flags[uid] -= 1
                if self._pending_flags[uid] <= 0:
                    del self._pending_flags[uid]
            self._apply_later(later)

        self.account.queue(work, done).addErrback(self._failed, "setting flags in")
        self._notify(Changes(flags=list(changed)))
        return changed

    def expunge(self, uids) -> list:
        gone = [u for u in uids if u in self.digests and u not in self._expunging]
        if not gone:
            return []
        modseq = self._next_modseq()
        self._expunging.update(gone)
        self.account.used(-sum(m.size for u in gone if (m := self.by_uid(u)) is not None),
                          -len(gone))
        self._drop(set(gone))
        for u in gone:
            self._gone[u] = modseq
        if len(self._gone) > 2 * sql.EXPUNGES_KEPT:  # the oldest forgotten (QRESYNC: see above)
            kept = sorted(self._gone.items(), key=lambda p: p[1])[-sql.EXPUNGES_KEPT:]
            self._gone = dict(kept)
            self._gone_floor = kept[0][1]

        def work(conn):
            fid = self._resolve(conn)
            since = self.synced
            final = sql.expunge(conn, self.store.blobs, fid, gone, modseq)
            only = final == since + 1  # this expunge is the only change: nothing to read
            return self.account.delta_later(conn, fid, since, rows=not only, gone=not only)

        def done(later: sql.LaterDelta) -> None:
            self._expunging.difference_update(gone)
            self._apply_later(later)

        self.account.queue(work, done).addErrback(self._failed, "expunging in")
        self._notify(Changes(expunged=sorted(gone)))
        return sorted(gone)

    def incoming(self) -> IncomingMessage:
        """A message written to the account's local tmp/ as it arrives, for L{append_many}."""
        return self.store.incoming_file(self.account.user)

    #: (L{IMailFolder.append_incoming} is synchronous: a row is not; L{append_many} takes one.)
    append_incoming = None

    def append(self, data: bytes, flags=(), date=None, notify: bool = True) -> int:
        raise NotImplementedError("the PostgreSQL store appends with append_many (a Deferred)")

    def append_many(self, items, notify: bool = True) -> defer.Deferred:
        """
        One transaction for them all: a Deferred of their UIDs, fired once
        committed.  C{items}: (bytes or a finished L{incoming} message, flags,
        date); an incoming message's file is hashed and sent a chunk at a time
        on the database thread (a 50 MiB APPEND is never whole in memory), then
        becomes this host's cached copy of the body.
        """
        bodies: list[tuple[bytes | IncomingMessage, list[str], Any]] = []
        streamed = [data for data, _f, _d in items if isinstance(data, IncomingMessage)]

        def discard(failure: Failure) -> Failure:
            for incoming in streamed:
                incoming.abort()
            return failure

        for data, flags, date in items:
            if isinstance(data, IncomingMessage):
                if data.error is not None or data.tmp is None or not data.finished:
                    error = data.error or ValueError("the incoming message is not complete")
                    return defer.fail(error).addErrback(discard)
                bodies.append((data, list(flags), date))
            elif isinstance(data, bytes):
                bodies.append((to_disk(data), list(flags), date))
            else:
                raise TypeError("the PostgreSQL store takes bytes or an incoming message")

        def work(conn):
            fid = self._resolve(conn)
            since = self.synced
            rows = []
            for body, flags, date in bodies:
                if isinstance(body, IncomingMessage):
                    assert body.tmp is not None
                    digest = sql.store_body(conn, self.store.blobs, body.tmp)
                    rows.append((digest, body.wire_size, flags, date))
                else:
                    digest = sql.store_body(conn, self.store.blobs, body)
                    rows.append((digest, wire_size(body), flags, date))
                    self.bodies.write(digest, body)
            uids, final = sql.insert_rows(conn, fid, rows)
            return uids, rows, self.account.delta_later(conn, fid, since,
                                                        gone=final != since + 1)

        def done(result) -> list[int]:
            uids, rows, later = result
            digests = [r[0] for r in rows]
            for (body, _f, _d), digest in zip(bodies, digests, strict=True):
                if isinstance(body, IncomingMessage) and body.tmp is not None:
                    tmp, body.tmp = body.tmp, None
                    self.bodies.adopt(digest, tmp)  # a rename: the local copy of the body
            self.account.used(sum(r[1] for r in rows), len(uids))
            if self.loaded:
                self._apply_later(later, notify)
            return uids

        return self.account.queue(work, done).addErrback(discard).addErrback(unavailable)

    def copy_to(self, msgs, dest: PgFolder) -> defer.Deferred:
        """
        One transaction: the copies share the bodies (no body is sent).  A
        Deferred of (source UID, new UID) pairs, fired once committed.
        """
        uids = [m.uid for m in msgs if m.uid in self.digests]

        def work(conn):
            src_id, dest_id = self._resolve(conn), dest._resolve(conn)
            pairs = sql.copy(conn, self.store.blobs, src_id, uids, dest_id)
            return pairs, (self.account.delta_later(conn, dest_id, dest.synced)
                           if dest.loaded else None)

        def done(result) -> list[tuple[int, int]]:
            pairs, later = result
            sizes = {m.uid: m.size for m in msgs}
            dest.account.used(sum(sizes.get(src, 0) for src, _new in pairs), len(pairs))
            if later is not None:
                dest._apply_later(later)
            return pairs

        return self.account.queue(work, done).addErrback(unavailable)

    #: L{netsuite.store.IMailFolder.copy_many}: already one transaction, answered once committed.
    copy_many = copy_to


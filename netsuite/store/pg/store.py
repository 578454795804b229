"""
L{PgMailStore}: the L{netsuite.store.IMailStore} of C{[store] backend =
"postgresql"}.  An account's folder names, subscriptions and usage are
mirrored in memory too (L{PgAccount}), read at the login (L{prepare}, which
the realm's avatar makers wait for), so that LIST, LSUB and CREATE, which the
interface has synchronous, answer without the database; their changes are
written through by the account's write queue, which also carries every
change of its folders' mirrors, in order, one at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netsuite.store import IDeliveryFile, IMailStore
from netsuite.store.folder import IncomingMessage, to_disk, wire_size
from netsuite.store.maildir import (
    TMP_MAX_AGE,
    BadFolderName,
    check_folder_name,
    clean_tmp_dir,
)
from netsuite.store.pg import sql
from netsuite.store.pg.batch import WriteQueue
from netsuite.store.pg.blobs import LocalBodies, PgBlobs
from netsuite.store.pg.folder import RETRY_SECONDS, PgFolder, unavailable

log = Logger(namespace="netsuite.store")

#: How long a shutdown waits for the accounts' queued writes (L{PgMailStore.flush}).
FLUSH_SECONDS = 10.0


class PgAccount(WriteQueue):
    """One user's folder names, subscriptions and usage, and the write queue of them all."""

    def __init__(self, store: PgMailStore, user: str):
        super().__init__(store)
        self.user = user
        self.id: int | None = None
        #: name -> (folder id or None until written, uidvalidity, special use)
        self.folders: dict[str, tuple[int | None, int, str | None]] = {}
        self.subscriptions: list[str] = []
        self.usage: tuple[int, int] = (0, 0)
        self.ready = False
        self._preparing: defer.Deferred | None = None
        #: Local changes queued and not written yet: a reread of the rows waits for them.
        self._pending = 0
        self._reread_queued = False
        self._retry: Any = None
        self._failing = False

    def used(self, size: int, count: int) -> None:
        """This host's committed change of the account's usage: in the figure at once."""
        octets, messages = self.usage
        self.usage = (max(octets + size, 0), max(messages + count, 0))

    def folder_id(self, name: str) -> int | None:
        row = self.folders.get(name)
        return None if row is None else row[0]

    def prepare(self) -> defer.Deferred:
        if self.ready:
            return defer.succeed(self)
        if self._preparing is None:
            self._preparing = self.queue(self._prepare_work, self._rows)
        d: defer.Deferred = defer.Deferred()

        def fire(result):
            if not self.ready:
                self._preparing = None  # failed (the database away): the next login tries again
            d.callback(result)
            return None if isinstance(result, Failure) else result

        self._preparing.addBoth(fire)
        return d

    def _prepare_work(self, conn) -> sql.AccountRows:
        self.store.mailbox_path(self.user).mkdir(parents=True, exist_ok=True)
        return sql.prepare_account(conn, self.user)

    def _rows(self, rows: sql.AccountRows) -> PgAccount:
        self._failing = False
        self.id = rows.id
        self.store.accounts_by_id[rows.id] = self
        if self._pending == 0:
            old = self.folders
            self.folders = dict(rows.folders)
            self.subscriptions = list(rows.subscriptions)
            for name, row in old.items():
                if self.folders.get(name, (None,))[0] != row[0] and row[0] is not None:
                    self.store.forget_folder(self.user, name)
        self.usage = rows.usage
        self.ready = True
        return self

    def reread(self) -> None:
        """Another host changed the account (NOTIFY): read its rows again (once)."""
        if self._reread_queued or self.id is None:
            return
        self._reread_queued = True
        aid = self.id

        def work(conn) -> sql.AccountRows:
            self._reread_queued = False
            return sql.account_rows(conn, aid)

        self.queue(work, self._rows).addErrback(self._failed)

    def change(self, work, apply=None) -> None:
        """A local change already in the mirror: written through by the queue."""
        self._pending += 1

        def done(result):
            self._pending -= 1
            if apply is not None:
                apply(result)

        def failed(failure):
            self._pending -= 1
            return self._failed(failure)

        self.queue(work).addCallbacks(done, failed)

    def _failed(self, failure) -> None:
        self._reread_queued = False  # (the work may not have run at all)
        if not self._failing:
            self._failing = True
            log.warn("PostgreSQL store: a change of {user}'s folders failed: {error}",
                     user=self.user, error=failure.getErrorMessage())
        if self._retry is None or not self._retry.active():
            self._retry = self.store.reactor.callLater(RETRY_SECONDS, self.reread)


@implementer(IDeliveryFile)
class PgDelivery:
    """
    One message, stored in one transaction by L{commit}: held in memory up to
    L{SPILL} bytes, past that written to the user's local tmp/ as it arrives
    and sent to the database from there a chunk at a time (memory stays
    bounded whatever the size, as with Maildir).
    """

    #: Bytes held in memory before the message goes to a file (Maildir's figure).
    SPILL = 128 * 1024

    def __init__(self, store: PgMailStore, user: str, folder: str):
        self.store = store
        self.user = user
        self.folder = folder
        self._chunks: list[bytes] = []
        self._file: IncomingMessage | None = None
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is None:
            self._chunks.append(data)
            if self.size <= self.SPILL:
                return
            data = b"".join(self._chunks)
            self._chunks = []
            self._file = self.store.incoming_file(self.user)
        self._file.write(data)

    def commit(self) -> defer.Deferred:
        """
        Through the host's delivery queue (L{PgMailStore.deliveries}): stored in
        the transaction of the next batch; a Deferred of its key, fired once
        committed.
        """
        store = self.store
        spilled, self._file = self._file, None
        apply = None
        if spilled is None:
            body = to_disk(b"".join(self._chunks))
            self._chunks = []
            size = wire_size(body)

            def work(conn) -> str:
                digest = sql.store_body(conn, store.blobs, body)
                store.bodies.write(digest, body)
                return sql.deliver_stored(conn, self.user, self.folder, digest, size)
        else:
            spilled.finish()
            if spilled.error is not None or spilled.tmp is None:
                spilled.abort()
                return defer.fail(spilled.error or OSError("the message was not written"))
            path, size = spilled.tmp, spilled.wire_size
            stored: list[bytes] = []

            def work(conn) -> str:
                digest = sql.store_body(conn, store.blobs, path)
                stored[:] = [digest]  # (for apply: the file is renamed once committed)
                return sql.deliver_stored(conn, self.user, self.folder, digest, size)

            def apply(key: str) -> str:
                spilled.tmp = None  # committed: the file is this host's cached copy now
                store.bodies.adopt(stored[0], path)  # (a rename)
                return key

        store.start()
        d = store.deliveries.queue(work, apply, key=(self.user, self.folder))
        d.addErrback(unavailable)
        if spilled is not None:

            def discard(failure: Failure) -> Failure:
                spilled.abort()
                return failure

            d.addErrback(discard)
        d.addCallback(store.delivered, self.user, self.folder, size)
        return d

    def abort(self) -> None:
        self._chunks = []
        if self._file is not None:
            self._file.abort()
            self._file = None


@implementer(IMailStore)
class PgMailStore:
    """Mail in PostgreSQL (see the package docstring); C{root} holds only caches."""

    poll_interval = 2.0
    cache_size = 64

    def __init__(self, db: Any, root: Path, reactor: Any = None):
        if reactor is None:
            from twisted.internet import reactor
        self.db = db
        self.root = Path(root)
        self.reactor = reactor
        self.blobs = PgBlobs()
        self.bodies = LocalBodies(self.root / ".pg-cache" / "bodies")
        self.accounts: dict[str, PgAccount] = {}
        self.accounts_by_id: dict[int, PgAccount] = {}
        self._folders: dict[tuple[str, str], PgFolder] = {}
        self._by_id: dict[int, PgFolder] = {}
        #: Every delivery of this host (SMTP, LMTP, local bounces), batched.
        self.deliveries = WriteQueue(self)
        #: The process's LISTEN (L{install}); None: not listening.
        self.told: Any = None
        #: Folder id -> the MODSEQ up to which a batch of this host read its changes.
        self._covered: dict[int, int] = {}

    def start(self) -> None:
        """(LISTEN: the process's L{netsuite.db.listen.Notifications}, started by the server.)"""

    # -- accounts ------------------------------------------------------------------------------

    def account(self, user: str) -> PgAccount:
        self.mailbox_path(user)  # a valid name
        acct = self.accounts.get(user)
        if acct is None:
            acct = self.accounts[user] = PgAccount(self, user)
        return acct

    def prepare(self, user: str) -> defer.Deferred:
        """
        The account's mirror read (and the account, INBOX and special folders
        made), and the INBOX's: what a session asks synchronously of the store
        (URLFETCH, POP3) then has its answer in memory.
        """
        self.start()
        d = self.account(user).prepare()
        d.addCallback(lambda _: self.folder(user, "INBOX").load())
        return d

    def mailbox_path(self, user: str) -> Path:
        if not user or "/" in user or user.startswith("."):
            raise ValueError(f"bad mailbox name {user!r}")
        return self.root / user

    # -- delivery ------------------------------------------------------------------------------

    def delivery(self, user: str, folder: str = "INBOX") -> PgDelivery:
        self.mailbox_path(user)
        name = check_folder_name(folder)
        return PgDelivery(self, user, name)

    def delivered(self, key: str, user: str, name: str, size: int = 0) -> str:
        # The next quota check on this host counts it (another host's: at its next read).
        self.account(user).used(size, 1)
        folder = self._folders.get((user, name))
        if folder is not None and not folder.deleted:
            folder.refresh(force=True)
        return key

    # -- folders -------------------------------------------------------------------------------

    def folder(self, user: str, name: str = "INBOX", create: bool = False) -> PgFolder:
        name = check_folder_name(name)
        acct = self.account(user)
        if name not in acct.folders and name != "INBOX":
            if not create:
                raise KeyError(name)
            self.create_folder(user, name)
        cached = self._folders.get((user, name))
        if cached is None or cached.deleted:
            cached = self._folders[(user, name)] = PgFolder(
                self, acct, name, self.root / ".pg-cache" / "folders" / user / name)
            cached.load().addErrback(lambda f: None)
        return cached

    def incoming(self, user: str, name: str = "INBOX") -> IncomingMessage | None:
        """
        A message written to the user's local tmp/ as it arrives (an IMAP APPEND
        literal), for L{PgFolder.append_many}: the mirror is asked, not the
        database.  L{KeyError} if the folder does not exist; None while the
        account is not read yet (the literal is then held in memory).
        """
        name = check_folder_name(name)
        acct = self.account(user)
        if not acct.ready:
            return None
        if name not in acct.folders and name != "INBOX":
            raise KeyError(name)
        return self.incoming_file(user)

    def incoming_file(self, user: str) -> IncomingMessage:
        tmp = self.mailbox_path(user) / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return IncomingMessage(tmp)

    def clean_tmp(self, max_age: float = TMP_MAX_AGE, now: float | None = None) -> int:
        """Leftovers of streamed APPENDs a crash cut short (see L{clean_tmp_dir}); blocking."""
        try:
            users = os.listdir(self.root)
        except FileNotFoundError:
            return 0
        return sum(clean_tmp_dir(self.root / user / "tmp", max_age, now, ours=True)
                   for user in users if not user.startswith("."))

    def open_folder(self, user: str, name: str = "INBOX") -> defer.Deferred:
        try:
            name = check_folder_name(name)
        except BadFolderName:
            return defer.fail()
        d = self.prepare(user)
        d.addCallback(lambda _: self.folder(user, name))
        # A folder in memory catches up first: a new session (SELECT, a POP3 login) sees
        # every change committed before it, on any host, without waiting for the NOTIFY.
        d.addCallback(lambda folder: folder.catch_up() if folder.loaded else folder.load())
        # Called only once it has the folder: a caller may test d.called (SELECT does).
        out: defer.Deferred = defer.Deferred()
        d.addBoth(out.callback)
        return out

    def folder_loaded(self, folder: PgFolder) -> None:
        if folder.id is not None:
            self._by_id[folder.id] = folder

    def folder_gone(self, folder: PgFolder) -> None:
        self.forget_folder(folder.account.user, folder.name)

    def forget_folder(self, user: str, name: str) -> None:
        folder = self._folders.pop((user, name), None)
        if folder is not None:
            folder.deleted = True
            if folder.id is not None:
                self._by_id.pop(folder.id, None)

    def list_folders(self, user: str) -> list[str]:
        names = sorted(n for n in self.account(user).folders if n != "INBOX")
        return ["INBOX", *names]

    def create_folder(self, user: str, name: str) -> None:
        name = check_folder_name(name)
        acct = self.account(user)
        if name == "INBOX" or name in acct.folders:
            raise FileExistsError(name)
        acct.folders[name] = (None, 0, None)

        def work(conn) -> tuple[int, int]:
            aid = sql.account_id(conn, user)
            fid = sql.create_folder(conn, aid, name, exist_ok=True)
            uv = conn.execute("SELECT uidvalidity FROM folders WHERE id = %s",
                              (fid,)).fetchone()[0]
            return fid, uv

        def made(result: tuple[int, int]) -> None:
            if name in acct.folders:
                acct.folders[name] = (result[0], result[1], None)

        acct.change(work, made)

    def delete_folder(self, user: str, name: str) -> None:
        name = check_folder_name(name)
        if name == "INBOX":
            raise PermissionError("INBOX cannot be deleted")
        acct = self.account(user)
        if name not in acct.folders:
            raise KeyError(name)
        del acct.folders[name]
        self.forget_folder(user, name)

        def work(conn) -> None:
            sql.delete_folder(conn, self.blobs, sql.account_id(conn, user), name)

        acct.change(work)

    def rename_folder(self, user: str, old: str, new: str) -> None:
        old, new = check_folder_name(old), check_folder_name(new)
        acct = self.account(user)
        if new == "INBOX" or new in acct.folders:
            raise FileExistsError(new)
        if old not in acct.folders and old != "INBOX":
            raise KeyError(old)
        if old == "INBOX":
            self._rename_inbox(user, acct, new)
            return
        moved = [n for n in acct.folders if n == old or n.startswith(old + ".")]
        for n in moved:
            acct.folders[new + n[len(old):]] = acct.folders.pop(n)
            folder = self._folders.pop((user, n), None)
            if folder is not None:
                folder.name = new + n[len(old):]
                self._folders[(user, folder.name)] = folder
        for sub in list(acct.subscriptions):
            if sub == old or sub.startswith(old + "."):
                self.set_subscribed(user, sub, False)
                self.set_subscribed(user, new + sub[len(old):], True)

        def work(conn) -> None:
            sql.rename_folder(conn, sql.account_id(conn, user), old, new)

        acct.change(work)

    def _rename_inbox(self, user: str, acct: PgAccount, new: str) -> None:
        """RENAME INBOX: its messages move to the new folder; INBOX stays, empty."""
        acct.folders[new] = (None, 0, None)

        def work(conn) -> tuple[int, int]:
            aid = sql.account_id(conn, user)
            inbox = sql.ensure_folder(conn, aid, "INBOX")
            fid = sql.create_folder(conn, aid, new, exist_ok=True)
            uids = [r[0] for r in conn.execute("SELECT uid FROM messages WHERE folder_id = %s",
                                               (inbox,))]
            if uids:
                sql.copy(conn, self.blobs, inbox, uids, fid)
                sql.expunge(conn, self.blobs, inbox, uids, 0)
            uv = conn.execute("SELECT uidvalidity FROM folders WHERE id = %s",
                              (fid,)).fetchone()[0]
            return fid, uv

        def made(result: tuple[int, int]) -> None:
            acct.folders[new] = (result[0], result[1], None)
            inbox = self._folders.get((user, "INBOX"))
            if inbox is not None and not inbox.deleted:
                inbox.refresh(force=True)

        acct.change(work, made)

    def subscriptions(self, user: str) -> list[str]:
        return list(self.account(user).subscriptions)

    def set_subscribed(self, user: str, name: str, on: bool) -> None:
        acct = self.account(user)
        if on == (name in acct.subscriptions):
            return
        if on:
            acct.subscriptions.append(name)
        else:
            acct.subscriptions.remove(name)

        def work(conn) -> None:
            sql.set_subscribed(conn, sql.account_id(conn, user), name, on)

        acct.change(work)

    def ensure_special_folders(self, user: str) -> None:
        """Made by L{prepare}, in the login's transaction."""

    def special_use(self, name: str) -> str | None:
        return sql.SPECIAL_FOLDERS.get(name)

    def usage(self, user: str) -> tuple[int, int]:
        """
        (bytes, messages) as the account's rows said at its last reading, read
        again in the background at each call: a quota is checked against a
        figure at most one call old (on every host).
        """
        acct = self.account(user)
        if acct.id is not None:
            acct.reread()
        else:
            self.prepare(user).addErrback(lambda f: None)
        return acct.usage

    # -- listeners and other hosts' changes ----------------------------------------------------

    def watch(self, folder: PgFolder, listener) -> None:
        self.start()
        folder.listeners.append(listener)

    def unwatch(self, folder: PgFolder, listener) -> None:
        if listener in folder.listeners:
            folder.listeners.remove(listener)

    def listening(self) -> bool:
        """Every change committed on any host is heard now (a NOTIFY), so no need to ask."""
        return self.told is not None and self.told.connected

    def notified(self, payload: str | None) -> None:
        """A NOTIFY on L{sql.CHANNEL}; None: LISTEN (re)connected, anything may have changed."""
        if payload is None:
            self._reconnected()
            return
        kind, _sp, rest = payload.partition(" ")
        try:
            if kind == "f":
                fid, modseq = (int(x) for x in rest.split())
                folder = self._by_id.get(fid)
                if (folder is not None and folder.loaded and not folder.deleted
                        and modseq > max(folder.synced, self._covered.get(fid, 0))):
                    folder.refresh(force=True)
            elif kind == "a":
                acct = self.accounts_by_id.get(int(rest))
                if acct is not None:
                    acct.reread()
        except ValueError:
            log.warn("PostgreSQL store: a notification not understood: {payload!r}",
                     payload=payload)

    def covered(self, later: list[sql.LaterDelta]) -> None:
        """
        Batches' reads of their folders, committed (on the database thread): a
        NOTIFY up to what they read is this host's own change, or one they saw,
        and needs no read of its own (one per change otherwise).
        """
        for item in later:
            if item.delta is not None:
                fid, seen = item.folder_id, item.delta.highestmodseq
                if seen > self._covered.get(fid, 0):
                    self._covered[fid] = seen

    def _reconnected(self) -> None:
        """LISTEN (again): what was changed while it was away is read now."""
        for folder in list(self._folders.values()):
            if folder.loaded and not folder.deleted:
                folder.refresh(force=True)
        for acct in list(self.accounts.values()):
            acct.reread()

    def flush(self, timeout: float = FLUSH_SECONDS) -> defer.Deferred:
        """
        At shutdown: wait until every account's queue has written what it holds
        (a STORE is answered from the mirror before its row is written, so the
        queue holds answered changes).  Bounded by C{timeout}: a database that
        is away does not hold the exit for ever; what is lost then is said.
        """
        waits = [q.drained() for q in [self.deliveries, *self.accounts.values()]]
        done = defer.DeferredList(waits, consumeErrors=True)
        late = self.reactor.callLater(timeout, done.cancel)

        def finished(_result) -> None:
            if late.active():
                late.cancel()
            else:  # the time ran out (cancelled the waits)
                left = sorted(a.user for a in self.accounts.values() if a.busy)
                if self.deliveries.busy:
                    left.append("(deliveries)")
                log.warn("PostgreSQL store: shutting down with changes of {users} not written "
                         "after {timeout} s", users=", ".join(left), timeout=timeout)

        return done.addBoth(finished)


def install(realm: Any, db: Any, reactor: Any, told: Any) -> PgMailStore:
    """
    Make C{realm}'s store this one (C{[store] backend = "postgresql"}), and
    every avatar of a user wait for that user's account mirror (L{prepare}):
    a login reads the account's rows once, off the reactor, before IMAP or POP3
    ask the store anything.
    """
    store = PgMailStore(db, Path(realm.data_dir) / "mail", reactor)
    told.subscribe(sql.CHANNEL, store.notified)
    store.told = told
    realm.store = store
    makers = getattr(realm, "avatar_makers", None)
    if makers is not None:
        for iface, make in list(makers.items()):
            makers[iface] = _prepared(store, make)
    return store


def _prepared(store: PgMailStore, make):
    def prepared_make(user):
        if not isinstance(user, str):  # ANONYMOUS (an MX session): no mailbox to read
            return make(user)
        try:
            d = store.prepare(user)
        except ValueError:
            return make(user)
        return d.addCallback(lambda _: make(user))

    return prepared_make


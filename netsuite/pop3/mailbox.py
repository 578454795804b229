"""
The POP3 avatar: a fixed view of a user's INBOX for one session.

POP3 numbers messages once at login (RFC 1939); DELE only marks, and the
marked messages are removed in the UPDATE state, at QUIT (L{POP3Mailbox.sync}).
A connection that drops without QUIT deletes nothing.  One POP3 session per
mailbox at a time: a second login gets C{-ERR [IN-USE]} (RFC 2449 8.1.2).
The lock is an C{flock} on C{LOCK_NAME} in the maildrop, so it holds across
worker processes (C{--workers N}) and separate servers on one data dir, and
the kernel releases it when the session's process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import pop3
from zope.interface import implementer

from netsuite.auth import AvatarInUse
from netsuite.pop3.wire import uidl_for

log = Logger(namespace="netsuite.pop3")

#: The lock file in the maildrop's directory (no leading dot: not a Maildir++ folder).
LOCK_NAME = "netsuite-pop3.lock"


def _lock_maildrop(path) -> int | None:
    """An open fd holding the exclusive maildrop lock, or None if another session has it."""
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


class MailboxInUse(AvatarInUse):
    """Another POP3 session holds this mailbox (here or, with the shared lock, on another host)."""


@implementer(pop3.IMailbox)
class POP3Mailbox:
    """See the module docstring; C{on_delete} is 'expunge', 'trash' or 'keep'."""

    def __init__(self, store, user: str, on_delete: str = "expunge", mark_seen: bool = True):
        self.store = store
        self.user = user
        self.on_delete = on_delete
        self.mark_seen = mark_seen
        self.folder = store.folder(user, "INBOX")
        self.folder.refresh()
        self.messages = list(self.folder.messages)
        for m in self.messages:
            try:
                self.folder.size_of(m)
            except KeyError:
                m.size = 0
        self.folder.save_if_dirty()
        self.deleted: set[int] = set()
        self.retrieved: set[int] = set()
        #: The lock shared by every host (L{netsuite.db.locks.Held}), if the store has one.
        self.shared_lock: Any = None
        # flock, not lockf: a second open in this same process conflicts too.
        self._lock_fd = _lock_maildrop(store.mailbox_path(user))
        if self._lock_fd is None:
            raise MailboxInUse(user)
        # Listening keeps this Folder the one shared object for its directory
        # (the store never evicts a watched folder) for the whole session.
        store.watch(self.folder, self._changed)

    # -- twisted.mail.pop3.IMailbox ------------------------------------------------

    def _check(self, i: int):
        """0-based index -> message; ValueError for out of range or deleted."""
        if not 0 <= i < len(self.messages) or i in self.deleted:
            raise ValueError(i)
        return self.messages[i]

    def listMessages(self, i: int | None = None):
        if i is None:
            return [0 if n in self.deleted else m.size for n, m in enumerate(self.messages)]
        return self._check(i).size

    def getMessage(self, i: int):
        return io.BytesIO(self.wire(i))

    def wire(self, i: int, retrieve: bool = True) -> bytes:
        """The message with CRLF line ends; KeyError if it vanished from disk."""
        msg = self._check(i)
        data = self.folder.read_wire(msg)
        if retrieve:
            self.retrieved.add(i)  # RETR, not TOP, makes it \Seen at QUIT
        return data

    def retrieve(self, i: int, inline: int):
        """
        For RETR: the wire size and the stored bytes (up to C{inline} wire
        octets, and a file of at most that: no file object) or else the stored
        file, open, to be streamed; KeyError if it vanished.
        """
        msg = self._check(i)
        folder = self.folder
        body = folder.read_upto(msg, inline) if 0 <= msg.size <= inline else folder.open(msg)
        self.retrieved.add(i)  # RETR makes it \Seen at QUIT
        return msg.size, body

    def getUidl(self, i: int) -> bytes:
        return uidl_for(self._check(i).base).encode("ascii")

    def deleteMessage(self, i: int) -> None:
        self._check(i)
        self.deleted.add(i)

    def undeleteMessages(self) -> None:
        self.deleted.clear()

    def sync(self) -> defer.Deferred:
        """
        The UPDATE state: apply DELE marks (and \\Seen for retrieved messages).
        A Deferred, fired once done: with C{on_delete = trash} the copies into
        Trash are fsynced in a thread (and a Trash not in memory is read in
        one) before the originals are expunged.
        """
        gone = [self.messages[i] for i in sorted(self.deleted)]
        if self.mark_seen:
            seen = [self.messages[i] for i in sorted(self.retrieved - self.deleted)]
            live = [m for m in seen if self.folder.by_uid(m.uid) is m]
            if live:
                self.folder.set_flags(live, ["\\Seen"], 1)
        if not gone:
            return defer.succeed(None)
        if self.on_delete == "keep":
            self.folder.set_flags(gone, ["\\Seen", "\\Deleted"], 1)
            return defer.succeed(None)
        if self.on_delete != "trash":
            self.folder.expunge([m.uid for m in gone])
            return defer.succeed(None)

        def made(f):
            f.trap(KeyError)  # never made, or deleted by the user: made (mkdirs), then read
            with contextlib.suppress(FileExistsError):
                self.store.create_folder(self.user, "Trash")
            return self.store.open_folder(self.user, "Trash")

        def moved(_) -> None:
            self.folder.expunge([m.uid for m in gone])

        d = self.store.open_folder(self.user, "Trash").addErrback(made)
        d.addCallback(lambda trash: self.folder.copy_many(gone, trash))
        return d.addCallback(moved)

    # -- cred -------------------------------------------------------------------------

    def _changed(self, folder, changes) -> None:
        """POP3 keeps the list it had at login (RFC 1939); nothing to do."""

    def unlock(self) -> defer.Deferred:
        """
        Give the maildrop lock back (QUIT's UPDATE state, then L{logout}): a
        Deferred that fires once it is free, also on other hosts, so that a
        client reconnecting at once after QUIT's +OK is not refused [IN-USE].
        """
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)
        held, self.shared_lock = self.shared_lock, None
        return held.release() if held is not None else defer.succeed(None)

    def logout(self) -> None:
        self.unlock()
        self.store.unwatch(self.folder, self._changed)


def mailbox_for(realm, user: str):
    """
    What the realm hands to POP3 logins: a Deferred of the L{POP3Mailbox},
    once the store has the INBOX in memory.  An INBOX not read yet is read in
    a thread (L{netsuite.store.IMailStore.open_folder}): a big one's first
    open lists and indexes every file, and then reads those whose size it
    does not know, which must not stall other sessions.
    """
    cfg = getattr(realm.config, "pop3", None)
    on_delete = getattr(cfg, "on_delete", "expunge")
    mark_seen = getattr(cfg, "mark_seen", True)
    store = realm.store

    def open_mailbox(_=None) -> defer.Deferred:
        d = store.open_folder(user, "INBOX")
        # LIST and the login's reply need every size: files of unknown size are read there too.
        d.addCallback(lambda folder: folder.learn_sizes())
        d.addCallback(lambda _: POP3Mailbox(store, user, on_delete, mark_seen))
        return d

    shared = getattr(realm, "shared_locks", None)
    if shared is None:
        return open_mailbox()

    def locked(held):
        # With [store] backend = "postgresql" the lock holds across hosts too
        # (netsuite.db.locks); the flock above still holds within this one.
        if held is None:
            raise MailboxInUse(user)

        def keep(mailbox: POP3Mailbox) -> POP3Mailbox:
            mailbox.shared_lock = held
            return mailbox

        def give_back(failure):
            held.release()
            return failure

        return open_mailbox().addCallbacks(keep, give_back)

    return shared.acquire(f"pop3:{user}").addCallback(locked)

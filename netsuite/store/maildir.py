"""
Maildir delivery, in the layout Dovecot and mutt read.

A message is written to C{tmp/}, fsynced, renamed into C{new/}, and the
C{new/} directory is fsynced, all before the caller answers 250: an accepted
message survives a crash.  The file is created, written and fsynced in a
thread (see L{MaildirDelivery}), so one slow disk flush, or a journal busy
with other deliveries' flushes, does not stall every other connection.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

from twisted.internet import defer, task, threads
from twisted.logger import Logger
from zope.interface import implementer

from netsuite.durable import fsync_dir
from netsuite.store import IDeliveryFile, IMailStore
from netsuite.store.folder import (
    Folder,
    FolderGone,
    IncomingMessage,
    _off_reactor,
    _reactor_running,
)
from netsuite.store.layout import _HOST, ensure_maildir, unique_name
from netsuite.store.quota import QuotaUsage
from netsuite.store.watch import InotifyWatcher

log = Logger(namespace="netsuite.store")

#: A file in a Maildir's tmp/ this old is a leftover (the Maildir spec's 36 hours).
TMP_MAX_AGE = 36 * 3600
_TMP_NAME = re.compile(r"^\d+\.M\d+P(\d+)Q\d+\.(.+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_tmp_dir(tmp: Path, max_age: float, now: float | None = None,
                  ours: bool = False) -> int:
    """
    Remove leftovers from C{tmp}: files older than C{max_age} seconds, and
    (C{ours}) files this host's netsuite named whose writing process is gone,
    a crash's partial messages.  Only tmp/ is listed, never cur/ or new/.
    """
    now = time.time() if now is None else now
    removed = 0
    try:
        names = os.listdir(tmp)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for name in names:
        path = tmp / name
        try:
            st = os.lstat(path)
            stale = st.st_mtime < now - max_age
            if not stale and ours:
                m = _TMP_NAME.match(name)
                stale = (m is not None and m.group(2) == _HOST
                         and not _pid_alive(int(m.group(1))))
            if stale and not os.path.isdir(path):
                os.unlink(path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed


@implementer(IDeliveryFile)
class MaildirDelivery:
    """
    Writes one message into C{tmp/}; L{commit} moves it to C{new/}.

    A message is held in memory up to L{SPILL} bytes, and then created,
    written, fsynced, renamed and its directory fsynced by L{_finish}, all in
    a thread: creating a file waits for the filesystem's journal, which other
    deliveries' fsyncs keep busy, and that wait must not stall the reactor.
    Only a bigger message gets its file at once (in C{write}), so that
    memory stays bounded and a full disk is seen while its data arrives.
    """

    #: Bytes held in memory before the file is created and written as data comes.
    SPILL = 128 * 1024

    def __init__(self, maildir: Path, on_commit=None, on_missing=None):
        self.maildir = maildir
        self.on_commit = on_commit
        #: Called when the Maildir turns out to be gone (removed by an admin):
        #: it makes it again.
        self.on_missing = on_missing
        self.name = unique_name()
        self.tmp_path = maildir / "tmp" / self.name
        self._file: BinaryIO | None = None
        self._held: list[bytes] = []
        self._aborted = False
        self.size = 0
        #: The write error (a full disk, a quota) that spoilt this message.
        self.error: OSError | None = None

    def write(self, data: bytes) -> None:
        if self.error is not None or self._aborted:
            return
        self.size += len(data)
        if self._file is None:
            self._held.append(data)
            if self.size <= self.SPILL:
                return
            data = b"".join(self._held)
            self._held = []
        try:
            f = self._file
            if f is None:
                f = self._file = self._create()
            f.write(data)
        except OSError as e:
            # Keep the session alive: the caller learns at commit; nothing partial stays.
            self.error = e
            self.abort()

    def _create(self) -> BinaryIO:
        try:
            return open(self.tmp_path, "xb", buffering=65536)
        except FileNotFoundError:
            if self.on_missing is None:
                raise
            self.on_missing()
            return open(self.tmp_path, "xb", buffering=65536)

    def _finish(self) -> str:
        """Blocking (a thread): make the message durable in C{new/}; its file name."""
        try:
            f = self._file
            if f is None:
                f = self._file = self._create()
                f.write(b"".join(self._held))
                self._held = []
            f.flush()
            os.fsync(f.fileno())
            f.close()
        except OSError:
            self.abort()
            raise
        final = f"{self.name},S={self.size}"
        os.rename(self.tmp_path, self.maildir / "new" / final)
        fsync_dir(self.maildir / "new")
        return final

    def commit(self):
        if self.error is not None:
            return defer.fail(self.error)
        d = threads.deferToThread(self._finish)
        if self.on_commit is not None:
            def committed(key):
                try:
                    self.on_commit()
                except Exception:
                    log.failure("delivery notification failed")
                return key
            d.addCallback(committed)
        return d

    def abort(self) -> None:
        self._aborted = True
        self._held = []
        f, self._file = self._file, None
        if f is None:
            return
        try:
            f.close()
        except OSError:
            pass  # the buffered tail cannot be written (full disk): it is discarded anyway
        finally:
            try:
                os.unlink(self.tmp_path)
            except FileNotFoundError:
                pass


#: Folders created at first login, with their RFC 6154 SPECIAL-USE attribute.
SPECIAL_FOLDERS = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash",
                   "Junk": "\\Junk"}
_SPECIAL_MARK = ".netsuite-special"
_SUBSCRIPTIONS = "subscriptions"
_UIDVALIDITY = ".netsuite-uidvalidity"
#: A deleted folder is renamed to this and a unique name, then removed in a
#: thread: not a folder any more meanwhile (nor after a crash: removed then).
_DELETED = ".#deleted."
_DELETED_NAME = re.compile(r"^\.#deleted\.\d+\.M\d+P\d+Q\d+\.")


class BadFolderName(ValueError):
    """A folder name that cannot be stored (empty part, '/', control bytes, ...)."""


def check_folder_name(name: str) -> str:
    """Validate an IMAP folder name (hierarchy delimiter '.'); returns it."""
    if not name or len(name) > 255:
        raise BadFolderName("empty or too long")
    if name.upper() == "INBOX":
        return "INBOX"
    if any(ord(c) < 0x20 or c in "/\\*%" or ord(c) == 0x7f for c in name):
        raise BadFolderName("contains a character not allowed in folder names")
    parts = name.split(".")
    if any(p in ("", "..") for p in parts) or name.startswith("~"):
        raise BadFolderName("empty hierarchy level")
    return name


@implementer(IMailStore)
class MaildirStore:
    """
    One Maildir++ per user under C{root/USER}, INBOX at its top, folders as
    C{.Name} directories (hierarchy delimiter '.').

    Folders are shared by every session in the process: L{folder} returns the
    same L{Folder} object, kept in memory while used and for a while after
    (an LRU), so reopening a big folder costs two stats, not a read.  Folders
    that someone listens to are watched with inotify (polled every
    C{poll_interval} seconds where inotify is missing), so changes by other
    programs reach idling sessions too.
    """

    cache_size = 64
    poll_interval = 2.0

    def __init__(self, root: Path):
        self.root = Path(root)
        self._folders: OrderedDict[Path, Folder] = OrderedDict()
        self._poller: task.LoopingCall | None = None
        self._watcher: InotifyWatcher | None = None
        #: inotify failed once in this process: poll from then on.
        self._no_inotify = False
        #: Users whose mailbox and special folders were made ready in this process.
        self._ready: set[str] = set()
        self._usage: QuotaUsage | None = None
        #: Users whose Maildir L{delivery} has made ready in this process.
        self._delivering: set[str] = set()
        #: Folders being read in a thread (L{open_folder}), with who waits for them.
        self._opening: dict[Path, list] = {}
        self._uidvalidity_lock = threading.Lock()

    # -- delivery ---------------------------------------------------------------

    def mailbox_path(self, user: str) -> Path:
        if not user or "/" in user or user.startswith("."):
            raise ValueError(f"bad mailbox name {user!r}")
        return self.root / user

    def delivery(self, user: str, folder: str = "INBOX") -> MaildirDelivery:
        """
        Start a delivery; the Maildir is made once per user and process, not
        checked per message (a mailbox removed meanwhile is made again when
        the delivery finds it gone).  Another C{folder} than INBOX (a spam
        filter's Junk) is made, and subscribed, if it does not exist.
        """
        path = self.mailbox_path(user)
        if user not in self._delivering:
            ensure_maildir(path)
            self._delivering.add(user)
        if folder.upper() != "INBOX":
            path = self.folder_path(user, folder)
            if not (path / "cur").is_dir():
                self.ensure_special_folders(user)  # Junk with its \\Junk mark
            if not (path / "cur").is_dir():  # the user had deleted it
                ensure_maildir(path)
                (path / "maildirfolder").touch()
                self.set_subscribed(user, folder, True)

            def again() -> None:
                ensure_maildir(path)
                (path / "maildirfolder").touch()

            return MaildirDelivery(path, on_commit=lambda: self.changed(user, folder),
                                   on_missing=again)
        return MaildirDelivery(path, on_commit=lambda: self.changed(user, "INBOX"),
                               on_missing=lambda: ensure_maildir(path))

    def changed(self, user: str, name: str = "INBOX") -> None:
        """
        Something (delivery) changed a folder: refresh it if anyone has it open.
        A watched folder's refresh goes through the watcher, coalesced with its
        inotify events: a refresh after a change lists the directories (about
        90 ms at 100,000 messages), too dear to run once per delivery of a flood.
        """
        folder = self._folders.get(self.folder_path(user, name))
        if folder is None:
            return
        if self._watcher is not None and self._watcher.watching(folder):
            self._watcher.changed(folder)
            return
        folder.refresh()

    # -- folders ----------------------------------------------------------------

    def folder_path(self, user: str, name: str) -> Path:
        name = check_folder_name(name)
        root = self.mailbox_path(user)
        return root if name == "INBOX" else root / f".{name}"

    def folder(self, user: str, name: str = "INBOX", create: bool = False):
        """The shared L{Folder} for C{name}; L{KeyError} if it does not exist."""
        path = self.folder_path(user, name)
        cached = self._folders.get(path)
        if cached is not None:
            if (path / "cur").is_dir():
                self._folders.move_to_end(path)
                return cached
            self._folders.pop(path)
        if not (path / "cur").is_dir():
            if not create and name.upper() != "INBOX":
                raise KeyError(name)
        folder = self._new_folder(path, user, name)
        self._folders[path] = folder
        self._evict()
        return folder

    def _new_folder(self, path: Path, user: str, name: str) -> Folder:
        return Folder(path, "INBOX" if name.upper() == "INBOX" else name,
                      new_uidvalidity=lambda: self._next_uidvalidity(user))

    def open_folder(self, user: str, name: str = "INBOX"):
        """
        L{folder}, as a Deferred, for a session that is about to use it (IMAP
        SELECT).  A folder not in memory yet is read in a thread: its first
        open lists whole directories and writes the index (0.5 s for 100,000
        messages), which must not stall every other connection.  Several
        sessions opening the same folder meanwhile wait for the one read.
        Fails with L{KeyError} or L{BadFolderName} as L{folder} raises them.
        """
        try:
            path = self.folder_path(user, name)
        except BadFolderName:
            return defer.fail()
        if path in self._folders or path in self._opening or not _reactor_running():
            pass
        elif not (path / "cur").is_dir() and name.upper() != "INBOX":
            return defer.fail(KeyError(name))
        else:
            self._opening[path] = []
            d = threads.deferToThread(self._new_folder, path, user, name)
            d.addCallbacks(self._opened, self._not_opened, callbackArgs=(path,),
                           errbackArgs=(path,))
        waiters = self._opening.get(path)
        if waiters is None:
            return defer.maybeDeferred(self.folder, user, name)
        waiter: defer.Deferred = defer.Deferred()
        waiters.append(waiter)
        return waiter

    def incoming(self, user: str, name: str = "INBOX") -> IncomingMessage:
        """
        A message to write into C{name}'s C{tmp/} as it arrives (an IMAP APPEND
        literal), for L{Folder.append_many} once the folder is open: a stat,
        the folder is not read (its first open may take a thread's while).
        L{KeyError} if it does not exist.
        """
        path = self.folder_path(user, name)
        cached = self._folders.get(path)
        if cached is not None:
            return cached.incoming()
        if not (path / "cur").is_dir():
            if name.upper() != "INBOX":
                raise KeyError(name)
            ensure_maildir(path)
        return IncomingMessage(path / "tmp")

    def _opened(self, folder: "Folder", path: Path) -> None:
        """A folder read in a thread: shared from now on (unless one was made meanwhile)."""
        waiters = self._opening.pop(path, [])
        current = self._folders.get(path)
        if current is None:
            current = self._folders[path] = folder
            self._evict()
        for waiter in waiters:
            waiter.callback(current)

    def _not_opened(self, failure, path: Path) -> None:
        for waiter in self._opening.pop(path, []):
            waiter.errback(failure)

    def _next_uidvalidity(self, user: str) -> int:
        """Per user, strictly increasing (and at least the current time)."""
        # Folders read in threads (open_folder) ask at the same time.
        with self._uidvalidity_lock:
            return self._next_uidvalidity_locked(user)

    def _next_uidvalidity_locked(self, user: str) -> int:
        path = self.mailbox_path(user) / _UIDVALIDITY
        try:
            last = int(path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            last = 0
        value = max(int(time.time()), last + 1)
        tmp = path.with_name(_UIDVALIDITY + ".tmp")
        try:
            tmp.write_text(f"{value}\n")
            os.replace(tmp, path)
        except OSError as e:
            # A full disk: the clock keeps the value fresh; the folder stays readable.
            tmp.unlink(missing_ok=True)
            log.warn("cannot record the UIDVALIDITY of {user}: {error}", user=user, error=e)
        return value

    def _evict(self) -> None:
        while len(self._folders) > self.cache_size:
            for path, folder in self._folders.items():
                if not folder.listeners:
                    del self._folders[path]
                    break
            else:
                return

    def list_folders(self, user: str) -> list[str]:
        """Every folder name (INBOX first); only directories that are Maildirs."""
        root = self.mailbox_path(user)
        ensure_maildir(root)
        names = ["INBOX"]
        for entry in sorted(os.listdir(root)):
            if entry.startswith(".") and entry not in (".", "..") and len(entry) > 1:
                if _DELETED_NAME.match(entry) is None and os.path.isdir(root / entry / "cur"):
                    names.append(entry[1:])
        return names

    def create_folder(self, user: str, name: str) -> None:
        path = self.folder_path(user, name)
        if name.upper() == "INBOX" or (path / "cur").is_dir():
            raise FileExistsError(name)
        ensure_maildir(path)
        (path / "maildirfolder").touch()

    def delete_folder(self, user: str, name: str) -> None:
        if name.upper() == "INBOX":
            raise PermissionError("INBOX cannot be deleted")
        path = self.folder_path(user, name)
        if not (path / "cur").is_dir():
            raise KeyError(name)
        self._folders.pop(path, None)
        doomed = path.with_name(f"{_DELETED}{unique_name()}")
        os.rename(path, doomed)  # gone for everyone at once; the files go in a thread
        _off_reactor(shutil.rmtree, doomed, True).addErrback(
            lambda f: log.failure("removing {path}", f, path=str(doomed)))

    def rename_folder(self, user: str, old: str, new: str) -> None:
        """Rename a folder and its children; renaming INBOX moves its messages."""
        old_path = self.folder_path(user, old)
        new_path = self.folder_path(user, new)
        if new.upper() == "INBOX" or (new_path / "cur").is_dir():
            raise FileExistsError(new)
        if not (old_path / "cur").is_dir():
            raise KeyError(old)
        if old.upper() == "INBOX":
            src = self.folder(user, "INBOX")
            dest = self.folder(user, new, create=True)
            (dest.path / "maildirfolder").touch()
            src.copy_to(list(src.messages), dest)
            src.expunge([m.uid for m in src.messages])
            return
        root = self.mailbox_path(user)
        prefix = f".{old}."
        children = [e for e in os.listdir(root) if e.startswith(prefix)]
        os.rename(old_path, new_path)
        for child in children:
            os.rename(root / child, root / f".{new}.{child[len(prefix):]}")
        for path in [p for p in self._folders if p == old_path or p.name.startswith(prefix)]:
            self._folders.pop(path, None)
        for sub in self.subscriptions(user):
            if sub == old or sub.startswith(old + "."):
                self.set_subscribed(user, sub, False)
                self.set_subscribed(user, new + sub[len(old):], True)

    def ensure_special_folders(self, user: str) -> None:
        """
        Create Sent, Drafts, Trash, Junk on the first login (once: a user may
        delete them).  Done once per user and process: later logins cost one
        stat, and only a mailbox removed meanwhile (by an admin) is made again,
        special folders included, as Dovecot's autocreate does on access.
        """
        root = self.mailbox_path(user)
        if user in self._ready and (root / "cur").is_dir():
            return
        ensure_maildir(root)
        mark = root / _SPECIAL_MARK
        if mark.exists():
            self._ready.add(user)
            return
        try:
            self._make_special_folders(user, root)
            mark.touch()
            self._ready.add(user)
        except OSError as e:  # a full disk must not stop a login: tried again next time
            log.warn("cannot create the special folders of {user}: {error}", user=user,
                     error=e)

    def _make_special_folders(self, user: str, root: Path) -> None:
        for name in SPECIAL_FOLDERS:
            path = root / f".{name}"
            if not (path / "cur").is_dir():
                ensure_maildir(path)
                (path / "maildirfolder").touch()
                self.set_subscribed(user, name, True)

    def special_use(self, name: str) -> str | None:
        return SPECIAL_FOLDERS.get(name)

    def usage(self, user: str) -> tuple[int, int]:
        """(bytes, messages) in all of C{user}'s folders, for quotas (L{QuotaUsage})."""
        if self._usage is None:
            self._usage = QuotaUsage(self)
        return self._usage.usage(user)

    # -- subscriptions -------------------------------------------------------------

    def subscriptions(self, user: str) -> list[str]:
        try:
            text = (self.mailbox_path(user) / _SUBSCRIPTIONS).read_text("utf-8")
        except FileNotFoundError:
            return []
        return [line for line in text.split("\n") if line and not line.startswith("V\t")]

    def set_subscribed(self, user: str, name: str, on: bool) -> None:
        subs = self.subscriptions(user)
        if on and name not in subs:
            subs.append(name)
        elif not on and name in subs:
            subs.remove(name)
        else:
            return
        path = self.mailbox_path(user) / _SUBSCRIPTIONS
        tmp = path.with_name(_SUBSCRIPTIONS + ".tmp")
        tmp.write_text("".join(f"{s}\n" for s in subs), "utf-8")
        os.replace(tmp, path)

    # -- change notification between sessions and other programs -------------------------

    def watch(self, folder, listener) -> None:
        """
        Call C{listener(folder, changes)} on every change.  While anyone
        listens, other programs' changes are noticed through inotify, or by
        polling every C{poll_interval} seconds where inotify cannot be had.
        """
        folder.listeners.append(listener)
        if self._watcher is None and not self._no_inotify:
            self._watcher = InotifyWatcher.create(self._refresh_watched)
            self._no_inotify = self._watcher is None
        if self._watcher is not None and self._watcher.add(folder):
            return
        if self._poller is None:
            self._poller = task.LoopingCall(self._poll)
            self._poller.start(self.poll_interval, now=False).addErrback(
                lambda f: log.failure("poller stopped", f))

    def unwatch(self, folder, listener) -> None:
        if listener in folder.listeners:
            folder.listeners.remove(listener)
        if self._watcher is not None and not folder.listeners:
            self._watcher.remove(folder)
        if self._poller is not None and not any(
                f.listeners and not (self._watcher and self._watcher.watching(f))
                for f in self._folders.values()):
            self._poller.stop()
            self._poller = None

    def clean_tmp(self, max_age: float = TMP_MAX_AGE, now: float | None = None) -> int:
        """
        Remove leftovers from every mailbox's and folder's tmp/ (see
        L{clean_tmp_dir}); blocking, for a thread.  The number of files removed.
        """
        removed = 0
        try:
            users = os.listdir(self.root)
        except FileNotFoundError:
            return 0
        for user in users:
            box = self.root / user
            if user.startswith(".") or not (box / "tmp").is_dir():
                continue
            removed += clean_tmp_dir(box / "tmp", max_age, now, ours=True)
            try:
                entries = os.listdir(box)
            except OSError:
                continue
            for entry in entries:
                if _DELETED_NAME.match(entry):  # a DELETE a crash stopped half-way
                    shutil.rmtree(box / entry, ignore_errors=True)
                elif entry.startswith(".") and len(entry) > 1 and entry != "..":
                    removed += clean_tmp_dir(box / entry / "tmp", max_age, now, ours=True)
        if removed:
            log.info("tmp cleanup: removed {n} leftover file(s) under {root}", n=removed,
                     root=str(self.root))
        return removed

    def flush(self) -> None:
        """Write every folder index with unsaved changes (at shutdown)."""
        for folder in list(self._folders.values()):
            try:
                folder.save_if_dirty()
            except OSError:
                log.failure("saving the index of {path}", path=str(folder.path))

    def _refresh_watched(self, folder) -> None:
        """inotify saw a change in C{folder}: bring it up to date (listeners hear it)."""
        if not folder.listeners:
            return
        try:
            folder.refresh()
        except FolderGone:
            if self._watcher is not None:
                self._watcher.remove(folder)
        except OSError:
            log.failure("refreshing {path}", path=str(folder.path))

    def _poll(self) -> None:
        for folder in list(self._folders.values()):
            if folder.listeners and not (self._watcher and self._watcher.watching(folder)):
                try:
                    folder.refresh()
                except FolderGone:
                    pass
                except OSError:
                    log.failure("polling {path}", path=str(folder.path))

"""
Noticing changes other programs make to watched folders: inotify where the
kernel has it, polling where it does not.

A delivery by procmail or Dovecot's deliver (a file renamed into C{new/}), a
flag change by mutt (a rename in C{cur/}) or another netsuite process writing
the folder's index or change log all show up as inotify events on C{new/},
C{cur/} or the folder directory itself.  Events are only a hint: a burst of
them (one delivery is a create in tmp/ and a rename into new/; an index save
is a create and a rename) is coalesced into one L{Folder.refresh} per folder
a moment later, and the refresh looks at the disk to learn what changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.python.filepath import FilePath

if TYPE_CHECKING:
    from netsuite.store.folder import Folder

log = Logger(namespace="netsuite.store")

#: Seconds to wait after the first event of a burst before refreshing: the
#: rest of the burst (tmp/ create, rename into new/, index rename) lands in it.
COALESCE_DELAY = 0.02

#: A folder is refreshed at most every this many times its last refresh took.
COST_FACTOR = 4.0


def _masks():
    from twisted.internet import inotify

    files = (inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_MOVED_TO
             | inotify.IN_MOVED_FROM | inotify.IN_MODIFY)
    gone = inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF
    return files | gone, files | inotify.IN_CLOSE_WRITE | gone


class InotifyWatcher:
    """
    Watches the folders it is given with one inotify descriptor and calls
    C{refresh(folder)} once per burst of changes.  L{create} returns None
    where inotify cannot be had (not Linux, no descriptors left), so the
    caller polls instead.
    """

    def __init__(self, notifier, reactor, refresh: Callable[["Folder"], None]):
        self._notifier = notifier
        self._reactor = reactor
        self._refresh = refresh
        self._watched: dict[object, list[FilePath]] = {}
        #: id(folder) -> the refresh waiting for the rest of its burst
        self._pending: dict[int, Any] = {}
        #: id(folder) -> seconds its last refresh took
        self._cost: dict[int, float] = {}

    @classmethod
    def create(cls, refresh: Callable[["Folder"], None],
               reactor=None) -> "InotifyWatcher | None":
        if reactor is None:
            from twisted.internet import reactor as default

            reactor = default
        try:
            from twisted.internet import inotify

            notifier = inotify.INotify(reactor)
            notifier.startReading()
        except Exception as e:  # ImportError off Linux, INotifyError, OSError (EMFILE)
            log.info("inotify unavailable ({error}); polling folders instead", error=e)
            return None
        return cls(notifier, reactor, refresh)

    def add(self, folder: "Folder") -> bool:
        """Watch C{folder}'s new/, cur/ and its directory; False if inotify refused."""
        if id(folder) in self._watched:
            return True
        sub_mask, dir_mask = _masks()
        paths = []
        try:
            for path, mask in ((folder.path / "new", sub_mask), (folder.path / "cur", sub_mask),
                               (folder.path, dir_mask)):
                fp = FilePath(str(path))
                self._notifier.watch(fp, mask=mask,
                                     callbacks=[lambda _w, _p, _m, f=folder: self._event(f)])
                paths.append(fp)
        except Exception as e:  # the folder went away, or the watch limit is reached
            log.warn("cannot watch {path} ({error})", path=str(folder.path), error=e)
            for fp in paths:
                self._notifier.ignore(fp)
            return False
        self._watched[id(folder)] = paths
        return True

    def remove(self, folder: "Folder") -> None:
        for fp in self._watched.pop(id(folder), []):
            try:
                self._notifier.ignore(fp)
            except KeyError:
                pass  # the kernel dropped it already (the directory was deleted)
        call = self._pending.pop(id(folder), None)
        if call is not None and call.active():
            call.cancel()
        self._cost.pop(id(folder), None)

    def watching(self, folder: "Folder") -> bool:
        return id(folder) in self._watched

    def changed(self, folder: "Folder") -> None:
        """
        This process changed C{folder} (a delivery): refresh it as its inotify
        events would, coalesced with them, without relying on the kernel's queue.
        """
        self._event(folder)

    def _event(self, folder: "Folder") -> None:
        key = id(folder)
        if key not in self._watched or key in self._pending:
            return
        # A burst lands in one refresh; a folder whose refresh is dear (a
        # directory scan of 100,000 names after a change) is refreshed at most
        # every COST_FACTOR times what its last one took, so that a flood of
        # deliveries into it leaves the reactor to the sessions.
        delay = max(COALESCE_DELAY, COST_FACTOR * self._cost.get(key, 0.0))
        self._pending[key] = self._reactor.callLater(delay, self._flush, folder)

    def _flush(self, folder: "Folder") -> None:
        key = id(folder)
        self._pending.pop(key, None)
        if key not in self._watched:
            return
        started = time.perf_counter()
        self._refresh(folder)
        self._cost[key] = time.perf_counter() - started

    def stop(self) -> None:
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        for key in list(self._watched):
            for fp in self._watched.pop(key):
                try:
                    self._notifier.ignore(fp)
                except KeyError:
                    pass
        self._notifier.loseConnection()

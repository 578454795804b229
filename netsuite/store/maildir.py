"""
Maildir delivery, in the layout Dovecot and mutt read.

A message is written to C{tmp/}, fsynced, renamed into C{new/}, and the
C{new/} directory is fsynced, all before the caller answers 250: an accepted
message survives a crash.  The fsyncs run in a thread so one slow disk flush
does not stall every other connection.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

from twisted.internet import threads
from zope.interface import implementer

from netsuite.store import IDeliveryFile, IMailStore

_counter = itertools.count()
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")

SUBDIRS = ("tmp", "new", "cur")


def ensure_maildir(path: Path) -> Path:
    """Create C{path} with tmp/new/cur (mode 0700) if missing."""
    for sub in SUBDIRS:
        (path / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def unique_name() -> str:
    """A Maildir base name: time, microseconds, pid and counter, host (no flags)."""
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{_HOST}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@implementer(IDeliveryFile)
class MaildirDelivery:
    """Writes one message into C{tmp/}; L{commit} moves it to C{new/}."""

    def __init__(self, maildir: Path):
        self.maildir = maildir
        self.name = unique_name()
        self.tmp_path = maildir / "tmp" / self.name
        self._file = open(self.tmp_path, "xb", buffering=65536)
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)

    def _finish(self) -> str:
        f = self._file
        f.flush()
        os.fsync(f.fileno())
        f.close()
        final = f"{self.name},S={self.size}"
        os.rename(self.tmp_path, self.maildir / "new" / final)
        fsync_dir(self.maildir / "new")
        return final

    def commit(self):
        return threads.deferToThread(self._finish)

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            try:
                os.unlink(self.tmp_path)
            except FileNotFoundError:
                pass


@implementer(IMailStore)
class MaildirStore:
    """One Maildir++ per user under C{root/USER}, INBOX at its top."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def mailbox_path(self, user: str) -> Path:
        if not user or "/" in user or user.startswith("."):
            raise ValueError(f"bad mailbox name {user!r}")
        return self.root / user

    def delivery(self, user: str) -> MaildirDelivery:
        return MaildirDelivery(ensure_maildir(self.mailbox_path(user)))

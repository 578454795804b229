"""
Making writes durable: shared by Maildir delivery, the outgoing queue and FTP
uploads, which all promise that what they acknowledged survives a crash.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path


class _DirState:
    """Group commit for one directory (see L{fsync_dir})."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.syncing = threading.Lock()
        #: Tickets handed out: one per caller, taken after its rename.
        self.requested = 0
        #: Every ticket up to this one is covered by a completed fsync.
        self.covered = 0


_states: dict[str, _DirState] = {}
_states_lock = threading.Lock()


def disk_full(error: OSError) -> bool:
    """A write failed for want of space (a full disk or a quota): every protocol
    answers that with its own 'try later / over quota' reply, not a server error."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def fsync_dir(path: Path | str) -> None:
    """
    fsync a directory, so the renames and links the caller made in it before
    this call survive a crash.

    Callers in many threads share fsyncs (group commit): an fsync that starts
    after a caller's ticket was taken covers that caller's rename, so twenty
    deliveries arriving together cost about two directory fsyncs, not twenty.
    """
    key = os.fspath(path)
    with _states_lock:
        state = _states.get(key)
        if state is None:
            state = _states[key] = _DirState()
    with state.mutex:
        state.requested += 1
        ticket = state.requested
    with state.syncing:
        with state.mutex:
            if state.covered >= ticket:
                return  # an fsync that started after our rename has completed
            start = state.requested  # every ticket so far renamed before this fsync
        fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with state.mutex:
            state.covered = max(state.covered, start)

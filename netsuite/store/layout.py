"""
The on-disk shape of a Maildir: its three directories and how a new file is named.

Both the delivery side (L{netsuite.store.maildir}) and the folder index
(L{netsuite.store.folder}) need these, and the store imports the folder, so
they live here, below both, rather than in either.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

SUBDIRS = ("tmp", "new", "cur")

_counter = itertools.count()
#: This host's name as a Maildir name carries it ("/" and ":" escaped, as Dovecot does).
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")


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

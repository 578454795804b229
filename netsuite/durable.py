"""
Making writes durable: shared by Maildir delivery, the outgoing queue and FTP
uploads, which all promise that what they acknowledged survives a crash.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path | str) -> None:
    """fsync a directory, so a rename or link into it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""
OBJECTID (RFC 8474) and SAVEDATE (RFC 8514) values, from what the index
already holds (no file is opened; EMAILID costs one stat).

  - MAILBOXID: C{F} and the folder's UIDVALIDITY.  UIDVALIDITY is given once
    per user and folder (strictly increasing, never reused for a deleted and
    re-created name) and is stored in the folder's own index, which a RENAME
    moves with the directory: stable across restarts and RENAME.  (A folder
    whose index is lost and rebuilt gets a new UIDVALIDITY, hence a new id,
    which is what its clients must hear anyway.)
  - EMAILID: C{M} and a hash of the message file's inode number, mtime (the
    internal date, in nanoseconds) and size: one stat.  A flag change renames
    the file, a folder RENAME moves the directory, COPY and MOVE hard-link the
    same file: none of them changes the id, so a copy and a moved message keep
    the EMAILID of the original (RFC 8474 5.1).  An inode reused after the
    message is gone gets another id unless mtime and size match to the
    nanosecond and byte.  (A COPY across file systems writes a new file: a new
    id.)
  - THREADID: NIL (no threads are kept; RFC 8474 5.2 allows NIL).
  - SAVEDATE: the time in the Maildir base name, which the store writes when
    the file is saved into the folder (delivery, APPEND, COPY, MOVE); NIL for a
    name that carries none.
"""

from __future__ import annotations

import hashlib
import os
import re

_SAVED = re.compile(r"^(\d{9,11})\.")


def mailbox_id(folder) -> str:
    return f"F{folder.uidvalidity}"


def email_id(folder, msg) -> str:
    """L{KeyError} if the message file is gone (expunged by another program)."""
    own = getattr(folder, "email_id", None)
    if own is not None:  # a store with ids of its own (PostgreSQL: the same on every host)
        return own(msg)
    try:
        st = os.stat(folder.file_path(msg))
    except FileNotFoundError:
        raise KeyError(msg.uid) from None
    key = f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}".encode()
    return "M" + hashlib.blake2b(key, digest_size=12).hexdigest()


def save_date(msg) -> int | None:
    """Unix seconds when the message was saved into its folder, or None if unknown."""
    m = _SAVED.match(msg.base)
    return int(m.group(1)) if m else None

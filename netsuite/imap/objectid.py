"""
OBJECTID (RFC 8474) and SAVEDATE (RFC 8514) values, from what the index
already holds (no file is opened or stat()ed).

  - MAILBOXID: C{F} and the folder's UIDVALIDITY.  UIDVALIDITY is given once
    per user and folder (strictly increasing, never reused for a deleted and
    re-created name) and is stored in the folder's own index, which a RENAME
    moves with the directory: stable across restarts and RENAME.  (A folder
    whose index is lost and rebuilt gets a new UIDVALIDITY, hence a new id,
    which is what its clients must hear anyway.)
  - EMAILID: C{M} and a hash of the Maildir base name (the file name before
    its C{:2,} flags), which neither restarts, flag changes nor a folder
    RENAME change.  COPY and MOVE write a new file name, so a copy gets its
    own id (RFC 8474 5.1 allows it).
  - THREADID: NIL (no threads are kept; RFC 8474 5.2 allows NIL).
  - SAVEDATE: the time in the Maildir base name, which the store writes when
    the file is saved into the folder (delivery, APPEND, COPY, MOVE); NIL for a
    name that carries none.
"""

from __future__ import annotations

import hashlib
import re

_SAVED = re.compile(r"^(\d{9,11})\.")


def mailbox_id(folder) -> str:
    return f"F{folder.uidvalidity}"


def email_id(msg) -> str:
    digest = hashlib.blake2b(msg.base.encode("utf-8", "surrogateescape"), digest_size=12)
    return "M" + digest.hexdigest()


def save_date(msg) -> int | None:
    """Unix seconds when the message was saved into its folder, or None if unknown."""
    m = _SAVED.match(msg.base)
    return int(m.group(1)) if m else None

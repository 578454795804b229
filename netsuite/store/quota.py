"""
Storage quota: how much of a mailbox is used, cheaply, and size strings.

A user's usage is the sum of the message sizes (wire size, CRLF line ends, as
RFC822.SIZE says) that the folders' indexes already hold, so no message file
is read or listed to answer.  Each folder's total is kept with the folder's
(UIDVALIDITY, HIGHESTMODSEQ, count) it was summed at: every arrival, flag
change and expunge, by any process, moves HIGHESTMODSEQ, and only then is
that folder summed again (in memory).  A check costs one listdir of the
mailbox root and a refresh (three stats when nothing changed) per folder.
"""

from __future__ import annotations

import re
from typing import Any

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(value: Any) -> int | None:
    """
    C{"100M"}, C{"1G"}, C{"512K"}, C{"1048576"} or an int -> bytes (binary
    units); C{""}, C{"unlimited"}, C{0} -> None (no limit).  L{ValueError}
    for anything else.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"negative size: {value}")
        return value or None
    text = str(value).strip()
    if text.lower() in ("", "unlimited", "none", "0"):
        return None
    m = _SIZE.match(text)
    if m is None:
        raise ValueError(f"not a size: {value!r} (use e.g. 100M, 2G, 512K)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()] or None


class QuotaUsage:
    """Per-user storage use from the folders' indexes; see the module docstring."""

    def __init__(self, store: Any) -> None:
        self.store = store
        #: folder path -> ((uidvalidity, highest_modseq, count), bytes)
        self._totals: dict[Any, tuple[tuple[int, int, int], int]] = {}

    def usage(self, user: str) -> tuple[int, int]:
        """(bytes, messages) in every folder of C{user}."""
        total = count = 0
        for name in self.store.list_folders(user):
            try:
                folder = self.store.folder(user, name)
            except KeyError:
                continue  # removed meanwhile
            folder.refresh()
            key = (folder.uidvalidity, folder.highest_modseq, len(folder.messages))
            cached = self._totals.get(folder.path)
            if cached is None or cached[0] != key:
                cached = (key, sum(folder.size_of(m) for m in folder.messages))
                self._totals[folder.path] = cached
            total += cached[1]
            count += key[2]
        return total, count


def over_quota(store, user: str, limit: int | None, extra: int = 0) -> bool:
    """Whether C{extra} more bytes take C{user} past C{limit} (None: no limit)."""
    if limit is None:
        return False
    used, _ = store.usage(user)
    return used + extra > limit

"""
URLAUTH mailbox access keys (RFC 4467 7): one random key per user and
mailbox, kept in a small file beside the user's folders (mode 0600), so an
URL signed before a restart still verifies after it, and RESETKEY revokes
every URL signed with the old key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

FILENAME = "netsuite-urlauth-keys"


class MailboxKeys:
    """The keys of one user's mailboxes."""

    def __init__(self, root: Path):
        self.path = Path(root) / FILENAME

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, keys: dict[str, str]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(keys, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def key(self, mailbox: str, create: bool = False) -> bytes | None:
        keys = self._load()
        value = keys.get(mailbox)
        if value is None and create:
            value = keys[mailbox] = secrets.token_hex(32)
            self._save(keys)
        return bytes.fromhex(value) if value else None

    def reset(self, mailbox: str | None = None) -> None:
        """Forget one mailbox's key (or all): every URL it signed stops working."""
        keys = self._load()
        if mailbox is None:
            keys = {}
        else:
            keys.pop(mailbox, None)
        self._save(keys)


def sign(key: bytes, rump: str) -> str:
    """The INTERNAL mechanism's token: HMAC-SHA1 of the rump URL, in hex (RFC 4467 7)."""
    return hmac.new(key, rump.encode("utf-8"), hashlib.sha1).hexdigest()


def verify(key: bytes, rump: str, token: str) -> bool:
    return hmac.compare_digest(sign(key, rump), token.lower())

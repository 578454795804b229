"""
Credential checkers and the failed-login throttle.

Checkers are named as C{twistd --auth} names them (C{passwd:PATH}, C{pam},
C{anonymous}, or any other C{ICheckerFactory} plugin) and are all registered
with the one shared Portal.
"""

from __future__ import annotations


def normalize_username(raw: bytes | str) -> str:
    """Usernames arrive as bytes from most Twisted protocols; keep them as str."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return raw

"""
Credential checkers and the failed-login throttle.

Checkers are named as C{twistd --auth} names them (C{passwd:PATH}, C{pam},
C{anonymous}, or any other C{ICheckerFactory} plugin) and are all registered
with the one shared Portal.
"""

from __future__ import annotations


class AvatarInUse(Exception):
    """
    The credentials were right, but the account cannot be served now: another
    session holds it (the POP3 maildrop lock, possibly on another host).  Not a
    failed login: the throttle does not count it, and it is no checker error.
    """


def normalize_username(raw: bytes | str) -> str:
    """Usernames arrive as bytes from most Twisted protocols; keep them as str."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return raw


def password_bytes(password: bytes | str) -> bytes:
    """
    The password as the bytes the client sent.  Hashes are of the UTF-8 of a
    str, so valid UTF-8 verifies the same either way; bytes that are not UTF-8
    (a Latin-1 terminal, a fuzzer) stay bytes and are a wrong password like any
    other, rather than a C{UnicodeEncodeError} deep in argon2.
    """
    if isinstance(password, bytes):
        return password
    try:
        return password.encode("utf-8", "surrogateescape")  # undoes a surrogateescape decode
    except UnicodeEncodeError:
        return password.encode("utf-8", "surrogatepass")

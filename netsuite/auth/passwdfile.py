"""
The password file: one C{name:argon2id-hash} line per user.

Format::

    # comment
    alice:$argon2id$v=19$m=65536,t=3,p=4$...

Names are 1-64 characters of letters, digits and C{._-} (not starting with
C{.} or C{-}).  The file is re-read when it changes (see L{PasswordFile}), so
C{netsuite user add} takes effect without a restart.  Writes go to a temporary
file that is fsynced and renamed over the old one.
"""

from __future__ import annotations

import functools
import os
import re
import time
from pathlib import Path

from argon2 import PasswordHasher
from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from zope.interface import implementer

from netsuite.auth import normalize_username, password_bytes, verifier
from netsuite.auth.cache import ICacheTokenSource

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")

_hasher = PasswordHasher()

#: argon2id verifications at once (see L{netsuite.auth.verifier}).
MAX_CONCURRENT_VERIFY = verifier.MAX_CONCURRENT


@functools.cache
def _dummy_hash() -> str:
    """
    Verified against for unknown users, so timing does not reveal who exists.
    Made at the first use, not at import: one argon2id hash (~100 ms) is a
    tenth of the daemon's start-up and of every C{netsuite} command.
    """
    return _hasher.hash("netsuite-dummy-password")


class PasswordFileError(ValueError):
    """A malformed password file line, or an invalid user name."""


def valid_name(name: str) -> bool:
    return bool(NAME_RE.match(name))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


#: A file changed less than this long ago is re-read on every look-up: a second
#: change within one tick of the file system's clock can leave every stat field
#: but the contents as they were (git's "racily clean" index entries).
RACY_SECONDS = 2.0


class PasswordFile:
    """
    The user database kept in one file; cheap to query, re-read on change.

    A change is seen from the file's identity, size, mtime and ctime (a rename
    over it, as C{netsuite user passwd} does, is a new inode; an in-place edit
    moves ctime even if it puts mtime back), and a file changed in the last
    L{RACY_SECONDS} is re-read every time, so no change goes unseen: the
    verification cache (L{netsuite.auth.cache}) relies on that.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._stamp: tuple[int, ...] | None = None
        self._users: dict[str, str] = {}

    def _reload(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._users = None, {}
            return
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if stamp == self._stamp:
            return
        self._users = self.parse(self.path.read_text("utf-8"), self.path)
        racy = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_SECONDS * 1e9
        self._stamp = None if racy else stamp

    @staticmethod
    def parse(text: str, path: Path | str = "passwd") -> dict[str, str]:
        users: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, hashed = line.partition(":")
            if not sep or not valid_name(name) or not hashed.startswith("$argon2"):
                raise PasswordFileError(f"{path}:{number}: expected name:$argon2id$...")
            users[name] = hashed
        return users

    def users(self) -> dict[str, str]:
        self._reload()
        return dict(self._users)

    def __contains__(self, name: str) -> bool:
        self._reload()
        return name in self._users

    def hash_for(self, name: str) -> str | None:
        self._reload()
        return self._users.get(name)

    def set_password(self, name: str, password: str) -> None:
        self.set_hash(name, hash_password(password))

    def set_hash(self, name: str, hashed: str) -> None:
        """
        Set C{name}'s hash as made elsewhere (another host's file, C{doveadm pw
        -s ARGON2ID}): verification reads the cost parameters from the hash.
        """
        if not valid_name(name):
            raise PasswordFileError(f"invalid user name {name!r}")
        if not hashed.startswith("$argon2") or ":" in hashed or "\n" in hashed:
            raise PasswordFileError(f"{name}: expected an $argon2id$... hash")
        users = self.users()
        users[name] = hashed
        self._write(users)

    def delete(self, name: str) -> bool:
        users = self.users()
        if users.pop(name, None) is None:
            return False
        self._write(users)
        return True

    def _write(self, users: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        body = "".join(f"{n}:{h}\n" for n, h in sorted(users.items()))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# netsuite password file: name:argon2id-hash\n" + body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._stamp = None


def verify(hashed: str | None, password: bytes | str) -> bool:
    """Check a password against an argon2 hash (slow on purpose: run in a thread)."""
    password = password_bytes(password)
    return verifier.verify_hash(hashed or _dummy_hash(), password) and hashed is not None


@implementer(ICredentialsChecker, ICacheTokenSource)
class PasswordFileChecker:
    """Checks C{IUsernamePassword} against a L{PasswordFile}; argon2 runs off the reactor."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, path: Path | str):
        self.db = PasswordFile(Path(path))

    def cache_token(self, username: str) -> bytes | None:
        """The user's hash as the file has it now: a new password is a new (salted) hash."""
        hashed = self.db.hash_for(username) if valid_name(username) else None
        return None if hashed is None else hashed.encode("ascii", "replace")

    @defer.inlineCallbacks
    def requestAvatarId(self, creds):
        name = normalize_username(creds.username)
        hashed = self.db.hash_for(name) if valid_name(name) else None
        ok = yield verifier.run(verify, hashed, creds.password)
        if not ok:
            raise error.UnauthorizedLogin("bad user name or password")
        return name

"""
Public keys that may log in as a user, and the checker that asks them.

A system account's keys are its C{~/.ssh/authorized_keys}; every user (a
password-file user above all) also has C{DATA/ssh/authorized_keys/USER},
managed with C{netsuite user keys}.  Both use OpenSSH's line format.  Lines
with options (C{command=}, C{from=}, C{restrict}...) are skipped: netsuite
does not enforce them, and a key meant to be restricted must not log in
unrestricted.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from twisted.conch.ssh import keys
from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import threads
from twisted.logger import Logger
from zope.interface import implementer

from netsuite.auth import normalize_username
from netsuite.auth.passwdfile import valid_name

log = Logger(namespace="netsuite.ssh")

#: Key types accepted in authorized_keys lines.
KEY_TYPES = (b"ssh-ed25519", b"ssh-rsa", b"ecdsa-sha2-nistp256", b"ecdsa-sha2-nistp384",
             b"ecdsa-sha2-nistp521", b"sk-ssh-ed25519@openssh.com",
             b"sk-ecdsa-sha2-nistp256@openssh.com")
MAX_FILE = 1 << 20


def netsuite_keys_path(data_dir: Path, user: str) -> Path:
    """The per-user keys file that C{netsuite user keys} manages."""
    return Path(data_dir) / "ssh" / "authorized_keys" / user


def parse_line(line: bytes) -> keys.Key | None:
    """One authorized_keys line -> its key; None for blanks, comments, options, junk."""
    line = line.strip()
    if not line or line.startswith(b"#"):
        return None
    if line.split(None, 1)[0] not in KEY_TYPES:
        return None  # options before the key, or not a key at all
    try:
        return keys.Key.fromString(line)
    except (keys.BadKeyError, ValueError, TypeError, IndexError):
        return None


def read_keys(path: Path) -> list[keys.Key]:
    """Blocking: the keys in one file (missing file: none)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    return [k for k in (parse_line(line) for line in data.splitlines()) if k is not None]


def key_files(data_dir: Path, user: str) -> list[Path]:
    files = []
    try:
        files.append(Path(pwd.getpwnam(user).pw_dir) / ".ssh" / "authorized_keys")
    except KeyError:
        pass
    files.append(netsuite_keys_path(data_dir, user))
    return files


def authorized(data_dir: Path, user: str, blob: bytes) -> bool:
    """Blocking: whether the public key C{blob} may log in as C{user}."""
    if not valid_name(user):
        return False
    try:
        offered = keys.Key.fromString(blob)
    except (keys.BadKeyError, ValueError):
        return False
    return any(k == offered for path in key_files(data_dir, user) for k in read_keys(path))


@implementer(ICredentialsChecker)
class AuthorizedKeysChecker:
    """
    C{ISSHPrivateKey} credentials: the key must be listed for the user and the
    signature must verify.  The unsigned 'would this key do?' query never gets
    here (see L{netsuite.ssh.server.UserAuth}), so every call is a real login.
    """

    credentialInterfaces = (credentials.ISSHPrivateKey,)

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)

    def requestAvatarId(self, creds):
        return threads.deferToThread(self._check, creds)

    def _check(self, creds) -> bytes:
        user = normalize_username(creds.username)
        if creds.signature is None or not authorized(self.data_dir, user, creds.blob):
            raise error.UnauthorizedLogin("key not authorized")
        key = keys.Key.fromString(creds.blob)
        if not key.verify(creds.signature, creds.sigData):
            raise error.UnauthorizedLogin("bad signature")
        return creds.username


# -- netsuite user keys add|list|del ---------------------------------------------------


def list_keys(data_dir: Path, user: str) -> list[keys.Key]:
    return read_keys(netsuite_keys_path(data_dir, user))


def add_key(data_dir: Path, user: str, line: str) -> keys.Key:
    """Append one OpenSSH public key line (validated) to the user's keys file."""
    key = parse_line(line.encode("utf-8", "replace"))
    if key is None:
        raise ValueError("not an OpenSSH public key line (options are not supported)")
    path = netsuite_keys_path(data_dir, user)
    present = read_keys(path)
    if any(k == key for k in present):
        return key
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as f:
        f.write(line.strip().encode("utf-8") + b"\n")
    return key


def delete_key(data_dir: Path, user: str, which: str) -> int:
    """Remove keys whose SHA256 fingerprint, or comment, is C{which}; return how many."""
    path = netsuite_keys_path(data_dir, user)
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return 0
    kept, removed = [], 0
    for line in lines:
        key = parse_line(line)
        if key is not None and which in (_fp(key), _fp(key).removeprefix("SHA256:"),
                                          _comment(line)):
            removed += 1
        else:
            kept.append(line)
    if removed:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join(k + b"\n" for k in kept))
        os.replace(tmp, path)
    return removed


def _fp(key: keys.Key) -> str:
    digest = key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip("=")
    return digest if digest.startswith("SHA256:") else "SHA256:" + digest


def _comment(line: bytes) -> str:
    parts = line.strip().split(None, 2)
    return parts[2].decode("utf-8", "replace") if len(parts) > 2 else ""


def describe(path_line: bytes) -> str:
    key = parse_line(path_line)
    if key is None:
        return ""
    return f"{_fp(key)} {key.sshType().decode()} {_comment(path_line)}".rstrip()

"""
The server's host keys: Ed25519 and RSA, generated on first start under the
data directory (mode 0600, OpenSSH's private-key format), like the TLS
certificate is, so a restart presents the same identity.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.conch.ssh import keys
from twisted.logger import Logger

log = Logger(namespace="netsuite.ssh")

#: Kind -> file name under C{DATA/ssh/}.
DEFAULT_FILES = {"ed25519": "ssh_host_ed25519_key", "rsa": "ssh_host_rsa_key"}
RSA_BITS = 3072


def host_key_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "ssh"


def _generate(kind: str):
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def ensure_default_keys(data_dir: Path) -> list[Path]:
    """Generate the missing default host keys; return every default key's path."""
    paths = []
    for kind, name in DEFAULT_FILES.items():
        path = host_key_dir(data_dir) / name
        if not path.exists():
            key = keys.Key(_generate(kind))
            _write_private(path, key.toString("openssh"))
            (path.with_name(name + ".pub")).write_bytes(key.public().toString("openssh") + b"\n")
            log.info("generated SSH host key {path}", path=str(path))
        paths.append(path)
    return paths


def _read_key(path: Path) -> keys.Key:
    """
    A key file as a conch L{keys.Key}.  An OpenSSH private key of our own
    (written by L{ensure_default_keys}, or the administrator's, mode 0600) is
    loaded without cryptography's RSA consistency check, which costs about
    100 ms of a 3072-bit key at every start-up and proves nothing about a file
    only root can write; any other format goes through conch as it is.
    """
    data = path.read_bytes()
    if data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
        try:
            private = serialization.load_ssh_private_key(
                data, password=None, unsafe_skip_rsa_key_validation=True)
        except (ValueError, TypeError):
            pass  # encrypted or odd: let conch say what is wrong
        else:
            return keys.Key(private)
    return keys.Key.fromString(data)


def load(paths: list[Path]) -> dict[bytes, keys.Key]:
    """Key type (C{ssh-ed25519}, C{ssh-rsa}) -> private key, for C{SSHFactory.privateKeys}."""
    result: dict[bytes, keys.Key] = {}
    for path in paths:
        key = _read_key(path)
        if not key.isPublic():
            result[key.sshType()] = key
    return result


def fingerprint(key: keys.Key) -> str:
    """As C{ssh-keygen -l} prints it: bits, SHA256 fingerprint, type."""
    digest = key.fingerprint(keys.FingerprintFormats.SHA256_BASE64)
    if not digest.startswith("SHA256:"):
        digest = "SHA256:" + digest
    return f"{key.size()} {digest.rstrip('=')} ({key.type().upper()})"

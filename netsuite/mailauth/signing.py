"""
DKIM signing (RFC 6376) with two keys per domain, Ed25519 (RFC 8463) and
RSA-2048, through dkimpy.

Keys live in C{KEYDIR/DOMAIN/}: C{SELECTOR-ed25519.key} (the base64 seed,
as dkimpy's C{dknewkey} writes it) and C{SELECTOR-rsa.key} (PEM), published
at C{SELECTOR-ed25519._domainkey.DOMAIN} and C{SELECTOR-rsa._domainkey.DOMAIN}.
Signing is blocking CPU work: callers run it in a thread (the queue's pool).
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import email.utils
import os
from dataclasses import dataclass
from pathlib import Path

import dkim as dkimpy
from twisted.logger import Logger

log = Logger(namespace="netsuite.dkim")

#: (algorithm in the file name, dkimpy's signature algorithm, DNS k= tag).
ALGORITHMS = (("ed25519", b"ed25519-sha256", "ed25519"), ("rsa", b"rsa-sha256", "rsa"))

#: Headers signed once more than they occur, so none can be added in transit
#: without breaking the signature (RFC 6376 8.15, "over-signing").
OVERSIGN = (b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
            b"sender", b"mime-version", b"content-type", b"content-transfer-encoding",
            b"in-reply-to", b"references")

#: Signed as often as they occur (dkimpy's RFC 6376 5.4.1 set, minus the above).
SIGN = frozenset(h.lower() for h in dkimpy.DKIM.SHOULD) | frozenset(OVERSIGN)


class KeyError_(ValueError):
    """A key file that cannot be used; the message names the file and why."""


def key_path(directory: Path, domain: str, selector: str, algorithm: str) -> Path:
    return Path(directory) / domain / f"{selector}-{algorithm}.key"


def dns_name(domain: str, selector: str, algorithm: str) -> str:
    return f"{selector}-{algorithm}._domainkey.{domain}"


@dataclass(frozen=True)
class DomainKey:
    """One signing key of one domain."""

    domain: str
    selector: str  # the DNS selector, algorithm suffix included
    algorithm: bytes
    private: bytes
    public_record: str


def generate(directory: Path, domain: str, selector: str) -> list[tuple[str, str, Path]]:
    """
    Write a new Ed25519 and RSA-2048 key for C{domain} (mode 0600, never over
    an existing file); return (DNS name, TXT record, key file) for each.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    folder = Path(directory) / domain
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    out = []
    for name, _alg, _k in ALGORITHMS:
        if name == "rsa":
            rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            private = rsa_key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
        else:
            ed_key = ed25519.Ed25519PrivateKey.generate()
            raw = ed_key.private_bytes(serialization.Encoding.Raw,
                                    serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
            private = base64.b64encode(raw) + b"\n"
        path = key_path(directory, domain, selector, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private)
        out.append((dns_name(domain, selector, name), public_record(path, name), path))
    return out


def public_record(path: Path, algorithm: str) -> str:
    """The TXT record (C{v=DKIM1; k=...; p=...}) for the private key in C{path}."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyError_(f"{path}: {e.strerror}") from e
    bits = 0
    try:
        if algorithm == "rsa":
            key = serialization.load_pem_private_key(data, password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError(f"a {type(key).__name__}")
            bits = key.key_size
            public = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        else:
            seed = base64.b64decode(data.strip(), validate=True)
            pub = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()
            public = pub.public_bytes(serialization.Encoding.Raw,
                                      serialization.PublicFormat.Raw)
    except Exception as e:  # cryptography raises ValueError, TypeError, UnsupportedAlgorithm
        raise KeyError_(f"{path}: not a {algorithm} private key ({e})") from e
    if algorithm == "rsa" and bits < 1024:
        raise KeyError_(f"{path}: RSA key of {bits} bits (RFC 8301 needs 1024+)")
    return f"v=DKIM1; k={algorithm}; p={base64.b64encode(public).decode()}"


def load_domain(directory: Path, domain: str, selector: str) -> list[DomainKey]:
    """Both keys of C{domain}; L{KeyError_} if one is missing or unusable."""
    keys = []
    for name, alg, _k in ALGORITHMS:
        path = key_path(directory, domain, selector, name)
        record = public_record(path, name)
        keys.append(DomainKey(domain, f"{selector}-{name}", alg, path.read_bytes().strip(),
                              record))
    return keys


def record_matches(published: str, expected: str) -> bool:
    """Whether the TXT record C{published} carries the key of C{expected} (tags, not text)."""
    def tags(text: str) -> dict[str, str]:
        out = {}
        for part in text.split(";"):
            name, eq, value = part.partition("=")
            if eq:
                out[name.strip().lower()] = "".join(value.split())
        return out

    got, want = tags(published), tags(expected)
    return (got.get("v", "DKIM1") == "DKIM1" and got.get("k", "rsa") == want["k"]
            and got.get("p") == want["p"])


class Signer:
    """Signs a message with every key of the domain of its C{From:} address."""

    def __init__(self, keys: dict[str, list[DomainKey]]):
        self.keys = keys

    def domain_for(self, message: bytes, fallback: str | None = None) -> str | None:
        """The domain to sign as: the From: address's (DMARC alignment), else C{fallback}'s."""
        head = message.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
        _name, address = email.utils.parseaddr(str(headers.get("From", "")))
        domain = address.rpartition("@")[2].lower().rstrip(".")
        if domain in self.keys:
            return domain
        if fallback and fallback.lower().rstrip(".") in self.keys:
            return fallback.lower().rstrip(".")
        return None

    def sign(self, message: bytes, fallback: str | None = None) -> bytes:
        """
        The DKIM-Signature headers (LF line ends, as the spool keeps messages)
        to put before C{message} (LF or CRLF), or C{b""} when no key fits.
        """
        domain = self.domain_for(message, fallback)
        if domain is None:
            return b""
        wire = message if b"\r\n" in message[:4096] else message.replace(b"\n", b"\r\n")
        present = [name.lower() for name, _v in _header_names(wire)]
        include = [h for h in present if h in SIGN] + list(OVERSIGN)
        out = []
        for key in self.keys[domain]:
            try:
                sig = dkimpy.sign(wire, key.selector.encode(), domain.encode(), key.private,
                                  canonicalize=(b"relaxed", b"relaxed"),
                                  signature_algorithm=key.algorithm,
                                  include_headers=include)
            except dkimpy.DKIMException as e:
                log.warn("dkim: cannot sign for {domain} ({selector}): {error}",
                         domain=domain, selector=key.selector, error=e)
                continue
            out.append(sig.replace(b"\r\n", b"\n"))
        return b"".join(out)


    def arc_seal(self, message: bytes, domain: str, authserv_id: str) -> bytes:
        """
        The ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results
        headers (LF line ends) that C{domain} adds when it forwards C{message},
        sealing our C{authserv_id}'s Authentication-Results (RFC 8617 5.1), with
        the domain's RSA key (RFC 8617 allows rsa-sha256 only); C{b""} when the
        domain has none or the chain already failed (cv=fail is not sealed on).
        """
        domain = domain.lower().rstrip(".")
        key = next((k for k in self.keys.get(domain, []) if k.algorithm == b"rsa-sha256"),
                   None)
        if key is None:
            return b""
        wire = message if b"\r\n" in message[:4096] else message.replace(b"\n", b"\r\n")
        headers = dkimpy.arc_sign(wire, key.selector.encode(), domain.encode(), key.private,
                                  authserv_id.encode())
        return b"".join(h.replace(b"\r\n", b"\n") for h in headers)


def _header_names(message: bytes) -> list[tuple[bytes, bytes]]:
    headers, _body = dkimpy.rfc822_parse(message)
    return headers

"""
TLS contexts for implicit-TLS listeners and STARTTLS/STLS/AUTH TLS.

One certificate serves every protocol.  Without a configured certificate a
self-signed one is generated on first start under the data directory, so the
embedded defaults offer TLS out of the box.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory, IProtocolNegotiationFactory
from twisted.logger import Logger
from zope.interface import implementer

from netsuite import metrics
from netsuite.config import Config, ConfigError

log = Logger()


def write_self_signed(hostname: str, cert_path: Path, key_path: Path, days: int = 825) -> None:
    """Write a self-signed P-256 certificate for C{hostname} and its key (mode 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    sans: list[x509.GeneralName] = [x509.DNSName(hostname)]
    for literal in ("127.0.0.1", "::1"):
        sans.append(x509.IPAddress(ipaddress.ip_address(literal)))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def default_paths(config: Config) -> tuple[Path, Path]:
    """Where the generated certificate and key live."""
    tls_dir = config.data_dir / "tls"
    return tls_dir / "cert.pem", tls_dir / "key.pem"


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}", key) from e


@implementer(IOpenSSLContextFactory)
class CurrentCertificate:
    """
    The TLS context every listener and STARTTLS uses, replaceable while running.

    Twisted asks an C{IOpenSSLContextFactory} for its context once per
    connection, so L{replace} (a renewed certificate, a reload) applies to the
    next handshake while connections already up keep the session they have.
    """

    def __init__(self, options: ssl.CertificateOptions):
        self.options = options
        publish_expiry(options)

    def getContext(self) -> SSL.Context:
        return self.options.getContext()

    def replace(self, options: ssl.CertificateOptions) -> None:
        self.options = options
        publish_expiry(options)


def publish_expiry(options: Any) -> None:
    """C{netsuite_tls_certificate_expiry_timestamp_seconds}: the served certificate's notAfter."""
    cert = getattr(options, "certificate", None)
    if cert is None:
        return
    try:
        not_after = cert.to_cryptography().not_valid_after_utc
    except Exception:  # not a pyOpenSSL X509: nothing to publish
        return
    metrics.tls_certificate_expiry.set(not_after.timestamp())


def context_factory(config: Config) -> ssl.CertificateOptions:
    """
    Build the server TLS context from C{[tls]}, generating a certificate if none
    is configured.
    """
    tls = config.tls
    if tls.certificate is None:
        cert_path, key_path = default_paths(config)
        if not cert_path.exists() or not key_path.exists():
            log.info("generating a self-signed certificate for {host} in {path}",
                     host=config.server.hostname, path=str(cert_path))
            write_self_signed(config.server.hostname, cert_path, key_path)
    else:
        cert_path, key_path = tls.certificate, tls.key
    cert_pem = _read(cert_path, "tls.certificate")
    key_pem = _read(key_path, "tls.key")
    chain_pem = _read(tls.chain, "tls.chain") if tls.chain is not None else b""
    return options_from_pem(cert_pem, key_pem, chain_pem, tls.min_version)


def split_certificates(pem: bytes) -> list[bytes]:
    """The PEM certificate blocks of C{pem} (a chain file, a full chain), in order."""
    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    return [block[block.index(begin):] + end + b"\n"
            for block in pem.split(end)[:-1] if begin in block]


def options_from_pem(cert_pem: bytes, key_pem: bytes, chain_pem: bytes = b"",
                     min_version: str = "1.2") -> ssl.CertificateOptions:
    """
    Server TLS options from PEM bytes: the first certificate of C{cert_pem} with
    C{key_pem}, then the rest of C{cert_pem} (a full chain, as ACME issues it) and
    C{chain_pem} as the chain.  TLS 1.2 is the floor; the session cache is on so
    that FTPS data connections can resume the control connection's session.
    Shared by L{context_factory} and the ACME client (L{netsuite.tls_acme}).
    """
    blocks = split_certificates(cert_pem)
    if not blocks:
        raise ConfigError("no certificate in the PEM data", "tls.certificate")
    try:
        cert = ssl.PrivateCertificate.loadPEM(blocks[0] + b"\n" + key_pem)
    except Exception as e:
        raise ConfigError(f"cannot load certificate/key: {e}", "tls.certificate") from e
    chain = []
    for block in blocks[1:] + split_certificates(chain_pem):
        try:
            chain.append(ssl.Certificate.loadPEM(block).original)
        except Exception as e:
            raise ConfigError(f"cannot load chain: {e}", "tls.chain") from e
    floor = {
        "1.2": ssl.TLSVersion.TLSv1_2,
        "1.3": ssl.TLSVersion.TLSv1_3,
    }[min_version]
    try:
        options = ssl.CertificateOptions(
            privateKey=cert.privateKey.original,
            certificate=cert.original,
            extraCertChain=chain or None,
            raiseMinimumTo=floor,
            enableSessions=True,
            enableSessionTickets=False,
        )
        context = options.getContext()  # a key that does not match fails here
    except Exception as e:
        raise ConfigError(f"cannot use certificate/key: {e}", "tls.certificate") from e
    context.set_alpn_select_callback(_select_alpn)
    return options


#: The ALPN protocol of ACME's TLS-ALPN-01 challenge (RFC 8737).
ACME_TLS_1 = b"acme-tls/1"
#: Where pending TLS-ALPN-01 challenge certificates are (C{<name>.alpn.pem}: key and
#: certificate), set by L{netsuite.tls_acme} when C{[tls] acme} answers that challenge.
#: Files, so that with C{--workers N} the worker the CA reaches answers too.
acme_alpn_challenges: Path | None = None
_HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


def alpn_challenge_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.alpn.pem"


def _acme_challenge(connection: SSL.Connection) -> bool:
    """
    A TLS-ALPN-01 validation: show this connection the challenge certificate
    for its SNI name, if one is pending.  Set on the connection from the ALPN
    callback (switching the context there breaks TLS 1.2 handshakes).
    """
    if acme_alpn_challenges is None:
        return False
    raw = connection.get_servername()
    name = raw.decode("ascii", "replace").lower() if raw else ""
    if not _HOST_NAME.match(name):
        return False
    try:
        pem = alpn_challenge_path(acme_alpn_challenges, name).read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
        key = serialization.load_pem_private_key(pem, password=None)
    except (OSError, ValueError):
        return False
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return False
    connection.use_certificate(cert)
    connection.use_privatekey(key)
    return True


def _select_alpn(connection: SSL.Connection, offered: list[bytes]) -> Any:
    """
    The ALPN choice: the first protocol of ours the client offered, or none;
    C{acme-tls/1} while a TLS-ALPN-01 challenge for the SNI name is pending.

    Twisted's own callback answers a client whose list shares nothing with
    ours (an IMAPS client offering C{imap}, curl offering C{h2} to a listener
    with no ALPN) with an empty name, which OpenSSL turns into an
    C{internal_error} alert: the handshake fails. Going on without ALPN is
    what Dovecot and Postfix do.
    """
    if ACME_TLS_1 in offered and _acme_challenge(connection):
        return ACME_TLS_1
    tls_protocol = connection.get_app_data()
    wrapped = getattr(getattr(tls_protocol, "factory", None), "wrappedFactory", None)
    negotiation = IProtocolNegotiationFactory(wrapped, None)
    for name in (negotiation.acceptableProtocols() if negotiation is not None else ()):
        if name in offered:
            return name
    return SSL.NO_OVERLAPPING_PROTOCOLS

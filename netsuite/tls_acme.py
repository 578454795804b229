"""
Certificates from an ACME CA (RFC 8555): C{[tls] acme = {...}}.

L{ACMEService} keeps a certificate for the configured domains in
C{DATA/tls/acme/certificate.pem} (its key, then the full chain; mode 0600,
replaced atomically) and installs it in L{netsuite.tls.CurrentCertificate}:
the next handshake on every TLS listener and STARTTLS uses it, sessions already
up keep theirs.  Every C{check_interval} it looks at the saved certificate and
orders a new one when it is missing, does not cover the domains or expires
within C{renew_before} days; the CA checks control of each name with an
HTTP-01 challenge answered by the http listener (L{netsuite.http.acme}), or
a TLS-ALPN-01 one answered by any TLS listener (L{netsuite.tls}; port 443).

The C{acme} package's client is blocking (requests): every order runs in a
thread of the reactor's pool, which touches no Twisted state; its result is
installed from the reactor.  A failed order is logged with its reason and
retried with a growing delay while the old (or self-signed) certificate keeps
serving.  With C{--workers N} every worker runs this service: an order is taken
by one of them at a time (a lock file) and the others install the saved
certificate at their next check.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import josepy as jose
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from netsuite import tls
from netsuite.config import ACMEConfig, ConfigError
from netsuite.durable import fsync_dir
from netsuite.http.acme import challenge_dir

log = Logger(namespace="netsuite.acme")

#: Seconds the first retry of a failed order waits; it doubles up to C{check_interval}.
RETRY_FIRST = 60.0
#: Seconds an order may take, from the new order to the issued certificate.
ORDER_DEADLINE = 60.0
#: Seconds each request to the CA may take.
NETWORK_TIMEOUT = 20

_KEY_BLOCK = re.compile(rb"-----BEGIN PRIVATE KEY-----.+?-----END PRIVATE KEY-----\n?", re.S)


def acme_dir(data_dir: Path) -> Path:
    return data_dir / "tls" / "acme"


@dataclass
class Saved:
    """The certificate in C{certificate.pem}: its PEM parts and what the renewal looks at."""

    key_pem: bytes
    chain_pem: bytes
    names: set[str]
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: int
    fingerprint: str

    @classmethod
    def parse(cls, pem: bytes) -> Saved:
        """Raises C{ValueError} for a file that is not a key and a certificate chain."""
        key = _KEY_BLOCK.search(pem)
        blocks = tls.split_certificates(pem)
        if key is None or not blocks:
            raise ValueError("expected a private key and a certificate chain")
        leaf = x509.load_pem_x509_certificate(blocks[0])
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = {n.lower() for n in san.value.get_values_for_type(x509.DNSName)}
        except x509.ExtensionNotFound:
            names = set()
        return cls(key.group(0), b"".join(blocks), names, leaf.not_valid_before_utc,
                   leaf.not_valid_after_utc, leaf.serial_number,
                   hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest())

    def renew_reason(self, domains: list[str], renew_before: float,
                     now: datetime.datetime) -> str | None:
        """Why this certificate must be replaced, or None while it is good."""
        missing = set(domains) - self.names
        if missing:
            return f"it does not cover {', '.join(sorted(missing))}"
        if now >= self.not_after:
            return "it has expired"
        if self.not_after - now <= datetime.timedelta(days=renew_before):
            return f"it expires on {self.not_after:%Y-%m-%d %H:%M:%S} UTC, within renew_before"
        return None


def write_private(path: Path, data: bytes) -> None:
    """Replace C{path} with C{data} atomically, mode 0600, durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _new_key_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def describe_error(error: BaseException) -> str:
    """One line for the log: what the CA said, not a traceback."""
    if isinstance(error, errors.ValidationError):
        parts = []
        for authzr in error.failed_authzrs:
            for challb in authzr.body.challenges:
                if challb.error is not None:
                    parts.append(f"{authzr.body.identifier.value}: {challb.chall.typ}: "
                                 f"{challb.error.detail or challb.error.code}")
        return "validation failed: " + ("; ".join(parts) or "no reason given")
    if isinstance(error, messages.Error):
        return f"the CA refused: {error.detail or error.code} ({error.typ})"
    if isinstance(error, errors.TimeoutError):
        return "the order did not complete in time"
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Order:
    """
    One run of RFC 8555 from account to certificate, blocking: run in a thread.
    Touches only files and the network.
    """

    def __init__(self, settings: ACMEConfig, data_dir: Path, stopping: threading.Event,
                 started: Callable[[], None] = lambda: None):
        self.settings = settings
        self.dir = acme_dir(data_dir)
        self.challenges = challenge_dir(data_dir)
        self.stopping = stopping
        #: Called (in the thread) once this process holds the order lock.
        self.started = started

    def account_key(self) -> jose.JWKEC:
        """DATA/tls/acme/account.pem, created (P-256, mode 0600) on first use."""
        path = self.dir / "account.pem"
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            pem = _new_key_pem()
            write_private(path, pem)
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path}: the account key is not an EC key")
        return jose.JWKEC(key=key)

    def connect(self, key: jose.JWKEC) -> client.ClientV2:
        """The client for the directory, with the account registered (or found again)."""
        net = client.ClientNetwork(key, alg=jose.ES256, user_agent="netsuite",
                                   timeout=NETWORK_TIMEOUT)
        if self.settings.ca_bundle is not None:
            # requests takes a CA bundle path where ClientNetwork says bool.
            net.verify_ssl = str(self.settings.ca_bundle)  # type: ignore[assignment]
        acme = client.ClientV2(client.ClientV2.get_directory(self.settings.directory, net), net)
        registration = messages.NewRegistration.from_data(
            email=self.settings.email or None, terms_of_service_agreed=True)
        try:
            acme.new_account(registration)
        except errors.ConflictError as e:  # this key's account exists: use it
            net.account = messages.RegistrationResource(uri=e.location,
                                                        body=messages.Registration())
        return acme

    def run(self) -> tuple[bytes, bool]:
        """
        Order, answer the challenges, finalize: the new C{certificate.pem} contents,
        and True.  (The saved contents and False when another worker renewed it
        while this one waited for the lock.)
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OrderBusy() from None
            try:
                pem = (self.dir / "certificate.pem").read_bytes()
                now = datetime.datetime.now(datetime.UTC)
                if Saved.parse(pem).renew_reason(self.settings.domains,
                                                 self.settings.renew_before, now) is None:
                    return pem, False
            except (OSError, ValueError):
                pass
            self.started()
            key = self.account_key()
            acme = self.connect(key)
            cert_key = _new_key_pem()
            csr = crypto_util.make_csr(cert_key, self.settings.domains)
            order = acme.new_order(csr)
            written: list[Path] = []
            try:
                for authzr in order.authorizations:
                    if authzr.body.status == messages.STATUS_VALID:
                        continue  # the CA remembers a recent validation
                    self._answer(acme, key, authzr, written)
                if self.stopping.is_set():
                    raise OrderBusy()
                deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_DEADLINE)
                order = acme.poll_and_finalize(order, deadline)
            finally:
                for path in written:
                    path.unlink(missing_ok=True)
            pem = cert_key + order.fullchain_pem.encode("ascii")
            Saved.parse(pem)  # what the CA sent is a chain
            write_private(self.dir / "certificate.pem", pem)
            return pem, True

    def _answer(self, acme: client.ClientV2, key: jose.JWKEC,
                authzr: messages.AuthorizationResource, written: list[Path]) -> None:
        name = authzr.body.identifier.value
        wanted = self.settings.challenge
        for challb in authzr.body.challenges:
            response: challenges.ChallengeResponse
            if wanted == "http-01" and isinstance(challb.chall, challenges.HTTP01):
                response, validation = challb.response_and_validation(key)
                path = self.challenges / challb.chall.encode("token")
                data = validation.encode("ascii")
            elif wanted == "tls-alpn-01" and _challenge_type(challb) == "tls-alpn-01":
                token = challb.chall.jobj.get("token", "")
                thumbprint = jose.b64encode(key.thumbprint(hash_function=hashes.SHA256))
                key_authorization = f"{token}.{thumbprint.decode()}"
                response = TLSALPN01Response(key_authorization=key_authorization)
                path = tls.alpn_challenge_path(self.challenges, name)
                data = tls_alpn_certificate(name, key_authorization)
            else:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            write_private(path, data)
            written.append(path)
            acme.answer_challenge(challb, response)
            return
        offered = ", ".join(_challenge_type(c) for c in authzr.body.challenges)
        raise ValueError(f"{name}: the CA offers no {wanted} challenge (only {offered})")


def _challenge_type(challb: messages.ChallengeBody) -> str:
    """The type of a challenge, also of one the acme package does not know (tls-alpn-01)."""
    chall = challb.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        return str(chall.jobj.get("type", "?"))
    return str(chall.typ)


class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The (empty) answer to a TLS-ALPN-01 challenge; acme 3+ dropped its own class."""

    typ = "tls-alpn-01"


#: id-pe-acmeIdentifier (RFC 8737 6.1).
ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")


def tls_alpn_certificate(name: str, key_authorization: str) -> bytes:
    """
    The TLS-ALPN-01 challenge certificate for C{name} (RFC 8737 3): self-signed,
    the name as its only SAN, and the critical acmeIdentifier extension holding
    the SHA-256 of the key authorization (a DER OCTET STRING).  Key, then certificate.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()) + cert.public_bytes(
                                 serialization.Encoding.PEM)


class OrderBusy(Exception):
    """Another process holds the order lock, or the server is stopping."""


class ACMEService(service.Service):
    """Keeps C{ctx.tls} on a valid certificate from the CA; see the module docstring."""

    def __init__(self, ctx: Any, settings: ACMEConfig):
        self.ctx = ctx
        self.settings = settings
        self.path = acme_dir(ctx.config.data_dir) / "certificate.pem"
        self.reactor = ctx.reactor
        #: The fingerprint of the certificate this process serves, if it is ours.
        self.installed: str | None = None
        self.ordering = False
        self.retry_delay = 0.0
        self._retry: Any = None
        self._loop: task.LoopingCall | None = None
        self._stopping = threading.Event()

    # -- reactor side --------------------------------------------------------

    def install_saved(self) -> Saved | None:
        """At start-up, before any listener: serve the saved certificate if it covers the
        domains and has not expired (a restart orders nothing)."""
        try:
            saved = Saved.parse(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warn("acme: cannot use {path}: {reason}", path=str(self.path), reason=str(e))
            return None
        now = datetime.datetime.now(datetime.UTC)
        if set(self.settings.domains) - saved.names or now >= saved.not_after:
            return None
        self.install(saved, "the saved certificate")
        return saved

    def install(self, saved: Saved, what: str) -> None:
        try:
            options = tls.options_from_pem(saved.chain_pem, saved.key_pem, b"",
                                           self.ctx.config.tls.min_version)
        except ConfigError as e:
            log.error("acme: cannot install {what}: {reason}", what=what, reason=e.reason)
            return
        self.ctx.tls.replace(options)
        self.installed = saved.fingerprint
        log.info("acme: installed {what} for {names} (serial {serial:x}, expires "
                 "{not_after:%Y-%m-%d %H:%M:%S} UTC) on every TLS listener",
                 what=what, names=", ".join(sorted(saved.names)), serial=saved.serial,
                 not_after=saved.not_after)
        lifetime = saved.not_after - saved.not_before
        if lifetime <= datetime.timedelta(days=self.settings.renew_before):
            log.warn("acme: renew_before ({days} days) is not shorter than the certificate's "
                     "lifetime ({lifetime}): it is renewed at every check",
                     days=self.settings.renew_before, lifetime=lifetime)

    def startService(self) -> None:
        super().startService()
        self._stopping.clear()
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.reactor
        self._loop.start(self.settings.check_interval, now=True).addErrback(
            lambda f: log.failure("acme: the check loop stopped", f))

    def stopService(self):
        super().stopService()
        self._stopping.set()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def check(self) -> defer.Deferred | None:
        """Install a newer saved certificate (another worker's), order one when due."""
        if self.ordering or not self.running:
            return None
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._read)
        d.addCallback(self._checked)
        d.addErrback(lambda f: log.failure("acme: check", f))
        return d

    def _read(self) -> Saved | str:
        try:
            return Saved.parse(self.path.read_bytes())
        except FileNotFoundError:
            return "there is no certificate yet"
        except (OSError, ValueError) as e:
            return f"{self.path} is unusable ({e})"

    def _checked(self, saved: Saved | str) -> None:
        if not self.running or self.ordering:
            return
        if isinstance(saved, str):
            reason: str | None = saved
        else:
            now = datetime.datetime.now(datetime.UTC)
            reason = saved.renew_reason(self.settings.domains, self.settings.renew_before, now)
            if saved.fingerprint != self.installed and now < saved.not_after and (
                    not set(self.settings.domains) - saved.names):
                self.install(saved, "the saved certificate")
        if reason is not None:
            self.order(reason)
        elif not isinstance(saved, str):
            log.info("acme: the certificate for {names} is good until {not_after:%Y-%m-%d} "
                     "(renewed {days:g} days before)", names=", ".join(self.settings.domains),
                     not_after=saved.not_after, days=self.settings.renew_before)

    def order(self, reason: str) -> None:
        self.ordering = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

        def started() -> None:  # in the thread: log from the reactor
            self.reactor.callFromThread(
                log.info, "acme: ordering a certificate for {domains} from {directory}: "
                "{reason}", domains=", ".join(self.settings.domains),
                directory=self.settings.directory, reason=reason)

        work = Order(self.settings, self.ctx.config.data_dir, self._stopping, started)
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), work.run)
        d.addCallbacks(self._issued, self._failed)
        d.addBoth(self._done)

    def _issued(self, result: tuple[bytes, bool]) -> None:
        pem, new = result
        self.retry_delay = 0.0
        saved = Saved.parse(pem)
        if self.running and (new or saved.fingerprint != self.installed):
            self.install(saved, "a new certificate" if new else "the saved certificate")

    def _failed(self, failure: Failure) -> None:
        if failure.check(OrderBusy):
            return
        first = min(RETRY_FIRST, self.settings.check_interval)
        self.retry_delay = min(max(first, self.retry_delay * 2), self.settings.check_interval)
        log.error("acme: the order for {domains} failed: {reason}; the current certificate "
                  "keeps serving, retrying in {delay:.0f} s",
                  domains=", ".join(self.settings.domains), reason=describe_error(failure.value),
                  delay=self.retry_delay)
        if self.running:
            self._retry = self.reactor.callLater(self.retry_delay, self.check)

    def _done(self, _: Any) -> None:
        self.ordering = False


def start(ctx: Any, parent: service.MultiService) -> ACMEService:
    """Called by L{netsuite.service} when C{[tls] acme} is set: the service, with the saved
    certificate already installed so the first handshake uses it."""
    settings = ctx.config.tls.acme
    if settings.challenge == "tls-alpn-01":
        tls.acme_alpn_challenges = challenge_dir(ctx.config.data_dir)
    svc = ACMEService(ctx, settings)
    svc.install_saved()
    svc.setName("acme")
    svc.setServiceParent(parent)
    return svc

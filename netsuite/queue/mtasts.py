"""
MTA-STS (RFC 8461) for outgoing mail: a recipient domain's policy, found
through its C{_mta-sts} TXT record and fetched over HTTPS (verified, no
redirects, at most 64 KiB, with a timeout), cached in memory and under
C{DATA/queue/mta-sts/}, and the check of an MX connection against it.

A policy that cannot be had (no TXT record, fetch failure, not UTF-8,
malformed) is no policy, unless an unexpired cached one exists (RFC 8461
3.2, 5.1): mail keeps flowing either way.  Nothing here blocks the reactor.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, protocol, ssl
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.names import error as dns_error
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http_headers import Headers
from zope.interface import implementer

from netsuite.mailauth.dns import describe, lookup_txt
from netsuite.tls import split_certificates

log = Logger(namespace="netsuite.queue")

#: RFC 8461 3.3: a policy body bigger than this is refused.
MAX_POLICY = 64 * 1024
#: RFC 8461 3.2: max_age is at most a year.
MAX_AGE_LIMIT = 31557600
MODES = ("enforce", "testing", "none")
#: Seconds a domain's C{_mta-sts} TXT answer (an id, or no record) is trusted
#: before it is asked again: not on every new connection (RFC 8461 5.1 asks
#: only that senders notice a new id "periodically"); never past the policy's max_age.
TXT_RECHECK = 300.0
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_DOMAIN_FILE = re.compile(r"^[a-z0-9._-]{1,253}$")


class PolicyError(Exception):
    """A policy (or its TXT record) that RFC 8461 says to treat as absent."""


class MtaStsError(Exception):
    """An MX that an C{enforce} policy does not allow: a temporary failure."""


@dataclass
class Policy:
    id: str
    mode: str
    mx: list[str]
    max_age: int
    fetched: float = field(default_factory=time.time)

    @property
    def expires(self) -> float:
        return self.fetched + self.max_age

    def matches(self, host: str) -> bool:
        """RFC 8461 4.1: an exact name, or C{*.} standing for exactly one leftmost label."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                head, _, rest = host.partition(".")
                if head and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def parse_txt(texts: list[str]) -> str:
    """The policy id of the C{_mta-sts} TXT records (RFC 8461 3.1); PolicyError if none."""
    records = [t for t in texts if t.startswith("v=STSv1")]
    if len(records) != 1:
        raise PolicyError("no STSv1 TXT record" if not records
                          else "more than one STSv1 TXT record")
    fields: dict[str, str] = {}
    for part in records[0].split(";"):
        key, eq, value = part.strip().partition("=")
        if eq:
            fields.setdefault(key.strip(), value.strip())
    policy_id = fields.get("id", "")
    if fields.get("v") != "STSv1" or not _ID.match(policy_id):
        raise PolicyError(f"bad TXT record {records[0][:100]!r}")
    return policy_id


def parse_policy(body: bytes, policy_id: str) -> Policy:
    """RFC 8461 3.2: C{key: value} lines (CRLF or LF); PolicyError when not valid."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(f"policy is not valid UTF-8 (byte {e.start})") from None
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise PolicyError(f"bad policy line {line[:60]!r}")
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value.lower().rstrip("."))
        else:
            fields.setdefault(key, value)  # the first of a repeated key counts
    if fields.get("version") != "STSv1":
        raise PolicyError("policy version is not STSv1")
    mode = fields.get("mode", "")
    if mode not in MODES:
        raise PolicyError(f"bad policy mode {mode[:20]!r}")
    age = fields.get("max_age", "")
    if not (age.isascii() and age.isdigit() and len(age) <= 10):
        raise PolicyError(f"bad policy max_age {age[:20]!r}")
    if mode != "none" and not mx:
        raise PolicyError("policy names no mx")
    return Policy(policy_id, mode, mx, min(int(age), MAX_AGE_LIMIT))


# -- the HTTPS fetch ---------------------------------------------------------------------


@implementer(IStreamClientEndpoint)
class ResolvingEndpoint:
    """
    TCP to C{host}, its address looked up through C{resolver} (the C{[dns]}
    servers) when there is one, else the system's (HostnameEndpoint).
    """

    def __init__(self, reactor, resolver, host: str, port: int, timeout: float):
        self.reactor, self.resolver = reactor, resolver
        self.host, self.port, self.timeout = host, port, timeout

    def connect(self, factory):
        if self.resolver is None or _is_address(self.host):
            return endpoints.HostnameEndpoint(self.reactor, self.host, self.port,
                                              timeout=self.timeout).connect(factory)
        d = self.resolver.getHostByName(self.host)
        d.addCallback(lambda ip: endpoints.TCP4ClientEndpoint(
            self.reactor, ip, self.port, timeout=self.timeout).connect(factory))
        return d


def _is_address(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class _EndpointFactory:
    def __init__(self, fetcher: "MtaSts"):
        self.fetcher = fetcher

    def endpointForURI(self, uri):
        f = self.fetcher
        host = uri.host.decode("ascii")
        tcp = ResolvingEndpoint(f.reactor, f.address_resolver, host, uri.port, f.timeout)
        return endpoints.wrapClientTLS(ssl.optionsForClientTLS(host, trustRoot=f.trust()), tcp)


class _Body(protocol.Protocol):
    """Collects a response body up to L{MAX_POLICY} bytes."""

    #: The response's body producer (it has C{stopProducing}).
    transport: Any

    def __init__(self, done: defer.Deferred):
        self.done = done
        self.chunks: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_POLICY:
            if not self.done.called:
                self.done.errback(PolicyError(f"policy larger than {MAX_POLICY} bytes"))
            self.transport.stopProducing()
            return
        self.chunks.append(data)

    def connectionLost(self, reason=protocol.connectionDone):
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(PolicyError(f"policy body cut off: {reason.getErrorMessage()}"))


# -- the policies ------------------------------------------------------------------------


class MtaSts:
    """The policies of recipient domains, fetched when needed and cached."""

    def __init__(self, reactor, resolver, directory: Path, *, address_resolver=None,
                 ca_bundle: Path | None = None, https_port: int = 443,
                 timeout: float = 30.0, disk: Any = None, recheck: float = TXT_RECHECK):
        self.reactor = reactor
        self.resolver = resolver
        self.address_resolver = address_resolver
        self.directory = directory
        self.ca_bundle = ca_bundle
        self.https_port = https_port
        self.timeout = timeout
        self.disk = disk or (lambda f, *a: defer.maybeDeferred(f, *a))
        self.cache: dict[str, Policy] = {}
        self._loaded: set[str] = set()
        self._inflight: dict[str, list[defer.Deferred]] = {}
        #: domain -> (reactor time until which the last TXT answer stands, its result)
        self.recheck = recheck
        self._answered: dict[str, tuple[float, Policy | None]] = {}
        self._trust: Any = None
        self.agent = Agent.usingEndpointFactory(reactor, _EndpointFactory(self))

    def trust(self):
        if self._trust is None:
            if self.ca_bundle is None:
                self._trust = ssl.platformTrust()
            else:
                pems = split_certificates(self.ca_bundle.read_bytes())
                self._trust = ssl.trustRootFromCertificates(
                    [ssl.Certificate.loadPEM(p) for p in pems])
        return self._trust

    def policy_for(self, domain: str) -> defer.Deferred:
        """Fires with the domain's L{Policy} (mode C{none} included) or None; never fails."""
        domain = domain.lower().rstrip(".")
        known = self._answered.get(domain)
        if known is not None:
            until, policy = known
            if self.reactor.seconds() < until and (policy is None
                                                   or policy.expires > time.time()):
                return defer.succeed(policy)
            del self._answered[domain]
        waiting: defer.Deferred = defer.Deferred()
        if domain in self._inflight:
            self._inflight[domain].append(waiting)
            return waiting
        self._inflight[domain] = [waiting]
        d = self._discover(domain)

        def done(result):
            if isinstance(result, Failure):
                log.failure("mta-sts: {domain}: policy lookup failed", result, domain=domain)
                result = self._cached(domain)
            for w in self._inflight.pop(domain, []):
                w.callback(result)

        d.addBoth(done)
        return waiting

    def _cached(self, domain: str) -> Policy | None:
        if domain not in self._loaded:
            self._loaded.add(domain)
            path = self._path(domain)
            try:
                if path is not None:
                    self.cache[domain] = Policy(**json.loads(path.read_text("utf-8")))
            except FileNotFoundError:
                pass
            except (OSError, ValueError, TypeError) as e:
                log.warn("mta-sts: {domain}: cached policy unreadable: {e}", domain=domain, e=e)
        policy = self.cache.get(domain)
        if policy is not None and policy.expires <= time.time():
            return None
        return policy

    def _answer(self, domain: str, policy: Policy | None) -> Policy | None:
        """Remember what a definite TXT answer gave, for L{recheck} seconds."""
        if self.recheck > 0:
            self._answered[domain] = (self.reactor.seconds() + self.recheck, policy)
        return policy

    def _path(self, domain: str) -> Path | None:
        return self.directory / f"{domain}.json" if _DOMAIN_FILE.match(domain) else None

    @defer.inlineCallbacks
    def _discover(self, domain: str):
        cached = self._cached(domain)
        try:
            texts = yield lookup_txt(self.resolver, f"_mta-sts.{domain}")
            policy_id = parse_txt(texts)
        except PolicyError as e:
            if cached is not None:
                log.info("mta-sts: {domain}: {e}; the cached policy (id {id}) holds until "
                         "it expires", domain=domain, e=e, id=cached.id)
            return self._answer(domain, cached)
        except Exception:
            f = Failure()
            if cached is None:
                log.debug("mta-sts: {domain}: no TXT record: {why}", domain=domain,
                          why=describe(f, self.timeout))
            if f.check(dns_error.DomainError, dns_error.AuthoritativeDomainError,
                       dns_error.DNSNameError):
                return self._answer(domain, cached)  # NXDOMAIN is an answer; a timeout is not
            return cached
        if cached is not None and cached.id == policy_id:
            return self._answer(domain, cached)
        try:
            policy = yield self._fetch(domain, policy_id)
        except Exception as e:
            why = str(e) if isinstance(e, PolicyError) else _describe(e)
            if cached is not None:
                log.warn("mta-sts: {domain}: policy fetch failed ({why}); using the cached "
                         "policy (id {id})", domain=domain, why=why, id=cached.id,
                         event="mta_sts_fetch_failed")
                return cached
            log.warn("mta-sts: {domain}: policy fetch failed ({why}); treated as no policy",
                     domain=domain, why=why, event="mta_sts_fetch_failed")
            return None
        log.info("mta-sts: {domain}: policy id {id} mode={mode} mx={mx} max_age={age}",
                 domain=domain, id=policy.id, mode=policy.mode, mx=",".join(policy.mx),
                 age=policy.max_age)
        self.cache[domain] = policy
        self._loaded.add(domain)
        self._answer(domain, policy)
        path = self._path(domain)
        if path is not None:
            yield self.disk(_save, path, policy).addErrback(
                lambda f: log.warn("mta-sts: cannot save {path}: {e}", path=path,
                                   e=f.getErrorMessage()))
        return policy

    @defer.inlineCallbacks
    def _fetch(self, domain: str, policy_id: str):
        port = "" if self.https_port == 443 else f":{self.https_port}"
        url = f"https://mta-sts.{domain}{port}/.well-known/mta-sts.txt".encode("idna")
        d = self.agent.request(b"GET", url, Headers({b"User-Agent": [b"netsuite"]}))
        d.addTimeout(self.timeout, self.reactor)
        response = yield d
        if response.code != 200:  # a redirect too (RFC 8461 3.3: not followed)
            response.deliverBody(protocol.Protocol())
            raise PolicyError(f"HTTP status {response.code}")
        kind = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if kind and not kind.lower().startswith(b"text/plain"):
            response.deliverBody(protocol.Protocol())
            raise PolicyError(f"content type {kind[:40].decode('latin-1')!r} is not text/plain")
        if response.length is not None and response.length > MAX_POLICY:
            response.deliverBody(protocol.Protocol())
            raise PolicyError(f"policy larger than {MAX_POLICY} bytes")
        done: defer.Deferred = defer.Deferred()
        body = _Body(done)
        response.deliverBody(body)

        def cancel(_):
            if body.transport is not None:
                body.transport.stopProducing()

        done.addTimeout(self.timeout, self.reactor, onTimeoutCancel=None)
        done.addErrback(lambda f: (cancel(f), f)[1])
        raw = yield done
        return parse_policy(raw, policy_id)


def _save(path: Path, policy: Policy) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(policy)), "utf-8")
    tmp.replace(path)


def _describe(e: BaseException) -> str:
    reasons = getattr(e, "reasons", None)  # twisted.web's ResponseNeverReceived and kin
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)[:300]
    return (str(e) or type(e).__name__)[:300]


# -- the MX connection -------------------------------------------------------------------


class CertificateCheck:
    """Verifies an MX's certificate after STARTTLS: chain to the trust store, then host name."""

    def __init__(self, ca_bundle: Path | None = None):
        self.ca_bundle = ca_bundle
        self._store: Any = None

    def _new_store(self):
        from OpenSSL import crypto

        store = crypto.X509Store()
        if self.ca_bundle is None:
            store.set_default_paths()
        else:
            store.load_locations(str(self.ca_bundle))
        return store

    def problem(self, transport, host: str) -> str | None:
        """What is wrong with the peer's certificate for C{host}, or None."""
        from OpenSSL import crypto
        from service_identity import VerificationError
        from service_identity.cryptography import verify_certificate_hostname

        handle = transport.getHandle()
        get_chain = getattr(handle, "get_peer_cert_chain", None)
        chain = get_chain() if get_chain is not None else None
        leaf = transport.getPeerCertificate() if hasattr(transport, "getPeerCertificate") \
            else None
        if leaf is None and chain:
            leaf = chain[0]
        if leaf is None:
            return "no certificate"
        if self._store is None:
            self._store = self._new_store()
        try:
            crypto.X509StoreContext(self._store, leaf, chain=list(chain or [])[1:]).\
                verify_certificate()
        except crypto.X509StoreContextError as e:
            return f"certificate not trusted ({e})"
        try:
            verify_certificate_hostname(leaf.to_cryptography(), host)
        except VerificationError:
            return f"certificate not valid for {host}"
        return None

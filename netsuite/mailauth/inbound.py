"""
Checks on mail arriving at the MX: DKIM verification (dkimpy) and SPF
(pyspf) on the envelope sender (the HELO name for the null sender), written
into one C{Authentication-Results:} header (RFC 8601) under the server's
authserv-id; any such header claiming that id that came from outside is
removed first.

The checks run in a thread (they are blocking libraries); their DNS queries
go through twisted.names on the reactor (L{netsuite.mailauth.dns}) with the
C{[dns]} timeout, so the reactor never waits on the network.
"""

from __future__ import annotations

import io
import ipaddress
import re
import threading
import time
from typing import Any

import dkim as dkimpy
import spf as pyspf
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.names import dns as names_dns
from twisted.names import error as names_error

from netsuite.mailauth import dmarc, dns

log = Logger(namespace="netsuite.mailauth")

_QTYPES = {"A": names_dns.A, "AAAA": names_dns.AAAA, "MX": names_dns.MX,
           "PTR": names_dns.PTR, "TXT": names_dns.TXT, "SPF": names_dns.TXT}


class Verdict:
    """The checked message and what to do with it: deliver, junk (into Junk) or reject."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.action = "deliver"
        #: Why, for the log (C{dmarc-reject}, C{dmarc-quarantine}, C{spf-fail}, ...).
        self.reason = ""
        self.dmarc: dmarc.Result | None = None
        self.spf = "none"


class _MarkOnly:
    dmarc = True
    arc = True
    dmarc_policy = "mark"
    spf_fail = "mark"
    domains: dict = {}


#: Actions by severity: the strictest of the recipients' domains applies.
_ORDER = {"deliver": 0, "junk": 1, "reject": 2}


def decide(settings: Any, verdict: Verdict, recipient_domains: tuple[str, ...]
           ) -> tuple[str, str]:
    """
    (action, reason) for the message under C{[checks]}: per recipient domain
    (C{[checks.domains."DOMAIN"]} overrides), the strictest wins, as the one
    reply after DATA answers every recipient.
    """
    best = ("deliver", "")
    for domain in recipient_domains or ("",):
        override = settings.domains.get(domain.lower().rstrip("."))
        policy = (override and override.dmarc_policy) or settings.dmarc_policy
        spf_fail = (override and override.spf_fail) or settings.spf_fail
        found = ("deliver", "")
        d = verdict.dmarc
        if d is not None and policy == "enforce":
            if d.result == "permerror" and not d.header_from:
                found = ("reject", "dmarc-bad-from")  # RFC 7489 6.6.1
            elif d.result == "fail" and d.disposition == "reject":
                found = ("reject", "dmarc-reject")
            elif d.result == "fail" and d.disposition == "quarantine":
                found = ("junk", "dmarc-quarantine")
        elif d is not None and policy == "junk" and d.result == "fail" \
                and d.disposition in ("reject", "quarantine"):
            found = ("junk", f"dmarc-{d.disposition}")
        if verdict.spf == "fail" and spf_fail != "mark" and \
                _ORDER[spf_fail] > _ORDER[found[0]]:
            found = (spf_fail, "spf-fail")
        if _ORDER[found[0]] > _ORDER[best[0]]:
            best = found
    return best


#: DNS answers the checks keep: at most this many seconds (less if the records' TTL
#: is less); no such name or no data: NEGATIVE_TTL (a stub sees no SOA minimum,
#: RFC 2308); at most CACHE_SIZE of them.  Timeouts are never kept.
MAX_TTL = 300.0
NEGATIVE_TTL = 60.0
CACHE_SIZE = 10000


class Checker:
    """SPF and DKIM for one server; L{check} is called once per message."""

    def __init__(self, authserv_id: str, settings: Any, reactor: Any, checks: Any = None):
        self.authserv_id = authserv_id
        self.reactor = reactor
        self.timeout = settings.timeout
        self.resolver = dns.resolver(settings, reactor)
        #: The C{[checks]} section (policy); None: DMARC and ARC on, marking only.
        self.settings = checks if checks is not None else _MarkOnly()
        #: (name, type) -> (time.monotonic() until which it holds, answers): the same
        #: sender's SPF, DKIM key and DMARC record are not asked again for every message.
        self._cache: dict[tuple[str, int], tuple[float, list]] = {}
        self._cache_lock = threading.Lock()

    # -- DNS, from the checking thread through the reactor ---------------------------

    def _query(self, name: str, qtype: int) -> list:
        """Answers for C{name}; [] for NXDOMAIN/no data; L{TimeoutError} when none came."""
        def ask():
            d = self.resolver.query(names_dns.Query(name, qtype, names_dns.IN))
            return d.addCallback(lambda result: result[0])

        try:
            names_dns.Name(name).encode(io.BytesIO())
        except ValueError:  # UnicodeError (not IDNA), a label too long: no name to ask
            return []
        key = (name.lower().rstrip("."), qtype)
        with self._cache_lock:
            until, answers = self._cache.get(key, (0.0, []))
        if time.monotonic() < until:
            return answers
        try:
            answers = threads.blockingCallFromThread(self.reactor, ask)
        except (names_error.DomainError, names_error.AuthoritativeDomainError,
                names_error.DNSNameError):
            answers = []
        except (names_error.DNSQueryTimeoutError, defer.TimeoutError) as e:
            raise TimeoutError(f"DNS timeout for {name}") from e  # not kept: asked again
        except names_error.DNSServerError as e:
            raise TimeoutError(f"DNS server failure for {name}") from e
        ttl = min((rr.ttl for rr in answers), default=NEGATIVE_TTL)
        with self._cache_lock:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()  # crude but rare; bounded beats clever here
            self._cache[key] = (time.monotonic() + min(ttl, MAX_TTL), answers)
        return answers

    def dkim_txt(self, name: bytes, timeout: int = 5) -> bytes | None:
        """dkimpy's C{dnsfunc}: the TXT record's text, or None; TimeoutError passes through."""
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:  # a d= or s= that is not a DNS name: no key (permerror)
            return None
        answers = self._query(text.rstrip("."), names_dns.TXT)
        for rr in answers:
            if rr.type == names_dns.TXT:
                return b"".join(rr.payload.data)
        return None

    def spf_lookup(self, name: str, qtype: str, tcpfallback: bool = True,
                   timeout: int = 30) -> list:
        """pyspf's C{DNSLookup}: ((name, type), value) pairs; TempError on a timeout."""
        try:
            answers = self._query(name, _QTYPES[qtype])
        except TimeoutError as e:
            raise pyspf.TempError(f"DNS {e}") from e
        out: list = []
        for rr in answers:
            p = rr.payload
            if rr.type == names_dns.A and qtype == "A":
                out.append(((name, qtype), p.dottedQuad()))
            elif rr.type == names_dns.AAAA and qtype == "AAAA":
                out.append(((name, qtype), ipaddress.IPv6Address(p.address).compressed))
            elif rr.type == names_dns.MX and qtype == "MX":
                out.append(((name, qtype), (p.preference, str(p.name))))
            elif rr.type == names_dns.PTR and qtype == "PTR":
                out.append(((name, qtype), str(p.name)))
            elif rr.type == names_dns.TXT and qtype in ("TXT", "SPF"):
                out.append(((name, qtype), list(p.data)))
            elif rr.type == names_dns.CNAME:
                out.append(((name, "CNAME"), str(p.name)))
        return out

    # -- the checks ---------------------------------------------------------------------

    def check(self, lines: list[bytes], ip: str, helo: bytes, mailfrom: bytes,
              recipient_domains: tuple[str, ...] = ()) -> defer.Deferred:
        """
        A L{Verdict}: the message's lines (LF-split, the server's Received
        first) with the Authentication-Results header put first and forged
        ones taken out, and what policy says to do with it.
        """
        return threads.deferToThread(self._check, lines, ip, helo, mailfrom,
                                     recipient_domains)

    def _check(self, lines: list[bytes], ip: str, helo: bytes, mailfrom: bytes,
               recipient_domains: tuple[str, ...] = ()) -> Verdict:
        lines = strip_forged(lines, self.authserv_id)
        message = b"\r\n".join(lines) + b"\r\n"
        dkim_text, dkim_results, headers = self._dkim(message)
        spf_text, spf_result, spf_domain = self._spf(ip, helo, mailfrom)
        results = [dkim_text, spf_text]
        verdict = Verdict()
        if self.settings.dmarc:
            found = dmarc.evaluate(headers, (spf_result, spf_domain), dkim_results,
                                   self.txt)
            results.append(found.header())
            verdict.dmarc = found
        if self.settings.arc:
            results.append(self._arc(message))
        verdict.spf = spf_result
        verdict.action, verdict.reason = decide(self.settings, verdict, recipient_domains)
        header = f"Authentication-Results: {self.authserv_id};\n\t" + ";\n\t".join(results)
        verdict.lines = header.encode("utf-8", "replace").split(b"\n") + lines
        return verdict

    def txt(self, name: str) -> list[str]:
        """TXT strings at C{name} ([] for none); L{TimeoutError} when no answer came."""
        return [b"".join(rr.payload.data).decode("utf-8", "replace")
                for rr in self._query(name, names_dns.TXT) if rr.type == names_dns.TXT]

    def _arc(self, message: bytes) -> str:
        """The ARC chain's validation (RFC 8617 5.2): C{arc=none|pass|fail}."""
        try:
            cv, _results, reason = dkimpy.arc_verify(message, dnsfunc=self.dkim_txt,
                                                     timeout=int(self.timeout) or 1)
        except TimeoutError as e:
            log.info("arc: {e}", e=e)
            return f"arc=fail ({e})"
        except Exception as e:  # a malformed ARC set: its chain cannot validate
            log.info("arc: {e}", e=e)
            return "arc=fail (malformed ARC set)"
        result = cv.decode("ascii", "replace") if isinstance(cv, bytes) else str(cv)
        result = result.lower() if result.lower() in ("pass", "fail", "none") else "fail"
        if result == "fail" and reason:
            return f"arc=fail ({dmarc._comment(str(reason))})"
        return f"arc={result}"

    def _dkim(self, message: bytes) -> tuple[str, list[tuple[str, str]], list]:
        """The header text, each signature's (result, d=), and the parsed headers."""
        try:
            d = dkimpy.DKIM(message, timeout=int(self.timeout) or 1)
            count = sum(1 for name, _v in d.headers if name.lower() == b"dkim-signature")
        except Exception as e:  # an unparsable message: no signature to check
            log.info("dkim: cannot parse the message: {e}", e=e)
            return "dkim=none", [], []
        if not count:
            return "dkim=none", [], d.headers
        out = []
        found: list[tuple[str, str]] = []
        for i in range(count):
            missing: list[bytes] = []

            def key_txt(name: bytes, timeout: int = 5, missing=missing) -> bytes | None:
                text = self.dkim_txt(name, timeout)
                if not text:
                    missing.append(name)
                return text

            try:
                ok = d.verify(idx=i, dnsfunc=key_txt)
                # dkimpy answers False for a key that is not there too: that is
                # RFC 6376 6.1.2's PERMFAIL (no key for signature), not a bad signature.
                result = "pass" if ok else "permerror" if missing else "fail"
            except TimeoutError as e:
                result = "temperror"
                log.info("dkim: signature {i}: {e}", i=i, e=e)
            except dkimpy.DKIMException as e:
                # A changed body is a failed signature; a signature or key that
                # cannot be used is a permanent error (RFC 8601 2.7.1).
                result = "fail" if "body hash mismatch" in str(e) else "permerror"
                log.info("dkim: signature {i}: {e}", i=i, e=e)
            except Exception:
                log.failure("dkim: verifying signature {i} failed", i=i)
                result = "temperror"
            tags = _tags(d, i)
            props = " ".join(f"header.{k}={_value(tags.get(k.encode(), b''))}"
                             for k in ("d", "s", "a") if tags.get(k.encode()))
            out.append(f"dkim={result}" + (f" {props}" if props else ""))
            found.append((result, tags.get(b"d", b"").decode("utf-8", "replace")))
        return ";\n\t".join(out), found, d.headers

    def _spf(self, ip: str, helo: bytes, mailfrom: bytes) -> tuple[str, str, str]:
        """The header text, the result, and the domain it is about (for DMARC)."""
        helo_text = helo.decode("utf-8", "replace")
        sender = mailfrom.decode("utf-8", "replace")
        identity = sender or f"postmaster@{helo_text}"
        prop = f"smtp.mailfrom={sender}" if sender else f"smtp.helo={helo_text}"
        global _ACTIVE
        _ACTIVE = self
        try:
            q = pyspf.query(i=ip, s=identity, h=helo_text, timeout=max(1, int(self.timeout * 4)))
            result, _code, _text = q.check()
        except Exception:
            log.failure("spf: check failed")
            result = "temperror"
        return f"spf={result} {_value(prop.encode())}", result, identity.rpartition("@")[2]


#: The checker whose resolver pyspf's module-level DNSLookup uses (one per process).
_ACTIVE: Checker | None = None


def _dns_lookup(name, qtype, tcpfallback=True, timeout=30):
    if _ACTIVE is None:
        raise pyspf.TempError("DNS: no resolver")
    return _ACTIVE.spf_lookup(name, qtype, tcpfallback, timeout)


pyspf.DNSLookup = _dns_lookup


def _tags(d, i: int) -> dict[bytes, bytes]:
    sigs = [v for name, v in d.headers if name.lower() == b"dkim-signature"]
    try:
        return dkimpy.util.parse_tag_value(sigs[i])
    except Exception:
        return {}


_TOKEN = re.compile(rb"^[\x21-\x7e]+$")


def _value(raw: bytes) -> str:
    """A property value: kept if it is a plain token, else quoted (RFC 8601 2.2)."""
    raw = b"".join(raw.split())
    text = raw.decode("utf-8", "replace")
    if _TOKEN.match(raw) and b";" not in raw and b'"' not in raw and b"(" not in raw:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def strip_forged(lines: list[bytes], authserv_id: str) -> list[bytes]:
    """The lines without any Authentication-Results header whose authserv-id is ours."""
    ours = authserv_id.lower().encode()
    out: list[bytes] = []
    skipping = False
    for i, line in enumerate(lines):
        if line in (b"", b"\r"):
            return out + lines[i:]  # the body: untouched
        if skipping and line[:1] in (b" ", b"\t"):
            continue
        skipping = False
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"authentication-results":
            ident = value.split(b";", 1)[0].strip().split()
            if ident and ident[0].lower() == ours:
                skipping = True
                continue
        out.append(line)
    return out


def make_checker(ctx) -> Checker | None:
    """The MX's checker, or None when C{[checks] enabled} is false."""
    settings = ctx.config.checks
    if not settings.enabled:
        return None
    return Checker(settings.authserv_id or ctx.config.server.hostname, ctx.config.dns,
                   ctx.reactor, settings)

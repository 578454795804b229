"""
DMARC (RFC 7489): the RFC5322.From domain, its policy record (the domain's,
else its organizational domain's, found with the Public Suffix List), and
whether an SPF or DKIM pass is aligned with it.  Pure functions: the DNS
lookup is passed in (the checker's, through twisted.names off the reactor).
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

_PSL: PublicSuffixList | None = None

POLICIES = ("none", "quarantine", "reject")


def organizational_domain(domain: str) -> str:
    """The registered domain (RFC 7489 3.2): one label below the public suffix."""
    global _PSL
    if _PSL is None:
        _PSL = PublicSuffixList()
    domain = domain.lower().rstrip(".")
    return _PSL.privatesuffix(domain) or domain


def aligned(a: str, b: str, mode: str) -> bool:
    """Identifier alignment (RFC 7489 3.1): equal (strict, C{s}) or one organization (C{r})."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if not a or not b:
        return False
    if a == b:
        return True
    return mode != "s" and organizational_domain(a) == organizational_domain(b)


class BadFrom(ValueError):
    """No RFC5322.From, several, or one with several domains (RFC 7489 6.6.1)."""


def from_domain(headers: list[tuple[bytes, bytes]]) -> str:
    """The one domain of the message's From field; L{BadFrom} otherwise."""
    values = [v for name, v in headers if name.strip().lower() == b"from"]
    if not values:
        raise BadFrom("no From field")
    if len(values) > 1:
        raise BadFrom(f"{len(values)} From fields")
    text = b" ".join(values[0].split()).decode("utf-8", "replace")
    addresses = [a for _n, a in email.utils.getaddresses([text]) if a]
    domains = {a.rpartition("@")[2].lower().rstrip(".") for a in addresses}
    domains.discard("")
    if not domains:
        raise BadFrom("no domain in From")
    if len(domains) > 1:
        raise BadFrom("several domains in From")
    return domains.pop()


@dataclass
class Record:
    """A DMARC policy record's tags that matter to a receiver (defaults of RFC 7489 6.3)."""

    p: str
    sp: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


class Malformed(ValueError):
    """A C{v=DMARC1} record without a usable C{p=} (and no C{rua}): RFC 7489 11.2 permerror."""


def parse(text: str) -> Record:
    """
    Tags of one record.  An unknown tag or a bad value of an optional one is
    ignored (its default is used, RFC 7489 6.3); a missing or bad C{p} is
    L{Malformed} unless the record has a C{rua} (then it is C{p=none}).
    """
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), value.strip())
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        if "mailto:" in tags.get("rua", "").lower():
            p = "none"
        else:
            raise Malformed(f"no valid p= in {text[:100]!r}")
    record = Record(p=p)
    sp = tags.get("sp", "").lower()
    if sp in POLICIES:
        record.sp = sp
    for key in ("adkim", "aspf"):
        if tags.get(key, "").lower() in ("r", "s"):
            setattr(record, key, tags[key].lower())
    if tags.get("pct", "").isdigit():
        record.pct = min(100, int(tags["pct"]))
    return record


def dmarc_records(texts: list[str]) -> list[str]:
    """The TXT strings that are DMARC records (C{v=DMARC1} first, RFC 7489 6.6.3)."""
    return [t for t in texts if t.replace(" ", "").upper().startswith("V=DMARC1")
            and (t.strip()[8:9] in ("", ";", " ", "\t"))]


@dataclass
class Result:
    """What DMARC says about one message."""

    result: str  # pass, fail, none, temperror, permerror
    header_from: str = ""
    policy: str = "none"  # the requested policy for this domain (p, or sp for a subdomain)
    disposition: str = "none"  # after pct: what the receiver is asked to do
    reason: str = ""

    def header(self) -> str:
        comment = ""
        if self.result in ("pass", "fail"):
            comment = f" (p={self.policy} dis={self.disposition})"
        elif self.reason:
            comment = f" ({_comment(self.reason)})"
        props = f" header.from={self.header_from}" if self.header_from else ""
        if self.result in ("pass", "fail"):
            props += f" policy.dmarc={self.policy}"
        return f"dmarc={self.result}{comment}{props}"


def _comment(text: str) -> str:
    return "".join(c for c in text if c.isprintable() and c not in "()\\")[:120]


def evaluate(headers: list[tuple[bytes, bytes]], spf: tuple[str, str],
             dkim: list[tuple[str, str]], lookup: Callable[[str], list[str]],
             sample: Callable[[int], bool] | None = None) -> Result:
    """
    The DMARC result for a message with these C{headers}, the SPF result and
    its domain C{spf}, and each DKIM signature's (result, d=).  C{lookup(name)}
    returns TXT strings, [] for none, and raises L{TimeoutError}.
    """
    try:
        domain = from_domain(headers)
    except BadFrom as e:
        return Result("permerror", reason=str(e), disposition="reject")
    try:
        found = _discover(domain, lookup)
    except TimeoutError as e:
        return Result("temperror", domain, reason=str(e))
    except Malformed as e:
        return Result("permerror", domain, reason=str(e))
    if found is None:
        return Result("none", domain, reason="no DMARC record")
    record, at_org = found
    policy = record.sp if at_org and record.sp and domain != at_org else record.p
    spf_result, spf_domain = spf
    ok = (spf_result == "pass" and aligned(spf_domain, domain, record.aspf)) or any(
        r == "pass" and aligned(d, domain, record.adkim) for r, d in dkim)
    if ok:
        return Result("pass", domain, policy, "none")
    disposition = policy
    if policy != "none" and not (sample or _sample)(record.pct):
        # Not sampled (RFC 7489 6.6.4): one step down the scale.
        disposition = "quarantine" if policy == "reject" else "none"
    return Result("fail", domain, policy, disposition, reason="not aligned")


def _sample(pct: int) -> bool:
    return pct >= 100 or random.randrange(100) < pct


def _discover(domain: str, lookup: Callable[[str], list[str]]
              ) -> tuple[Record, str | None] | None:
    """(record, organizational domain if it came from there), or None (RFC 7489 6.6.3)."""
    records = dmarc_records(lookup(f"_dmarc.{domain}"))
    at_org: str | None = None
    if not records:
        org = organizational_domain(domain)
        if org == domain:
            return None
        records = dmarc_records(lookup(f"_dmarc.{org}"))
        at_org = org
    if len(records) != 1:
        return None  # none, or several: no DMARC processing
    return parse(records[0]), at_org

"""
The C{[dkim]} and C{[dns]} sections, the signer the queue uses, and
C{netsuite dkim generate|check}.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger

from netsuite.cli import command
from netsuite.config import Config, ConfigError, section
from netsuite.mailauth import dns, signing
from netsuite.queue.wire import parse_hostport

log = Logger(namespace="netsuite.dkim")

_SELECTOR = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,50}[A-Za-z0-9])?$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                     r"[A-Za-z0-9-]{2,63}$")


@section("dkim")
@dataclass
class DKIMConfig:
    """
    DKIM signing of mail from authenticated users and of netsuite's own
    notifications (docs/mail-auth.md).  A domain signs once its keys exist in
    C{key_directory} (C{netsuite dkim generate DOMAIN}).
    """

    sign: bool = True
    #: Where the keys are: C{DIR/DOMAIN/SELECTOR-ed25519.key} and C{...-rsa.key}.
    #: Unset: C{DATA/dkim}.
    key_directory: Path | None = None
    #: The selector of every domain's keys (C{SELECTOR-ed25519}, C{SELECTOR-rsa} in DNS).
    selector: str = "netsuite"
    #: Domain -> selector, for a domain whose keys have another one.
    selectors: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if not _SELECTOR.match(self.selector):
            raise ConfigError("letters, digits and '-' only", "selector")
        cleaned = {}
        for domain, sel in self.selectors.items():
            if not _SELECTOR.match(sel):
                raise ConfigError("letters, digits and '-' only", f"selectors.{domain}")
            cleaned[domain.lower().rstrip(".")] = sel
        self.selectors = cleaned

    def directory(self, config: Config) -> Path:
        return self.key_directory or (config.data_dir / "dkim")

    def selector_for(self, domain: str) -> str:
        return self.selectors.get(domain, self.selector)


@section("dns")
@dataclass
class DNSConfig:
    """The resolver for mail-authentication lookups."""

    #: C{"host:port"} of the servers to ask; empty: the system's resolv.conf.
    nameservers: list[str] = field(default_factory=list)
    #: Seconds one query may take.
    timeout: float = 5.0

    def validate(self) -> None:
        for i, server in enumerate(self.nameservers):
            try:
                parse_hostport(server, 53)
            except ValueError as e:
                raise ConfigError(str(e), f"nameservers[{i}]") from e
        if not self.timeout > 0:
            raise ConfigError("must be positive", "timeout")


_DMARC_POLICIES = ("enforce", "junk", "mark")
_SPF_FAIL = ("mark", "junk", "reject")


@dataclass
class DomainChecks:
    """Policy for mail to one local domain; unset keys follow C{[checks]}."""

    dmarc_policy: str | None = None
    spf_fail: str | None = None


@section("checks")
@dataclass
class ChecksConfig:
    """
    SPF, DKIM, DMARC and ARC checks on mail arriving at the MX, written into
    one Authentication-Results header, and the policy applied after DATA
    (docs/mail-auth.md).  Off by default: every MX message then costs DNS queries.
    """

    enabled: bool = False
    #: The authserv-id in Authentication-Results; unset: C{server.hostname}.
    authserv_id: str | None = None
    #: DMARC (RFC 7489) on the From domain, with alignment.
    dmarc: bool = True
    #: What a DMARC failure does: C{enforce} (the sender's policy: p=reject ->
    #: 550 5.7.1, p=quarantine -> the Junk folder), C{junk} (both to Junk),
    #: C{mark} (only the header).
    dmarc_policy: str = "enforce"
    #: What an SPF C{fail} (C{-all}) does: C{mark}, C{junk} or C{reject} (550 5.7.1).
    spf_fail: str = "mark"
    #: ARC (RFC 8617) chain verification into Authentication-Results.
    arc: bool = True
    #: Recipient domain -> overrides of C{dmarc_policy} / C{spf_fail}.
    domains: dict[str, DomainChecks] = field(default_factory=dict)

    def validate(self) -> None:
        if self.authserv_id is not None and not _DOMAIN.match(self.authserv_id):
            raise ConfigError("expected a host name", "authserv_id")
        if self.dmarc_policy not in _DMARC_POLICIES:
            raise ConfigError(f"one of {', '.join(_DMARC_POLICIES)}", "dmarc_policy")
        if self.spf_fail not in _SPF_FAIL:
            raise ConfigError(f"one of {', '.join(_SPF_FAIL)}", "spf_fail")
        cleaned = {}
        for domain, over in self.domains.items():
            if over.dmarc_policy is not None and over.dmarc_policy not in _DMARC_POLICIES:
                raise ConfigError(f"one of {', '.join(_DMARC_POLICIES)}",
                                  f"domains.{domain}.dmarc_policy")
            if over.spf_fail is not None and over.spf_fail not in _SPF_FAIL:
                raise ConfigError(f"one of {', '.join(_SPF_FAIL)}", f"domains.{domain}.spf_fail")
            cleaned[domain.lower().rstrip(".")] = over
        self.domains = cleaned


def load_signer(config: Config) -> signing.Signer | None:
    """
    The signer for every domain with keys, or None when signing is off.
    A broken key stops start-up (L{ConfigError} naming the file and why).
    """
    settings = config.dkim
    if not settings.sign:
        return None
    directory = settings.directory(config)
    domains = set(settings.selectors)
    if directory.is_dir():
        domains |= {p.name.lower() for p in directory.iterdir() if p.is_dir()}
    keys = {}
    for domain in sorted(domains):
        try:
            keys[domain] = signing.load_domain(directory, domain, settings.selector_for(domain))
        except signing.KeyError_ as e:
            raise ConfigError(str(e), "dkim.key_directory", config.path) from e
        log.info("dkim: signing for {domain} with selectors {selectors}", domain=domain,
                 selectors=", ".join(k.selector for k in keys[domain]))
    return signing.Signer(keys)


# -- netsuite dkim ... -------------------------------------------------------------


def _dkim_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    g = sub.add_parser("generate", help="write an Ed25519 and an RSA-2048 key, print the DNS")
    g.add_argument("domain")
    g.add_argument("--selector", help="default: [dkim] selector")
    c = sub.add_parser("check", help="look the DNS records up and compare them with the keys")
    c.add_argument("domain")
    c.add_argument("--selector", help="default: [dkim] selector")


def _txt_lines(name: str, record: str) -> str:
    """A zone-file line; TXT strings are at most 255 octets (RFC 1035 3.3.14)."""
    parts = [record[i:i + 250] for i in range(0, len(record), 250)]
    return f'{name}. 3600 IN TXT ' + " ".join(f'"{p}"' for p in parts)


@command("dkim", _dkim_args)
def _dkim(args: argparse.Namespace, config: Config) -> int:
    domain = args.domain.lower().rstrip(".")
    if not _DOMAIN.match(domain):
        raise SystemExit(f"netsuite: {args.domain!r} is not a domain name")
    settings = config.dkim
    selector = args.selector or settings.selector_for(domain)
    if not _SELECTOR.match(selector):
        raise SystemExit(f"netsuite: bad selector {selector!r} (letters, digits and '-')")
    directory = settings.directory(config)
    if args.action == "generate":
        try:
            made = signing.generate(directory, domain, selector)
        except FileExistsError as e:
            raise SystemExit(f"netsuite: {e.filename} exists; keys are never overwritten "
                             "(use another --selector)") from e
        for _name, _record, path in made:
            print(f"; wrote {path}")
        if selector != settings.selector_for(domain):
            print(f'; add to [dkim] selectors: "{domain}" = "{selector}"')
        print("; publish, then restart netsuite (keys are read at start-up):")
        for name, record, _path in made:
            print(_txt_lines(name, record))
        return 0
    return _check(config, directory, domain, selector)


def _check(config: Config, directory: Path, domain: str, selector: str) -> int:
    wanted = []
    for alg, _sig, _k in signing.ALGORITHMS:
        try:
            record = signing.public_record(
                signing.key_path(directory, domain, selector, alg), alg)
        except signing.KeyError_ as e:
            raise SystemExit(f"netsuite: {e}") from e
        wanted.append((signing.dns_name(domain, selector, alg), record))

    def lookups():
        res = dns.resolver(config.dns)
        ds = [dns.lookup_txt(res, name) for name, _r in wanted]
        return defer.DeferredList(ds, consumeErrors=True)

    results = dns.run_blocking(lookups)
    bad = 0
    for (name, record), (ok, value) in zip(wanted, results, strict=True):
        if not ok:
            bad += 1
            reason = dns.describe(value, config.dns.timeout)
            print(f"{name}: MISSING: {reason}")
            print(f"  publish: {_txt_lines(name, record)}")
            continue
        dkim_records = [t for t in value if "p=" in t]
        if any(signing.record_matches(t, record) for t in dkim_records):
            print(f"{name}: OK")
        else:
            bad += 1
            shown = dkim_records[0] if dkim_records else "no DKIM record"
            print(f"{name}: MISMATCH: published {shown!r}")
            print(f"  expected: {_txt_lines(name, record)}")
    return 1 if bad else 0

"""
Configuration: one TOML file read once into typed dataclasses.

Every section is a dataclass whose field types drive validation, so a bad file
stops start-up with the file, the key and the reason (L{ConfigError}) before
any port opens.  Protocol packages register their own section with
L{section}; the loader knows nothing about SMTP or FTP.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from psycopg.conninfo import conninfo_to_dict

from netsuite import accounts, protocols
from netsuite.store.quota import parse_size

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

#: Section name -> dataclass, filled by L{section}.
SECTIONS: dict[str, type] = {}


class ConfigError(Exception):
    """A configuration problem, rendered as C{file: key: reason}."""

    def __init__(self, reason: str, key: str = "", file: str | Path | None = None):
        super().__init__(reason)
        self.reason = reason
        self.key = key
        self.file = str(file) if file else None

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.key) if p]
        return ": ".join(parts + [self.reason])


def section(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: register a dataclass as the C{[name]} section."""

    def register(cls: type[T]) -> type[T]:
        SECTIONS[name] = cls
        return cls

    return register


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check C{value} against the annotation C{tp}; return it converted."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors: list[ConfigError] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:  # X | None: X's own error, with its key (a table's inner key)
            raise errors[0]
        raise ConfigError(errors[0].reason if errors else "bad value", key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"expected a list, got {type(value).__name__}", key)
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a table, got {type(value).__name__}", key)
        return {
            _coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}")
            for k, v in value.items()
        }
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError("expected a table", key)
        return load_dataclass(tp, value, key)
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError("expected a path (a non-empty string)", key)
        return Path(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {value!r}", key)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}", key)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", key)
        return value
    if tp is Any:
        return value
    raise ConfigError(f"unsupported type {_describe(tp)}", key)


def load_dataclass(cls: type[T], raw: dict[str, Any], prefix: str = "") -> T:
    """Build C{cls} from a TOML table, rejecting unknown keys and bad types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        full = f"{prefix}.{key}" if prefix else key
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown key (known: {known})", full)
        kwargs[name] = _coerce(value, hints[name], full)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ConfigError as e:
            if e.key and prefix and not e.key.startswith(prefix):
                e.key = f"{prefix}.{e.key}"
            elif not e.key:
                e.key = prefix
            raise
    return obj


def positive(name: str, value: int | float) -> None:
    """Raise L{ConfigError} for C{name} unless C{value} > 0."""
    if value <= 0:
        raise ConfigError(f"must be greater than 0, got {value}", name)


@section("server")
@dataclass
class ServerConfig:
    """Process-wide settings."""

    hostname: str = "localhost"
    data_dir: Path = Path("netsuite-data")
    #: Checker names, as C{twistd --auth} takes them: C{passwd[:PATH]}, C{pam}, C{anonymous}.
    auth: list[str] = field(default_factory=lambda: ["passwd"])
    #: The realm factory, C{package.module:Name}; called with the L{Config}.
    realm: str = "netsuite.realm:NetsuiteRealm"
    #: Allow plain-text passwords on connections without TLS; the default for
    #: every protocol's own C{allow_plaintext_auth}.
    allow_plaintext_auth: bool = False
    #: Worker processes sharing the listening sockets (L{netsuite.workers}); 1: one process.
    workers: int = 1
    #: Started as root: the user (and group; default the user's) to run as once
    #: every listener is bound (L{netsuite.privileges}); empty: stay as started.
    user: str = ""
    group: str = ""
    #: Seconds a SIGTERM stop gives live sessions to end politely (a DATA in
    #: progress, an IMAP command, an upload) before the rest are aborted.
    shutdown_timeout: float = 10.0

    def validate(self) -> None:
        if ":" not in self.realm:
            raise ConfigError("expected 'package.module:Name'", "realm")
        positive("workers", self.workers)
        positive("shutdown_timeout", self.shutdown_timeout)
        try:
            accounts.lookup(self.user, self.group)  # one that does not exist stops start-up
        except accounts.AccountError as e:
            raise ConfigError(e.reason, e.key) from None


#: One DNS label: letters, digits, inner hyphens (RFC 1123).
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass
class ACMEConfig:
    """C{[tls] acme}: certificates obtained and renewed from an ACME CA (L{netsuite.tls_acme})."""

    #: The CA's directory URL (https).
    directory: str = ""
    #: Contact address given to the CA; empty: none.
    email: str = ""
    #: The names the certificate covers; the first is its subject.
    domains: list[str] = field(default_factory=list)
    #: Days before expiry when the certificate is renewed.
    renew_before: float = 30.0
    #: Seconds between checks (whether to renew; a failed order is retried sooner).
    check_interval: float = 86400.0
    #: How the CA checks control of the names: "http-01" (the http listener, port 80)
    #: or "tls-alpn-01" (a TLS listener on port 443, the https listener say).
    challenge: str = "http-01"
    #: PEM file of CA certificates to trust for the directory (a private CA); unset: the system's.
    ca_bundle: Path | None = None

    def validate(self) -> None:
        if not self.directory.startswith("https://") or len(self.directory) <= len("https://"):
            raise ConfigError(f"expected an https:// URL, got {self.directory!r}", "directory")
        if not self.domains:
            raise ConfigError("at least one domain is needed", "domains")
        self.domains = [d.lower().rstrip(".") for d in self.domains]
        for i, domain in enumerate(self.domains):
            labels = domain.split(".")
            if len(domain) > 253 or not all(_LABEL.match(label) for label in labels):
                raise ConfigError(f"not a host name: {domain!r}", f"domains[{i}]")
        if len(set(self.domains)) != len(self.domains):
            raise ConfigError("a domain is listed twice", "domains")
        if self.email and "@" not in self.email:
            raise ConfigError(f"not an email address: {self.email!r}", "email")
        if self.renew_before < 0:
            raise ConfigError(f"must be 0 or more, got {self.renew_before}", "renew_before")
        positive("check_interval", self.check_interval)
        if self.challenge not in ACME_CHALLENGES:
            raise ConfigError(f"expected one of {', '.join(ACME_CHALLENGES)}, "
                              f"got {self.challenge!r}", "challenge")
        if self.ca_bundle is not None and not self.ca_bundle.is_file():
            raise ConfigError(f"no such file: {self.ca_bundle}", "ca_bundle")


#: The ACME challenge types netsuite answers.
ACME_CHALLENGES = ("http-01", "tls-alpn-01")


@section("tls")
@dataclass
class TLSConfig:
    """Certificate for every TLS listener and STARTTLS; generated if unset."""

    certificate: Path | None = None
    key: Path | None = None
    chain: Path | None = None
    #: Lowest protocol version offered: "1.2" or "1.3".
    min_version: str = "1.2"
    #: Obtain and renew the certificate by ACME (a table); unset: off.
    acme: ACMEConfig | None = None

    def validate(self) -> None:
        if self.min_version not in ("1.2", "1.3"):
            raise ConfigError('must be "1.2" or "1.3"', "min_version")
        if (self.certificate is None) != (self.key is None):
            raise ConfigError("certificate and key go together", "certificate")


@section("throttle")
@dataclass
class ThrottleConfig:
    """Failed-login throttle, per client address and per user name."""

    #: Failures before the delay starts growing.
    free_failures: int = 1
    #: First delay in seconds; doubles with every further failure.
    base_delay: float = 0.5
    max_delay: float = 8.0
    #: Failures within C{window} that lock the address or user.
    lock_after: int = 10
    lock_seconds: float = 300.0
    window: float = 900.0

    def validate(self) -> None:
        for name in ("lock_after", "window", "lock_seconds"):
            positive(name, getattr(self, name))


@section("auth")
@dataclass
class AuthConfig:
    """The cache of successful password verifications (see L{netsuite.auth.cache})."""

    #: Successful logins remembered per process, least recently used out first; 0: off.
    cache_size: int = 1000
    #: Seconds a remembered success stays valid (Dovecot's auth_cache_ttl: 1 hour).
    cache_ttl: float = 3600.0
    #: Cache checkers that cannot tell when a password changes (PAM, plugins) too:
    #: a password changed there keeps working until C{cache_ttl} runs out.
    cache_untracked: bool = False

    def validate(self) -> None:
        if self.cache_size < 0:
            raise ConfigError(f"must be 0 or more, got {self.cache_size}", "cache_size")
        if self.cache_ttl < 0:
            raise ConfigError(f"must be 0 or more, got {self.cache_ttl}", "cache_ttl")


@section("log")
@dataclass
class LogConfig:
    """How twistd's log file (or stdout) is written: see L{netsuite.logs}."""

    #: C{"plain"}: twistd's own text lines, as always; C{"json"}: one JSON
    #: object per line with the fields documented in docs/operations.md.
    format: str = "plain"

    def validate(self) -> None:
        if self.format not in ("plain", "json"):
            raise ConfigError(f'expected "plain" or "json", got {self.format!r}', "format")


@section("limits")
@dataclass
class LimitsConfig:
    """Connection caps applied to every listener unless a protocol overrides."""

    max_connections: int = 500
    max_connections_per_address: int = 50
    #: Seconds a client has to finish a TLS handshake (implicit TLS, or after
    #: STARTTLS/STLS/AUTH TLS) before it is cut off; Postfix and Dovecot use ~30.
    tls_handshake_timeout: float = 30.0
    #: Seconds a connection the server closed may linger (waiting for the peer's
    #: TLS close_notify or FIN, or for it to read the last reply) before it is aborted.
    close_timeout: float = 10.0
    #: Seconds a command line (or an IMAP literal, plus 1 s per 16 KiB) may take
    #: from its first byte to its last, on SMTP, POP3, IMAP and FTP (slowloris).
    command_timeout: int = 60

    def validate(self) -> None:
        positive("max_connections", self.max_connections)
        positive("max_connections_per_address", self.max_connections_per_address)
        positive("tls_handshake_timeout", self.tls_handshake_timeout)
        positive("close_timeout", self.close_timeout)
        positive("command_timeout", self.command_timeout)


@section("mail")
@dataclass
class MailConfig:
    """
    Which addresses are local, and where they go: the realm's routing, read
    by SMTP and the queue too, so it sits with the sections of no one protocol.
    """

    #: Domains delivered here; mail for any other domain is relayed or refused.
    local_domains: list[str] = field(default_factory=lambda: ["localhost"])
    #: Alias -> user names (or other aliases), e.g. C{postmaster = ["alice"]}.
    aliases: dict[str, list[str]] = field(default_factory=dict)
    #: An optional file of C{alias: user, user} lines, merged with C{aliases}.
    aliases_file: Path | None = None
    #: Where C{postmaster@} every local domain (and bare C{<Postmaster>}) goes
    #: when no user or alias of that name exists (RFC 5321 4.5.1): a user, an
    #: alias or an address in a local domain; it must resolve at start-up.
    #: Unset: the mailbox C{DATA/mail/postmaster}, which a user named
    #: C{postmaster} reads (so the zero-config server starts with no users).
    postmaster: str = ""
    #: Every user's storage quota (RFC 9208 STORAGE): C{"100M"}, C{"2G"}, C{"512K"},
    #: bytes; C{""} or C{"unlimited"}: none.  Counted over all of a user's folders.
    quota: str | int = ""
    #: Per-user overrides of C{quota}, e.g. C{{ alice = "1G", robot = "unlimited" }}.
    quotas: dict[str, str | int] = field(default_factory=dict)

    def quota_for(self, user: str) -> int | None:
        """C{user}'s quota in bytes, or None for no limit."""
        return parse_size(self.quotas.get(user, self.quota))

    def validate(self) -> None:
        for key, value in [("quota", self.quota)] + [
                (f"quotas.{u}", v) for u, v in self.quotas.items()]:
            try:
                parse_size(value)
            except ValueError as e:
                raise ConfigError(str(e), key) from e
        self.local_domains = [d.lower().rstrip(".") for d in self.local_domains]
        if not self.local_domains:
            raise ConfigError("name at least one domain", "local_domains")
        if self.aliases_file is not None:
            try:
                self.aliases.update(parse_aliases(self.aliases_file.read_text("utf-8"),
                                                  self.aliases_file))
            except OSError as e:
                raise ConfigError(f"cannot read: {e.strerror}", "aliases_file") from e
        self.aliases = {k.lower(): v for k, v in self.aliases.items()}
        self.postmaster = self.postmaster.strip()
        if "@" in self.postmaster:
            domain = self.postmaster.rpartition("@")[2].lower().rstrip(".")
            if domain not in self.local_domains:
                raise ConfigError(f"{self.postmaster!r} is not in a local domain",
                                  "postmaster")


@section("database")
@dataclass
class DatabaseConfig:
    """
    The PostgreSQL database several hosts share (docs/scale-out.md): used by
    C{[store] backend = "postgresql"} and the C{sql} checker.
    """

    #: A libpq connection string (C{"host=/run/postgresql dbname=netsuite"}) or
    #: URI (C{"postgresql://netsuite@db1/netsuite"}); empty: no database.
    dsn: str = ""
    #: Connections (and database threads) this process keeps at most.
    pool_size: int = 10
    #: Seconds to wait for a connection (a new one, or a free one from the pool)
    #: before the caller gets a temporary failure.
    connect_timeout: float = 5.0
    #: Further attempts after a lost connection, each after a doubling delay
    #: starting at C{retry_delay} seconds.
    retries: int = 2
    retry_delay: float = 0.1
    #: Seconds a shared lock (the POP3 maildrop lock) outlives the last renewal
    #: by its holder: how long a host that died keeps its sessions' locks.
    lock_lease: float = 60.0

    def validate(self) -> None:
        positive("pool_size", self.pool_size)
        positive("lock_lease", self.lock_lease)
        positive("connect_timeout", self.connect_timeout)
        positive("retry_delay", self.retry_delay)
        if self.retries < 0:
            raise ConfigError(f"must be 0 or more, got {self.retries}", "retries")
        if not self.dsn:
            return
        try:
            conninfo_to_dict(self.dsn)
        except Exception as e:  # psycopg.ProgrammingError: libpq's own words
            raise ConfigError(f"not a valid connection string: {e}", "dsn") from None


def parse_aliases(text: str, path: Path | str = "aliases") -> dict[str, list[str]]:
    """Parse C{/etc/aliases}-style lines: C{name: user, user}."""
    table: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, targets = line.partition(":")
        users = [t.strip() for t in targets.split(",") if t.strip()]
        if not sep or not name.strip() or not users:
            raise ConfigError(f"line {number}: expected 'alias: user, user'", "aliases_file",
                              path)
        table[name.strip().lower()] = users
    return table


def plaintext_auth_allowed(config: "Config", section_name: str) -> bool:
    """
    Whether protocol C{section_name} takes plain-text passwords without TLS:
    its own C{allow_plaintext_auth} when set, else the server-wide one, so
    allowing plain FTP logins does not make submission offer AUTH in clear.
    """
    own = getattr(getattr(config, section_name, None), "allow_plaintext_auth", None)
    return config.server.allow_plaintext_auth if own is None else own


#: Listener name -> (default endpoints on the embedded defaults, implicit TLS).
#: Filled by protocol packages through L{listener}.
LISTENERS: dict[str, tuple[list[str], bool]] = {}


def listener(name: str, default: list[str], implicit_tls: bool = False) -> None:
    """Declare a listener: its C{--name} option and its C{[listen] name} key."""
    LISTENERS[name] = (default, implicit_tls)


@dataclass
class Config:
    """The whole configuration."""

    path: Path | None
    server: ServerConfig
    #: Listener name -> endpoint strings; an empty list switches it off.
    listen: dict[str, list[str]]
    sections: dict[str, Any]
    #: The free-form C{[realm]} table, for a custom realm's own settings.
    realm_options: dict[str, Any] = field(default_factory=dict)
    #: What L{load} was given besides the file (the command line's
    #: C{"section.key"} values and listener endpoints): a reload
    #: (L{netsuite.reload}) reads the file again with the same ones.
    overrides: dict[str, Any] = field(default_factory=dict)
    listen_overrides: dict[str, list[str]] = field(default_factory=dict)

    def reread(self) -> "Config":
        """The configuration as the file says now, with the same overrides."""
        return load(self.path, self.overrides, self.listen_overrides)

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(name)

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir


def _load_protocols() -> None:
    """Import every protocol package so their sections register."""
    protocols.load_all()


def load(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    listen_overrides: dict[str, list[str]] | None = None,
) -> Config:
    """
    Read and validate the configuration.

    @param path: a TOML file, or L{None} for the embedded defaults.
    @param overrides: C{"section.key": value} pairs from the command line.
    @param listen_overrides: listener name -> endpoints from the command line;
        they replace the file's list for that listener.
    """
    import copy

    _load_protocols()
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            with path.open("rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError("no such file", file=path) from None
        except PermissionError:
            raise ConfigError("permission denied", file=path) from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"not valid TOML: {e}", file=path) from e
    for dotted, value in (overrides or {}).items():
        sec, _, key = dotted.partition(".")
        raw.setdefault(sec, {})[key] = copy.deepcopy(value)
    kept = copy.deepcopy((overrides or {}, listen_overrides or {}))
    try:
        config = _build(path, raw, copy.deepcopy(listen_overrides or {}))
    except ConfigError as e:
        e.file = str(path) if path else e.file
        raise
    config.overrides, config.listen_overrides = kept
    return config


def _build(
    path: Path | None, raw: dict[str, Any], listen_overrides: dict[str, list[str]]
) -> Config:
    sections: dict[str, Any] = {}
    for name, value in raw.items():
        if name in ("listen", "realm"):
            continue
        if name not in SECTIONS:
            known = ", ".join(sorted(list(SECTIONS) + ["listen", "realm"]))
            raise ConfigError(f"unknown section (known: {known})", f"[{name}]")
        if not isinstance(value, dict):
            raise ConfigError("expected a table", name)
    for name, cls in SECTIONS.items():
        sections[name] = load_dataclass(cls, raw.get(name, {}), name)

    listen_raw = raw.get("listen", {})
    if not isinstance(listen_raw, dict):
        raise ConfigError("expected a table", "listen")
    listen: dict[str, list[str]] = {}
    for name, (default, _tls) in LISTENERS.items():
        listen[name] = list(default)
    for name, value in listen_raw.items():
        if name not in LISTENERS:
            known = ", ".join(sorted(LISTENERS))
            raise ConfigError(f"unknown listener (known: {known})", f"listen.{name}")
        if isinstance(value, str):
            value = [value]
        listen[name] = _coerce(value, list[str], f"listen.{name}")
    for name, value in listen_overrides.items():
        listen[name] = value
    for name, endpoints in listen.items():
        endpoints[:] = [normalize_endpoint(ep) for ep in endpoints]
        for i, ep in enumerate(endpoints):
            _check_endpoint(ep, f"listen.{name}[{i}]")
    realm_options = raw.get("realm", {})
    if not isinstance(realm_options, dict):
        raise ConfigError("expected a table", "realm")
    server = sections.pop("server")
    store = sections.get("store")
    if getattr(store, "backend", "") == "postgresql" and not sections["database"].dsn:
        raise ConfigError('"postgresql" needs [database] dsn', "store.backend")
    return Config(path=path, server=server, listen=listen, sections=sections,
                  realm_options=realm_options)


#: How to write endpoints, appended to every endpoint error.
ENDPOINT_HINT = ("write e.g. tcp:2525:interface=127.0.0.1 or tcp6:2525:interface=::1 "
                 "(or interface=[::1]); a colon inside any other value is written \\:")

#: The same for socket activation (C{etc/systemd/netsuite.socket}).
SYSTEMD_HINT = ("write e.g. systemd:domain=INET:name=imap (the socket unit's "
                "FileDescriptorName=) or systemd:domain=INET6:index=0")


def _split_endpoint(description: str) -> list[str]:
    """Split at the colons Twisted splits at (not at backslash-escaped ones)."""
    parts, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _ip_literal(value: str) -> str | None:
    """C{value} (unescaped, brackets allowed) as a bare IP address, or None."""
    import ipaddress

    value = value.replace("\\:", ":")
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    address, _, scope = value.partition("%")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return None
    if scope and not scope.replace("-", "").replace("_", "").replace(".", "").isalnum():
        return None
    return value


def normalize_endpoint(description: str) -> str:
    """
    Accept IPv6 addresses as people write them in C{interface=}: C{::1} or
    C{[::1]} as well as Twisted's escaped C{\\:\\:1}.  Twisted's endpoint
    parser splits at every colon, so C{tcp6:2525:interface=::1} would reach
    it as three arguments (C{got multiple values for argument 'interface'}).
    The longest run of colon-separated pieces after C{interface=} that forms an
    IP address is taken as the address and its colons are escaped.  Anything
    else is returned unchanged.
    """
    parts = _split_endpoint(description)
    out = parts[:1]
    i = 1
    while i < len(parts):
        part = parts[i]
        if part.startswith("interface="):
            pieces = [part[len("interface="):]]
            best, used = None, 1
            for j in range(i + 1, len(parts) + 1):
                candidate = _ip_literal(":".join(pieces))
                if candidate is not None:
                    best, used = candidate, len(pieces)
                if j == len(parts) or "=" in parts[j]:
                    break
                pieces.append(parts[j])
            if best is not None:
                out.append("interface=" + best.replace(":", "\\:"))
                i += used
                continue
        out.append(part)
        i += 1
    return ":".join(out)


def _check_endpoint(description: str, key: str) -> None:
    """Parse an endpoint string without listening, so typos fail early."""
    from twisted.internet import endpoints, reactor

    kind = description.split(":", 1)[0]
    if kind in ("ssl",):
        # ssl: loads certificate files at parse time; checked when listening.
        return
    try:
        if kind == "systemd":
            _check_systemd_endpoint(description)
        else:
            endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        hint = SYSTEMD_HINT if kind == "systemd" else ENDPOINT_HINT
        raise ConfigError(f"bad endpoint {description!r}: {e}; {hint}", key) from e


class _AnyDescriptor:
    """Answers every index and name: the inherited sockets when only syntax is checked."""

    def __getitem__(self, key: object) -> int:
        return -1

    def inheritedDescriptors(self) -> "_AnyDescriptor":
        return self

    def inheritedNamedDescriptors(self) -> "_AnyDescriptor":
        return self


def _check_systemd_endpoint(description: str) -> None:
    """
    C{systemd:domain=INET:index=0} (or C{name=}), parsed by Twisted's own
    parser but without looking the socket up: the config is read by
    C{netsuite check} too, which systemd passes no sockets; whether the socket
    is there is checked when the server builds its listeners.
    """
    import socket

    from twisted.internet import endpoints, reactor

    args, kwargs = endpoints._parse(description)  # what serverFromString splits
    parser = endpoints._SystemdParser()
    parser._sddaemon = _AnyDescriptor()  # type: ignore[assignment]
    domain = kwargs.get("domain", args[1] if len(args) > 1 else None)
    if not isinstance(domain, str) or not hasattr(socket, "AF_" + domain):
        raise ValueError(f"domain must be an address family such as INET, INET6 or UNIX, "
                         f"got {domain!r}")
    parser.parseStreamServer(reactor, *args[1:], **kwargs)

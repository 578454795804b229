"""TELNET's config section, listeners and factory."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from netsuite import protocols
from netsuite.config import ConfigError, listener, positive, section
from netsuite.realm import ITerminalAvatar, register_avatar
from netsuite.telnet.server import TelnetFactory
from netsuite.telnet.session import terminal_for
from netsuite.telnet.wire import parse_ttype

#: Variables the session sets itself; a client can never supply them.
RESERVED_ENV = frozenset({"TERM", "USER", "LOGNAME", "HOME", "SHELL", "PATH", "MAIL"})
#: Patterns no whitelist may let through: they change how programs load or run.
DANGEROUS_ENV = ("LD_*", "DYLD_*", "IFS", "ENV", "BASH_ENV", "BASH_FUNC_*", "PS4",
                 "SHELLOPTS", "PYTHON*", "PERL*", "RUBY*", "NODE_OPTIONS", "GCONV_PATH",
                 "LOCPATH", "NLSPATH", "HOSTALIASES", "RES_OPTIONS", "TMPDIR")


@section("telnet")
@dataclass
class TelnetConfig:
    """Login and terminal sessions for every TELNET listener."""

    #: Plain-text passwords without TLS for this protocol; unset: C{server.allow_plaintext_auth}.
    allow_plaintext_auth: bool | None = None
    #: Shown before the first C{login:} prompt; C{{hostname}} is replaced.
    banner: str = "netsuite {hostname}"
    #: Seconds from connect to a completed login before the server hangs up.
    login_timeout: float = 60.0
    #: Failed logins before the server hangs up.
    max_tries: int = 3
    #: Pause after a failed login, doubled with each further failure (on top
    #: of the shared throttle's delay).
    fail_delay: float = 1.0
    #: The program for every user without a per-user or per-group one; empty
    #: means the user's login shell (the account's shell, or C{default_shell}
    #: for password-file users without a system account).
    program: list[str] = field(default_factory=list)
    default_shell: str = "/bin/sh"
    #: User name -> argv; C{{user}} in an argument becomes the user name.
    user_programs: dict[str, list[str]] = field(default_factory=dict)
    #: Group name -> argv, for members of that system group (first match wins).
    group_programs: dict[str, list[str]] = field(default_factory=dict)
    #: PATH for sessions (root gets the sbin directories in front).
    path: str = "/usr/local/bin:/usr/bin:/bin"
    #: TERM when the client does not say (no TTYPE).
    default_term: str = "dumb"
    #: Ask the client for its environment (RFC 1572 NEW-ENVIRON).
    new_environ: bool = True
    #: Client variables passed to the program (shell patterns).  USER, TERM,
    #: HOME and the like are never taken from the client.
    env_whitelist: list[str] = field(default_factory=lambda: ["LANG", "LC_*", "TZ"])
    #: When the server runs as root: the system account that password-file
    #: users without a system account run as (empty: the server's own user).
    virtual_user: str = ""
    #: Allow a login that would run the program as uid 0: the root account, or a
    #: password-file user while the server runs as root and C{virtual_user} is empty.
    permit_root_login: bool = False
    #: Seconds without client input before an idle session is hung up (0: never).
    idle_timeout: float = 0.0
    #: After a hang-up, seconds before a program that ignores SIGHUP gets SIGKILL.
    hangup_grace: float = 5.0
    #: Write utmp/wtmp records (C{who}, C{last}); needs root.
    utmp: bool = True
    utmp_file: str = "/var/run/utmp"
    wtmp_file: str = "/var/log/wtmp"
    max_connections: int = 100
    max_connections_per_address: int = 10

    def validate(self) -> None:
        for name in ("login_timeout", "max_tries", "hangup_grace", "max_connections",
                     "max_connections_per_address"):
            positive(name, getattr(self, name))
        for name in ("fail_delay", "idle_timeout"):
            if getattr(self, name) < 0:
                raise ConfigError("must not be negative", name)
        if not self.default_shell.startswith("/"):
            raise ConfigError("expected an absolute path", "default_shell")
        if self.program:
            _check_argv(self.program, "program")
        for kind in ("user_programs", "group_programs"):
            for name, argv in getattr(self, kind).items():
                _check_argv(argv, f"{kind}.{name}")
        if not _term_ok(self.default_term):
            raise ConfigError("expected a terminfo name such as 'dumb' or 'vt100'",
                              "default_term")
        for i, pattern in enumerate(self.env_whitelist):
            key = f"env_whitelist[{i}]"
            if not pattern or any(c in pattern for c in "=\0"):
                raise ConfigError("expected a variable name or pattern", key)
            if pattern.upper() in RESERVED_ENV or pattern == "*":
                raise ConfigError(f"{pattern!r} is set by the server, never by a client", key)
            for bad in DANGEROUS_ENV:
                if fnmatch.fnmatchcase(pattern, bad) or fnmatch.fnmatchcase(bad, pattern):
                    raise ConfigError(f"{pattern!r} would let a client choose {bad}", key)

    def env_allowed(self, name: str) -> bool:
        """Whether a client-supplied variable may reach the program."""
        if name in RESERVED_ENV or not name or "=" in name or "\0" in name:
            return False
        if any(fnmatch.fnmatchcase(name, bad) for bad in DANGEROUS_ENV):
            return False
        return any(fnmatch.fnmatchcase(name, p) for p in self.env_whitelist)


def _term_ok(name: str) -> bool:
    return parse_ttype(b"\0" + name.encode("ascii", "replace")) == name


def _check_argv(argv: list[str], key: str) -> None:
    if not argv:
        raise ConfigError("expected a non-empty argv list", key)
    if not argv[0].startswith("/"):
        raise ConfigError(f"the program must be an absolute path, got {argv[0]!r}", key)


listener("telnet", ["tcp:2323:interface=127.0.0.1"])
listener("telnets", [], implicit_tls=True)


@protocols.factory("telnet", "telnets", busy=b"Too many connections, try later.\r\n")
def build(ctx, name: str):
    return TelnetFactory(ctx, name)


register_avatar(ITerminalAvatar, terminal_for)

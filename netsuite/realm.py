"""
The storage realm: one avatar per protocol for every authenticated user.

The built-in L{NetsuiteRealm} maps each user to a mailbox, an FTP root and a
terminal program under one data directory.  A custom realm is one class named
in the config (C{server.realm = "package.module:Name"}), usually a subclass
that overrides L{NetsuiteRealm.resolve_local} or one avatar method; see
C{examples/sqlite_realm.py}.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.cred import checkers, portal
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from netsuite.auth import normalize_username
from netsuite.auth.passwdfile import PasswordFile, valid_name
from netsuite.config import Config, ConfigError, section
from netsuite.store.maildir import MaildirStore

log = Logger(namespace="netsuite.realm")

#: The avatar id of an unauthenticated (MX or anonymous FTP) session.
ANONYMOUS = checkers.ANONYMOUS


@section("mail")
@dataclass
class MailConfig:
    """Which addresses are local, and where they go."""

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

    def validate(self) -> None:
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


class ITerminalAvatar(Interface):
    """What a TELNET login runs: see L{netsuite.telnet.session}."""

    user = Attribute("The logged-in user name.")
    executable = Attribute("The program file to execute.")
    argv = Attribute("Its argument list (argv[0] included).")
    env = Attribute("Environment: HOME, USER, LOGNAME, SHELL, PATH.")
    cwd = Attribute("Working directory (the user's home).")
    uid = Attribute("uid to run as when the server is root, or None.")
    gid = Attribute("gid to run as when the server is root, or None.")
    groups = Attribute("Supplementary group ids of the account.")


def load_object(dotted: str, key: str = "server.realm") -> Any:
    """Import C{package.module:Name}."""
    module_name, _, attr = dotted.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load {dotted!r}: {e}", key) from e


@implementer(portal.IRealm)
class NetsuiteRealm:
    """
    Users from the password file; each gets, under the data directory,
    C{mail/USER} (Maildir++), C{ftp/USER} (FTP root) and a terminal program.
    """

    def __init__(self, config: Config):
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.store = MaildirStore(self.data_dir / "mail")
        self.users = PasswordFile(self.data_dir / "passwd")
        #: Interface -> method building the avatar, for L{requestAvatar}.
        self.avatar_makers: dict[type[Interface], Callable[[Any], Any]] = {}
        self._register_builtin_avatars()

    # -- which users and addresses exist -------------------------------------

    def user_exists(self, user: str) -> bool:
        """A local user that can receive mail."""
        return valid_name(user) and user in self.users

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.config.mail.local_domains

    def resolve_local(self, localpart: str, domain: str) -> list[str]:
        """
        The users that mail for C{localpart@domain} goes to (domain is local),
        following aliases; an empty list means no such recipient.
        """
        seen: set[str] = set()
        found: list[str] = []
        pending = [localpart]
        aliases = self.config.mail.aliases
        while pending and len(seen) < 1000:
            name = pending.pop(0)
            key = name.lower()
            if key in seen:
                continue
            seen.add(key)
            if key in aliases:
                pending.extend(aliases[key])
            elif self.user_exists(name) and name not in found:
                found.append(name)
        return found

    #: The mailbox that keeps postmaster mail when nothing else takes it.
    POSTMASTER_MAILBOX = "postmaster"

    def postmaster_users(self) -> list[str]:
        """
        Where mail for C{postmaster@} a local domain goes when no user or alias
        of that name exists: C{[mail] postmaster}, else the C{postmaster}
        mailbox, so that such mail is never refused nor lost.
        """
        target = self.config.mail.postmaster
        if target:
            local, at, domain = target.rpartition("@")
            users = (self.resolve_local(local, domain) if at
                     else self.resolve_local(target, self.config.mail.local_domains[0]))
            if users:
                return users
            log.warn("mail.postmaster {target!r} no longer resolves: postmaster mail "
                     "goes to the mailbox {box!r}", target=target,
                     box=self.POSTMASTER_MAILBOX)
        return [self.POSTMASTER_MAILBOX]

    def check_postmaster(self) -> None:
        """At start-up: a configured postmaster target that resolves to nobody stops it."""
        target = self.config.mail.postmaster
        unserved = [d for d in self.config.mail.local_domains
                    if not self.resolve_local("postmaster", d)]
        if not unserved:
            return
        if target:
            local, at, domain = target.rpartition("@")
            users = (self.resolve_local(local, domain) if at
                     else self.resolve_local(target, unserved[0]))
            if not users:
                raise ConfigError(f"{target!r} is not a user, an alias or a local address, "
                                  f"and postmaster@{unserved[0]} has no mailbox", "mail.postmaster")
        else:
            log.info("postmaster@{domains}: no user or alias; kept in the mailbox "
                     "{box!r} (set [mail] postmaster)", domains=",".join(unserved),
                     box=self.POSTMASTER_MAILBOX)

    def may_send_as(self, user: str, address: str) -> bool:
        """
        Whether the authenticated C{user} may use C{address} (C{local@domain},
        or "" for the null sender) in MAIL FROM on submission: its own
        C{user@} every local domain, an alias resolving to it, or a
        C{[smtp] shared_senders} allowance.  Override to decide otherwise.
        """
        local, at, domain = address.rpartition("@")
        if not at or not local:
            return False
        domain = domain.lower().rstrip(".")
        shared = self.config.smtp.shared_senders
        for key in (f"{local.lower()}@{domain}", f"@{domain}"):
            if user in shared.get(key, ()):
                return True
        if not self.is_local_domain(domain):
            return False
        if local == user or local.lower() == user.lower():
            return True  # its own login name (PAM accounts too, not in the password file)
        return any(user in self.resolve_local(name, domain) for name in {local, local.lower()})

    # -- per-user places ------------------------------------------------------

    def mailbox_path(self, user: str) -> Path:
        return self.store.mailbox_path(user)

    def ftp_root(self, user: str) -> Path:
        return self.data_dir / "ftp" / user

    def home(self, user: str) -> Path:
        """The terminal session's home: the system home for system accounts."""
        import pwd

        try:
            return Path(pwd.getpwnam(user).pw_dir)
        except KeyError:
            return self.data_dir / "home" / user

    # -- cred -----------------------------------------------------------------

    def _register_builtin_avatars(self) -> None:
        """Map each protocol's avatar interface to the method that builds it."""
        from twisted.mail import imap4, pop3, smtp
        from twisted.protocols import ftp

        self.avatar_makers[smtp.IMessageDelivery] = self.mail_delivery
        self.avatar_makers[pop3.IMailbox] = self.pop3_mailbox
        self.avatar_makers[imap4.IAccount] = self.imap_account
        self.avatar_makers[ftp.IFTPShell] = self.ftp_shell
        self.avatar_makers[ITerminalAvatar] = self.terminal

    def requestAvatar(self, avatarId, mind, *interfaces):
        user = avatarId if avatarId is ANONYMOUS else normalize_username(avatarId)
        for iface in interfaces:
            make = self.avatar_makers.get(iface)
            if make is None:
                continue
            avatar = make(user)
            if avatar is None:
                continue
            logout = getattr(avatar, "logout", None) or (lambda: None)
            return iface, avatar, logout
        raise NotImplementedError(f"no avatar for {interfaces!r}")

    # -- relaying (the outgoing queue) ------------------------------------------

    #: The outgoing queue (L{netsuite.queue.runner.QueueRunner}), attached by the
    #: queue's service hook when C{[queue] enabled}; None: no relaying.
    queue: Any = None

    def can_relay(self) -> bool:
        """Whether mail for other domains can be accepted from authenticated users."""
        return self.queue is not None

    def relay(self, sender, recipients, user: str | None = None):
        """
        A file-like object (C{write}, C{commit} -> Deferred, C{abort}) that puts
        one message for C{recipients} into the outgoing queue.
        """
        if self.queue is None:
            from twisted.mail import smtp

            raise smtp.SMTPServerError(451, b"4.3.5 Error: relaying is not enabled")
        return self.queue.writer(sender, recipients, user)

    def mail_delivery(self, user):
        """SMTP: local delivery (and relaying, for authenticated users)."""
        from netsuite.smtp.delivery import Delivery

        return Delivery(self, None if user is ANONYMOUS else user)

    def pop3_mailbox(self, user):
        if user is ANONYMOUS:
            return None
        from netsuite.pop3.mailbox import mailbox_for

        return mailbox_for(self, user)

    def imap_account(self, user):
        if user is ANONYMOUS:
            return None
        from netsuite.imap.account import account_for

        return account_for(self, user)

    def ftp_shell(self, user):
        from netsuite.ftp.shell import shell_for

        return shell_for(self, user)

    def terminal(self, user):
        if user is ANONYMOUS:
            return None
        from netsuite.telnet.session import terminal_for

        return terminal_for(self, user)


def make_realm(config: Config) -> portal.IRealm:
    """Build the realm named by C{server.realm}."""
    factory = load_object(config.server.realm)
    try:
        realm = factory(config)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"{config.server.realm} failed: {e}", "server.realm") from e
    if not portal.IRealm.providedBy(realm):
        raise ConfigError(f"{config.server.realm} does not provide IRealm", "server.realm")
    check = getattr(realm, "check_postmaster", None)
    if check is not None:  # once the realm (a subclass too) is fully built
        check()
    return realm

"""
The storage realm: one avatar per protocol for every authenticated user.

The built-in L{NetsuiteRealm} maps each user to a mailbox, an FTP root and a
terminal program under one data directory.  A custom realm is one class named
in the config (C{server.realm = "package.module:Name"}), usually a subclass
that overrides L{NetsuiteRealm.resolve_local} or replaces one entry of
C{avatar_makers}; see C{examples/sqlite_realm.py}.

The realm sits below the protocols and imports none of them: each protocol
package registers the maker of its avatar here (L{register_avatar}, from its
C{service} module, beside its config section), and the outgoing queue attaches
itself as the realm's L{IRelay} (L{NetsuiteRealm.set_relay}).
"""

from __future__ import annotations

import importlib
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.cred import checkers, portal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import smtp
from zope.interface import Attribute, Interface, implementer

from netsuite.auth import normalize_username
from netsuite.auth.passwdfile import PasswordFile, valid_name
from netsuite.config import Config, ConfigError
from netsuite.store.maildir import MaildirStore

log = Logger(namespace="netsuite.realm")

#: The avatar id of an unauthenticated (MX or anonymous FTP) session.
ANONYMOUS = checkers.ANONYMOUS


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


class IRelay(Interface):
    """
    Where the realm sends mail for other domains: the outgoing queue
    (L{netsuite.queue.runner.QueueRunner}), attached by its service hook
    through L{NetsuiteRealm.set_relay}.
    """

    def writer(sender, recipients, user=None, forwarded_by=None):
        """
        A file-like object for one message to C{recipients} (C{smtp.Address}
        objects): C{write(line)}, C{commit()} -> Deferred, C{abort()}.  C{user}
        is the authenticated sender, if any; C{forwarded_by} the local domain
        whose alias forwards a received message (ARC-sealed as that domain).
        May raise C{smtp.SMTPServerError} to refuse the message (a rate limit).
        """


@dataclass(frozen=True)
class AvatarMaker:
    """How L{NetsuiteRealm} builds one protocol's avatar."""

    #: C{make(realm, user)} -> the avatar, or None to refuse one, or a Deferred
    #: of the avatar (one that reads the disk first, off the reactor).
    make: Callable[[Any, Any], Any]
    #: Whether L{ANONYMOUS} (an MX session, an anonymous FTP login) reaches
    #: C{make}; otherwise it is refused without a call.
    anonymous: bool = False


#: Avatar interface -> its L{AvatarMaker}.  Filled by the protocol packages
#: through L{register_avatar} when they are imported (as they register their
#: config sections), so the realm imports none of them.
AVATAR_MAKERS: dict[type[Interface], AvatarMaker] = {}


def register_avatar(iface: type[Interface], make: Callable[[Any, Any], Any],
                    anonymous: bool = False) -> None:
    """Every L{NetsuiteRealm} builds the avatar for C{iface} with C{make(realm, user)}."""
    AVATAR_MAKERS[iface] = AvatarMaker(make, anonymous)


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
        #: Interface -> C{make(user)} building the avatar (None: refused), for
        #: L{requestAvatar}: every registered maker, bound to this realm.  A
        #: subclass replaces or adds entries after C{super().__init__()}.
        self.avatar_makers: dict[type[Interface], Callable[[Any], Any]] = {
            iface: self._bound(maker) for iface, maker in AVATAR_MAKERS.items()}

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
        return self._expand(localpart)[0]

    def resolve_forward(self, localpart: str, domain: str) -> list[str]:
        """
        The outside addresses (C{user@other.domain} alias targets) that mail for
        C{localpart@domain} is forwarded to, through the outgoing queue.
        """
        return self._expand(localpart)[1]

    def _expand(self, localpart: str) -> tuple[list[str], list[str]]:
        """(local users, outside addresses) an alias name reaches, aliases followed."""
        seen: set[str] = set()
        found: list[str] = []
        remote: list[str] = []
        pending = [localpart]
        aliases = self.config.mail.aliases
        while pending and len(seen) < 1000:
            name = pending.pop(0)
            key = name.lower()
            if key in seen:
                continue
            seen.add(key)
            local, at, domain = name.rpartition("@")
            if at and local:
                if self.is_local_domain(domain):
                    pending.append(local)
                elif name not in remote:
                    remote.append(name)
            elif key in aliases:
                pending.extend(aliases[key])
            elif self.user_exists(name) and name not in found:
                found.append(name)
        return found, remote

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

    def quota_for(self, user: str) -> int | None:
        """
        C{user}'s storage quota in bytes (None: no limit): C{[mail] quotas},
        else C{[mail] quota}.  A realm whose user source carries a quota (a
        database column) overrides this; IMAP, SMTP and the queue ask here.
        """
        return self.config.mail.quota_for(user)

    # -- per-user places ------------------------------------------------------

    def mailbox_path(self, user: str) -> Path:
        return self.store.mailbox_path(user)

    def ftp_root(self, user: str) -> Path:
        return self.data_dir / "ftp" / user

    def home(self, user: str) -> Path:
        """The terminal session's home: the system home for system accounts."""
        try:
            return Path(pwd.getpwnam(user).pw_dir)
        except KeyError:
            return self.data_dir / "home" / user

    # -- cred -----------------------------------------------------------------

    def _bound(self, maker: AvatarMaker) -> Callable[[Any], Any]:
        def make(user):
            if user is ANONYMOUS and not maker.anonymous:
                return None
            return maker.make(self, user)

        return make

    def requestAvatar(self, avatarId, mind, *interfaces):
        user = avatarId if avatarId is ANONYMOUS else normalize_username(avatarId)
        for iface in interfaces:
            make = self.avatar_makers.get(iface)
            if make is None:
                continue
            avatar = make(user)
            if avatar is None:
                continue
            if isinstance(avatar, defer.Deferred):  # the Portal waits for it
                return avatar.addCallback(_avatar_triple, iface)
            return _avatar_triple(avatar, iface)
        raise NotImplementedError(f"no avatar for {interfaces!r}")

    # -- relaying (the outgoing queue) ------------------------------------------

    #: The outgoing queue, set by L{set_relay}; None: no relaying.
    _relay: IRelay | None = None

    def set_relay(self, relay: IRelay | None) -> None:
        """Hand mail for other domains to C{relay} (the queue's service hook calls this)."""
        self._relay = relay

    def can_relay(self) -> bool:
        """Whether mail for other domains can be accepted from authenticated users."""
        return self._relay is not None

    def relay(self, sender, recipients, user: str | None = None,
              forwarded_by: str | None = None):
        """
        A file-like object (C{write}, C{commit} -> Deferred, C{abort}) that puts
        one message for C{recipients} into the outgoing queue.
        """
        if self._relay is None:
            raise smtp.SMTPServerError(451, b"4.3.5 Error: relaying is not enabled")
        if forwarded_by is not None:
            return self._relay.writer(sender, recipients, user, forwarded_by=forwarded_by)
        return self._relay.writer(sender, recipients, user)


def _avatar_triple(avatar: Any, iface: type[Interface]) -> tuple:
    """What L{IRealm.requestAvatar} answers: (interface, avatar, logout)."""
    return iface, avatar, getattr(avatar, "logout", None) or (lambda: None)


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

"""
Dropping privileges: C{[server] user} and C{group}.

Started as root to bind ports below 1024 (25, 110, 143, 21, ...), netsuite
runs as that user once every listener is bound.  The switch itself is
twistd's (C{--uid}/C{--gid}): twistd calls C{privilegedStartService} (where
every listener binds), then C{switchUID} (setgid, initgroups, setuid), then
C{startService}.  L{request} hands twistd the ids.

Before that, the server is built (L{acting_as}) with the effective user and
groups already those of the target user, so whatever building creates in the
data dir (queue folders, the generated certificate and SSH host keys) is that
user's, and whatever it cannot read or write fails at start-up with a
L{ConfigError} instead of at the first delivery.  Root is taken back for the
binding, then given up for good.

TELNET and SSH sessions start programs as the logged-in user, which needs
root, so those listeners and C{user} together are refused (L{plan}).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

import netsuite
import twisted
from netsuite import protocols
from netsuite.accounts import AccountError, Identity, lookup
from netsuite.config import ConfigError

if TYPE_CHECKING:
    from netsuite.config import Config, ServerConfig

log = Logger(namespace="netsuite.privileges")

#: Listeners whose sessions run programs as the user who logged in.
LOGIN_LISTENERS = ("telnet", "telnets", "ssh")


def identity(server: "ServerConfig") -> Identity | None:
    """C{[server] user}/C{group} looked up; None when C{user} is unset."""
    try:
        return lookup(server.user, server.group)
    except AccountError as e:
        raise ConfigError(e.reason, e.key) from None


def plan(config: "Config") -> Identity | None:
    """
    The identity to switch to after binding, or None (unset, or already it:
    systemd's C{User=} with the same name in the config).  Raises
    L{ConfigError} when the switch cannot work.
    """
    target = identity(config.server)
    if target is None:
        return None
    if os.geteuid() == target.uid and os.getegid() == target.gid:
        return None
    if os.geteuid() != 0:
        raise ConfigError(f"switching to user {target.user!r} needs root; netsuite runs as "
                          f"uid {os.geteuid()}", "server.user", config.path)
    logins = [name for name in LOGIN_LISTENERS
              if config.listen.get(name) and config.listen[name] != ["off"]
              and name in protocols.FACTORIES]
    if logins:
        raise ConfigError(
            "TELNET and SSH sessions start programs as their own users, which needs root: "
            f"with {', '.join('listen.' + n for n in logins)} on, leave server.user unset "
            "(or switch those listeners off)", "server.user", config.path)
    if any(name == "pam" or name.startswith("pam:") for name in config.server.auth):
        log.warn("server.user = {user!r} with PAM logins: pam_unix checks only its own "
                 "user's password when not root (other PAM modules may work)",
                 user=target.user)
    return target


def _readable(path: Path) -> bool:
    return os.access(path, os.R_OK | os.X_OK, effective_ids=True)


def _check(config: "Config", target: Identity) -> None:
    """As C{target} (effective ids): can it run netsuite and write the data dir?"""
    for what, path in [("Python's library", Path(os.__file__).parent),
                       ("Twisted", Path(twisted.__file__).parent),
                       ("netsuite", Path(netsuite.__file__).parent)]:
        if not _readable(path):
            raise ConfigError(f"user {target.user!r} cannot read {path} ({what}): install "
                              "netsuite where that user can read it", "server.user",
                              config.path)
    data = config.data_dir
    if not os.access(data, os.R_OK | os.W_OK | os.X_OK, effective_ids=True):
        try:
            st = data.stat()
        except PermissionError:
            raise ConfigError(f"user {target.user!r} cannot reach {data}: a directory above "
                              "it does not let that user through (it needs x for others)",
                              "server.data_dir", config.path) from None
        owner = _name(pwd.getpwuid, st.st_uid)
        group = _name(grp.getgrgid, st.st_gid)
        raise ConfigError(
            f"{data} is not writable by user {target.user!r} (it belongs to {owner}:{group}): "
            f"chown -R {target.user}:{target.group} {data}", "server.data_dir", config.path)


def _name(lookup: Any, number: int) -> str:
    try:
        entry = lookup(number)
    except KeyError:
        return str(number)
    return entry[0]


@contextlib.contextmanager
def acting_as(config: "Config", target: Identity | None) -> Iterator[None]:
    """
    Run the block with C{target}'s effective uid, gid and groups (root's are
    restored after).  The data dir is created first, as root, and given to
    C{target} when it did not exist: netsuite made it, so it is theirs.
    """
    if target is None:
        yield
        return
    data = config.data_dir
    if not data.exists():
        data.mkdir(parents=True)
        os.chown(data, target.uid, target.gid)
    saved = os.geteuid(), os.getegid(), os.getgroups()
    os.setgroups(list(target.groups))
    os.setegid(target.gid)
    os.seteuid(target.uid)
    try:
        _check(config, target)
        yield
    finally:
        os.seteuid(saved[0])
        os.setegid(saved[1])
        os.setgroups(saved[2])


def adopt_twistd_ids(options: Any, config: "Config") -> None:
    """
    C{twistd --uid/--gid} without C{[server] user}: the same request, so that
    it gets the same checks and the same build as that user.
    """
    parent = getattr(options, "parent", None)
    if parent is None or config.server.user or parent.get("uid") is None:
        return
    config.server.user = str(parent["uid"])
    if parent.get("gid") is not None and not config.server.group:
        config.server.group = str(parent["gid"])


def request(options: Any, target: Identity | None, config: "Config") -> None:
    """Ask twistd to switch to C{target} after C{privilegedStartService}."""
    if target is None:
        return
    parent = getattr(options, "parent", None)
    if parent is None or "uid" not in parent:
        raise ConfigError("switching users is twistd's (--uid/--gid): run `twistd netsuite`",
                          "server.user", config.path)
    for key, value in (("uid", target.uid), ("gid", target.gid)):
        if parent[key] is not None and parent[key] != value:
            raise ConfigError(f"twistd --{key} {parent[key]} disagrees with server.user/group "
                              f"({target.user}:{target.group})", "server.user", config.path)
        parent[key] = value
    log.info("netsuite: listeners bind as root, then the server runs as {user}:{group}",
             user=target.user, group=target.group)

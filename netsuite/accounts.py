"""
System accounts named in C{[server] user}/C{group}, looked up: kept apart from
L{netsuite.privileges} so that the config can check them at load time without
importing what switches to them.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass


class AccountError(Exception):
    """A user or group that does not exist: C{(key, reason)}."""

    def __init__(self, key: str, reason: str):
        super().__init__(reason)
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class Identity:
    """Who the server runs as after binding."""

    user: str
    uid: int
    gid: int
    #: Supplementary groups, as initgroups(3) will set them.
    groups: tuple[int, ...]

    @property
    def group(self) -> str:
        try:
            return grp.getgrgid(self.gid).gr_name
        except KeyError:
            return str(self.gid)


def lookup(user: str, group: str = "") -> Identity | None:
    """C{user} (a name or uid) and C{group} (default: the user's) looked up; None without a user."""
    if not user:
        if group:
            raise AccountError("group", "needs server.user too (the user to run as)")
        return None
    try:
        account = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise AccountError("user", f"no such user {user!r}") from None
    gid = account.pw_gid
    if group:
        try:
            gid = (grp.getgrgid(int(group)).gr_gid if group.isdigit()
                   else grp.getgrnam(group).gr_gid)
        except KeyError:
            raise AccountError("group", f"no such group {group!r}") from None
    groups = tuple(os.getgrouplist(account.pw_name, gid))
    return Identity(account.pw_name, account.pw_uid, gid, groups)

"""
The IMAP avatar: a user's folders in the Maildir++ store.

Provides netsuite's L{IImapAccount}, what the IMAP session asks of a login,
and Twisted's L{imap4.INamespacePresenter}.  Twisted's C{IAccount} is not
claimed: its C{select} must return an C{IMailbox}, and the session's
mailboxes are L{netsuite.imap.mailbox.ISessionMailbox} instead (netsuite
renders FETCH, STORE, SEARCH and COPY itself).  Hierarchy delimiter '.', as
Dovecot's Maildir++ layout uses.  Folder names are stored in modified
UTF-7, as Dovecot does (L{netsuite.imap.names} converts at the wire for a
session that enabled UTF-8).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.logger import Logger
from twisted.mail import imap4
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from netsuite.imap.mailbox import SessionMailbox, status
from netsuite.imap.names import to_unicode
from netsuite.store.maildir import BadFolderName

DELIMITER = "."

log = Logger(namespace="netsuite.imap")


class NameChange(NamedTuple):
    """A mailbox created, deleted or renamed, or (un)subscribed (NOTIFY, RFC 5465 5.4, 5.5)."""

    kind: str  #: "create", "delete", "rename", "subscribe" or "unsubscribe"
    name: str  #: the mailbox (for "rename": its new name)
    old: str | None = None  #: "rename": the old name


#: Listeners C{(account, change)} of a user's mailbox names, by store and user: the
#: sessions of one user learn of each other's CREATE, DELETE, RENAME and (UN)SUBSCRIBE
#: as folders' listeners learn of messages.  (This process's sessions: another worker's
#: are not told.)
_name_listeners: "weakref.WeakKeyDictionary[Any, dict[str, list[Callable]]]" = \
    weakref.WeakKeyDictionary()


class NoSuchFolder(imap4.MailboxException):
    pass


class FolderExists(imap4.MailboxException):
    pass


class IImapAccount(Interface):
    """
    A logged-in IMAP user's mailboxes: the avatar interface IMAP logins ask
    the Portal for.  Names are canonical (INBOX upper-case) modified UTF-7.
    Errors are L{imap4.MailboxException}s (L{NoSuchFolder}, L{FolderExists})
    that the session answers with NO.
    """

    user = Attribute("The login name.")
    store = Attribute("The L{netsuite.store.IMailStore} holding the folders.")

    def folder(name: str, create: bool = False):
        """The store folder (L{netsuite.store.IMailFolder}); NoSuchFolder if there is none."""

    def folder_deferred(name: str):
        """L{folder} as a Deferred: a folder not in memory is read off the reactor."""

    def incoming(name: str):
        """A streamed APPEND literal's file in the folder, which is not read; NoSuchFolder."""

    def select(name: str, rw: bool = True):
        """An L{netsuite.imap.mailbox.ISessionMailbox} on the folder, or None if none."""

    def select_deferred(name: str, rw: bool = True):
        """L{select}, or a Deferred of it while the folder is read off the reactor."""

    def create(pathspec: str) -> bool:
        """Create a folder (and its parents); FolderExists if it is there."""

    def delete(name: str) -> bool:
        """Delete a folder; NoSuchFolder if there is none."""

    def rename(oldname: str, newname: str) -> bool:
        """Rename a folder and its children."""

    def subscribe(name: str) -> bool:
        """Add the name to the subscriptions."""

    def unsubscribe(name: str) -> bool:
        """Remove it; NoSuchFolder if it was not subscribed."""

    def listing(ref: str, pattern: str, subscribed: bool = False) -> list:
        """(name, attributes) pairs for LIST / LSUB, \\Noselect parents included."""

    def status(name: str, names) -> dict:
        """STATUS items (MESSAGES, UIDNEXT, ...) of a folder: name -> number."""

    def status_deferred(name: str, names):
        """L{status}, or a Deferred of it while the folder is read off the reactor."""


@implementer(IImapAccount, imap4.INamespacePresenter)
class ImapAccount:
    """One user's folders; see the module docstring."""

    def __init__(self, store, user: str, quota: int | None = None,
                 append_limit: int | None = None):
        self.store = store
        self.user = user
        #: Storage quota in bytes (RFC 9208 STORAGE), None for no limit.
        self.quota = quota
        #: The largest message APPEND takes (RFC 7889 STATUS APPENDLIMIT), None: no limit.
        self.append_limit = append_limit
        store.ensure_special_folders(user)

    # -- listeners of mailbox names (NOTIFY) -------------------------------------------

    def watch_names(self, listener: Callable[["ImapAccount", NameChange], None]) -> None:
        """Call C{listener(account, change)} on every L{NameChange} of this user."""
        _name_listeners.setdefault(self.store, {}).setdefault(self.user, []).append(listener)

    def unwatch_names(self, listener: Callable) -> None:
        listeners = _name_listeners.get(self.store, {}).get(self.user, [])
        if listener in listeners:
            listeners.remove(listener)

    def _names_changed(self, *changes: NameChange) -> None:
        for listener in list(_name_listeners.get(self.store, {}).get(self.user, ())):
            for change in changes:
                try:  # one session's trouble is not the CREATE's (as folder listeners)
                    listener(self, change)
                except Exception:
                    log.failure("mailbox name listener failed")

    # -- helpers --------------------------------------------------------------------

    def folder(self, name: str, create: bool = False):
        try:
            return self.store.folder(self.user, name, create=create)
        except KeyError:
            raise NoSuchFolder(f"No such mailbox: {name}") from None
        except BadFolderName as e:
            raise imap4.MailboxException(f"Bad mailbox name: {e}") from e

    def folder_deferred(self, name: str):
        """
        L{folder}, for a command that writes into it (APPEND, COPY, MOVE): a
        Deferred, so that a big folder's first open (whole directories listed,
        the index written) runs in a thread (L{netsuite.store.IMailStore.open_folder}).
        """

        def missing(f: Failure):
            f.trap(KeyError, BadFolderName)
            if f.check(BadFolderName):
                raise imap4.MailboxException(f"Bad mailbox name: {f.value}")
            raise NoSuchFolder(f"No such mailbox: {name}")

        return self.store.open_folder(self.user, name).addErrback(missing)

    def incoming(self, name: str):
        try:
            return self.store.incoming(self.user, name)
        except KeyError:
            raise NoSuchFolder(f"No such mailbox: {name}") from None
        except BadFolderName as e:
            raise imap4.MailboxException(f"Bad mailbox name: {e}") from e

    def names(self) -> list[str]:
        return self.store.list_folders(self.user)

    def attributes(self, name: str, names: list[str]) -> list[str]:
        """LIST attributes: children, special use."""
        prefix = name + DELIMITER
        attrs = ["\\HasChildren" if any(n.startswith(prefix) for n in names)
                 else "\\HasNoChildren"]
        special = self.store.special_use(name)
        if special:
            attrs.append(special)
        return attrs

    def listing(self, ref: str, pattern: str, subscribed: bool = False):
        """(name, attributes) for LIST / LSUB, parents included as \\Noselect."""
        names = self.names()
        pool = names
        if subscribed:
            subs = self.store.subscriptions(self.user)
            pool = [n for n in subs]
        matches = pattern_matcher(canonical(ref + pattern) if ref else pattern)
        out = []
        seen = set()
        for name in pool:
            if matches(name):
                attrs = self.attributes(name, names) if name in names else ["\\NonExistent"]
                out.append((name, attrs))
                seen.add(name)
            else:
                # '%' stops at a level: a parent of a deeper match is listed.
                # LSUB lists an unsubscribed parent of a subscribed name as \Noselect,
                # whether or not the folder exists (RFC 3501 6.3.9).
                parts = name.split(DELIMITER)
                for i in range(1, len(parts)):
                    parent = DELIMITER.join(parts[:i])
                    if parent not in seen and parent not in (pool if subscribed else names) \
                            and matches(parent):
                        seen.add(parent)
                        out.append((parent, ["\\Noselect"] if subscribed
                                    else ["\\Noselect", "\\HasChildren"]))
        return out

    def extended_listing(self, ref: str, patterns: list[str], subscribed: bool = False,
                         recursive: bool = False, special: bool = False
                         ) -> list[tuple[str, list[str], list[str]]]:
        """
        LIST-EXTENDED (RFC 5258): (name, attributes, CHILDINFO tags) for the
        names matching any of C{patterns}, each once.

        C{subscribed}: only subscribed names (existing or not: \\NonExistent),
        marked \\Subscribed.  C{special}: only special-use folders (RFC 6154).
        C{recursive} (RECURSIVEMATCH): a matching name that is not selected
        itself but has a selected descendant the patterns do not match is
        listed too, with CHILDINFO ("SUBSCRIBED").  Without a selection
        option, a missing parent of a deeper folder where a pattern stops
        ('%') is listed as \\NonExistent \\HasChildren (RFC 5258 5), as
        L{listing} lists it \\Noselect.  \\Subscribed is always marked: the
        caller drops it unless asked for.
        """
        names = self.names()
        existing = set(names)
        subs = self.store.subscriptions(self.user)
        subset = set(subs)
        tests = [pattern_matcher(canonical(ref + p) if ref else p) for p in patterns]

        def matches(name: str) -> bool:
            return any(t(name) for t in tests)

        def selected(name: str) -> bool:
            if subscribed and name not in subset:
                return False
            if special and (name not in existing or not self.store.special_use(name)):
                return False
            return True

        # Candidates in listing order: every folder and subscription, then their parents.
        pool: list[str] = []
        seen: set[str] = set()
        for name in names + subs:
            parts = name.split(DELIMITER)
            for i in range(1, len(parts) + 1):
                n = DELIMITER.join(parts[:i])
                if n not in seen:
                    seen.add(n)
                    pool.append(n)
        pool.sort(key=lambda n: (n != "INBOX", n))
        chosen = {n for n in pool if selected(n) and (n in existing or subscribed)}
        out = []
        for name in pool:
            if not matches(name):
                continue
            prefix = name + DELIMITER
            childinfo: list[str] = []
            if name in chosen:
                pass
            elif recursive and subscribed and any(
                    c.startswith(prefix) and not matches(c) for c in chosen):
                childinfo = ["SUBSCRIBED"]
            elif not subscribed and not special and name not in existing and any(
                    c.startswith(prefix) and not matches(c) for c in names):
                pass  # a missing parent a pattern stops at: \NonExistent below
            else:
                continue
            if name in existing:
                attrs = self.attributes(name, names)
            else:
                attrs = ["\\NonExistent"]
                if any(n.startswith(prefix) for n in names):
                    attrs.append("\\HasChildren")
            if name in subset:
                attrs.append("\\Subscribed")
            out.append((name, attrs, childinfo))
        return out

    # -- IImapAccount ------------------------------------------------------------------

    def create(self, pathspec):
        name = pathspec.rstrip(DELIMITER)
        try:
            self.store.create_folder(self.user, name)
        except FileExistsError:
            raise FolderExists(f"Mailbox already exists: {name}") from None
        except BadFolderName as e:
            raise imap4.MailboxException(f"Bad mailbox name: {e}") from e
        self._names_changed(NameChange("create", name))
        return True

    def select(self, name, rw=True):
        try:
            folder = self.store.folder(self.user, name)
        except (KeyError, BadFolderName):
            return None
        return SessionMailbox(self.store, self.user, folder, bool(rw))

    def select_deferred(self, name, rw=True):
        """
        L{select}, for netsuite's SELECT and EXAMINE: the mailbox (or None: no
        such folder) at once if the folder is in memory, else a Deferred
        that fires with it once the store has read it off the reactor.
        """

        def none(f: Failure) -> None:
            f.trap(KeyError, BadFolderName)
            return None

        d = self.store.open_folder(self.user, name)
        d.addCallback(lambda folder: SessionMailbox(self.store, self.user, folder, bool(rw)))
        d.addErrback(none)
        if not d.called:
            return d
        out: list = []
        d.addBoth(out.append)
        if isinstance(out[0], Failure):
            out[0].raiseException()
        return out[0]

    def delete(self, name):
        try:
            self.store.delete_folder(self.user, name)
        except KeyError:
            raise NoSuchFolder(f"No such mailbox: {name}") from None
        except PermissionError as e:
            raise imap4.MailboxException(str(e)) from e
        except BadFolderName as e:
            raise imap4.MailboxException(f"Bad mailbox name: {e}") from e
        self._names_changed(NameChange("delete", name))
        return True

    def rename(self, oldname, newname):
        children = [] if oldname.upper() == "INBOX" else \
            [n for n in self.names() if n.startswith(oldname + DELIMITER)]
        try:
            self.store.rename_folder(self.user, oldname, newname)
        except KeyError:
            raise NoSuchFolder(f"No such mailbox: {oldname}") from None
        except FileExistsError:
            raise FolderExists(f"Mailbox already exists: {newname}") from None
        except BadFolderName as e:
            raise imap4.MailboxException(f"Bad mailbox name: {e}") from e
        if oldname.upper() == "INBOX":  # INBOX stays (emptied): the new one is created
            self._names_changed(NameChange("create", newname))
        else:
            self._names_changed(NameChange("rename", newname, oldname), *(
                NameChange("rename", newname + c[len(oldname):], c) for c in children))
        return True

    def subscribe(self, name):
        self.store.set_subscribed(self.user, name, True)
        self._names_changed(NameChange("subscribe", name))
        return True

    def unsubscribe(self, name):
        if name not in self.store.subscriptions(self.user):
            raise NoSuchFolder(f"Not subscribed: {name}")
        self.store.set_subscribed(self.user, name, False)
        self._names_changed(NameChange("unsubscribe", name))
        return True

    def status(self, name, names):
        """STATUS items; APPENDLIMIT (RFC 7889) is the account's, the rest the folder's."""
        names = list(names)
        extra = {}
        if "APPENDLIMIT" in names:
            names.remove("APPENDLIMIT")
            extra["APPENDLIMIT"] = "NIL" if self.append_limit is None else self.append_limit
        folder = self.folder(name)
        values = status(folder, names) if names else {}
        values.update(extra)
        return values

    def status_deferred(self, name, names):
        """
        L{status}, for the STATUS command: at once if the folder is in memory
        (and, for SIZE, its sizes known), else a Deferred that fires with it
        once the store has read the folder (a big folder's first open) and the
        files of unknown size off the reactor, as L{select_deferred}.
        """

        def missing(f: Failure):
            f.trap(KeyError, BadFolderName)
            if f.check(BadFolderName):
                raise imap4.MailboxException(f"Bad mailbox name: {f.value}")
            raise NoSuchFolder(f"No such mailbox: {name}")

        d = self.store.open_folder(self.user, name)
        if {"SIZE", "DELETED-STORAGE"} & {n.upper() for n in names}:
            # Sizes not known yet are read off the reactor too, not file by file in status().
            d.addCallback(lambda folder: folder.learn_sizes())
        d.addCallbacks(lambda _: self.status(name, names), missing)
        out: list = []

        def keep(result):
            out.append(result)
            return result

        d.addBoth(keep)
        if not out:  # waiting (for a thread): the caller waits on d
            return d
        d.addErrback(lambda _f: None)  # raised below instead
        if isinstance(out[0], Failure):
            out[0].raiseException()
        return out[0]

    # -- INamespacePresenter ------------------------------------------------------------

    def getPersonalNamespaces(self):
        return [["", DELIMITER]]

    def getSharedNamespaces(self):
        return None

    def getOtherNamespaces(self):
        return None

    def getUserNamespaces(self):
        return None


def canonical(name: str) -> str:
    """INBOX is case-insensitive: 'inbox' and 'Inbox' mean INBOX."""
    head, sep, rest = name.partition(DELIMITER)
    if head.upper() == "INBOX":
        return "INBOX" + sep + rest
    return name


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """LIST pattern: '*' matches anything, '%' anything but the delimiter."""
    out = []
    for c in pattern:
        if c == "*":
            out.append(".*")
        elif c == "%":
            out.append(f"[^{re.escape(DELIMITER)}]*")
        else:
            out.append(re.escape(c))
    flags = 0
    body = "".join(out)
    if pattern[:5].upper() == "INBOX" and (len(pattern) == 5 or pattern[5] in "*%."):
        body = "(?i:INBOX)" + "".join(out[5:])
    return re.compile(body + r"\Z", flags)


def pattern_matcher(pattern: str) -> Callable[[str], bool]:
    """
    A LIST pattern (stored form) as a test of stored names, both compared as
    text: one modified UTF-7 word holds several characters, so C{日本*}
    (C{&ZeVnLA-*}) must meet C{日本語} decoded, not C{&ZeVnLIqe-}.
    """
    regex = pattern_regex(to_unicode(pattern))
    return lambda name: regex.match(to_unicode(name)) is not None


def account_for(realm, user: str) -> ImapAccount:
    """What the realm hands to IMAP logins."""
    quota_for = getattr(realm, "quota_for", None)
    imap = getattr(getattr(realm, "config", None), "imap", None)
    return ImapAccount(realm.store, user, quota_for(user) if quota_for is not None else None,
                       getattr(imap, "max_message_size", None))

"""
Mail storage behind every mail protocol.

SMTP delivers through L{IMailStore.delivery}; POP3 and IMAP read the same
folders through L{IMailStore.folder} (an L{IMailFolder}: UIDs, flags, sizes,
MODSEQs, change listeners, of L{IMessage}s).  A store never knows which
protocol called it.  Each method says what it costs, so that a protocol can
tell a cheap call from one that reads a file or waits for a disk.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IDeliveryFile(Interface):
    """One message being written into one mailbox; invisible until committed."""

    def write(data: bytes) -> None:
        """Append bytes (LF line endings) to the message."""

    def commit():
        """Make the message durable and visible; a Deferred firing with its key."""

    def abort() -> None:
        """Forget the message; nothing is left behind."""


class IMailStore(Interface):
    """Where users' mailboxes live."""

    root = Attribute("Path of the store's top directory.")

    def delivery(user: str, folder: str = "INBOX") -> IDeliveryFile:
        """Start a delivery into C{user}'s INBOX, or C{folder} (made if missing: Junk)."""

    def mailbox_path(user: str):
        """The Maildir++ root of C{user}'s mailbox (a Path)."""

    def folder(user: str, name: str = "INBOX", create: bool = False):
        """
        The shared folder object (UIDs, flags, sizes, change listeners) for
        C{name}; L{KeyError} if it does not exist.  One object per folder per
        process, so every session sees every other's changes.
        """

    def open_folder(user: str, name: str = "INBOX"):
        """
        L{folder} as a Deferred: a folder that is not in memory yet is read
        without blocking the reactor (a first open of a big folder reads
        whole directories).  Fails with L{KeyError} if it does not exist.
        """

    def incoming(user: str, name: str = "INBOX"):
        """
        A message to write into a folder as it arrives, for its
        L{IMailFolder.append_many}, without reading the folder: O(1).
        L{KeyError} if it does not exist; None from a store that takes the
        message as bytes (the caller keeps it in memory, within its limits).
        """

    def list_folders(user: str) -> list:
        """Folder names, INBOX first (hierarchy delimiter '.')."""

    def create_folder(user: str, name: str) -> None:
        """L{FileExistsError} if it exists."""

    def delete_folder(user: str, name: str) -> None:
        """L{KeyError} if missing; INBOX cannot be deleted."""

    def rename_folder(user: str, old: str, new: str) -> None:
        """Children follow; renaming INBOX moves its messages."""

    def subscriptions(user: str) -> list:
        """Subscribed folder names."""

    def set_subscribed(user: str, name: str, on: bool) -> None:
        """Add or remove a subscription."""

    def ensure_special_folders(user: str) -> None:
        """Create Sent, Drafts, Trash, Junk once, at the first login."""

    def special_use(name: str):
        """The RFC 6154 attribute of a folder name, or None."""

    def usage(user: str):
        """
        (bytes, messages) in all of C{user}'s folders, for quotas: from the
        folders' indexes, summed again only for folders that changed.
        """

    def watch(folder, listener) -> None:
        """Call C{listener(folder, changes)} on every change of C{folder}."""

    def unwatch(folder, listener) -> None:
        """Stop calling C{listener}."""


class IMessage(Interface):
    """One message as a folder's index knows it (no file is read to answer these)."""

    uid = Attribute("The UID, stable for the folder's UIDVALIDITY.")
    size = Attribute("Wire (CRLF) size, or -1 until L{IMailFolder.size_of} has learned it.")
    date = Attribute("Internal date (Unix seconds), or -1 until L{IMailFolder.date_of}.")
    keywords = Attribute("Keywords (IMAP flags that are not system flags), a tuple.")
    modseq = Attribute("MODSEQ of the message's last change (RFC 7162).")
    flags = Attribute("System flags then keywords, a new list: O(flags).")

    def has(flag: str) -> bool:
        """Whether the message carries C{flag} (case-insensitive): O(flags)."""


class IMailFolder(Interface):
    """
    One folder, shared by every session of a process on it.  All methods are
    synchronous but L{append_many}, L{copy_many} and L{learn_sizes} (Deferreds); listeners
    hear every change, whoever made it (a session, another process, another
    program).  Costs below: n is the number of messages, k the number the call
    is about.
    """

    name = Attribute("The folder's name (C{INBOX} or an IMAP name, delimiter '.').")
    uidvalidity = Attribute("UIDVALIDITY: O(1).")
    next_uid = Attribute("The UID the next message will get (UIDNEXT): O(1).")
    highest_modseq = Attribute("HIGHESTMODSEQ, persistent across restarts: O(1).")
    messages = Attribute("L{IMessage}s in UID order, a list not to be changed: O(1).")
    uids = Attribute("The UIDs in ascending order, a list not to be changed: O(1).")
    keywords = Attribute("Every keyword ever seen in the folder, a set: O(1).")
    listeners = Attribute("Callables C{(folder, changes)}; see L{IMailStore.watch}.")

    def by_uid(uid: int):
        """The L{IMessage} with this UID or None: O(log n), no disk access."""

    def size_of(msg) -> int:
        """The wire size: O(1) once known, else reads the whole file once."""

    def learn_sizes():
        """
        Every unknown wire size learned, the files read off the reactor: a
        Deferred of None.  O(bytes of the messages whose size was unknown).
        """

    def date_of(msg) -> int:
        """The internal date: O(1) once known, else one stat once."""

    def bodies_ready(msgs):
        """
        None if every one of C{msgs} can be read (L{open}, L{read}) at once, as
        from a local file (Maildir: always); otherwise a Deferred that fires
        once they can (PostgreSQL: the bodies this host has not cached are
        fetched off the reactor).  A caller about to read many waits for it.
        """

    def open(msg):
        """The message file open for reading (a binary file): one open; L{KeyError} if gone."""

    def read(msg) -> bytes:
        """The message as stored (LF line ends): reads the whole file."""

    def read_wire(msg) -> bytes:
        """The message with CRLF line ends: reads the whole file."""

    def set_flags(msgs, flags, mode: int, unchanged_since=None) -> list:
        """
        Replace (0), add (1) or remove (-1) flags; the messages that changed.
        With C{unchanged_since}, messages whose MODSEQ is above it are skipped.
        Takes the folder lock; one rename per message whose system flags
        change and one change-log record each, not fsynced: O(k).
        """

    def expunge(uids) -> list:
        """Remove messages; the UIDs removed.  One unlink and one log record each: O(k)."""

    def expunged_since(modseq: int):
        """
        UIDs expunged after MODSEQ C{modseq} (RFC 7162 QRESYNC), ascending, or None
        when the folder no longer knows that far back: reads a small file, O(expunges kept).
        """

    def append(data: bytes, flags=(), date=None, notify: bool = True) -> int:
        """
        Store a message; its UID.  Writes and fsyncs the file, fsyncs the
        directory and the change log before it returns: O(size).
        """

    def incoming():
        """A message to write into tmp/ as it arrives (see L{append_incoming}): O(1)."""

    def append_incoming(incoming, flags=(), date=None, notify: bool = True) -> int:
        """Deliver a finished incoming message by rename; its UID.  Fsyncs as L{append}."""

    def append_many(items, notify: bool = True):
        """
        Store messages, all or none, off the reactor (IMAP APPEND, MULTIAPPEND):
        C{items} are (bytes or a finished L{incoming} message, flags, date).  A
        Deferred of their UIDs, fired once files, directory and log are
        fsynced (each fsync in a thread): O(total size).
        """

    def copy_to(msgs, dest):
        """
        Copy into C{dest} (hard links when possible); (source UID, new UID)
        pairs.  One link per message, one fsync of the directory and the log.
        A store that gives UIDs off the reactor (PostgreSQL) returns a
        Deferred of the pairs instead.
        """

    def copy_many(msgs, dest):
        """
        L{copy_to} off the reactor (IMAP COPY, MOVE): a Deferred of the pairs,
        fired once the directory and the log are fsynced (in a thread): O(k).
        """

    def refresh(notify: bool = True, force: bool = False):
        """
        Take in changes by others; what changed.  Three stats when nothing
        did; else O(records others wrote) plus one listdir per changed
        directory (O(n) in C) and UIDs for new files (fsynced).
        """

    def claim_recent() -> set:
        """UIDs that are \\Recent for the caller, and for no one else: O(recent)."""

    def save_if_dirty() -> None:
        """Write what is only in memory (learned sizes, \\Recent): a small log append."""

    def compact() -> None:
        """Rewrite the index whole and start a fresh log: O(n), fsyncs; done when due."""

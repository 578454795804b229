"""
Mail storage behind every mail protocol.

SMTP delivers through L{IMailStore.delivery}; POP3 and IMAP read the same
folders through L{IMailStore.folder} (L{netsuite.store.folder.Folder}: UIDs,
flags, sizes, change listeners).  A store never knows which protocol called it.
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

    def delivery(user: str) -> IDeliveryFile:
        """Start a delivery into C{user}'s INBOX."""

    def mailbox_path(user: str):
        """The Maildir++ root of C{user}'s mailbox (a Path)."""

    def folder(user: str, name: str = "INBOX", create: bool = False):
        """
        The shared folder object (UIDs, flags, sizes, change listeners) for
        C{name}; L{KeyError} if it does not exist.  One object per folder per
        process, so every session sees every other's changes.
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

    def watch(folder, listener) -> None:
        """Call C{listener(folder, changes)} on every change of C{folder}."""

    def unwatch(folder, listener) -> None:
        """Stop calling C{listener}."""

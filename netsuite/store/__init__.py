"""
Mail storage behind every mail protocol.

SMTP delivers through L{IMailStore.delivery}; POP3 and IMAP read the same
folders.  A store never knows which protocol called it.
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

"""
LMTP's avatar: the MX's local delivery, but one L{Transaction} per recipient.

SMTP answers once for the whole message, so the MX's L{Delivery} shares one
transaction among its recipients; LMTP answers once per recipient after the
data (RFC 2033 4.2), so a full mailbox refuses the message for that recipient
only and the others still get it.
"""

from __future__ import annotations

from twisted.mail import smtp
from zope.interface import implementer

from netsuite.realm import register_avatar
from netsuite.smtp.delivery import Delivery, Transaction


class ILMTPDelivery(smtp.IMessageDelivery):
    """
    An C{IMessageDelivery} whose C{validateTo} hands each recipient its own
    C{IMessage}, so that each gets its own reply after DATA.  A realm without
    it is served through its plain C{IMessageDelivery}: recipients that share
    an C{IMessage} share its reply.
    """


@implementer(ILMTPDelivery)
class LMTPDelivery(Delivery):
    """Local users and aliases only (LMTP never relays), each recipient on its own."""

    def validateTo(self, user: smtp.User):
        shared = self._tx
        assert shared is not None, "validateFrom comes first"
        self._tx = Transaction(self.realm, shared.sender, None)
        try:
            return super().validateTo(user)
        finally:
            self._tx = shared


def lmtp_delivery_for(realm, user) -> LMTPDelivery:
    """Always the anonymous, local-only delivery: an LMTP client is an MTA, not a user."""
    return LMTPDelivery(realm, None)


register_avatar(ILMTPDelivery, lmtp_delivery_for, anonymous=True)

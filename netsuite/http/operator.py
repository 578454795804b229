"""
The administrator avatar: what the status page logs in as, through the same
Portal and throttle as every protocol (a wrong password on the page counts
like one on IMAP).
"""

from __future__ import annotations

from dataclasses import dataclass

from zope.interface import Interface, implementer

from netsuite.realm import register_avatar


class IOperator(Interface):
    """A user reading the operations pages; the page checks C{[http] admins}."""


@implementer(IOperator)
@dataclass
class Operator:
    user: str


register_avatar(IOperator, lambda realm, user: Operator(user))

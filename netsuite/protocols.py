"""
The registry through which protocol packages plug into the server.

A protocol package has a C{service} module that, when imported, declares its
config section (L{netsuite.config.section}), its listeners
(L{netsuite.config.listener}) and a factory builder per listener
(L{factory}).  L{load_all} imports every package listed in L{PACKAGES}, so
adding a protocol is one line here and one package beside the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IProtocolFactory

if TYPE_CHECKING:
    from netsuite.service import ServerContext

#: Modules imported by L{load_all}, in start-up order.
PACKAGES = [
    # Not a protocol: the PostgreSQL database (netsuite db, the schema check, the
    # shared throttle), first so the throttle is in place before the others build.
    "netsuite.db.service",
    "netsuite.smtp.service",
    "netsuite.lmtp.service",
    "netsuite.mailauth.service",
    "netsuite.queue.service",
    "netsuite.pop3.service",
    "netsuite.imap.service",
    "netsuite.ftp.service",
    "netsuite.telnet.service",
    "netsuite.ssh.service",
    "netsuite.http.service",
    # Not a protocol: SIGHUP / netsuite reload, a service hook like the queue's.
    "netsuite.reload",
]

Builder = Callable[["ServerContext", str], IProtocolFactory]


@dataclass
class ListenerKind:
    """How to build the factory for one listener, and how to say 'full'."""

    build: Builder
    #: Sent, then the connection closed, when a connection cap is reached.
    busy: bytes


#: Listener name -> its L{ListenerKind}.
FACTORIES: dict[str, ListenerKind] = {}

#: Hooks called with the L{ServerContext} and the parent MultiService once
#: the portal exists: for services that are not listeners (the mail queue).
SERVICE_HOOKS: list[Callable] = []

_loaded = False


def factory(*names: str, busy: bytes) -> Callable[[Builder], Builder]:
    """Decorator: C{build(ctx, listener_name)} builds the factory for C{names}."""

    def register(build: Builder) -> Builder:
        for name in names:
            FACTORIES[name] = ListenerKind(build, busy)
        return build

    return register


def load_all() -> None:
    """Import every protocol package once; a package not yet written is skipped."""
    global _loaded
    if _loaded:
        return
    for name in PACKAGES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):
                raise
    _loaded = True

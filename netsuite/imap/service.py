"""IMAP's config section, listeners and factories."""

from __future__ import annotations

from dataclasses import dataclass

from netsuite import protocols
from netsuite.config import ConfigError, listener, positive, section
from netsuite.imap.account import IImapAccount, account_for
from netsuite.imap.server import IMAPFactory
from netsuite.realm import register_avatar
from netsuite.store.service import configure_store


@section("imap")
@dataclass
class IMAPConfig:
    """IMAP limits."""

    #: Plain-text passwords without TLS for this protocol; unset: C{server.allow_plaintext_auth}.
    allow_plaintext_auth: bool | None = None
    #: Seconds before an unauthenticated connection is closed.
    login_timeout: int = 60
    #: Seconds of silence after login before the server hangs up (RFC 3501: >= 1800).
    idle_timeout: int = 1800
    #: Longest command line in bytes (literals not counted).
    max_line_length: int = 65536
    #: Largest APPEND literal: refused before it is read.
    max_message_size: int = 50 * 1024 * 1024
    #: Largest literal in any other command (names, search strings, passwords).
    max_literal: int = 65536
    max_connections: int = 500
    max_connections_per_address: int = 50

    def validate(self) -> None:
        for name in ("login_timeout", "idle_timeout", "max_message_size", "max_literal",
                     "max_connections", "max_connections_per_address"):
            positive(name, getattr(self, name))
        if self.max_line_length < 1000:
            raise ConfigError("must be at least 1000", "max_line_length")


listener("imap", ["tcp:2143:interface=127.0.0.1"])
listener("imaps", ["tcp:2993:interface=127.0.0.1"], implicit_tls=True)


@protocols.factory("imap", "imaps", busy=b"* BYE Too many connections\r\n")
def build(ctx, name: str):
    configure_store(ctx)
    return IMAPFactory(ctx, implicit_tls=name == "imaps")


register_avatar(IImapAccount, account_for)

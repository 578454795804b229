"""POP3's config section, listeners and factories."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.mail import pop3

from netsuite import protocols
from netsuite.config import ConfigError, listener, positive, section
from netsuite.pop3.mailbox import mailbox_for
from netsuite.pop3.server import POP3Factory
from netsuite.realm import register_avatar
from netsuite.store.service import configure_store

ON_DELETE = ("expunge", "trash", "keep")


@section("pop3")
@dataclass
class POP3Config:
    """POP3 policy and limits."""

    #: Plain-text passwords without TLS for this protocol; unset: C{server.allow_plaintext_auth}.
    allow_plaintext_auth: bool | None = None
    #: Seconds of silence before the server hangs up (RFC 1939: at least 600).
    idle_timeout: int = 600
    #: Longest command line in bytes, CRLF excluded.
    max_line_length: int = 2048
    max_connections: int = 200
    max_connections_per_address: int = 20
    #: What DELE does at QUIT: "expunge" (remove), "trash" (move to Trash),
    #: "keep" (leave on the server, flagged \\Seen \\Deleted).
    on_delete: str = "expunge"
    #: Set \\Seen on messages retrieved with RETR, at QUIT (as Dovecot does).
    mark_seen: bool = True

    def validate(self) -> None:
        for name in ("idle_timeout", "max_connections", "max_connections_per_address"):
            positive(name, getattr(self, name))
        if self.max_line_length < 255:
            raise ConfigError("must be at least 255 (RFC 2449 4)", "max_line_length")
        if self.on_delete not in ON_DELETE:
            raise ConfigError(f"must be one of {', '.join(ON_DELETE)}", "on_delete")


listener("pop3", ["tcp:2110:interface=127.0.0.1"])
listener("pop3s", ["tcp:2995:interface=127.0.0.1"], implicit_tls=True)


@protocols.factory("pop3", "pop3s", busy=b"-ERR [SYS/TEMP] Too many connections\r\n")
def build(ctx, name: str):
    configure_store(ctx)
    return POP3Factory(ctx, implicit_tls=name == "pop3s")


register_avatar(pop3.IMailbox, mailbox_for)

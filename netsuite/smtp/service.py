"""SMTP's config section, listeners and factories."""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.mail import smtp

from netsuite import protocols
from netsuite.config import ConfigError, listener, positive, section
from netsuite.realm import register_avatar
from netsuite.smtp.delivery import delivery_for
from netsuite.smtp.server import SMTPFactory


@section("smtp")
@dataclass
class SMTPConfig:
    """Limits and policy for every SMTP listener."""

    #: Plain-text passwords without TLS for this protocol; unset: C{server.allow_plaintext_auth}.
    allow_plaintext_auth: bool | None = None
    #: Largest message accepted, in bytes (advertised as SIZE).
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    #: Longest command line, in bytes, CRLF included.
    max_line_length: int = 2048
    #: Seconds of silence before the server says 421 and hangs up.
    idle_timeout: int = 300
    max_connections: int = 200
    max_connections_per_address: int = 20
    #: Greeting banner text after the host name.
    banner: str = "ESMTP netsuite"
    #: Submission: an authenticated user may send only from addresses the realm
    #: says it owns (C{realm.may_send_as}), like Postfix's
    #: C{reject_sender_login_mismatch}; otherwise 553 5.7.1.  False: any sender.
    sender_login_match: bool = True
    #: Shared senders: an address, or C{"@domain"} for every address of a
    #: domain, -> the users who may also send as it (a team mailbox, a
    #: no-reply address, a user's address at a foreign provider).
    shared_senders: dict[str, list[str]] = field(default_factory=dict)

    def validate(self) -> None:
        shared = {}
        for key, users in self.shared_senders.items():
            _local, at, domain = key.rpartition("@")
            if not at or not domain or " " in key:
                raise ConfigError(f"{key!r}: expected an address or '@domain'",
                                  "shared_senders")
            shared[key.lower().rstrip(".")] = list(users)
        self.shared_senders = shared
        for name in ("max_message_size", "max_recipients", "max_line_length", "idle_timeout",
                     "max_connections", "max_connections_per_address"):
            positive(name, getattr(self, name))
        if self.max_line_length < 512:
            raise ConfigError("must be at least 512 (RFC 5321 4.5.3.1.4)", "max_line_length")


listener("smtp", ["tcp:2525:interface=127.0.0.1"])
listener("submission", ["tcp:2587:interface=127.0.0.1"])
listener("smtps", ["tcp:2465:interface=127.0.0.1"], implicit_tls=True)


@protocols.factory("smtp", "submission", "smtps",
                   busy=b"421 4.7.0 Too many connections, try again later\r\n")
def build(ctx, name: str):
    return SMTPFactory(ctx, name, submission=name != "smtp")


register_avatar(smtp.IMessageDelivery, delivery_for, anonymous=True)

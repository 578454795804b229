"""SMTP's config section, listeners and factories."""

from __future__ import annotations

from dataclasses import dataclass

from netsuite import protocols
from netsuite.config import listener, positive, section


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

    def validate(self) -> None:
        for name in ("max_message_size", "max_recipients", "max_line_length", "idle_timeout",
                     "max_connections", "max_connections_per_address"):
            positive(name, getattr(self, name))
        if self.max_line_length < 512:
            from netsuite.config import ConfigError

            raise ConfigError("must be at least 512 (RFC 5321 4.5.3.1.4)", "max_line_length")


listener("smtp", ["tcp:2525:interface=127.0.0.1"])
listener("submission", ["tcp:2587:interface=127.0.0.1"])
listener("smtps", ["tcp:2465:interface=127.0.0.1"], implicit_tls=True)


@protocols.factory("smtp", "submission", "smtps",
                   busy=b"421 4.7.0 Too many connections, try again later\r\n")
def build(ctx, name: str):
    from netsuite.smtp.server import SMTPFactory

    return SMTPFactory(ctx, name, submission=name != "smtp")

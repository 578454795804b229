"""The C{http} listener (operations: health, and what builds on it) and its C{[http]} section."""

from __future__ import annotations

from dataclasses import dataclass, field

from netsuite import protocols
from netsuite.config import ConfigError, listener, positive, section
from netsuite.http import operator as _operator  # noqa: F401  (registers the avatar)
from netsuite.http.site import OperationsSite

# Loopback only by default: what it serves is for the administrator's tools.
listener("http", ["tcp:2080:interface=127.0.0.1"])
# The same site over implicit TLS, with [tls]'s certificate; off by default.
listener("https", [], implicit_tls=True)


@section("http")
@dataclass
class HTTPConfig:
    """Caps and timeouts of the operations listener (twisted.web)."""

    max_connections: int = 100
    max_connections_per_address: int = 20
    #: Seconds an HTTP connection may stay idle (twisted.web's Site timeout).
    idle_timeout: float = 60.0
    #: Bytes a request body may have (Outlook's autodiscover POST is ~1 KiB); more: 413.
    max_body: int = 65536
    #: The host name mail clients are told to use in autoconfiguration; "": [server] hostname.
    mail_hostname: str = ""
    #: The MTA-STS policy served at /.well-known/mta-sts.txt (RFC 8461).
    mta_sts_mode: str = "testing"
    #: MX names the policy allows; empty: [server] hostname.
    mta_sts_mx: list[str] = field(default_factory=list)
    mta_sts_max_age: int = 604800
    #: Users who may read the status page from other hosts, over https with basic
    #: auth; loopback clients always may.
    admins: list[str] = field(default_factory=list)
    #: Loopback clients read the status page without a password; false behind a
    #: reverse proxy on this host (every client would look local).
    status_loopback: bool = True

    def validate(self) -> None:
        if self.mta_sts_mode not in ("enforce", "testing", "none"):
            raise ConfigError('must be "enforce", "testing" or "none"', "mta_sts_mode")
        if not 0 < self.mta_sts_max_age <= 31557600:
            raise ConfigError("must be 1 to 31557600 seconds (RFC 8461)", "mta_sts_max_age")
        positive("max_body", self.max_body)
        positive("max_connections", self.max_connections)
        positive("max_connections_per_address", self.max_connections_per_address)
        positive("idle_timeout", self.idle_timeout)


@protocols.factory("http", "https",
                   busy=b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                        b"Connection: close\r\n\r\n")
def build(ctx, name: str) -> OperationsSite:
    return OperationsSite(ctx, name, ctx.config.http.idle_timeout, ctx.config.http.max_body)

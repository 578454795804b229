"""LMTP's listener and factory; its limits are the C{[smtp]} section's."""

from __future__ import annotations

from netsuite import protocols
from netsuite.config import listener
from netsuite.lmtp import delivery as _delivery  # noqa: F401  (registers the avatar)
from netsuite.lmtp.server import LMTPFactory

# Loopback only, like the other defaults (LMTP's own port is 24); a unix
# socket is one endpoint string away: unix:/run/netsuite/lmtp.sock:mode=660.
listener("lmtp", ["tcp:2424:interface=127.0.0.1"])


@protocols.factory("lmtp", busy=b"421 4.7.0 Too many connections, try again later\r\n")
def build(ctx, name: str):
    return LMTPFactory(ctx, name)

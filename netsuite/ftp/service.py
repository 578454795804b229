"""FTP's config section, listeners and factories."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from twisted.cred import checkers, credentials
from twisted.protocols import ftp

from netsuite import protocols
from netsuite.config import ConfigError, listener, positive, section
from netsuite.ftp.data import SessionReuseUnknown, check_session_reuse_available
from netsuite.ftp.server import FTPFactory
from netsuite.ftp.shell import prepare_anonymous_root, shell_for
from netsuite.realm import register_avatar


@section("ftp")
@dataclass
class FTPConfig:
    """Policy and limits for the C{ftp} (plain / AUTH TLS) and C{ftps} (implicit) listeners."""

    #: Plain-text passwords without TLS for this protocol; unset: C{server.allow_plaintext_auth}.
    allow_plaintext_auth: bool | None = None
    #: Passive data ports: 0 and 0 mean any free port, else an inclusive range.
    passive_port_min: int = 0
    passive_port_max: int = 0
    #: IPv4 address announced in PASV replies (a server behind NAT); EPSV needs none.
    masquerade_address: str | None = None
    #: Anonymous logins (USER anonymous / ftp) are enabled only when this is set;
    #: a relative path is taken under C{server.data_dir}.  Read-only.
    anonymous_root: Path | None = None
    #: A folder inside the anonymous root where anonymous users may store new
    #: files (but not list, read, overwrite or delete them).
    anonymous_upload_dir: str | None = None
    #: Accounts must log in over TLS (AUTH TLS or implicit FTPS).  Unset: the
    #: opposite of C{allow_plaintext_auth} (so required by default).
    require_tls: bool | None = None
    #: Accounts must protect data connections too (refuse PROT C).
    require_tls_data: bool = False
    #: TLS data connections must resume the control connection's TLS session.
    require_tls_session_reuse: bool = True
    #: Highest TLS version for FTPS control and data connections.  "1.2" by
    #: default: TLS 1.3 session tickets on data connections make uploading
    #: clients (curl, lftp) reset the connection and lose the upload's tail.
    tls_max_version: str = "1.2"
    #: Seconds of silence on the control connection before 421 and hang-up.
    idle_timeout: int = 300
    #: Seconds a running data connection may stall before it is cut.
    data_timeout: int = 300
    #: Seconds to wait for a data connection to be made.
    connect_timeout: int = 60
    max_connections: int = 200
    max_connections_per_address: int = 20
    #: Failed logins on one connection before it is closed (vsftpd: 3).
    max_login_failures: int = 3
    #: Longest command line in bytes; longer ones get 500 and are skipped.
    max_line_length: int = 4096
    #: fsync uploads (and their folder) before answering 226.
    fsync_uploads: bool = True
    #: One log line per finished transfer (verb, path, bytes, user, address;
    #: vsftpd's C{xferlog_enable}).
    transfer_log: bool = True
    banner: str = "netsuite FTP server ready."

    def validate(self) -> None:
        for name in ("idle_timeout", "data_timeout", "connect_timeout", "max_connections",
                     "max_connections_per_address", "max_login_failures"):
            positive(name, getattr(self, name))
        if self.max_line_length < 512:
            raise ConfigError("must be at least 512", "max_line_length")
        lo, hi = self.passive_port_min, self.passive_port_max
        if (lo == 0) != (hi == 0):
            raise ConfigError("set both passive_port_min and passive_port_max, or neither",
                              "passive_port_min")
        if lo and not (1024 <= lo <= hi <= 65535):
            raise ConfigError(f"need 1024 <= passive_port_min <= passive_port_max <= 65535, "
                              f"got {lo}..{hi}", "passive_port_min")
        if self.masquerade_address is not None:
            try:
                addr = ipaddress.ip_address(self.masquerade_address)
            except ValueError:
                raise ConfigError(f"not an IP address: {self.masquerade_address!r}",
                                  "masquerade_address") from None
            if addr.version != 4:
                raise ConfigError("PASV announces IPv4 only; IPv6 clients use EPSV",
                                  "masquerade_address")
        if self.anonymous_upload_dir is not None:
            if self.anonymous_root is None:
                raise ConfigError("needs anonymous_root", "anonymous_upload_dir")
            parts = [p for p in self.anonymous_upload_dir.strip("/").split("/") if p]
            if not parts or any(p in (".", "..") for p in parts):
                raise ConfigError("must be a folder inside anonymous_root",
                                  "anonymous_upload_dir")
        if self.tls_max_version not in ("1.2", "1.3"):
            raise ConfigError('must be "1.2" or "1.3"', "tls_max_version")
        if "\n" in self.banner or "\r" in self.banner:
            raise ConfigError("must be one line", "banner")


listener("ftp", ["tcp:2121:interface=127.0.0.1"])
listener("ftps", ["tcp:2990:interface=127.0.0.1"], implicit_tls=True)


@protocols.factory("ftp", "ftps", busy=b"421 Too many connections, try later.\r\n")
def build(ctx, name: str):
    if ctx.config.tls.min_version == "1.3" and ctx.config.ftp.tls_max_version == "1.2":
        raise ConfigError('tls.min_version is "1.3": set ftp.tls_max_version = "1.3"',
                          "ftp.tls_max_version", ctx.config.path)

    if ctx.config.ftp.require_tls_session_reuse:
        try:
            check_session_reuse_available()
        except SessionReuseUnknown as e:
            raise ConfigError(f"{e}: set it to false, or install a pyOpenSSL that can",
                              "ftp.require_tls_session_reuse", ctx.config.path) from e

    if ctx.config.ftp.anonymous_root is not None:
        prepare_anonymous_root(ctx.config)
        # Anonymous FTP logs in through the one portal like everybody else.
        portal = ctx.portal.portal
        if credentials.IAnonymous not in portal.checkers:
            portal.registerChecker(checkers.AllowAnonymousAccess())
    return FTPFactory(ctx, implicit_tls=name == "ftps")


# The shell decides about ANONYMOUS itself: the public root, if one is configured.
register_avatar(ftp.IFTPShell, shell_for, anonymous=True)

"""SSH's config section, listener, factory and admin commands."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import transport as conch_transport
from twisted.cred import credentials

from netsuite import protocols
from netsuite.auth.passwdfile import valid_name
from netsuite.cli import command, user_action
from netsuite.config import ConfigError, listener, positive, section
from netsuite.realm import register_avatar
from netsuite.ssh import authorized, hostkeys
from netsuite.ssh.authorized import AuthorizedKeysChecker
from netsuite.ssh.server import SSHFactory, make_user

_T = conch_transport.SSHTransportBase

#: Defaults: no SHA-1 anywhere, no CBC, no finite-field groups under 3072 bits.
#: Twisted 26.10 has neither chacha20-poly1305 nor AES-GCM: AES-CTR with
#: encrypt-and-MAC HMAC-SHA2 is its strongest (and is not open to Terrapin).
DEFAULT_KEX = ["mlkem768x25519-sha256", "curve25519-sha256", "curve25519-sha256@libssh.org",
               "ecdh-sha2-nistp256", "ecdh-sha2-nistp384", "ecdh-sha2-nistp521"]
DEFAULT_CIPHERS = ["aes256-ctr", "aes192-ctr", "aes128-ctr"]
DEFAULT_MACS = ["hmac-sha2-512", "hmac-sha2-256"]
DEFAULT_HOST_KEY_ALGORITHMS = ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]


@section("ssh")
@dataclass
class SSHConfig:
    """The C{ssh} listener: host keys, authentication and the algorithm set."""

    #: Private host key files (OpenSSH format); empty: Ed25519 and RSA keys
    #: generated on first start under C{DATA/ssh/}.
    host_keys: list[Path] = field(default_factory=list)
    password_auth: bool = True
    public_key_auth: bool = True
    #: The C{sftp} subsystem on the user's FTP root.
    sftp: bool = True
    #: Seconds from connect to a completed login.
    login_timeout: float = 120.0
    #: Failed authentications on one connection before it is closed.
    max_auth_tries: int = 6
    #: Pause after a failed password (on top of the shared throttle's delay).
    fail_delay: float = 1.0
    kex_algorithms: list[str] = field(default_factory=lambda: list(DEFAULT_KEX))
    ciphers: list[str] = field(default_factory=lambda: list(DEFAULT_CIPHERS))
    macs: list[str] = field(default_factory=lambda: list(DEFAULT_MACS))
    host_key_algorithms: list[str] = field(
        default_factory=lambda: list(DEFAULT_HOST_KEY_ALGORITHMS))
    max_connections: int = 100
    max_connections_per_address: int = 10

    def validate(self) -> None:
        for name in ("login_timeout", "max_auth_tries", "max_connections",
                     "max_connections_per_address"):
            positive(name, getattr(self, name))
        if self.fail_delay < 0:
            raise ConfigError("must not be negative", "fail_delay")
        for name, known in (("kex_algorithms", _T.supportedKeyExchanges),
                            ("ciphers", _T.supportedCiphers),
                            ("macs", _T.supportedMACs),
                            ("host_key_algorithms", _T.supportedPublicKeys)):
            values = getattr(self, name)
            if not values:
                raise ConfigError("must name at least one algorithm", name)
            for i, value in enumerate(values):
                if value.encode() not in known:
                    names = ", ".join(k.decode() for k in known)
                    raise ConfigError(f"{value!r} is not supported (known: {names})",
                                      f"{name}[{i}]")


listener("ssh", ["tcp:2222:interface=127.0.0.1"])


def host_key_paths(config) -> list[Path]:
    """The configured host keys, else the generated defaults (created when missing)."""
    ssh = config.ssh
    if ssh.host_keys:
        return [p if p.is_absolute() else config.data_dir / p for p in ssh.host_keys]
    return hostkeys.ensure_default_keys(config.data_dir)


@protocols.factory("ssh", busy=b"Too many connections, try later.\r\n")
def build(ctx, name: str):
    config = ctx.config
    try:
        keys = hostkeys.load(host_key_paths(config))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load host keys: {e}", "ssh.host_keys", config.path) from e
    if not keys:
        raise ConfigError("no private host key", "ssh.host_keys", config.path)
    if config.ssh.public_key_auth:
        portal = ctx.portal.portal
        if credentials.ISSHPrivateKey not in portal.checkers:
            portal.registerChecker(AuthorizedKeysChecker(config.data_dir))
    return SSHFactory(ctx, name, keys)


register_avatar(IConchUser, make_user)


# -- admin commands -----------------------------------------------------------------


def _hostkeys_args(p) -> None:
    p.add_argument("--no-create", action="store_true",
                   help="only show existing keys; do not generate missing ones")


@command("ssh-hostkeys", _hostkeys_args)
def _show_hostkeys(args, config) -> int:
    """Print the host keys' fingerprints, as C{ssh-keygen -l} does."""
    if args.no_create and not config.ssh.host_keys:
        paths = [hostkeys.host_key_dir(config.data_dir) / n
                 for n in hostkeys.DEFAULT_FILES.values()]
        paths = [p for p in paths if p.exists()]
    else:
        paths = host_key_paths(config)
    for path in paths:
        for k in hostkeys.load([path]).values():
            print(f"{hostkeys.fingerprint(k)} {path}")
    return 0


def _keys_args(p) -> None:
    sub = p.add_subparsers(dest="keys_action", required=True)
    a = sub.add_parser("add", help="add a public key (an OpenSSH .pub line) for a user")
    a.add_argument("name")
    a.add_argument("key", nargs="?",
                   help="the key line, or a .pub file; standard input when omitted")
    sub.add_parser("list", help="list a user's keys").add_argument("name")
    d = sub.add_parser("del", help="delete a user's key by fingerprint or comment")
    d.add_argument("name")
    d.add_argument("key", help="SHA256:... fingerprint, or the key's comment")


def _keys_run(args, config) -> int:
    """C{netsuite user keys add|list|del}: the per-user keys file under DATA/ssh/."""
    name = args.name
    if not valid_name(name):
        raise SystemExit(f"netsuite: invalid user name {name!r}")
    if args.keys_action == "list":
        path = authorized.netsuite_keys_path(config.data_dir, name)
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            shown = authorized.describe(line)
            if shown:
                print(shown)
        return 0
    if args.keys_action == "add":
        key_line: str = args.key if args.key is not None else sys.stdin.readline()
        if args.key is not None and Path(key_line).is_file():
            key_line = Path(key_line).read_text().strip()
        try:
            authorized.add_key(config.data_dir, name, key_line)
        except ValueError as e:
            raise SystemExit(f"netsuite: {e}") from e
        print(f"added key for {name}: {authorized.describe(key_line.encode())}")
        return 0
    removed = authorized.delete_key(config.data_dir, name, args.key)
    if not removed:
        raise SystemExit(f"netsuite: no key {args.key!r} for {name}")
    print(f"deleted {removed} key(s) of {name}")
    return 0


user_action("keys", _keys_args, _keys_run)

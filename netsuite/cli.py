"""
The C{netsuite} administration command.

It takes the same C{--config} and C{--data-dir} as C{twistd netsuite}, so both
see one user database, one certificate and one queue.  Passwords come from a
prompt or from C{--password-stdin}, never from argv.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from netsuite import protocols
from netsuite.auth.passwdfile import PasswordFile, PasswordFileError, hash_password, valid_name
from netsuite.config import Config, ConfigError, DatabaseConfig, load
from netsuite.db import users as sql_users
from netsuite.db.errors import DatabaseUnavailable
from netsuite.db.pool import connect, safe_dsn
from netsuite.realm import make_realm
from netsuite.service import make_checkers
from netsuite.tls import default_paths, write_self_signed

#: Sub-command name -> (configure parser, run); protocol packages may add theirs.
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace, Config], int]]] = {}


def command(name: str, configure: Callable[[argparse.ArgumentParser], None]):
    def register(run):
        COMMANDS[name] = (configure, run)
        return run

    return register


#: Extra C{netsuite user ACTION} sub-commands: action -> (configure parser, run).
USER_ACTIONS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                              Callable[[argparse.Namespace, Config], int]]] = {}


def user_action(name: str, configure: Callable[[argparse.ArgumentParser], None],
                run: Callable[[argparse.Namespace, Config], int]) -> None:
    """Add C{netsuite user NAME ...} (the ssh package adds C{keys})."""
    USER_ACTIONS[name] = (configure, run)


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise SystemExit("netsuite: passwords differ")
    if not password:
        raise SystemExit("netsuite: empty password")
    return password


def _user_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    for action in ("add", "passwd"):
        a = sub.add_parser(action, help=f"{action} a user (password from a prompt)")
        a.add_argument("name")
        a.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of standard input")
    sub.add_parser("del", help="delete a user (mail and files are kept)").add_argument("name")
    sub.add_parser("list", help="list users")
    for name, (configure, _run) in USER_ACTIONS.items():
        configure(sub.add_parser(name))


class _SQLUsers:
    """The C{users} table seen through L{PasswordFile}'s few methods (the C{sql} checker's)."""

    def __init__(self, config: DatabaseConfig):
        self.config = config

    def _run(self, work: Callable[..., Any], *args: Any) -> Any:
        try:
            with connect(self.config) as conn:
                return work(conn, *args)
        except DatabaseUnavailable as e:
            raise SystemExit(f"netsuite: {e}") from None
        except psycopg.errors.UndefinedTable:
            raise SystemExit(f"netsuite: database {safe_dsn(self.config.dsn)} is not "
                             "initialised (run 'netsuite db init')") from None

    def users(self) -> list[str]:
        return self._run(sql_users.names)

    def __contains__(self, name: str) -> bool:
        return self._run(sql_users.lookup, name) is not None

    def set_password(self, name: str, password: str) -> None:
        hashed = hash_password(password)
        if not self._run(sql_users.set_password, name, hashed):
            self._run(sql_users.add, name, hashed)

    def delete(self, name: str) -> bool:
        return self._run(sql_users.delete, name)


def user_database(config: Config) -> PasswordFile | _SQLUsers:
    """Where C{netsuite user} keeps users: the C{sql} checker's table if the config names it."""
    for name in config.server.auth:
        if name == "sql" or name.startswith("sql:"):
            dsn = config.database.dsn if name == "sql" else name[4:]
            if not dsn:
                raise ConfigError("'sql' needs [database] dsn", "server.auth", config.path)
            return _SQLUsers(config.database if dsn == config.database.dsn
                             else DatabaseConfig(dsn=dsn))
    return PasswordFile(config.data_dir / "passwd")


@command("user", _user_args)
def _user(args: argparse.Namespace, config: Config) -> int:
    if args.action in USER_ACTIONS:
        return USER_ACTIONS[args.action][1](args, config)
    db = user_database(config)
    if args.action == "list":
        for name in sorted(db.users()):
            print(name)
        return 0
    name = args.name
    if not valid_name(name):
        raise SystemExit(f"netsuite: invalid user name {name!r} "
                         "(letters, digits, '._-', at most 64, not starting with '.' or '-')")
    if args.action == "del":
        if not db.delete(name):
            raise SystemExit(f"netsuite: no user {name!r}")
        print(f"deleted {name}")
        return 0
    exists = name in db
    if args.action == "add" and exists:
        raise SystemExit(f"netsuite: user {name!r} exists (use 'netsuite user passwd')")
    if args.action == "passwd" and not exists:
        raise SystemExit(f"netsuite: no user {name!r}")
    try:
        db.set_password(name, _read_password(args))
    except PasswordFileError as e:
        raise SystemExit(f"netsuite: {e}") from e
    print(f"{'added' if args.action == 'add' else 'changed password of'} {name}")
    return 0


def _cert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("hostname")
    p.add_argument("--cert", type=Path, help="certificate file (default: DATA/tls/cert.pem)")
    p.add_argument("--key", type=Path, help="key file (default: DATA/tls/key.pem)")
    p.add_argument("--days", type=int, default=825)


@command("cert", _cert_args)
def _cert(args: argparse.Namespace, config: Config) -> int:
    cert, key = default_paths(config)
    cert, key = args.cert or cert, args.key or key
    write_self_signed(args.hostname, cert, key, args.days)
    print(f"wrote {cert} and {key}")
    return 0


@command("check", lambda p: None)
def _check(args: argparse.Namespace, config: Config) -> int:
    try:
        make_realm(config)
        make_checkers(config)
    except ConfigError as e:
        e.file = e.file or (str(config.path) if config.path else None)
        raise
    print(f"{config.path or 'embedded defaults'}: OK")
    for name, eps in sorted(config.listen.items()):
        print(f"  {name}: {', '.join(eps) if eps else 'off'}")
    return 0


@command("reload", lambda p: None)
def _reload(args: argparse.Namespace, config: Config) -> int:
    """Send the running server SIGHUP (its pid is in DATA/run/listening.json)."""
    import json
    import os
    import signal

    ready = config.data_dir / "run" / "listening.json"
    try:
        pid = int(json.loads(ready.read_text())["pid"])
    except FileNotFoundError:
        raise SystemExit(f"netsuite: no server is running on {config.data_dir} "
                         f"(no {ready})") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"netsuite: cannot read the server's pid from {ready}: {e}") from e
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise SystemExit(f"netsuite: no server is running on {config.data_dir} "
                         f"(pid {pid} from {ready} is gone)") from None
    except PermissionError:
        raise SystemExit(f"netsuite: not allowed to signal pid {pid} (run as its user)") \
            from None
    print(f"sent SIGHUP to the server (pid {pid}); its log says what the reload changed")
    return 0


def parser() -> argparse.ArgumentParser:
    protocols.load_all()
    p = argparse.ArgumentParser(prog="netsuite", description="Administer a netsuite server.")
    p.add_argument("-c", "--config", help="TOML configuration file, as for twistd netsuite")
    p.add_argument("-d", "--data-dir", help="data directory, as for twistd netsuite")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (configure, _run) in COMMANDS.items():
        configure(sub.add_parser(name))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = {"server.data_dir": args.data_dir} if args.data_dir else {}
    try:
        config = load(args.config, overrides)
        return COMMANDS[args.command][1](args, config)
    except ConfigError as e:
        print(f"netsuite: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Run the imported module's main: protocol packages register their
    # sub-commands in netsuite.cli.COMMANDS, not in this __main__ copy.
    from netsuite import cli

    sys.exit(cli.main())

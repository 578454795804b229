"""
The database's place in the server and in the C{netsuite} command:

  - C{netsuite db init | migrate | status} (L{netsuite.db.schema});
  - before any port opens, a server that uses the database (C{[store] backend
    = "postgresql"}, or the C{sql} checker) checks its schema version and
    refuses to start on one it does not run on, with one line naming the
    database (without its password) and both versions;
  - with C{[store] backend = "postgresql"} the failed-login throttle
    (L{netsuite.db.throttle}) and the POP3 maildrop lock (L{netsuite.db.locks},
    as the realm's C{shared_locks}) are the database's, shared by every host.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import psycopg
from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.logger import Logger

from netsuite import protocols
from netsuite.cli import command
from netsuite.config import Config, ConfigError, DatabaseConfig
from netsuite.db import schema, users
from netsuite.db.errors import DatabaseUnavailable, SchemaMismatch
from netsuite.db.listen import notifications
from netsuite.db.locks import SessionLocks
from netsuite.db.pool import connect, database, safe_dsn
from netsuite.db.throttle import PgLoginThrottle
from netsuite.store.pg import importer as _importer  # noqa: F401  (netsuite import)
from netsuite.store.pg import store as pg_store

log = Logger(namespace="netsuite.db")


def sql_dsn(config: Config) -> str:
    """The database the C{sql} checker uses (C{sql} or C{sql:DSN} in C{server.auth}), or ''."""
    for name in config.server.auth:
        if name == "sql":
            return config.database.dsn
        if name.startswith("sql:"):
            return name[4:]
    return ""


def database_config(config: Config) -> DatabaseConfig | None:
    """The C{[database]} this server uses, or None if it uses none."""
    dsn = config.database.dsn if config.store.backend == "postgresql" else sql_dsn(config)
    if not dsn:
        return None
    if dsn == config.database.dsn:
        return config.database
    return DatabaseConfig(dsn=dsn)


def check_schema(config: Config) -> int:
    """The schema version, checked (blocking: before the reactor runs); else L{ConfigError}."""
    db = database_config(config)
    assert db is not None
    try:
        with connect(db) as conn:
            return schema.check(conn)
    except SchemaMismatch as e:
        raise ConfigError(f"database {safe_dsn(db.dsn)}: {e}", "database.dsn",
                          config.path) from None
    except DatabaseUnavailable as e:  # it names the database itself
        raise ConfigError(str(e), "database.dsn", config.path) from None


#: Seconds between looks at the C{users} table for names added or deleted elsewhere,
#: besides the notification every change sends (the safety net if one is lost).
USER_NAMES_INTERVAL = 30.0


def _mirror_user_names(ctx: Any, top: Any, dsn: str) -> None:
    """The realm's users (who may receive mail) from the C{sql} checker's table."""
    if not hasattr(ctx.realm, "users"):  # a custom realm with its own idea of users
        return
    config = ctx.config.database if dsn == ctx.config.database.dsn else DatabaseConfig(dsn=dsn)
    names = users.UserNames()
    try:
        with connect(config) as conn:
            names.update(users.names_if_changed(conn, None))
    except DatabaseUnavailable as e:
        raise ConfigError(str(e), "database.dsn", ctx.config.path) from None
    shared = database(config, ctx.reactor)

    def refresh() -> None:
        shared.run(users.names_if_changed, names.since).addCallbacks(
            names.update, lambda f: None)  # the database is away: keep the names known

    ctx.realm.users = names
    TimerService(USER_NAMES_INTERVAL, refresh).setServiceParent(top)
    told = notifications(config, ctx.reactor)

    def changed(name: str | None) -> None:
        log.debug("users changed: {name}", name=name or "(reconnected: all)")
        refresh()

    told.subscribe("netsuite_users", changed)
    _Started(told.start).setServiceParent(top)


class _Started(Service):
    """Calls C{start} when the server starts (not when it is only built to be checked)."""

    def __init__(self, start: Callable[[], None]):
        self._start = start

    def startService(self) -> None:
        super().startService()
        self._start()


def _start(ctx: Any, top: Any) -> None:
    config = ctx.config
    db = database_config(config)
    if db is None:
        return
    check_schema(config)
    dsn = sql_dsn(config)
    if dsn:
        _mirror_user_names(ctx, top, dsn)
    if config.store.backend == "postgresql":
        shared = database(db, ctx.reactor)
        ctx.portal.throttle = PgLoginThrottle(config.throttle, shared)
        ctx.realm.shared_locks = SessionLocks(shared, db.lock_lease)  # the POP3 maildrop lock
        if hasattr(ctx.realm, "data_dir"):  # mail in the database (netsuite.store.pg)
            told = notifications(db, ctx.reactor)
            pg_store.install(ctx.realm, shared, ctx.reactor, told)
            _Started(told.start).setServiceParent(top)


protocols.SERVICE_HOOKS.append(_start)


# -- netsuite db ----------------------------------------------------------------------------


def _db_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("init", help="create the schema in an empty database")
    sub.add_parser("migrate", help="apply the migrations this version has and the database "
                                   "lacks (safe on a live system)")
    sub.add_parser("status", help="the schema version, and what 'migrate' would apply "
                                  "(exit 1 unless up to date)")


@command("db", _db_args)
def _db(args: argparse.Namespace, config: Config) -> int:
    if not config.database.dsn:
        where = config.path or "the configuration"
        raise SystemExit(f"netsuite: no database: set [database] dsn in {where}")
    name = safe_dsn(config.database.dsn)
    try:
        with connect(config.database, autocommit=True) as conn:
            return _ACTIONS[args.action](conn, name)
    except DatabaseUnavailable as e:
        raise SystemExit(f"netsuite: {e}") from None
    except SchemaMismatch as e:
        raise SystemExit(f"netsuite: database {name}: {e}") from None
    except psycopg.Error as e:
        raise SystemExit(f"netsuite: database {name}: {str(e).strip()}") from None


def _init(conn: psycopg.Connection, name: str) -> int:
    found = schema.current_version(conn)
    if found is not None:
        print(f"database {name}: already initialised (schema version {found}); "
              f"'netsuite db migrate' applies newer migrations")
        return 0
    found, done = schema.upgrade(conn, create=True)
    if found is not None:  # another 'init' got there first, under the lock
        print(f"database {name}: already initialised (schema version {found})")
        return 0
    print(f"database {name}: initialised at schema version {schema.LATEST}")
    return 0


def _migrate(conn: psycopg.Connection, name: str) -> int:
    found, done = schema.upgrade(conn, create=False)
    if not done:
        print(f"database {name}: schema version {found}, up to date")
        return 0
    for migration in done:
        print(f"applied {migration.version:04d}_{migration.name}")
    print(f"database {name}: schema version {found} -> {max(found or 0, done[-1].version)}")
    return 0


def _status(conn: psycopg.Connection, name: str) -> int:
    found = schema.current_version(conn)
    print(f"database: {name}")
    print(f"schema version: {'not initialised' if found is None else found} "
          f"(this netsuite: {schema.LATEST})")
    for version, migration, when in schema.applied(conn):
        print(f"  applied {version:04d}_{migration} at {when}")
    todo = set(schema.missing(conn)) if found is not None else None
    pending = [m for m in schema.migrations() if todo is None or m.version in todo]
    for m in pending:
        print(f"  pending {m.version:04d}_{m.name}")
    if found is not None and found > schema.LATEST:
        print("newer than this netsuite knows: upgrade netsuite")
        return 1
    return 0 if found == schema.LATEST and not pending else 1


_ACTIONS = {"init": _init, "migrate": _migrate, "status": _status}

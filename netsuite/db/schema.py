"""
Versioned schema migrations: C{migrations/NNNN_name.sql}, applied in order,
each recorded in C{schema_version}.

C{netsuite db init | migrate | status} (L{netsuite.db.commands}) run them; the
server checks the version before it opens a port (L{check}) and refuses a
database that is not initialised, behind, or ahead of this code.  Every
change runs in one transaction, under an advisory lock, so
two hosts running C{migrate} at once apply each migration once (the second
waits, then finds nothing to do), and a failed migration leaves the schema as
it was.  Sessions of a running server are not disturbed: migrations add, they
do not rewrite what a running version reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from netsuite.db.errors import SchemaMismatch

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
#: pg_advisory_lock key of schema changes ("netsuite" in ASCII, as a bigint).
LOCK_KEY = int.from_bytes(b"netsuite", "big") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration shipped, in order (versions 1, 2, ... without gaps)."""
    found = []
    for path in sorted(directory.iterdir()):
        m = _NAME.match(path.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), path.read_text("utf-8")))
    for expected, migration in enumerate(found, 1):
        if migration.version != expected:
            raise RuntimeError(f"migration {migration.version} where {expected} was expected")
    return found


#: The schema version this code runs on.
LATEST = len(migrations())


def current_version(conn: psycopg.Connection) -> int | None:
    """The database's schema version; None if netsuite's schema was never created there."""
    exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return row[0] if row and row[0] is not None else 0


def applied(conn: psycopg.Connection) -> list[tuple[int, str, str]]:
    """(version, name, when applied) of every migration applied, oldest first."""
    if current_version(conn) is None:
        return []
    rows = conn.execute("SELECT version, name, applied_at::text FROM schema_version "
                        "ORDER BY version").fetchall()
    return [(v, n, t) for v, n, t in rows]


def upgrade(conn: psycopg.Connection, create: bool) -> tuple[int | None, list[Migration]]:
    """
    Apply what is missing, in one transaction under the advisory lock: the
    version found (None: not initialised) and the migrations applied.  Without
    C{create}, a database not yet initialised is an error (C{migrate} does not
    create, C{init} does); a version newer than this code's is always one.
    """
    if not conn.autocommit:
        raise ValueError("upgrade() needs an autocommit connection (it makes its own transaction)")
    # A session-level lock taken before the transaction begins: the transaction
    # then starts after any other host's schema change committed, and sees it
    # (a lock taken inside it would leave this session's catalog cache as it
    # was when the transaction began, and a second 'init' would not see the first's).
    conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        return _upgrade_locked(conn, create)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def _upgrade_locked(conn: psycopg.Connection, create: bool
                    ) -> tuple[int | None, list[Migration]]:
    with conn.transaction():
        found = current_version(conn)
        if found is None and not create:
            raise SchemaMismatch("not initialised (run 'netsuite db init')")
        if found is not None and found > LATEST:
            raise SchemaMismatch(f"schema version {found} is newer than this netsuite "
                                 f"knows ({LATEST}): upgrade netsuite")
        if found is None:
            conn.execute("CREATE TABLE schema_version (version integer PRIMARY KEY, "
                         "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        done = []
        for migration in migrations():
            if migration.version <= (found or 0):
                continue
            conn.execute(migration.sql.encode("utf-8"))  # our own files, no parameters
            conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                         (migration.version, migration.name))
            done.append(migration)
    return found, done


def check(conn: psycopg.Connection) -> int:
    """The version if this code runs on it; else L{SchemaMismatch} saying what to do."""
    found = current_version(conn)
    if found is None:
        raise SchemaMismatch(f"not initialised (run 'netsuite db init'); this netsuite "
                             f"needs schema version {LATEST}")
    if found > LATEST:
        raise SchemaMismatch(f"schema version {found} is newer than this netsuite knows "
                             f"({LATEST}): upgrade netsuite")
    if found < LATEST:
        raise SchemaMismatch(f"schema version {found}, this netsuite needs {LATEST} "
                             f"(run 'netsuite db migrate')")
    return found

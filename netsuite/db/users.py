"""
The C{users} table (the C{sql} checker's user database): units of work for
L{netsuite.db.pool.Database.run}, or for a plain connection (C{netsuite user}).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    version: int
    disabled: bool
    quota: int | None

    @property
    def token(self) -> bytes:
        """What a cached verification must still match: the row's version and hash."""
        return f"{self.version}:{self.password_hash}".encode("ascii", "replace")


def lookup(conn: psycopg.Connection, name: str) -> User | None:
    row = conn.execute("SELECT name, password_hash, version, disabled, quota FROM users "
                       "WHERE name = %s", (name,)).fetchone()
    return None if row is None else User(*row)


def names(conn: psycopg.Connection) -> list[str]:
    return [name for (name,) in conn.execute("SELECT name FROM users ORDER BY name")]


def add(conn: psycopg.Connection, name: str, password_hash: str) -> bool:
    """A new user; False if the name is taken."""
    row = conn.execute("INSERT INTO users (name, password_hash) VALUES (%s, %s) "
                       "ON CONFLICT (name) DO NOTHING RETURNING 1",
                       (name, password_hash)).fetchone()
    return row is not None


def set_password(conn: psycopg.Connection, name: str, password_hash: str) -> bool:
    """A new password (and version: every host's cache forgets the old one); False: no user."""
    row = conn.execute("UPDATE users SET password_hash = %s, version = version + 1, "
                       "updated_at = now() WHERE name = %s RETURNING 1",
                       (password_hash, name)).fetchone()
    return row is not None


def delete(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("DELETE FROM users WHERE name = %s RETURNING 1", (name,)).fetchone()
    return row is not None


def stamp(conn: psycopg.Connection) -> tuple:
    """Changes whenever a user is added, changed or deleted (cheap enough to ask often)."""
    row = conn.execute("SELECT count(*), coalesce(max(updated_at)::text, ''), "
                       "coalesce(sum(version), 0) FROM users").fetchone()
    return tuple(row) if row else ()


def names_if_changed(conn: psycopg.Connection, since: tuple | None
                     ) -> tuple[tuple, frozenset[str] | None]:
    """The table's stamp, and every name if it is not C{since} (else None)."""
    now = stamp(conn)
    if now == since:
        return now, None
    return now, frozenset(names(conn))


class UserNames:
    """
    The names in C{users}, mirrored in this process for the realm's synchronous
    C{user_exists} (is C{RCPT TO:<alice@...>} a local user?): loaded before the
    server starts, then refreshed every C{interval} seconds off the reactor
    (one small query; the names only when something changed), so a user added
    on another host receives mail here within that time.  While the database
    is away the last names known stay.
    """

    def __init__(self, names: frozenset[str] = frozenset(), since: tuple | None = None):
        self._names = names
        self._since = since

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def update(self, found: tuple[tuple, frozenset[str] | None]) -> None:
        since, names = found
        self._since = since
        if names is not None:
            self._names = names

    @property
    def since(self) -> tuple | None:
        return self._since

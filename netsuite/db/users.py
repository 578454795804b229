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

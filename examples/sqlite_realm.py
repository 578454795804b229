"""
A custom realm: mail routing from a SQLite file.

Everything but routing is inherited from the built-in realm (passwords from
the password file, Maildirs, FTP roots, terminals).  Enable it with::

    [server]
    realm = "sqlite_realm:SQLiteRealm"     # examples/ on PYTHONPATH

    [realm]
    database = "/var/lib/netsuite/routing.sqlite"

The database has one table::

    CREATE TABLE routes (address TEXT PRIMARY KEY, mailbox TEXT NOT NULL);
    -- 'sales@example.org' -> 'alice'      one address to one mailbox
    -- 'sales@example.org' can appear once; use several rows for fan-out
    --                                       by listing 'team' rows below
    -- '@shop.example'     -> 'bob'        a catch-all for a domain

Addresses are matched case-insensitively; an address with no row falls back
to the built-in rules (users and aliases).
"""

from __future__ import annotations

import sqlite3

from netsuite.config import ConfigError
from netsuite.realm import NetsuiteRealm


class SQLiteRealm(NetsuiteRealm):
    def __init__(self, config):
        super().__init__(config)
        database = config.realm_options.get("database")
        if not isinstance(database, str):
            raise ConfigError("set the SQLite routing file", "realm.database")
        # Read-only, and opened per lookup: the file may be edited while we run.
        self.database = database
        self._lookup("probe@invalid")  # fail at start-up, not at the first RCPT

    def _lookup(self, key: str) -> list[str]:
        try:
            with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True) as db:
                rows = db.execute("SELECT mailbox FROM routes WHERE address = ?",
                                  (key.lower(),)).fetchall()
        except sqlite3.Error as e:
            raise ConfigError(f"{self.database}: {e}", "realm.database") from e
        return [r[0] for r in rows]

    def resolve_local(self, localpart: str, domain: str) -> list[str]:
        mailboxes = self._lookup(f"{localpart}@{domain}") or self._lookup(f"@{domain}")
        if not mailboxes:
            return super().resolve_local(localpart, domain)
        found: list[str] = []
        for box in mailboxes:
            for user in super().resolve_local(box, domain):
                if user not in found:
                    found.append(user)
        return found

"""The database's failures as the rest of netsuite sees them (no psycopg needed here)."""

from __future__ import annotations


class DatabaseUnavailable(Exception):
    """
    The database could not be reached (or was lost and not regained within the
    retries): a temporary condition.  A protocol answers it with its "try again
    later" (SMTP C{451 4.3.0}, IMAP C{NO [UNAVAILABLE]}, POP3 C{-ERR [SYS/TEMP]}),
    never as a wrong password, and the login throttle does not count it.
    """


class SchemaMismatch(Exception):
    """The database's schema is not one this version of netsuite runs on."""

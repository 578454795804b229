"""
The PostgreSQL database that several netsuite hosts share (docs/scale-out.md).

  - L{netsuite.db.errors}: L{DatabaseUnavailable}, the temporary failure the
    protocols answer with C{451 4.3.0} / C{NO [UNAVAILABLE]} / C{-ERR [SYS/TEMP]};
  - L{netsuite.db.pool}: connections off the reactor thread (psycopg 3's pool
    on threads of its own), retried with backoff when a connection is lost;
  - L{netsuite.db.schema}: versioned migrations and the start-up check.

Everything that needs psycopg is imported from here only when a database is
configured: the C{postgresql} extra is optional.
"""

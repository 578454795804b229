"""
The mail store in PostgreSQL (C{[store] backend = "postgresql"}): the same
L{netsuite.store.IMailStore} / L{netsuite.store.IMailFolder} interfaces as the
Maildir store, so that several hosts share one mail system (docs/scale-out.md,
"Mail in PostgreSQL").

  - L{netsuite.store.pg.sql}: the transactions (UIDs and MODSEQs allocated on
    the folder row, bodies once per content hash), run on the database's threads;
  - L{netsuite.store.pg.blobs}: bodies, in the database and cached on local disk;
  - L{netsuite.store.pg.folder}: a folder as an in-memory mirror of its rows,
    changed at once and written through in order;
  - L{netsuite.store.pg.store}: the store, the accounts' mirrors, deliveries;
  - L{netsuite.store.pg.listen}: LISTEN/NOTIFY, so that a change on one host
    reaches the sessions of every other within a second.

It lives under C{netsuite.store} (not C{netsuite.db}) because it is a store,
beside the Maildir one, and the protocols see it only through the store's
interfaces; it uses C{netsuite.db} for connections as the checker does.
"""

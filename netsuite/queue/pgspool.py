"""
The outgoing queue in PostgreSQL (C{[store] backend = "postgresql"}): one
queue for every host on the database (docs/scale-out.md, "The outgoing queue
in PostgreSQL"; tables in C{netsuite/db/migrations/0003_queue.sql}).

A message accepted for relaying is inserted, with its recipients, in one
transaction before SMTP answers 250, already claimed by the accepting process
(C{claimed_by}, C{lease_until}) so that it makes the first attempt itself.
Afterwards any process on any host claims due messages with C{SELECT ... FOR
UPDATE SKIP LOCKED} (two claimers never get the same row) and holds them by a
lease of C{[database] lock_lease} seconds on the database's clock, renewed
every third of it while it delivers (L{PgSpool.renew}).  A host that dies
leaves its messages to be claimed by another once the lease has passed; one
that is alive never loses them, so no message goes out twice from two live
hosts.  A remote's 250 marks its recipients sent at once (L{PgSpool.record_sent}),
so whoever takes a message over sends only to those still pending.

Every method that touches the database returns a Deferred from
L{netsuite.db.pool.Database.run} (threads of its own, never the reactor's);
the C{*_blocking} functions take a connection, for the C{netsuite queue} command.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from pathlib import Path
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from netsuite.db.pool import Database
from netsuite.queue.spool import PENDING, SENT, Envelope, ISharedQueueSpool, Recipient
from netsuite.store.maildir import clean_tmp_dir

_RECEIVED_ID = re.compile(rb" id ([0-9A-F]{8,32})\b")

_MESSAGE_COLUMNS = ("id, sender, user_name, created, size, hops, eightbit, attempts, "
                    "next_attempt, last_error, warned")
_RECIPIENT_COLUMNS = ("address, state, attempts, last_error, status, remote, last_attempt, "
                      "reported")


def holder_id() -> str:
    """This process's name in C{claimed_by}: host, pid and a nonce (a restart is a new holder)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _envelope(row: tuple, recipients: list[tuple]) -> Envelope:
    (qid, sender, user, created, size, hops, eightbit, attempts, next_attempt, last_error,
     warned) = row
    return Envelope(id=qid, sender=sender, user=user, created=created, size=size, hops=hops,
                    eightbit=eightbit, attempts=attempts, next_attempt=next_attempt,
                    last_error=last_error, warned=warned,
                    recipients=[Recipient(*r) for r in recipients])


def _recipients(conn: Any, qids: list[str]) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {q: [] for q in qids}
    rows = conn.execute(f"SELECT message_id, {_RECIPIENT_COLUMNS} FROM queue_recipients "
                        "WHERE message_id = ANY(%s) ORDER BY message_id, position",
                        (qids,)).fetchall()
    for row in rows:
        out[row[0]].append(row[1:])
    return out


# -- blocking units of work (run on a database thread, or by the admin command) ---------------


def _insert(conn: Any, env: Envelope, body: bytes, holder: str, lease: float) -> bool:
    with conn.transaction():
        row = conn.execute(
            f"INSERT INTO queue_messages ({_MESSAGE_COLUMNS}, body, claimed_by, lease_until) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
            "now() + make_interval(secs => %s)) ON CONFLICT (id) DO NOTHING RETURNING 1",
            (env.id, env.sender, env.user, env.created, env.size, env.hops, env.eightbit,
             env.attempts, env.next_attempt, env.last_error, env.warned, body, holder,
             lease)).fetchone()
        if row is None:
            return False
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO queue_recipients (message_id, position, {_RECIPIENT_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(env.id, i, r.address, r.state, r.attempts, r.last_error, r.status, r.remote,
                  r.last_attempt, r.reported) for i, r in enumerate(env.recipients)])
    return True


def _commit(conn: Any, env: Envelope, message: bytes, spilled: Path | None, prefix: bytes,
            holder: str, lease: float) -> None:
    body = prefix + (spilled.read_bytes() if spilled is not None else b"") + message
    while not _insert(conn, env, body, holder, lease):
        env.id = secrets.token_hex(6).upper()  # the Received header's id is taken: a fresh one
    if spilled is not None:
        spilled.unlink(missing_ok=True)


def _record_sent(conn: Any, qid: str, addresses: list[str]) -> None:
    conn.execute("UPDATE queue_recipients SET state = %s WHERE message_id = %s "
                 "AND address = ANY(%s) AND state = %s", (SENT, qid, addresses, PENDING))


def _update(conn: Any, env: Envelope, holder: str) -> bool:
    """Save the attempt's outcome and give up the claim; False if the row is not ours now."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE queue_messages SET attempts = %s, next_attempt = %s, last_error = %s, "
            "warned = %s, claimed_by = NULL, lease_until = NULL "
            "WHERE id = %s AND claimed_by = %s RETURNING 1",
            (env.attempts, env.next_attempt, env.last_error, env.warned, env.id,
             holder)).fetchone()
        if row is None:
            return False
        with conn.cursor() as cur:
            # A recipient already marked sent (record_sent) stays sent.
            cur.executemany(
                "UPDATE queue_recipients SET state = CASE WHEN state = 'sent' THEN state "
                "ELSE %s END, attempts = %s, last_error = %s, status = %s, remote = %s, "
                "last_attempt = %s, reported = %s WHERE message_id = %s AND position = %s",
                [(r.state, r.attempts, r.last_error, r.status, r.remote, r.last_attempt,
                  r.reported, env.id, i) for i, r in enumerate(env.recipients)])
    return True


def _body(conn: Any, qid: str) -> bytes:
    row = conn.execute("SELECT body FROM queue_messages WHERE id = %s", (qid,)).fetchone()
    if row is None:
        raise OSError(f"message {qid} is no longer queued")
    return bytes(row[0])


def _remove(conn: Any, qid: str) -> bool:
    return conn.execute("DELETE FROM queue_messages WHERE id = %s RETURNING 1",
                        (qid,)).fetchone() is not None


def _claim(conn: Any, holder: str, lease: float, limit: int, now: float, others: bool
           ) -> list[tuple[Envelope, bytes]]:
    mine = "" if others else "AND (claimed_by IS NULL OR claimed_by = %(holder)s) "
    with conn.transaction():
        rows = conn.execute(
            "UPDATE queue_messages SET claimed_by = %(holder)s, "
            "lease_until = now() + make_interval(secs => %(lease)s) WHERE id IN ("
            "SELECT id FROM queue_messages WHERE next_attempt <= %(now)s "
            f"AND (lease_until IS NULL OR lease_until < now()) {mine}ORDER BY next_attempt "
            "LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
            f"RETURNING {_MESSAGE_COLUMNS}, body",
            {"holder": holder, "lease": lease, "now": now, "limit": limit}).fetchall()
        recipients = _recipients(conn, [r[0] for r in rows])
    return [(_envelope(r[:-1], recipients[r[0]]), bytes(r[-1])) for r in rows]


def _renew(conn: Any, holder: str, qids: list[str], lease: float) -> list[str]:
    """Push the lease of C{qids} forward; the ids still ours."""
    rows = conn.execute("UPDATE queue_messages SET lease_until = now() + "
                        "make_interval(secs => %s) WHERE claimed_by = %s AND id = ANY(%s) "
                        "RETURNING id", (lease, holder, qids)).fetchall()
    return [r[0] for r in rows]


def _release(conn: Any, holder: str) -> None:
    conn.execute("UPDATE queue_messages SET claimed_by = NULL, lease_until = NULL "
                 "WHERE claimed_by = %s", (holder,))


def _depth(conn: Any) -> tuple[dict[str, int], float | None]:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE lease_until > now()), "
        "count(*) FILTER (WHERE (lease_until IS NULL OR lease_until <= now()) "
        "AND attempts = 0), "
        "count(*) FILTER (WHERE (lease_until IS NULL OR lease_until <= now()) "
        "AND attempts > 0), min(created) FROM queue_messages").fetchone()
    return {"active": row[0], "new": row[1], "deferred": row[2]}, row[3]


def list_blocking(conn: Any) -> list[Envelope]:
    """Every queued envelope, oldest first (C{netsuite queue list})."""
    rows = conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM queue_messages "
                        "ORDER BY created, id").fetchall()
    recipients = _recipients(conn, [r[0] for r in rows])
    return [_envelope(r, recipients[r[0]]) for r in rows]


def load_blocking(conn: Any, qid: str) -> tuple[Envelope, bytes, str | None] | None:
    """(envelope, message, claimed by) of C{qid}, or None (C{netsuite queue show})."""
    row = conn.execute(f"SELECT {_MESSAGE_COLUMNS}, body, claimed_by FROM queue_messages "
                       "WHERE id = %s", (qid,)).fetchone()
    if row is None:
        return None
    return _envelope(row[:-2], _recipients(conn, [qid])[qid]), bytes(row[-2]), row[-1]


def flush_blocking(conn: Any, qid: str | None) -> int:
    """Make one or every message due now; how many (any host's runner takes them)."""
    if qid is None:
        return conn.execute("UPDATE queue_messages SET next_attempt = 0").rowcount
    return conn.execute("UPDATE queue_messages SET next_attempt = 0 WHERE id = %s",
                        (qid,)).rowcount


def delete_blocking(conn: Any, qid: str) -> bool:
    """
    Remove a message; a host delivering it at that moment finds it gone when it
    saves the attempt (its update matches no row) and forgets it.
    """
    return _remove(conn, qid)


# -- the spool the runner uses -----------------------------------------------------------------


@implementer(ISharedQueueSpool)
class PgSpool:
    """The queue's rows in C{db}, as one process (C{holder}) sees them."""

    #: Several processes share these messages: the runner keeps only what it claimed.
    shared = True

    def __init__(self, db: Database, root: Path, lease: float, holder: str | None = None):
        self.db = db
        self.lease = lease
        self.holder = holder or holder_id()
        #: Big messages are spilled here while they arrive (local to this host).
        self.tmp = Path(root) / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True, mode=0o700)

    def new_id(self, hint: bytes = b"") -> str:
        """The id from the Received header in C{hint}, else a fresh one (unique on insert)."""
        m = _RECEIVED_ID.search(hint)
        return m.group(1).decode() if m else secrets.token_hex(6).upper()

    def accept(self, env: Envelope, message: bytes = b"", spilled: Path | None = None,
               prefix: bytes = b"", hint: bytes = b"") -> defer.Deferred:
        """Insert C{env} claimed by this process; fires once committed (then SMTP says 250)."""
        env.id = self.new_id(hint)
        return self.db.run(_commit, env, message, spilled, prefix, self.holder, self.lease)

    def mark_sent(self, env: Envelope, addresses: list[str]) -> defer.Deferred:
        """A remote's 250 for C{addresses}: they are sent, whoever takes the message over."""
        return self.db.run(_record_sent, env.id, addresses)

    def body(self, qid: str) -> defer.Deferred:
        """The message as queued (a big one, spilled while it arrived, for its first attempt)."""
        return self.db.run(_body, qid)

    def save(self, env: Envelope) -> defer.Deferred:
        return self.db.run(_update, env, self.holder)

    def discard(self, qid: str) -> defer.Deferred:
        return self.db.run(_remove, qid)

    def claim(self, limit: int, now: float, others: bool = True) -> defer.Deferred:
        """
        Up to C{limit} due messages no live process holds: [(envelope, message)].
        Without C{others}, only unclaimed ones and this process's own (just after
        an outage, when every lease has lapsed, not only a dead host's).
        """
        return self.db.run(_claim, self.holder, self.lease, limit, now, others)

    def renew(self, qids: list[str]) -> defer.Deferred:
        return self.db.run(_renew, self.holder, qids, self.lease)

    def depth(self) -> defer.Deferred:
        """
        The whole queue's depth for the metrics: ({"active": claimed, "new", "deferred"},
        the oldest arrival or None).
        """
        return self.db.run(_depth)

    def release(self) -> defer.Deferred:
        """Give up every claim (at shutdown: another host need not wait for the lease)."""
        return self.db.run(_release, self.holder)

    def clean_tmp(self, max_age: float, now: float | None = None) -> int:
        return clean_tmp_dir(self.tmp, max_age, now)

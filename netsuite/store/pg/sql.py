"""
The PostgreSQL mail store's transactions: each is C{work(conn, ...)} for
L{netsuite.db.pool.Database.run}, run on a database thread in one transaction
(so it may be run again after a lost connection).

Every change to a folder starts with an C{UPDATE folders ... RETURNING} on the
folder's row: that row lock orders the changes of every host, and it is where
UIDs (C{uidnext}) and MODSEQs (C{highestmodseq}) are given, so no UID is given
twice and UIDs and MODSEQs ascend in commit order.  Each change ends with a
C{pg_notify} on L{CHANNEL} (sent at commit) that every host LISTENs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netsuite.store.folder import wire_size
from netsuite.store.pg.blobs import IBlobStore, content_hash, file_hash

#: The NOTIFY channel; payloads C{f FOLDER_ID MODSEQ} (a folder changed) and
#: C{a ACCOUNT_ID} (an account's folders or subscriptions changed).
CHANNEL = "netsuite_mail"

#: Folders made at the first login, with their RFC 6154 attribute.
SPECIAL_FOLDERS = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash",
                   "Junk": "\\Junk"}

#: How many expunges a folder's mirror keeps for QRESYNC (older ones: every missing UID).
EXPUNGES_KEPT = 10000

_MSG_COLUMNS = ("uid, modseq, flags, keywords, extract(epoch FROM internaldate)::bigint, "
                "size, content_hash, email_id, extract(epoch FROM saved_at)::bigint")


class FolderMissing(KeyError):
    """The folder row is gone (deleted, on this host or another)."""


@dataclass
class Delta:
    """A folder's rows changed after a MODSEQ, read in one transaction."""

    uidvalidity: int
    uidnext: int
    highestmodseq: int
    #: (uid, modseq, flags, keywords, date, size, hash, email id, saved) ascending by UID.
    rows: list[tuple]
    #: (uid, modseq) of expunges after the MODSEQ.
    gone: list[tuple[int, int]]
    #: On a first load: whether older expunges were left out (L{EXPUNGES_KEPT}).
    truncated: bool = False
    #: UIDs from this one on are \\Recent for the next session to claim them.
    first_recent: int = 1


def notify_folder(conn: Any, folder_id: int, modseq: int) -> None:
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"f {folder_id} {modseq}"))


def notify_account(conn: Any, account_id: int) -> None:
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"a {account_id}"))


# -- accounts and folders ----------------------------------------------------------------


def account_id(conn: Any, user: str) -> int:
    """The account's id, the row made if missing."""
    row = conn.execute("SELECT id FROM accounts WHERE name = %s", (user,)).fetchone()
    if row:
        return row[0]
    conn.execute("INSERT INTO accounts (name) VALUES (%s) ON CONFLICT (name) DO NOTHING",
                 (user,))
    return conn.execute("SELECT id FROM accounts WHERE name = %s", (user,)).fetchone()[0]


def ensure_folder(conn: Any, aid: int, name: str, special: str | None = None,
                  subscribe: bool = False) -> int:
    """The folder's id, made if missing (with a fresh UIDVALIDITY)."""
    row = conn.execute("SELECT id FROM folders WHERE account_id = %s AND name = %s",
                       (aid, name)).fetchone()
    if row:
        return row[0]
    return create_folder(conn, aid, name, special, subscribe, exist_ok=True)


def create_folder(conn: Any, aid: int, name: str, special: str | None = None,
                  subscribe: bool = False, exist_ok: bool = False) -> int:
    """
    A new folder's id.  UIDVALIDITY is the account's next (strictly increasing,
    at least the clock), never one a deleted folder had; the account row's lock
    orders two hosts making folders at once.
    """
    uidvalidity = conn.execute(
        "UPDATE accounts SET last_uidvalidity = GREATEST(last_uidvalidity + 1, "
        "extract(epoch FROM now())::bigint) WHERE id = %s RETURNING last_uidvalidity",
        (aid,)).fetchone()[0]
    row = conn.execute(
        "INSERT INTO folders (account_id, name, uidvalidity, special_use) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (account_id, name) DO NOTHING RETURNING id",
        (aid, name, uidvalidity, special)).fetchone()
    if row is None:
        if not exist_ok:
            raise FileExistsError(name)
        row = conn.execute("SELECT id FROM folders WHERE account_id = %s AND name = %s",
                           (aid, name)).fetchone()
    if subscribe:
        conn.execute("INSERT INTO subscriptions (account_id, name) VALUES (%s, %s) "
                     "ON CONFLICT DO NOTHING", (aid, name))
    notify_account(conn, aid)
    return row[0]


@dataclass
class AccountRows:
    id: int
    #: name -> (folder id, uidvalidity, special_use)
    folders: dict[str, tuple[int, int, str | None]]
    subscriptions: list[str]
    usage: tuple[int, int]


def prepare_account(conn: Any, user: str) -> AccountRows:
    """At a login: the account, its INBOX and (once) its special folders; then its rows."""
    aid = account_id(conn, user)
    ensure_folder(conn, aid, "INBOX")
    made = conn.execute("SELECT specials_made FROM accounts WHERE id = %s FOR UPDATE",
                        (aid,)).fetchone()[0]
    if not made:
        for name, special in SPECIAL_FOLDERS.items():
            ensure_folder(conn, aid, name, special, subscribe=True)
        conn.execute("UPDATE accounts SET specials_made = true WHERE id = %s", (aid,))
    return account_rows(conn, aid)


def account_rows(conn: Any, aid: int) -> AccountRows:
    folders = {name: (fid, uv, special) for fid, name, uv, special in conn.execute(
        "SELECT id, name, uidvalidity, special_use FROM folders WHERE account_id = %s",
        (aid,)).fetchall()}
    subs = [r[0] for r in conn.execute(
        "SELECT name FROM subscriptions WHERE account_id = %s ORDER BY name", (aid,))]
    usage = conn.execute(
        "SELECT coalesce(sum(m.size), 0), count(m.uid) FROM messages m JOIN folders f "
        "ON f.id = m.folder_id WHERE f.account_id = %s", (aid,)).fetchone()
    return AccountRows(aid, folders, subs, (int(usage[0]), int(usage[1])))


def delete_folder(conn: Any, blobs: IBlobStore, aid: int, name: str) -> None:
    row = conn.execute("SELECT id FROM folders WHERE account_id = %s AND name = %s "
                       "FOR UPDATE", (aid, name)).fetchone()
    if row is None:
        return
    hashes = [bytes(h) for (h,) in conn.execute(
        "SELECT content_hash FROM messages WHERE folder_id = %s", (row[0],))]
    conn.execute("DELETE FROM folders WHERE id = %s", (row[0],))  # messages cascade
    blobs.release(conn, hashes)
    notify_account(conn, aid)


def rename_folder(conn: Any, aid: int, old: str, new: str) -> None:
    """The folder and its children renamed (ids, UIDs and UIDVALIDITY kept)."""
    conn.execute("UPDATE folders SET name = %s || substr(name, %s) WHERE account_id = %s "
                 "AND (name = %s OR name LIKE %s)",
                 (new, len(old) + 1, aid, old, _like_prefix(old + ".")))
    notify_account(conn, aid)


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def set_subscribed(conn: Any, aid: int, name: str, on: bool) -> None:
    if on:
        conn.execute("INSERT INTO subscriptions (account_id, name) VALUES (%s, %s) "
                     "ON CONFLICT DO NOTHING", (aid, name))
    else:
        conn.execute("DELETE FROM subscriptions WHERE account_id = %s AND name = %s",
                     (aid, name))
    notify_account(conn, aid)


# -- a folder's rows -------------------------------------------------------------------------


def delta(conn: Any, folder_id: int, since: int, first: bool = False, rows: bool = True,
          gone: bool = True) -> Delta:
    """
    What changed after MODSEQ C{since}.  The folder row is read first: every
    change up to its C{highestmodseq} is committed (a change holds the row until
    its commit), so the mirror may take that as the MODSEQ it is complete up to.
    """
    row = conn.execute("SELECT uidvalidity, uidnext, highestmodseq, first_recent FROM folders "
                       "WHERE id = %s", (folder_id,)).fetchone()
    if row is None:
        raise FolderMissing(folder_id)
    found = conn.execute(f"SELECT {_MSG_COLUMNS} FROM messages WHERE folder_id = %s "
                         "AND modseq > %s ORDER BY uid", (folder_id, since)).fetchall() \
        if rows else []
    truncated = False
    if not gone:  # (the caller knows there are none: its own change was the only one)
        expunges = []
    elif first:
        expunges = conn.execute("SELECT uid, modseq FROM expunged WHERE folder_id = %s "
                                "ORDER BY modseq DESC LIMIT %s",
                                (folder_id, EXPUNGES_KEPT + 1)).fetchall()
        truncated = len(expunges) > EXPUNGES_KEPT
        expunges = expunges[:EXPUNGES_KEPT]
    else:
        expunges = conn.execute("SELECT uid, modseq FROM expunged WHERE folder_id = %s "
                                "AND modseq > %s", (folder_id, since)).fetchall()
    return Delta(row[0], row[1], row[2], [_message_row(r) for r in found],
                 sorted((int(u), int(m)) for u, m in expunges), truncated, row[3])


class LaterDelta:
    """A read of a folder's changes asked for by a work, made once at its batch's end."""

    def __init__(self, folder_id: int, since: int, rows: bool, gone: bool, then=None):
        self.folder_id = folder_id
        self.since = since
        self.rows = rows
        self.gone = gone
        self.then = then
        self.delta: Delta | None = None


def resolve_later(conn: Any, later: list[LaterDelta]) -> None:
    """Each folder's L{delta} once for all of C{later} that name it (the oldest C{since})."""
    by_folder: dict[int, list[LaterDelta]] = {}
    for item in later:
        by_folder.setdefault(item.folder_id, []).append(item)
    for fid, items in by_folder.items():
        found = delta(conn, fid, min(i.since for i in items),
                      rows=any(i.rows for i in items), gone=any(i.gone for i in items))
        for item in items:
            item.delta = found
            if item.then is not None:
                item.then(conn, found)


def claim_recent(conn: Any, folder_id: int, first_recent: int) -> None:
    conn.execute("UPDATE folders SET first_recent = GREATEST(first_recent, %s) WHERE id = %s",
                 (first_recent, folder_id))


def _message_row(r: tuple) -> tuple:
    uid, modseq, flags, keywords, date, size, digest, email_id, saved = r
    return (uid, modseq, tuple(flags), tuple(keywords), int(date), size, bytes(digest),
            email_id, int(saved))


def _allocate(conn: Any, folder_id: int, n: int, at_least: int = 0) -> tuple[int, int]:
    """C{n} UIDs (the first) and one MODSEQ, under the folder row's lock; the NOTIFY."""
    # The NOTIFY (sent at commit) in the same statement: one round trip fewer per change.
    row = conn.execute(
        "UPDATE folders SET uidnext = uidnext + %s, "
        "highestmodseq = GREATEST(highestmodseq + 1, %s) WHERE id = %s "
        "RETURNING uidnext - %s, highestmodseq, pg_notify(%s, 'f ' || id || ' ' || highestmodseq)",
        (n, at_least, folder_id, n, CHANNEL)).fetchone()
    if row is None:
        raise FolderMissing(folder_id)
    return row[0], row[1]


def split_flags(flags) -> tuple[list[str], list[str]]:
    """(system flags, keywords) of IMAP flags, \\Recent left out."""
    system, keywords = [], []
    for f in flags:
        low = f.lower()
        if low == "\\recent":
            continue
        if f.startswith("\\"):
            name = "\\" + low[1:].capitalize()
            if name not in system:
                system.append(name)
        elif f not in keywords:
            keywords.append(f)
    return sorted(system), keywords


def store_body(conn: Any, blobs: IBlobStore, body: bytes | Path) -> bytes:
    """
    One more reference to a body (LF line ends), given as bytes or as a file
    (sent a chunk at a time, never whole in memory): its content hash.
    """
    if isinstance(body, bytes):
        digest = content_hash(body)
        blobs.put(conn, digest, body)
        return digest
    digest, length = file_hash(body)
    blobs.put_file(conn, digest, length, body)
    return digest


def insert_rows(conn: Any, folder_id: int,
                rows: list[tuple[bytes, int, Any, float | None]]) -> tuple[list[int], int]:
    """Messages whose bodies are stored: (digest, wire size, flags, date) each; (UIDs, MODSEQ)."""
    first, modseq = _allocate(conn, folder_id, len(rows))
    uids = list(range(first, first + len(rows)))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO messages (folder_id, uid, modseq, flags, keywords, internaldate, size, "
            "content_hash) VALUES (%s, %s, %s, %s, %s, "
            "coalesce(to_timestamp(%s), now()), %s, %s)",
            [(folder_id, uid, modseq, *split_flags(flags), date, size, digest)
             for uid, (digest, size, flags, date) in zip(uids, rows, strict=True)])
    return uids, modseq


def deliver(conn: Any, blobs: IBlobStore, user: str, folder: str, body: bytes) -> str:
    """One delivery (SMTP, LMTP), the folder made if missing; the key 'FOLDER_ID:UID'."""
    return deliver_stored(conn, user, folder, store_body(conn, blobs, body), wire_size(body))


def deliver_stored(conn: Any, user: str, folder: str, digest: bytes, size: int) -> str:
    """L{deliver} of a body already stored (C{size}: on the wire)."""
    # Both ids in one round trip when they exist (every delivery but a user's first).
    row = conn.execute("SELECT a.id, f.id FROM accounts a LEFT JOIN folders f ON "
                       "f.account_id = a.id AND f.name = %s WHERE a.name = %s",
                       (folder, user)).fetchone()
    if row is not None and row[1] is not None:
        uids, _modseq = insert_rows(conn, row[1], [(digest, size, (), None)])
        return f"{row[1]}:{uids[0]}"
    aid = row[0] if row is not None else account_id(conn, user)
    if folder == "INBOX":
        fid = ensure_folder(conn, aid, folder)
    else:
        fid = ensure_folder(conn, aid, folder, SPECIAL_FOLDERS.get(folder), subscribe=True)
    uids, _modseq = insert_rows(conn, fid, [(digest, size, (), None)])
    return f"{fid}:{uids[0]}"


def set_flags(conn: Any, folder_id: int, uids: list[int], system: list[str],
              keywords: list[str], mode: int, at_least: int) -> int:
    """
    Replace (0), add (1) or remove (-1) flags of C{uids} as one change: what
    another host changed meanwhile on other flags is kept (the change is
    applied to the rows, not copied from this host's mirror).  Its MODSEQ: at
    least C{at_least}, the one the mirror showed already.
    """
    _first, modseq = _allocate(conn, folder_id, 0, at_least)
    if mode == 0:
        sets = "flags = %s::text[], keywords = %s::text[]"
    elif mode > 0:
        sets = ("flags = ARRAY(SELECT DISTINCT x FROM unnest(flags || %s::text[]) x ORDER BY x), "
                "keywords = ARRAY(SELECT x FROM unnest(keywords) x UNION "
                "SELECT y FROM unnest(%s::text[]) y)")
    else:
        sets = ("flags = ARRAY(SELECT x FROM unnest(flags) x WHERE x <> ALL(%s::text[]) "
                "ORDER BY x), keywords = ARRAY(SELECT x FROM unnest(keywords) x "
                "WHERE lower(x) <> ALL(SELECT lower(y) FROM unnest(%s::text[]) y))")
    conn.execute(f"UPDATE messages SET {sets}, modseq = %s WHERE folder_id = %s "
                 "AND uid = ANY(%s)", (system, keywords, modseq, folder_id, uids))
    return modseq


def expunge(conn: Any, blobs: IBlobStore, folder_id: int, uids: list[int],
            at_least: int) -> int:
    _first, modseq = _allocate(conn, folder_id, 0, at_least)
    gone = conn.execute("DELETE FROM messages WHERE folder_id = %s AND uid = ANY(%s) "
                        "RETURNING uid, content_hash", (folder_id, uids)).fetchall()
    if gone:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO expunged (folder_id, uid, modseq) VALUES (%s, %s, %s) "
                            "ON CONFLICT (folder_id, uid) DO UPDATE SET modseq = EXCLUDED.modseq",
                            [(folder_id, u, modseq) for u, _h in gone])
        blobs.release(conn, [bytes(h) for _u, h in gone])
    return modseq


def copy(conn: Any, blobs: IBlobStore, src_id: int, uids: list[int],
         dest_id: int) -> list[tuple[int, int]]:
    """Copies of C{uids} (flags and dates kept, bodies shared): (source UID, new UID)."""
    rows = conn.execute("SELECT uid, flags, keywords, internaldate, size, content_hash, "
                        "email_id FROM messages WHERE folder_id = %s AND uid = ANY(%s) "
                        "ORDER BY uid", (src_id, uids)).fetchall()
    if not rows:
        return []
    first, modseq = _allocate(conn, dest_id, len(rows))
    pairs = [(r[0], first + i) for i, r in enumerate(rows)]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO messages (folder_id, uid, modseq, flags, keywords, internaldate, size, "
            "content_hash, email_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(dest_id, new, modseq, r[1], r[2], r[3], r[4], r[5], r[6])
             for (_old, new), r in zip(pairs, rows, strict=True)])
    blobs.ref(conn, [bytes(r[5]) for r in rows])
    return pairs

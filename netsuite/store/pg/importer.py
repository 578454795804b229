"""
C{netsuite import maildir PATH [--user NAME]}: a user's Maildir++ tree (written
by netsuite or by Dovecot) into the PostgreSQL store, keeping each folder's
UIDVALIDITY, UIDs, UIDNEXT, flags and keywords, so that clients do not resync.

UIDs come from the folder's own record: Dovecot's C{dovecot-uidlist} when it is
there (a Dovecot tree), else netsuite's index (read by the Maildir store's own
L{netsuite.store.folder.Folder}, which makes one for a folder that has none).
Keywords are the file names' letters as C{dovecot-keywords} maps them (and
netsuite's index keywords).  Each folder is one transaction; a folder that
already has messages in the database is refused (run it once per user, before
the user's first login on the PostgreSQL store, or on a folder emptied first).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netsuite.cli import command
from netsuite.config import Config
from netsuite.db.errors import DatabaseUnavailable
from netsuite.db.pool import connect, safe_dsn
from netsuite.store.folder import LETTER_TO_FLAG, Folder, split_name, to_disk
from netsuite.store.keywords import LETTERS, KeywordLetters
from netsuite.store.maildir import MaildirStore
from netsuite.store.pg import sql
from netsuite.store.pg.blobs import PgBlobs, content_hash

_UIDLIST_HEADER = re.compile(r"^3 (.*)$")


@dataclass
class Imported:
    uid: int
    flags: list[str]
    keywords: list[str]
    date: int
    body: bytes


@dataclass
class FolderData:
    name: str
    uidvalidity: int
    uidnext: int
    messages: list[Imported]


def _letters_flags(letters: str, kl: KeywordLetters) -> tuple[list[str], list[str]]:
    system = sorted(LETTER_TO_FLAG[c] for c in letters if c in LETTER_TO_FLAG)
    keywords = [k for c in letters if c in LETTERS and (k := kl.keyword(c))]
    return system, keywords


def read_dovecot(path: Path, name: str) -> FolderData | None:
    """A folder by its C{dovecot-uidlist} (version 3), or None if it has none."""
    try:
        lines = (path / "dovecot-uidlist").read_text("utf-8", "surrogateescape").splitlines()
    except FileNotFoundError:
        return None
    header = _UIDLIST_HEADER.match(lines[0]) if lines else None
    if header is None:
        raise ValueError(f"{path / 'dovecot-uidlist'}: not a version 3 uidlist")
    fields = {f[0]: f[1:] for f in header.group(1).split() if f}
    uidvalidity, uidnext = int(fields["V"]), int(fields.get("N", "1"))
    files: dict[str, tuple[str, str]] = {}
    for sub in ("cur", "new"):
        for entry in os.listdir(path / sub) if (path / sub).is_dir() else ():
            if not entry.startswith("."):
                files[split_name(entry)[0]] = (sub, entry)
    kl = KeywordLetters(path)
    out = []
    for line in lines[1:]:
        head, sep, base = line.partition(":")
        if not sep or not head.split():
            continue
        uid = int(head.split()[0])
        found = files.get(split_name(base)[0])
        if found is None:
            continue  # listed, but the file is gone (expunged meanwhile)
        sub, entry = found
        file = path / sub / entry
        system, keywords = _letters_flags(split_name(entry)[1], kl)
        out.append(Imported(uid, system, keywords, int(file.stat().st_mtime),
                            to_disk(file.read_bytes())))
        uidnext = max(uidnext, uid + 1)
    return FolderData(name, uidvalidity, uidnext, sorted(out, key=lambda m: m.uid))


def read_netsuite(path: Path, name: str) -> FolderData:
    """A folder by netsuite's index (made now if it has none)."""
    folder = Folder(path, name)
    out = []
    for msg in folder.messages:
        flags = msg.flags
        system = [f for f in flags if f.startswith("\\")]
        keywords = [f for f in flags if not f.startswith("\\")]
        out.append(Imported(msg.uid, system, keywords, folder.date_of(msg),
                            to_disk(folder.read(msg))))
    return FolderData(name, folder.uidvalidity, folder.next_uid, out)


def read_tree(root: Path, user: str) -> tuple[list[FolderData], list[str]]:
    """Every folder of the tree at C{root}, and its subscriptions."""
    store = MaildirStore(root.parent)
    folders = []
    for name in store.list_folders(user):
        path = store.folder_path(user, name)
        data = read_dovecot(path, name)
        folders.append(data if data is not None else read_netsuite(path, name))
    return folders, store.subscriptions(user)


def write_folder(conn: Any, aid: int, data: FolderData) -> None:
    """One folder's rows, UIDs and UIDVALIDITY as they were, in one transaction."""
    blobs = PgBlobs()
    special = sql.SPECIAL_FOLDERS.get(data.name)
    row = conn.execute("SELECT id FROM folders WHERE account_id = %s AND name = %s FOR UPDATE",
                       (aid, data.name)).fetchone()
    if row is None:
        fid = conn.execute(
            "INSERT INTO folders (account_id, name, uidvalidity, special_use) "
            "VALUES (%s, %s, %s, %s) RETURNING id",
            (aid, data.name, data.uidvalidity, special)).fetchone()[0]
    else:
        fid = row[0]
        if conn.execute("SELECT 1 FROM messages WHERE folder_id = %s LIMIT 1",
                        (fid,)).fetchone():
            raise ValueError(f"folder {data.name!r} already has messages in the database")
        conn.execute("DELETE FROM expunged WHERE folder_id = %s", (fid,))
    modseq = len(data.messages) + 1
    conn.execute("UPDATE folders SET uidvalidity = %s, uidnext = %s, highestmodseq = %s, "
                 "first_recent = %s WHERE id = %s",
                 (data.uidvalidity, data.uidnext, modseq, data.uidnext, fid))
    conn.execute("UPDATE accounts SET last_uidvalidity = GREATEST(last_uidvalidity, %s) "
                 "WHERE id = %s", (data.uidvalidity, aid))
    for i, m in enumerate(data.messages, 1):
        digest = content_hash(m.body)
        blobs.put(conn, digest, m.body)
        conn.execute(
            "INSERT INTO messages (folder_id, uid, modseq, flags, keywords, internaldate, size, "
            "content_hash) VALUES (%s, %s, %s, %s, %s, to_timestamp(%s), %s, %s)",
            (fid, m.uid, i, m.flags, m.keywords, m.date,
             len(m.body) + m.body.count(b"\n"), digest))
    sql.notify_folder(conn, fid, modseq)


def import_maildir(conn: Any, root: Path, user: str) -> list[tuple[str, int]]:
    """The tree into the database: (folder, messages) imported."""
    folders, subscriptions = read_tree(root, user)
    with conn.transaction():
        aid = sql.account_id(conn, user)
        conn.execute("UPDATE accounts SET specials_made = true WHERE id = %s", (aid,))
        for name in subscriptions:
            sql.set_subscribed(conn, aid, name, True)
    done = []
    for data in folders:
        with conn.transaction():
            write_folder(conn, aid, data)
        done.append((data.name, len(data.messages)))
    with conn.transaction():
        sql.notify_account(conn, aid)
    return done


def _import_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("maildir", help="a user's Maildir++ tree (netsuite or Dovecot) into "
                                       "the PostgreSQL store, UIDs and flags kept")
    m.add_argument("path", type=Path, help="the user's Maildir (INBOX at its top)")
    m.add_argument("--user", help="the account (default: the directory's name)")


@command("import", _import_args)
def _import(args: argparse.Namespace, config: Config) -> int:
    if not config.database.dsn:
        raise SystemExit(f"netsuite: no database: set [database] dsn in "
                         f"{config.path or 'the configuration'}")
    root = args.path.resolve()
    if not (root / "cur").is_dir():
        raise SystemExit(f"netsuite: {root}: not a Maildir (no cur/)")
    user = args.user or root.name
    try:
        with connect(config.database, autocommit=True) as conn:
            done = import_maildir(conn, root, user)
    except DatabaseUnavailable as e:
        raise SystemExit(f"netsuite: {e}") from None
    except ValueError as e:
        raise SystemExit(f"netsuite: {user}: {e}") from None
    for name, n in done:
        print(f"{user}/{name}: {n} message(s)")
    print(f"imported {user} from {root} into {safe_dsn(config.database.dsn)}")
    return 0

"""
The mail store in PostgreSQL (netsuite.store.pg) against real daemons and a
real PostgreSQL (tests/pg.py): two "hosts" (separate data directories and
ports) on one database share one mail system.  A delivery through A reaches
an IDLE on B; flags set on one are seen on the other; POP3 on B returns what
SMTP took on A, byte for byte; UIDs stay unique and ascending under
concurrent deliveries through both; identical bodies are stored once.
"""

from __future__ import annotations

import hashlib
import imaplib
import poplib
import re
import select
import signal
import smtplib
import socket
import threading
import time
from pathlib import Path

import pytest
from harness import Daemon

from netsuite.store.pg.folder import WARM_ON_LOAD

USER, PASSWORD = "alice", "alices secret"


def db_config(dsn: str) -> dict:
    return {"server": {"auth": ["sql"], "allow_plaintext_auth": True},
            "database": {"dsn": dsn, "connect_timeout": 2.0, "retries": 1},
            "store": {"backend": "postgresql"}}


@pytest.fixture(scope="module")
def hosts(pg_cluster, tmp_path_factory):
    dsn = pg_cluster.new_database()
    made = [Daemon(tmp_path_factory.mktemp(f"pgstore-{n}"), db_config(dsn),
                   ["imap", "pop3", "smtp"]) for n in ("a", "b")]
    a, b = made
    a.cli("db", "init")
    a.cli("user", "add", USER, "--password-stdin", input=PASSWORD + "\n")
    for d in made:
        d.start()
    yield a, b, dsn.rpartition("dbname=")[2]
    for d in made:
        d.stop()


def sql(cluster, db: str, query: str) -> str:
    return cluster.execute(query, db)


def deliver(d: Daemon, body: bytes, rcpt: str = f"{USER}@example.test") -> None:
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=30) as s:
        s.sendmail("sender@remote.test", [rcpt], body)


def message(subject: str, text: str = "hello") -> bytes:
    return (f"From: sender@remote.test\r\nTo: {USER}@example.test\r\nSubject: {subject}\r\n"
            f"\r\n{text}\r\n").encode()


def imap(d: Daemon) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=30)
    m.login(USER, PASSWORD)
    return m


def uids_of(m: imaplib.IMAP4) -> list[int]:
    typ, data = m.uid("SEARCH", "ALL")
    assert typ == "OK"
    return [int(x) for x in data[0].split()]


def flags_of(m: imaplib.IMAP4, uid: int) -> str:
    typ, data = m.uid("FETCH", str(uid), "(FLAGS)")
    assert typ == "OK" and data[0], data
    return re.search(rb"FLAGS \(([^)]*)\)", data[0]).group(1).decode()


def test_a_delivery_through_a_is_seen_by_idle_on_b_within_a_second(hosts):
    a, b, _db = hosts
    sock = socket.create_connection(("127.0.0.1", b.port("imap")), timeout=30)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(f"1 LOGIN {USER} \"{PASSWORD}\"\r\n2 SELECT INBOX\r\n".encode())
    while not f.readline().startswith(b"2 OK"):
        pass
    sock.sendall(b"3 IDLE\r\n")
    assert f.readline().startswith(b"+")
    started = time.monotonic()
    deliver(a, message("to idle"))
    accepted = time.monotonic()
    ready, _, _ = select.select([sock], [], [], 1.0)
    assert ready, "no untagged response within 1 s of the 250"
    line = f.readline()
    seen = time.monotonic()
    assert re.match(rb"\* \d+ EXISTS", line), line
    assert seen - accepted < 1.0, (accepted - started, seen - accepted)
    sock.sendall(b"DONE\r\n4 LOGOUT\r\n")
    sock.close()


def test_flags_set_on_b_are_seen_on_a(hosts):
    a, b, _db = hosts
    deliver(a, message("flag me"))
    ma, mb = imap(a), imap(b)
    try:
        ma.select("INBOX")
        mb.select("INBOX")
        uid = uids_of(mb)[-1]
        typ, _ = mb.uid("STORE", str(uid), "+FLAGS", r"(\Flagged $Work)")
        assert typ == "OK"
        assert a.wait_for(lambda: "\\Flagged" in flags_of(ma, uid) and
                          "$Work" in flags_of(ma, uid), timeout=5)
        mb.uid("STORE", str(uid), "-FLAGS", r"(\Flagged)")
        assert a.wait_for(lambda: "\\Flagged" not in flags_of(ma, uid), timeout=5)
        assert "$Work" in flags_of(ma, uid)
        # OBJECTID (RFC 8474): the same ids on both hosts.
        ids = [m.uid("FETCH", str(uid), "(EMAILID)")[1][0] for m in (ma, mb)]
        assert b"EMAILID (M" in ids[0] and ids[0] == ids[1], ids
        boxes = [m.status("INBOX", "(MAILBOXID)")[1][0] for m in (ma, mb)]
        assert b"MAILBOXID (F" in boxes[0] and boxes[0] == boxes[1], boxes
    finally:
        ma.logout()
        mb.logout()


def inbox_count(cluster, db: str) -> int:
    return int(sql(cluster, db, "SELECT count(*) FROM messages m JOIN folders f ON "
                                "f.id = m.folder_id JOIN accounts a ON a.id = f.account_id "
                                f"WHERE a.name = '{USER}' AND f.name = 'INBOX'"))


def test_pop3_on_b_returns_byte_for_byte_what_smtp_took_on_a(hosts, pg_cluster):
    a, b, db = hosts
    body = (b"From: sender@remote.test\r\nSubject: exact\r\n\r\nline one\r\n"
            b"trailing spaces   \r\n\r\n.dot line\r\n" + (b"x" * 70 + b"\r\n") * 40)
    m = imap(a)
    m.select("INBOX")
    for uid in uids_of(m):  # an empty maildrop: only this message
        m.uid("STORE", str(uid), "+FLAGS", r"(\Deleted)")
    m.expunge()
    m.logout()
    # EXPUNGE is answered from A's mirror and written through right after.
    assert a.wait_for(lambda: inbox_count(pg_cluster, db) == 0, timeout=5)
    deliver(a, body)
    p = poplib.POP3("127.0.0.1", b.port("pop3"), timeout=30)
    try:
        p.user(USER)
        p.pass_(PASSWORD)
        count, _size = p.stat()
        assert count == 1
        _resp, lines, _octets = p.retr(1)
        got = b"\r\n".join(lines) + b"\r\n"
        # What SMTP took, after the trace headers the server put on top.
        assert got.endswith(body), got[-200:]
        added = got[:len(got) - len(body)]
        assert added.startswith(b"Return-Path: <sender@remote.test>\r\nReceived: "), added
        assert len(lines) == added.count(b"\r\n") + body.count(b"\r\n")
    finally:
        p.quit()


def test_uids_unique_and_ascending_under_concurrent_deliveries_to_both(hosts, pg_cluster):
    a, b, db = hosts
    before = int(sql(pg_cluster, db, "SELECT coalesce(max(uidnext), 1) FROM folders f "
                                     "JOIN accounts a "
                                     f"ON a.id = f.account_id WHERE a.name = '{USER}' "
                                     "AND f.name = 'INBOX'"))
    watch = imap(b)
    watch.select("INBOX")
    errors: list[BaseException] = []

    def flood(d: Daemon, n: int) -> None:
        try:
            for i in range(n):
                deliver(d, message(f"flood {d.port('smtp')} {i}", f"body {i} via {d.port('smtp')}"))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=flood, args=(d, 15)) for d in (a, b, a, b)]
    for t in threads:
        t.start()
    ma = imap(a)
    ma.select("INBOX")
    typ, data = ma.append("INBOX", None, None, message("appended on a"))
    assert typ == "OK"
    appended = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
    for t in threads:
        t.join(60)
    assert not errors, errors
    rows = sql(pg_cluster, db, "SELECT m.uid FROM messages m JOIN folders f ON "
                               "f.id = m.folder_id JOIN accounts a ON a.id = f.account_id "
                               f"WHERE a.name = '{USER}' AND f.name = 'INBOX' AND m.uid >= "
                               f"{before} ORDER BY m.uid").split()
    assert len(rows) == 61 and len(set(rows)) == 61 and appended in map(int, rows)
    # Both hosts show the same UIDs; B's IDLE-less session learns them at NOOP, ascending.
    want = [int(u) for u in rows]
    assert a.wait_for(lambda: [u for u in uids_of(ma) if u >= before] == want, timeout=10)
    assert b.wait_for(lambda: [u for u in uids_of(watch) if u >= before] == want, timeout=10)
    watch.noop()
    # COPY on B into a folder, EXPUNGE on A: both hosts agree.
    typ, _data = watch.uid("COPY", f"{want[0]}:{want[4]}", "Trash")
    assert typ == "OK"
    _typ, copyuid = watch.response("COPYUID")
    assert copyuid[0] and len(copyuid[0].split()) == 3, copyuid
    ma.uid("STORE", f"{want[0]}:{want[4]}", "+FLAGS", r"(\Deleted)")
    ma.expunge()
    assert b.wait_for(lambda: not (set(uids_of(watch)) & set(want[:5])), timeout=5)
    ma.select("Trash")
    assert len(uids_of(ma)) >= 5
    ma.logout()
    watch.logout()


def test_identical_bodies_are_stored_once(hosts, pg_cluster):
    a, b, db = hosts
    body = message("same body", "the very same text, stored once")
    digest = hashlib.sha256(body.replace(b"\r\n", b"\n")).hexdigest()  # stored with LF ends

    def blob() -> tuple[int, int]:
        """(rows of this body, its reference count)."""
        out = sql(pg_cluster, db, "SELECT count(*), coalesce(max(refcount), 0) FROM blobs "
                                  f"WHERE hash = decode('{digest}', 'hex')")
        rows, refs = out.split("|")
        return int(rows), int(refs)

    total = lambda: int(sql(pg_cluster, db, "SELECT count(*) FROM blobs"))  # noqa: E731
    m, mb = imap(a), imap(b)
    try:
        assert m.append("INBOX", None, None, body)[0] == "OK"
        assert blob() == (1, 1)
        before = total()
        for _ in range(3):
            assert m.append("Drafts", None, None, body)[0] == "OK"
        assert mb.append("Sent", None, None, body)[0] == "OK"
        m.select("Drafts")
        assert m.uid("COPY", "1:*", "Trash")[0] == "OK"  # copies share it too
        assert total() == before and blob() == (1, 8)
        # Expunging every copy but one keeps the body; the last one takes it away.
        for name in ("Drafts", "Sent", "Trash"):
            m.select(name)
            m.uid("STORE", "1:*", "+FLAGS", r"(\Deleted)")
            m.expunge()
        assert a.wait_for(lambda: blob() == (1, 1), timeout=5), blob()
        m.select("INBOX")
        uid = uids_of(m)[-1]
        m.uid("STORE", str(uid), "+FLAGS", r"(\Deleted)")
        m.expunge()
        assert a.wait_for(lambda: blob() == (0, 0), timeout=5), blob()
    finally:
        m.logout()
        mb.logout()


def test_a_streamed_append_is_stored_once_and_read_byte_exact_on_the_other_host(hosts,
                                                                              pg_cluster):
    """
    A literal past the in-memory limit goes to a file as it arrives and from
    there to the database a chunk at a time: stored once however often it is
    appended, the file kept as host A's cached copy, host B serving the bytes.
    """
    a, b, db = hosts
    line = b"streamed body line, long enough to make a literal that is written to a file\r\n"
    body = message("streamed").replace(b"hello\r\n", line * 4000)  # ~300 KiB
    assert len(body) > 256 * 1024
    stored = body.replace(b"\r\n", b"\n")
    digest = hashlib.sha256(stored).hexdigest()
    m, mb = imap(a), imap(b)
    try:
        assert m.append("INBOX", None, None, body)[0] == "OK"
        assert m.append("Drafts", None, None, body)[0] == "OK"
        out = sql(pg_cluster, db, "SELECT count(*), max(refcount), max(size), "
                                  "string_agg(encode(sha256(body), 'hex'), ',') FROM blobs "
                                  f"WHERE hash = decode('{digest}', 'hex')")
        assert out == f"1|2|{len(stored)}|{digest}", out
        assert list((a.data_dir / "mail" / USER / "tmp").iterdir()) == []
        cached = a.data_dir / "mail" / ".pg-cache" / "bodies" / digest[:2] / digest
        assert cached.read_bytes() == stored
        for name in ("INBOX", "Drafts"):
            mb.select(name)
            uid = uids_of(mb)[-1]
            typ, data = mb.uid("FETCH", str(uid), "(RFC822.SIZE BODY.PEEK[])")
            assert typ == "OK" and data[0][1] == body
            assert f"RFC822.SIZE {len(body)}".encode() in data[0][0]
    finally:
        m.logout()
        mb.logout()


def test_a_big_smtp_delivery_goes_through_a_file_and_arrives_byte_exact(hosts, pg_cluster):
    """Past 128 KiB a delivery is spilled to tmp/ and sent from there: same bytes, no leftover."""
    a, b, db = hosts
    line = b"a line of a big delivery, spilled to a file before it reaches the database\r\n"
    body = message("big delivery").replace(b"hello\r\n", line * 14000)  # ~1 MiB
    deliver(a, body)
    # The newest message in INBOX: the delivery (a Received: line on top of the body).
    out = sql(pg_cluster, db,
              "SELECT encode(m.content_hash, 'hex'), encode(sha256(b.body), 'hex'), b.size "
              "FROM messages m JOIN folders f ON f.id = m.folder_id JOIN blobs b "
              "ON b.hash = m.content_hash WHERE f.name = 'INBOX' ORDER BY m.uid DESC LIMIT 1")
    key, digest, size = out.split("|")
    assert key == digest and int(size) > len(body) - body.count(b"\n"), out
    assert list((a.data_dir / "mail" / USER / "tmp").iterdir()) == []
    cached = a.data_dir / "mail" / ".pg-cache" / "bodies" / digest[:2] / digest
    assert cached.read_bytes().endswith(body.replace(b"\r\n", b"\n"))
    p = poplib.POP3("127.0.0.1", b.port("pop3"), timeout=30)
    try:
        p.user(USER)
        p.pass_(PASSWORD)
        count, _size = p.stat()
        _resp, lines, _octets = p.retr(count)
    finally:
        p.quit()
    got = b"\r\n".join(lines) + b"\r\n"
    assert hashlib.sha256(got.replace(b"\r\n", b"\n")).hexdigest() == digest
    assert got.endswith(body)


# -- netsuite import maildir ------------------------------------------------------------------


def dovecot_tree(root: Path) -> dict[str, list[tuple[int, str, bytes]]]:
    """
    A Maildir++ tree as Dovecot writes it: dovecot-uidlist (v3) with UIDVALIDITY
    and UIDs with gaps, dovecot-keywords, flags and keyword letters in the names.
    (folder -> [(uid, wanted FLAGS, body)]).
    """
    want: dict[str, list[tuple[int, str, bytes]]] = {}
    layout = {"": (1600000000, [(3, "S", ""), (7, "RSa", "$Forwarded"), (12, "", "")]),
              ".Archive": (1600000001, [(1, "FST", ""), (5, "Sb", "Work")])}
    for sub, (validity, msgs) in layout.items():
        path = root / sub if sub else root
        for d in ("cur", "new", "tmp"):
            (path / d).mkdir(parents=True, exist_ok=True)
        (path / "dovecot-keywords").write_text("0 $Forwarded\n1 Work\n")
        lines = [f"3 V{validity} N{msgs[-1][0] + 5} Gdeadbeef"]
        name = sub.lstrip(".") or "INBOX"
        want[name] = []
        for uid, letters, _kw in msgs:
            base = f"{1600000000 + uid}.M{uid}P1.dovecot"
            body = f"Subject: {name} {uid}\n\nbody of {uid}\n".encode()
            (path / "cur" / f"{base},S={len(body)}:2,{letters}").write_bytes(body)
            lines.append(f"{uid} :{base},S={len(body)}")
            flags = {"S": "\\Seen", "R": "\\Answered", "F": "\\Flagged", "T": "\\Deleted"}
            names = sorted(flags[c] for c in letters if c in flags)
            names += {"a": ["$Forwarded"], "b": ["Work"]}.get(
                next((c for c in letters if c.islower()), ""), [])
            want[name].append((uid, " ".join(sorted(names)), body))
        (path / "dovecot-uidlist").write_text("\n".join(lines) + "\n")
    (root / "subscriptions").write_text("Archive\n")
    return want


def test_import_maildir_keeps_uidvalidity_uids_and_flags(pg_cluster, tmp_path):
    dsn = pg_cluster.new_database()
    d = Daemon(tmp_path / "host", db_config(dsn), ["imap"])
    d.cli("db", "init")
    d.cli("user", "add", "carol", "--password-stdin", input="carols secret\n")
    tree = tmp_path / "old" / "carol"
    want = dovecot_tree(tree)
    out = d.cli("import", "maildir", str(tree))
    assert "carol/INBOX: 3 message(s)" in out.stdout and "carol/Archive: 2" in out.stdout
    again = d.cli("import", "maildir", str(tree), check=False)  # never twice into a folder
    assert again.returncode != 0 and "already has messages" in again.stderr
    d.start()
    try:
        m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=30)
        m.login("carol", "carols secret")
        for name, validity in (("INBOX", 1600000000), ("Archive", 1600000001)):
            typ, _ = m.select(name)
            assert typ == "OK"
            assert int(m.response("UIDVALIDITY")[1][0]) == validity
            typ, data = m.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
            got = []
            for item in data:
                if isinstance(item, tuple):
                    uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                    flags = re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1).decode()
                    got.append((uid, " ".join(sorted(flags.split())), item[1]))
            assert got == [(u, f, b.replace(b"\n", b"\r\n")) for u, f, b in want[name]]
        uidnext = m.status("INBOX", "(UIDNEXT)")[1][0]
        assert b"UIDNEXT 17" in uidnext, uidnext
        typ, lsub = m.lsub()
        assert any(b"Archive" in line for line in lsub)
        m.logout()
    finally:
        d.stop()


def test_database_away_smtp_says_451_and_nothing_acknowledged_is_lost(hosts, pg_cluster):
    a, b, db = hosts
    before = inbox_count(pg_cluster, db)
    deliver(a, message("before the outage"))
    pg_cluster.stop()
    try:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            deliver(a, message("during the outage"))
        assert refused.value.smtp_code == 451 and refused.value.smtp_error.startswith(b"4.3.0")
    finally:
        pg_cluster.start()
    # Back by itself (the pool reconnects): bounded retries, no sleeps beyond them.
    deadline = time.monotonic() + 30
    while True:
        try:
            deliver(b, message("after the outage"))
            break
        except smtplib.SMTPDataError:
            assert time.monotonic() < deadline, "delivery did not resume"
            time.sleep(0.2)
    assert inbox_count(pg_cluster, db) == before + 2  # the two that got 250, no other
    # A's sessions see both (its login may still be failing fast for a moment: bounded).
    deadline = time.monotonic() + 10
    while True:
        try:
            m = imap(a)
            break
        except imaplib.IMAP4.error:
            assert time.monotonic() < deadline, "IMAP logins did not resume"
            time.sleep(0.2)
    m.select("INBOX")
    assert a.wait_for(lambda: len(m.uid("SEARCH", "SUBJECT", "outage")[1][0].split()) == 2)
    m.logout()
    for d in (a, b):
        assert "Traceback" not in d.log()


def test_folders_made_renamed_and_deleted_on_one_host_are_seen_on_the_other(hosts):
    a, b, _db = hosts
    ma, mb = imap(a), imap(b)
    try:
        names = lambda m: [line.rsplit(b" ", 1)[-1].strip(b'"') for line in m.list()[1]]  # noqa: E731
        assert ma.create("Projects")[0] == "OK"
        assert ma.create("Projects.2027")[0] == "OK"
        assert b.wait_for(lambda: b"Projects.2027" in names(mb), timeout=5)
        assert mb.rename("Projects", "Work")[0] == "OK"
        assert a.wait_for(lambda: b"Work.2027" in names(ma) and
                          b"Projects.2027" not in names(ma), timeout=5)
        # APPEND on A into the renamed folder, read on B: the same UIDVALIDITY, the message.
        assert ma.append("Work.2027", None, None, message("in a renamed folder"))[0] == "OK"
        mb.select("Work.2027")
        assert b.wait_for(lambda: len(uids_of(mb)) == 1, timeout=5)
        mb.close()
        assert ma.delete("Work.2027")[0] == "OK"
        assert b.wait_for(lambda: b"Work.2027" not in names(mb), timeout=5)
        assert mb.select("Work.2027")[0] == "NO"
    finally:
        ma.logout()
        mb.logout()


def test_condstore_modseq_is_the_databases_on_both_hosts(hosts, pg_cluster):
    a, b, db = hosts
    deliver(a, message("modseq"))
    ma, mb = imap(a), imap(b)
    try:
        for m in (ma, mb):
            m._simple_command("ENABLE", "CONDSTORE")
            m.select("INBOX")
        uid = uids_of(ma)[-1]
        typ, data = ma.uid("STORE", str(uid), "+FLAGS", r"(\Answered)")
        shown = int(re.search(rb"MODSEQ \((\d+)\)", data[0]).group(1))
        row = lambda: int(sql(pg_cluster, db, "SELECT m.modseq FROM messages m JOIN folders f "  # noqa: E731
                                              "ON f.id = m.folder_id JOIN accounts a ON "
                                              "a.id = f.account_id WHERE f.name = 'INBOX' AND "
                                              f"a.name = '{USER}' AND m.uid = {uid}"))
        # Written through: the row gets the MODSEQ the client was shown (nobody else wrote).
        assert a.wait_for(lambda: row() == shown, timeout=5), (row(), shown)

        def seen_on_b() -> int:
            typ, data = mb.uid("FETCH", str(uid), "(MODSEQ FLAGS)")
            m = re.search(rb"MODSEQ \((\d+)\)", data[0])
            return int(m.group(1)) if m and b"\\Answered" in data[0] else 0

        assert b.wait_for(lambda: seen_on_b() == shown, timeout=5)
    finally:
        ma.logout()
        mb.logout()


def test_import_of_a_netsuite_maildir_keeps_its_index(pg_cluster, tmp_path):
    from netsuite.store.maildir import MaildirStore

    old = MaildirStore(tmp_path / "old")
    inbox = old.folder("dave", "INBOX")
    uids = [inbox.append(b"Subject: %d\n\nbody %d\n" % (i, i), flags) for i, flags in
            enumerate([["\\Seen"], [], ["\\Flagged", "$Label1"], ["\\Seen", "\\Answered"]])]
    inbox.expunge([uids[1]])  # a gap in the UIDs, as a real folder has
    want = {m.uid: " ".join(sorted(m.flags)) for m in inbox.messages}
    validity, uidnext = inbox.uidvalidity, inbox.next_uid
    dsn = pg_cluster.new_database()
    d = Daemon(tmp_path / "host", db_config(dsn), ["imap"])
    d.cli("db", "init")
    d.cli("user", "add", "dave", "--password-stdin", input="daves secret\n")
    assert "dave/INBOX: 3 message(s)" in d.cli("import", "maildir",
                                               str(tmp_path / "old" / "dave")).stdout
    d.start()
    try:
        m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=30)
        m.login("dave", "daves secret")
        m.select("INBOX")
        assert int(m.response("UIDVALIDITY")[1][0]) == validity
        got = {}
        for line in m.uid("FETCH", "1:*", "(FLAGS)")[1]:
            uid = int(re.search(rb"UID (\d+)", line).group(1))
            got[uid] = " ".join(sorted(re.search(rb"FLAGS \(([^)]*)\)", line).group(1)
                                       .decode().split()))
        assert got == want
        assert f"UIDNEXT {uidnext}".encode() in m.status("INBOX", "(UIDNEXT)")[1][0]
        m.logout()
    finally:
        d.stop()


def test_bodies_a_host_has_not_cached_are_fetched_off_the_reactor(hosts):
    """
    A folder B has never opened, filled behind both hosts: B's first load caches
    the newest bodies only (folder.WARM_ON_LOAD); FETCH, SORT and SEARCH of the
    older ones wait for them off the reactor (IMailFolder.bodies_ready), byte for byte.
    """
    a, b, _db = hosts
    m = imap(a)
    assert m.create("Old")[0] == "OK"
    m.logout()
    count = WARM_ON_LOAD + 120  # 1-40 fetched, 41-80 sorted, 81-120 searched first
    for i in range(count):
        a.deliver_local(USER, message(f"old-{i}", f"old body <{i}>"), "Old")
    start = len(b.log())
    m = imap(b)
    assert b.wait_for(lambda: m.select("Old")[0] == "OK"), b.log()[-2000:]
    typ, data = m.fetch("1:40", "(BODY.PEEK[])")
    assert typ == "OK"
    bodies = [d[1] for d in data if isinstance(d, tuple)]
    assert bodies == [message(f"old-{i}", f"old body <{i}>") for i in range(40)]
    typ, data = m.sort("(REVERSE SUBJECT)", "UTF-8", "41:80")
    assert typ == "OK" and data[0].split() == [b"%d" % n for n in range(80, 40, -1)]
    typ, data = m.search(None, "BODY", "\"old body <97>\"")
    assert typ == "OK" and data[0] == b"98"
    m.logout()
    assert "on the reactor thread" not in b.log()[start:], b.log()[start:][-3000:]


def _until(what, seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < end, f"not within {seconds} s: {what.__doc__}"
        time.sleep(0.02)


def test_stores_answered_just_before_sigterm_are_written(pg_cluster, tmp_path):
    """
    A STORE is answered from the host's mirror and written by the account's
    queue after.  Here one write is held up (the test holds the folder row's
    lock, as a slow database would) while the next STOREs are answered and
    queued behind it, the session logs out, and SIGTERM comes: the shutdown
    waits for the queue, so after the restart not one answered change is
    missing.
    """
    import psycopg

    dsn = pg_cluster.new_database()
    d = Daemon(tmp_path, db_config(dsn), ["imap"])
    d.cli("db", "init")
    d.cli("user", "add", USER, "--password-stdin", input=PASSWORD + "\n")
    count = 20
    d.deliver_many(USER, [message(f"m{n}") for n in range(count)])
    d.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as probe, psycopg.connect(dsn) as lock:
            def claimed() -> bool:
                """the SELECT's claim of \\Recent written"""
                return probe.execute("SELECT first_recent FROM folders WHERE name = 'INBOX'"
                                     ).fetchone()[0] == count + 1

            def held_up() -> bool:
                """a write of the host waiting for the row lock"""
                return probe.execute("SELECT count(*) FROM pg_stat_activity "
                                     "WHERE wait_event_type = 'Lock'").fetchone()[0] > 0

            s = socket.create_connection(("127.0.0.1", d.port("imap")), timeout=30)
            f = s.makefile("rb")
            f.readline()
            s.sendall(f'a LOGIN "{USER}" "{PASSWORD}"\r\nb SELECT INBOX\r\n'.encode())
            while not (line := f.readline()).startswith(b"b "):
                assert line
            assert line.startswith(b"b OK"), line
            _until(claimed)
            lock.execute("SELECT 1 FROM folders WHERE name = 'INBOX' FOR UPDATE")
            lines = ["s1 UID STORE 1 +FLAGS.SILENT (\\Seen k1)"]
            s.sendall((lines[0] + "\r\n").encode())
            while not (line := f.readline()).startswith(b"s1 "):
                assert line
            assert line.startswith(b"s1 OK"), line
            _until(held_up)
            # Answered from the mirror, queued behind the write that waits:
            lines += [f"s{n} UID STORE {n} +FLAGS.SILENT (\\Seen k{n})"
                      for n in range(2, count + 1)]
            lines += [f"r{n} UID STORE {n} -FLAGS.SILENT (\\Seen)" for n in range(1, count, 2)]
            s.sendall("".join(x + "\r\n" for x in [*lines[1:], "z LOGOUT"]).encode())
            answers = f.read()  # to the end: the session is over
            s.close()
            assert len(re.findall(rb"^[a-z]\d* OK", answers, re.M)) == len(lines), answers
            assert not re.search(rb"^[a-z]\d* (NO|BAD)", answers, re.M), answers
            d.proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert d.proc.poll() is None, "the daemon exited with its writes still queued"
            lock.rollback()  # the held-up write goes on, and the queue behind it
        assert d.proc.wait(30) == 0
        d.stop()
        d.start()
        m = imap(d)
        m.select("INBOX", readonly=True)
        typ, data = m.uid("FETCH", "1:*", "(FLAGS)")
        assert typ == "OK"
        got = {int(re.search(rb"UID (\d+)", x).group(1)): x for x in data if x}
        assert sorted(got) == list(range(1, count + 1))
        for uid, line in got.items():
            assert f"k{uid}".encode() in line, (uid, line)
            assert (b"\\Seen" in line) == (uid % 2 == 0), (uid, line)
        m.logout()
    finally:
        d.stop()


class _HeldDatabase:
    """A Database whose every run waits for the test to fire it."""

    def __init__(self):
        self.runs: list[tuple[object, object]] = []

    def run(self, work, *args):
        from twisted.internet import defer

        d = defer.Deferred()
        self.runs.append((work, d))
        return d


def test_flush_waits_for_every_batch_queued_and_gives_up_after_its_time(tmp_path):
    """
    L{PgMailStore.flush}: the batch queued behind a running one is waited for
    too (it is only sent once the first returns), and a database that never
    answers holds the shutdown for C{timeout} seconds, said in the log.
    """
    from twisted.internet.task import Clock
    from twisted.logger import globalLogPublisher

    from netsuite.store.pg.store import PgMailStore

    clock, db = Clock(), _HeldDatabase()
    store = PgMailStore(db, tmp_path, clock)
    acct = store.account(USER)
    acct.queue(lambda conn: "first")
    acct.queue(lambda conn: "second")  # the next batch, sent when the first returns
    assert len(db.runs) == 1
    flushed = store.flush(timeout=5.0)
    assert not flushed.called
    db.runs[0][1].callback([(True, "first")])
    assert len(db.runs) == 2 and not flushed.called
    db.runs[1][1].callback([(True, "second")])
    assert flushed.called
    assert store.flush(timeout=5.0).called  # nothing queued: at once

    said: list[dict] = []
    globalLogPublisher.addObserver(said.append)
    try:
        acct.queue(lambda conn: "never answered")
        flushed = store.flush(timeout=5.0)
        clock.advance(4.9)
        assert not flushed.called
        clock.advance(0.2)
        assert flushed.called
    finally:
        globalLogPublisher.removeObserver(said.append)
    assert any("not written" in e.get("log_format", "") and e.get("users") == USER
               for e in said), said


def test_a_batch_is_one_transaction_and_a_failing_work_fails_alone(pg_dsn, tmp_path):
    """
    L{PgAccount.batch} on a real connection: the works run together without
    savepoints and the folder changes they ask for are read once at the end;
    when one fails, the others' changes are committed all the same and only it
    reports its error.
    """
    import psycopg

    from netsuite.db import schema
    from netsuite.store.pg import sql as pgsql
    from netsuite.store.pg.store import PgMailStore

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        schema.upgrade(conn, create=True)
        conn.execute("CREATE TABLE scratch (n int PRIMARY KEY)")
        acct = PgMailStore(_HeldDatabase(), tmp_path).account(USER)
        fid = pgsql.prepare_account(conn, USER).folders["INBOX"][0]

        def insert(n):
            return lambda c: c.execute("INSERT INTO scratch VALUES (%s)", (n,)) and n

        def later(c):
            pgsql.set_flags(c, fid, [], ["\\Seen"], [], 1, 0)  # one change of the folder
            return acct.delta_later(c, fid, 0)

        out = acct.batch(conn, [insert(1), later, later, insert(2)])
        assert [ok for ok, _ in out] == [True] * 4
        first, second = out[1][1], out[2][1]
        assert first.delta is second.delta is not None  # one read for both
        assert first.delta.highestmodseq == 3  # both changes in it (the row starts at 1)

        out = acct.batch(conn, [insert(3), insert(1), insert(4)])  # 1 is there already
        assert [ok for ok, _ in out] == [True, False, True]
        assert isinstance(out[1][1], psycopg.errors.UniqueViolation)
        assert [r[0] for r in conn.execute("SELECT n FROM scratch ORDER BY n")] == [1, 2, 3, 4]

        [(ok, error)] = acct.batch(conn, [insert(2)])
        assert not ok and isinstance(error, psycopg.errors.UniqueViolation)
        assert acct._later is None  # (outside a batch: delta_later reads at once)
        assert acct.delta_later(conn, fid, 0).delta.highestmodseq == 3

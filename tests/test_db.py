"""
The PostgreSQL backend's foundation against the real daemon and a real
PostgreSQL (tests/pg.py): C{netsuite db init | migrate | status}, the refusal
to start on a schema the server does not run on, the C{sql} checker and
C{netsuite user} over it, two daemons ("hosts": separate data directories and
ports) on one database sharing users and the login throttle, and a database
outage answered as a temporary failure, then recovered from.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import smtplib
import subprocess
import sys
import time

import psycopg
import pytest
from harness import ROOT, Daemon

from netsuite.db import schema

#: The throttle of the two hosts: locks after 4 failures, small delays.
THROTTLE = {"base_delay": 0.05, "max_delay": 0.1, "lock_after": 4, "free_failures": 1,
            "lock_seconds": 300.0}


def db_config(dsn: str, **store) -> dict:
    return {"server": {"auth": ["sql"], "allow_plaintext_auth": True},
            "database": {"dsn": dsn, "connect_timeout": 2.0, "retries": 1, "lock_lease": 3.0},
            "store": {"backend": "postgresql", **store}, "throttle": THROTTLE}


def dbname(dsn: str) -> str:
    return dsn.rpartition("dbname=")[2]


def imap_login(d: Daemon, user: str, password: str) -> str:
    """'OK', or the NO text of the LOGIN."""
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=30)
    try:
        m.login(user, password)
        return "OK"
    except imaplib.IMAP4.error as e:
        return str(e)
    finally:
        try:
            m.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def pop3_login(d: Daemon, user: str, password: str) -> str:
    p = poplib.POP3("127.0.0.1", d.port("pop3"), timeout=30)
    try:
        p.user(user)
        p.pass_(password)
        return "OK"
    except poplib.error_proto as e:
        return e.args[0].decode()
    finally:
        try:
            p.quit()
        except (poplib.error_proto, OSError):
            pass


def smtp_auth(d: Daemon, user: str, password: str) -> tuple[int, str]:
    s = smtplib.SMTP("127.0.0.1", d.port("submission"), timeout=30)
    try:
        s.ehlo("client.test")
        try:
            code, text = s.login(user, password)
        except smtplib.SMTPAuthenticationError as e:
            code, text = e.smtp_code, e.smtp_error
        return code, text.decode() if isinstance(text, bytes) else text
    finally:
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass


# -- netsuite db, and the start-up check --------------------------------------------------


def test_db_commands_and_the_refusal_to_start(make_daemon, pg_dsn, pg_cluster):
    d = make_daemon(config=db_config(pg_dsn), listeners=["imap"], start=False)
    status = d.cli("db", "status", check=False)
    assert status.returncode == 1 and "not initialised" in status.stdout

    # Not initialised: the server refuses, in one line naming the database and versions.
    with pytest.raises(RuntimeError) as refused:
        d.start(timeout=20)
    line = [x for x in str(refused.value).splitlines() if "not initialised" in x]
    assert line and dbname(pg_dsn) in line[0], refused.value
    assert f"schema version {schema.LATEST}" in line[0], refused.value

    migrate = d.cli("db", "migrate", check=False)
    assert migrate.returncode != 0 and "netsuite db init" in migrate.stderr

    first = d.cli("db", "init")
    assert f"initialised at schema version {schema.LATEST}" in first.stdout
    again = d.cli("db", "init")  # twice is harmless
    assert f"already initialised (schema version {schema.LATEST})" in again.stdout
    assert "up to date" in d.cli("db", "migrate").stdout
    status = d.cli("db", "status")
    assert f"schema version: {schema.LATEST} (this netsuite: {schema.LATEST})" in status.stdout
    assert "applied 0001_initial" in status.stdout and "applied 0002_mail_store" in status.stdout
    tables = set(pg_cluster.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'", dbname(pg_dsn)).split())
    assert {"users", "throttle_failures", "throttle_locks", "session_locks", "accounts",
            "folders", "subscriptions", "messages", "blobs", "schema_version"} <= tables

    d.start()  # the schema it knows: it runs
    d.stop()

    # A schema from a newer netsuite: refused, naming both versions; status says so too.
    pg_cluster.execute(f"INSERT INTO schema_version (version, name) VALUES ({schema.LATEST + 1}, "
                       "'future')",
                       dbname(pg_dsn))
    newer = d.cli("db", "status", check=False)
    assert newer.returncode == 1 and "upgrade netsuite" in newer.stdout
    assert "newer" in d.cli("db", "migrate", check=False).stderr
    with pytest.raises(RuntimeError) as refused:
        d.start(timeout=20)
    line = [x for x in str(refused.value).splitlines() if "netsuite:" in x and "newer" in x]
    assert line, refused.value
    assert f"schema version {schema.LATEST + 1}" in line[0] and f"({schema.LATEST})" in line[0]
    assert dbname(pg_dsn) in line[0]
    assert "password" not in line[0]


def test_two_inits_at_once_create_the_schema_once(make_daemon, pg_dsn, pg_cluster):
    """Two hosts running 'netsuite db init' at once: the advisory lock serialises them."""
    d = make_daemon(config=db_config(pg_dsn), listeners=["imap"], start=False)
    d.write_config()
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    init = [sys.executable, "-m", "netsuite.cli", "--config", str(d.config_path), "db", "init"]
    # Both are made to wait on the lock (held here), so both saw no schema before it.
    with psycopg.connect(pg_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (schema.LOCK_KEY,))
        runs = [subprocess.Popen(init, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env) for _ in range(2)]
        waiting = d.wait_for(lambda: holder.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()[0] == 2, timeout=60)
        holder.execute("SELECT pg_advisory_unlock(%s)", (schema.LOCK_KEY,))
    outputs = [p.communicate(timeout=60) for p in runs]
    assert waiting, outputs
    assert [p.returncode for p in runs] == [0, 0], outputs
    said = sorted("already" in out for out, _err in outputs)
    assert said == [False, True], outputs
    assert pg_cluster.execute("SELECT count(*) FROM schema_version",
                              dbname(pg_dsn)) == str(len(schema.migrations()))


def test_config_errors_name_file_key_and_reason(make_daemon, pg_dsn):
    d = make_daemon(config={"store": {"backend": "postgresql"}}, listeners=["imap"],
                    start=False)
    bad = d.cli("check", check=False)
    assert bad.returncode == 2
    assert f"{d.config_path}: store.backend: \"postgresql\" needs [database] dsn" in bad.stderr
    d.config = {**d.config, "store": {"backend": "postgresql"},
                "database": {"dsn": "nonsense=1"}}
    bad = d.cli("check", check=False)
    assert f"{d.config_path}: database.dsn: not a valid connection string" in bad.stderr
    d.config = {**d.config, "server": {**d.config["server"], "auth": ["sql"]},
                "store": {"backend": "maildir"}, "database": {}}
    bad = d.cli("check", check=False)
    assert "server.auth[0]: 'sql' needs [database] dsn" in bad.stderr


def test_an_unreachable_database_stops_start_up_in_one_line(make_daemon, tmp_path):
    dsn = f"host={tmp_path} port=5432 dbname=netsuite user=netsuite password=hunter2"
    d = make_daemon(config=db_config(dsn), listeners=["imap"], start=False)
    with pytest.raises(RuntimeError) as refused:
        d.start(timeout=20)
    line = [x for x in str(refused.value).splitlines() if x.startswith("netsuite:")]
    assert len(line) == 1, refused.value
    assert "database.dsn: cannot connect to" in line[0] and str(tmp_path) in line[0]
    assert "hunter2" not in str(refused.value)


def test_a_password_in_the_dsn_is_never_shown(make_daemon, pg_dsn):
    d = make_daemon(config=db_config(pg_dsn + " password=hunter2"), listeners=["imap"],
                    start=False)
    status = d.cli("db", "status", check=False)
    assert "hunter2" not in status.stdout + status.stderr
    assert "password=***" in status.stdout


# -- two hosts on one database --------------------------------------------------------------


@pytest.fixture(scope="module")
def hosts(pg_cluster, tmp_path_factory):
    """Hosts A and B: separate data directories and ports, one database, users in it."""
    dsn = pg_cluster.new_database()
    made = []
    for name in ("a", "b"):
        made.append(Daemon(tmp_path_factory.mktemp(f"host-{name}"), db_config(dsn),
                           ["smtp", "imap", "pop3", "submission"]))
    a, b = made
    a.cli("db", "init")
    added = a.cli("user", "add", "alice", "--password-stdin", input="first secret\n")
    assert "added alice" in added.stdout
    for d in made:
        d.start()
    yield a, b, dsn
    for d in made:
        d.stop()


def clear_throttle(cluster, dsn: str) -> None:
    cluster.execute("DELETE FROM throttle_failures; DELETE FROM throttle_locks", dbname(dsn))


def test_a_user_made_by_netsuite_user_add_logs_in_everywhere(hosts, pg_cluster):
    a, b, dsn = hosts
    assert "alice" in b.cli("user", "list").stdout.split()
    for d in (a, b):
        assert imap_login(d, "alice", "first secret") == "OK"
        assert pop3_login(d, "alice", "first secret") == "OK"
        assert smtp_auth(d, "alice", "first secret")[0] == 235
    assert "AUTHENTICATIONFAILED" in imap_login(b, "alice", "wrong")
    assert "[AUTH]" in pop3_login(a, "alice", "wrong")
    assert smtp_auth(a, "alice", "wrong")[0] == 535
    assert "AUTHENTICATIONFAILED" in imap_login(a, "nobody", "first secret")
    clear_throttle(pg_cluster, dsn)


def test_a_password_changed_on_one_host_is_seen_by_the_other_at_once(hosts, pg_cluster):
    a, b, dsn = hosts
    a.cli("user", "add", "bob", "--password-stdin", input="old one\n")
    assert imap_login(b, "bob", "old one") == "OK"  # now in B's verification cache
    assert imap_login(b, "bob", "old one") == "OK"
    a.cli("user", "passwd", "bob", "--password-stdin", input="new one\n")
    assert "AUTHENTICATIONFAILED" in imap_login(b, "bob", "old one")
    assert imap_login(b, "bob", "new one") == "OK"
    assert smtp_auth(b, "bob", "new one")[0] == 235
    a.cli("user", "del", "bob")
    assert "AUTHENTICATIONFAILED" in imap_login(b, "bob", "new one")
    assert "bob" not in a.cli("user", "list").stdout.split()
    clear_throttle(pg_cluster, dsn)


def test_a_user_added_on_one_host_receives_mail_on_the_other(hosts, pg_cluster):
    a, b, dsn = hosts
    message = b"From: x@client.test\r\nSubject: hello dave\r\n\r\nbody\r\n"

    def deliver() -> int:
        with smtplib.SMTP("127.0.0.1", b.port("smtp"), timeout=30) as s:
            s.ehlo("client.test")
            try:
                s.sendmail("x@client.test", ["dave@example.test"], message)
            except smtplib.SMTPRecipientsRefused as e:
                return e.recipients["dave@example.test"][0]
            return 250

    assert deliver() == 550  # no such user yet
    a.cli("user", "add", "dave", "--password-stdin", input="daves secret\n")
    # B's copy of the user names follows the table's NOTIFY at once (its poll is only
    # every 30 s): a bounded wait for the notification's round trip.
    assert b.wait_for(lambda: deliver() == 250, timeout=10, interval=0.2)
    assert "users changed: dave" in b.log()
    assert [m for m in b.messages("dave") if b"hello dave" in m]
    assert pop3_login(b, "dave", "daves secret") == "OK"
    clear_throttle(pg_cluster, dsn)


def test_the_throttle_is_shared_by_both_hosts(hosts, pg_cluster):
    a, b, dsn = hosts
    a.cli("user", "add", "carol", "--password-stdin", input="carols secret\n")
    assert imap_login(b, "carol", "carols secret") == "OK"
    # Failures spread over both hosts count as one: 2 on A, 2 on B lock the user.
    for d in (a, a, b, b):
        assert "AUTHENTICATIONFAILED" in imap_login(d, "carol", "guess")
    locks = pg_cluster.execute("SELECT key FROM throttle_locks WHERE until > now() "
                               "ORDER BY key", dbname(dsn)).split()
    assert "user:carol" in locks
    # Locked on both hosts, even with the right password (and a cached one on B).
    assert "AUTHENTICATIONFAILED" in imap_login(a, "carol", "carols secret")
    assert "AUTHENTICATIONFAILED" in imap_login(b, "carol", "carols secret")
    assert smtp_auth(b, "carol", "carols secret")[0] == 535
    clear_throttle(pg_cluster, dsn)
    assert imap_login(a, "carol", "carols secret") == "OK"


def test_the_pop3_maildrop_lock_holds_across_hosts(hosts, pg_cluster):
    a, b, dsn = hosts
    holder = poplib.POP3("127.0.0.1", a.port("pop3"), timeout=30)
    holder.user("alice")
    holder.pass_("first secret")
    try:
        # B has a data directory of its own: only the database's lock can say no.
        assert "[IN-USE]" in pop3_login(b, "alice", "first secret")
        rows = pg_cluster.execute("SELECT name FROM session_locks", dbname(dsn))
        assert rows.split() == ["pop3:alice"]
        # A busy mailbox is not a failed login: not counted, no checker error logged.
        assert pg_cluster.execute("SELECT count(*) FROM throttle_failures", dbname(dsn)) == "0"
        assert "login refused, in use: protocol=pop3" in b.log()
        assert "checker_error" not in b.log() and "MailboxInUse" not in b.log()
    finally:
        holder.quit()
    # QUIT gave it back (the release is asynchronous: wait for the row to go, bounded).
    assert a.wait_for(lambda: pg_cluster.execute("SELECT count(*) FROM session_locks",
                                                 dbname(dsn)) == "0")
    assert pop3_login(b, "alice", "first secret") == "OK"
    assert "[AUTH]" not in pop3_login(a, "alice", "first secret")
    clear_throttle(pg_cluster, dsn)


def test_a_reload_keeps_the_backend_it_started_with(hosts, pg_cluster):
    a, b, dsn = hosts
    before = len(b.log())
    b.config["store"]["backend"] = "maildir"
    try:
        b.cli("reload")
        assert b.wait_for(lambda: "reload: done (" in b.log()[before:], timeout=20)
        assert "reload: store.backend changed; it takes effect at a restart" in b.log()[before:]
        assert "AUTHENTICATIONFAILED" in imap_login(b, "alice", "wrong")
        # Still counted in the database, as the running backend says.
        assert pg_cluster.execute("SELECT count(*) FROM throttle_failures WHERE key = "
                                  "'user:alice'", dbname(dsn)) == "1"
    finally:
        b.config["store"]["backend"] = "postgresql"
        b.write_config()
    clear_throttle(pg_cluster, dsn)


def test_a_dead_hosts_pop3_lock_expires_and_a_live_ones_is_renewed(hosts, pg_cluster):
    a, b, dsn = hosts
    holder = poplib.POP3("127.0.0.1", a.port("pop3"), timeout=30)
    holder.user("alice")
    holder.pass_("first secret")

    def expires() -> str:
        return pg_cluster.execute("SELECT expires FROM session_locks WHERE name = 'pop3:alice'",
                                  dbname(dsn))

    first = expires()
    # Renewed every third of the 3 s lease while the session lives: still held after it.
    assert a.wait_for(lambda: expires() not in ("", first), timeout=10)
    assert holder.noop().startswith(b"+OK")
    a.kill9()  # host A dies holding the lock
    try:
        holder.sock.close()
        assert "[IN-USE]" in pop3_login(b, "alice", "first secret")
        assert b.wait_for(lambda: pg_cluster.execute(
            "SELECT count(*) FROM session_locks WHERE expires > now()", dbname(dsn)) == "0",
            timeout=10)
        assert pop3_login(b, "alice", "first secret") == "OK"
    finally:
        a.start()
    clear_throttle(pg_cluster, dsn)


def test_database_down_is_a_temporary_failure_and_service_resumes(hosts, pg_cluster):
    a, b, dsn = hosts
    assert imap_login(a, "alice", "first secret") == "OK"
    before = (len(a.log()), len(b.log()))
    pg_cluster.stop()
    try:
        imap = imap_login(a, "alice", "first secret")
        assert "[UNAVAILABLE]" in imap and "AUTHENTICATIONFAILED" not in imap
        assert "[SYS/TEMP]" in pop3_login(b, "alice", "first secret")
        code, text = smtp_auth(b, "alice", "first secret")
        assert code == 454 and text.startswith("4.7.0"), (code, text)
        assert "[UNAVAILABLE]" in imap_login(b, "alice", "wrong")  # not a wrong password
    finally:
        pg_cluster.start()
    # Back by itself: the pool reconnects (bounded wait, no sleeps beyond it).
    deadline = time.monotonic() + 30
    results = []
    while time.monotonic() < deadline:
        results = [imap_login(a, "alice", "first secret"),
                   imap_login(b, "alice", "first secret")]
        if results == ["OK", "OK"]:
            break
        time.sleep(0.2)
    assert results == ["OK", "OK"]
    assert smtp_auth(a, "alice", "first secret")[0] == 235
    # The outage was logged once as such, not as wrong passwords or checker errors.
    for d, start in zip((a, b), before, strict=True):
        log = d.log()[start:]
        assert "login failed, database unavailable" in log
        assert "checker_error" not in log and "Traceback" not in log, log
        assert log.count("[netsuite.db#warn] database ") == 1  # once per outage, then "is back"
        assert "is back" in log
    clear_throttle(pg_cluster, dsn)

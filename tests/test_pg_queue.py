"""
The outgoing queue in PostgreSQL (C{[store] backend = "postgresql"}): two real
daemons ("hosts" A and B: separate data directories and ports) on one database
(tests/pg.py), relaying to an aiosmtpd sink (tests/queue_remote.py) through a
static route.  Each host says its own name in EHLO (C{helo_name}), so the sink
knows which host delivered what.
"""

from __future__ import annotations

import smtplib
import threading
import time
import urllib.request
from collections import Counter

import psycopg
import pytest
from harness import Daemon
from mail_fixtures import FAST, message, queue_ids
from queue_remote import Remote
from rawsmtp import insecure_context
from test_db import db_config, dbname
from zope.interface.verify import verifyClass

from netsuite.db import schema
from netsuite.queue.pgspool import PgSpool
from netsuite.queue.spool import IQueueSpool, ISharedQueueSpool, Spool

#: Short lease: a killed host's messages are taken over within seconds.
LEASE = 3.0


def host_config(dsn: str, sink: int, name: str) -> dict:
    config = db_config(dsn)
    config["database"]["lock_lease"] = LEASE
    config["smtp"] = {"sender_login_match": False}  # a remote sender, for the remote DSN
    config["queue"] = {**FAST, "helo_name": f"{name}.test",
                       "routes": {"remote.test": f"127.0.0.1:{sink}"}}
    return config


@pytest.fixture(scope="module")
def sink():
    r = Remote().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def hosts(pg_cluster, sink, tmp_path_factory):
    dsn = pg_cluster.new_database()
    made = [Daemon(tmp_path_factory.mktemp(f"qhost-{n}"), host_config(dsn, sink.port, n),
                   ["smtp", "smtps", "http"]) for n in ("a", "b")]
    a, b = made
    a.cli("db", "init")
    a.cli("user", "add", "alice", "--password-stdin", input="alice-pw\n")
    for d in made:
        d.start()
    yield a, b, dsn
    for d in made:
        d.stop()


@pytest.fixture
def clean(hosts, sink, pg_cluster):
    """Each test starts with an empty sink and queue."""
    a, b, dsn = hosts
    sink.handler.messages.clear()
    sink.handler.script.clear()
    sink.handler.data_delay = 0.0
    yield hosts
    sink.handler.data_delay = 0.0
    sink.handler.script.clear()
    pg_cluster.execute("DELETE FROM queue_messages; DELETE FROM throttle_failures; "
                       "DELETE FROM throttle_locks", dbname(dsn))


def connect(d: Daemon) -> smtplib.SMTP_SSL:
    s = smtplib.SMTP_SSL("127.0.0.1", d.port("smtps"), timeout=30, context=insecure_context())
    s.login("alice", "alice-pw")
    return s


def send(s: smtplib.SMTP, subject: str, rcpt: str = "someone@remote.test",
         sender: str = "alice@example.test") -> int:
    """250, or the code the server answered the message with."""
    try:
        s.sendmail(sender, [rcpt], message(subject, to=rcpt))
        return 250
    except smtplib.SMTPResponseException as e:
        return e.smtp_code
    except smtplib.SMTPRecipientsRefused as e:
        return next(iter(e.recipients.values()))[0]


def subjects(sink: Remote) -> Counter:
    out: Counter = Counter()
    for m in list(sink.messages):
        for line in m["content"].split(b"\r\n"):
            if line.startswith(b"Subject: "):
                out[line[9:].decode()] += 1
                break
    return out


def metric(d: Daemon, sample: str) -> float:
    """One sample's value from the host's /metrics (exact name and labels as printed)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port('http')}/metrics", timeout=15) as r:
        for line in r.read().decode().splitlines():
            name, _, number = line.rpartition(" ")
            if name == sample:
                return float(number)
    return -1.0


def queue_rows(cluster, dsn: str) -> int:
    return int(cluster.execute("SELECT count(*) FROM queue_messages", dbname(dsn)))


def flood(d: Daemon, names: list[str], connections: int = 4, rcpt=None) -> dict[str, int]:
    """Send C{names} (subjects) through C{d} over a few connections in threads: name -> code."""
    codes: dict[str, int] = {}
    lock = threading.Lock()
    chunks = [names[i::connections] for i in range(connections)]

    def run(chunk: list[str]) -> None:
        s = connect(d)
        try:
            for name in chunk:
                code = send(s, name, rcpt(name) if rcpt else "someone@remote.test")
                with lock:
                    codes[name] = code
        finally:
            try:
                s.quit()
            except (smtplib.SMTPException, OSError):
                pass

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks if c]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return codes


def test_both_spools_provide_the_runners_seam():
    assert verifyClass(IQueueSpool, Spool) and not Spool.shared
    assert verifyClass(ISharedQueueSpool, PgSpool) and PgSpool.shared


def test_a_migration_that_arrives_below_the_top_is_applied(pg_dsn):
    """0003 (this queue) may ship before 0002: migrate applies 0002 when it comes."""
    first = [schema.Migration(1, "one", "CREATE TABLE gap_one (x int)"),
             schema.Migration(3, "three", "CREATE TABLE gap_three (x int)")]
    later = sorted([*first, schema.Migration(2, "two", "CREATE TABLE gap_two (x int)")],
                   key=lambda m: m.version)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        found, done = schema.upgrade(conn, create=True, shipped=first)
        assert found is None and [m.version for m in done] == [1, 3]
        assert schema.current_version(conn) == 3
        assert schema.missing(conn, later) == [2]  # the top is there, not everything
        found, done = schema.upgrade(conn, create=False, shipped=later)
        assert found == 3 and [m.version for m in done] == [2]
        assert schema.missing(conn, later) == []
        assert conn.execute("SELECT to_regclass('gap_two') IS NOT NULL").fetchone()[0]


def test_relay_through_a_host_reaches_the_sink(clean, sink, pg_cluster):
    a, b, dsn = clean
    with connect(a) as s:
        assert send(s, "one-relay", "carol@remote.test") == 250
    got = sink.handler.wait(1)
    assert len(got) == 1, a.log()[-3000:]
    assert got[0]["to"] == ["carol@remote.test"] and got[0]["helo"] == "a.test"
    assert b"Subject: one-relay" in got[0]["content"]
    assert a.wait_for(lambda: queue_rows(pg_cluster, dsn) == 0, 10)
    assert "sent: id=" in a.log() and "removed: id=" in a.log()


def test_a_big_message_is_spilled_queued_and_delivered(clean, sink, pg_cluster):
    a, b, dsn = clean
    text = ("x" * 76 + "\r\n") * 20000  # about 1.5 MiB: spilled to DATA/queue/tmp on arrival
    start = len(a.log())
    with connect(a) as s:
        s.sendmail("alice@example.test", ["big@remote.test"], message("big-one", text))
    got = sink.handler.wait(1, 30)
    assert len(got) == 1 and len(got[0]["content"]) > len(text), a.log()[-3000:]
    assert a.wait_for(lambda: queue_rows(pg_cluster, dsn) == 0, 10)
    log = a.log()[start:]
    assert "attempts=1 (250" in log and "not held" not in log and "deferred:" not in log
    assert list((a.data_dir / "queue" / "tmp").iterdir()) == []


def test_two_hosts_deliver_a_flood_exactly_once(clean, sink, pg_cluster):
    a, b, dsn = clean
    n = 200
    names = [f"flood-{i:03d}" for i in range(n)]
    # Every first attempt is deferred by the sink: the retries are claimed from
    # the shared table by whichever host comes first, both polling every 0.1 s.
    for name in names:
        sink.handler.script[f"{name}@remote.test"] = ["451 4.3.0 try again"]
    started = time.monotonic()
    both: dict[str, int] = {}
    senders = [threading.Thread(target=lambda d, part: both.update(
        flood(d, part, rcpt=lambda x: f"{x}@remote.test")), args=(d, part))
        for d, part in ((a, names[: n // 2]), (b, names[n // 2:]))]
    for t in senders:
        t.start()
    for t in senders:
        t.join(180)
    codes = both
    accepted = time.monotonic() - started
    assert list(codes.values()).count(250) == n, Counter(codes.values())
    assert a.wait_for(lambda: len(subjects(sink)) == n, 60, 0.2), (
        f"{len(subjects(sink))} of {n} delivered\n{a.log()[-2000:]}\n{b.log()[-2000:]}")
    assert a.wait_for(lambda: queue_rows(pg_cluster, dsn) == 0, 20, 0.2)
    delivered = time.monotonic() - started
    counts = subjects(sink)
    duplicates = sum(c - 1 for c in counts.values())
    print(f"\nflood: {n} messages, {len(counts)} delivered, duplicates={duplicates}; "
          f"all accepted in {accepted:.1f} s, all delivered (each after one 451) in "
          f"{delivered:.1f} s")
    assert duplicates == 0, [s for s, c in counts.items() if c > 1]
    by = Counter(m["helo"] for m in sink.messages)
    accepted_on = {name: "a.test" if i < n // 2 else "b.test" for i, name in enumerate(names)}
    crossed = sum(1 for m in sink.messages
                  if m["helo"] != accepted_on[m["to"][0].partition("@")[0]])
    print(f"flood: delivered by host: {dict(by)}; by the host that did not accept it: "
          f"{crossed}")
    # The retries were claimed from the shared table, not kept by the accepting host.
    assert crossed > 0, by
    assert "Traceback" not in a.log() + b.log()


def test_a_killed_hosts_messages_are_delivered_by_the_other_after_the_lease(
        clean, sink, pg_cluster):
    a, b, dsn = clean
    sink.handler.data_delay = 2.0  # A's deliveries hang in DATA when it dies
    names = [f"kill-{i:03d}" for i in range(60)]
    codes = flood(a, names, connections=3)
    acked = [n for n, c in codes.items() if c == 250]
    assert len(acked) == len(names), Counter(codes.values())
    held = pg_cluster.execute("SELECT count(*) FROM queue_messages WHERE claimed_by IS NOT "
                              "NULL AND lease_until > now()", dbname(dsn))
    assert int(held) > 0
    a.kill9()
    killed = time.monotonic()
    try:
        sink.handler.data_delay = 0.0
        assert b.wait_for(lambda: any(m["helo"] == "b.test" for m in sink.messages), 30, 0.05)
        first_by_b = time.monotonic() - killed
        assert b.wait_for(lambda: set(acked) <= set(subjects(sink)), 60, 0.2), (
            f"missing: {sorted(set(acked) - set(subjects(sink)))[:10]}\n{b.log()[-3000:]}")
        took = time.monotonic() - killed
        assert b.wait_for(lambda: queue_rows(pg_cluster, dsn) == 0, 20, 0.2)
        counts = subjects(sink)
        by_b = sum(1 for m in sink.messages if m["helo"] == "b.test")
        duplicates = sum(c - 1 for c in counts.values())
        print(f"\nkill -9: {len(acked)} acknowledged, all delivered; by B after the lease: "
              f"{by_b}; duplicates={duplicates} (A's DATA in flight at the kill); "
              f"B's first {first_by_b:.1f} s, all delivered {took:.1f} s after the kill "
              f"(lease {LEASE} s)")
        assert by_b > 0
        # B took over only once A's lease had passed: A renewed it every third of
        # the lease, so at least two thirds of it were left at the kill.
        assert first_by_b >= LEASE * 2 / 3 - 0.1, first_by_b
    finally:
        a.start()


def test_database_outage_during_a_flood(clean, sink, pg_cluster):
    a, b, dsn = clean
    # Sessions authenticated before the outage (AUTH itself needs the database).
    sessions = [connect(a), connect(b)]
    acked = []
    # The first deliveries are still in the sink's DATA when the database stops:
    # their outcome cannot be saved, and they must come out again afterwards.
    sink.handler.data_delay = 1.0
    for i, s in enumerate(sessions * 10):
        name = f"before-{i:02d}"
        assert send(s, name) == 250
        acked.append(name)
    before = (len(a.log()), len(b.log()))
    in_flight = int(pg_cluster.execute("SELECT count(*) FROM queue_messages", dbname(dsn)))
    pg_cluster.stop()
    sink.handler.data_delay = 0.0
    refused = Counter()
    try:
        for i, s in enumerate(sessions * 5):
            code = send(s, f"during-{i:02d}")
            refused[code] += 1
            if code == 250:
                acked.append(f"during-{i:02d}")
    finally:
        pg_cluster.start()
    print(f"\noutage: replies while the database was stopped: {dict(refused)}")
    assert refused[451] > 0 and set(refused) <= {250, 451}, refused
    for s in sessions:
        s.close()
    # Back by itself, on both hosts: a bounded wait for the first 250 on a fresh session.
    for d in (a, b):
        name = f"after-{d.port('smtps')}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and name not in acked:
            try:
                with connect(d) as s:
                    if send(s, name) == 250:
                        acked.append(name)
                        break
            except (smtplib.SMTPException, OSError):
                pass
            time.sleep(0.2)
        assert name in acked, d.log()[-3000:]
    codes = flood(b, [f"after-{i:02d}" for i in range(1, 21)], connections=2)
    assert set(codes.values()) == {250}, codes
    acked += list(codes)
    assert a.wait_for(lambda: set(acked) <= set(subjects(sink)), 60, 0.2), (
        f"lost: {sorted(set(acked) - set(subjects(sink)))}\n{a.log()[-3000:]}")
    assert a.wait_for(lambda: queue_rows(pg_cluster, dsn) == 0, 30, 0.2)
    counts = subjects(sink)
    print(f"outage: {in_flight} queued or in flight at the stop; {len(acked)} acknowledged, "
          f"all delivered, duplicates={sum(c - 1 for c in counts.values())}")
    log = a.log()[before[0]:]
    assert "could not queue the message" in log and "Traceback" not in log, log[-3000:]


def test_queue_commands_and_bounces_against_the_database(clean, sink, pg_cluster):
    a, b, dsn = clean
    sink.handler.script["stuck@remote.test"] = ["451 4.3.0 not now"] * 1000
    sink.handler.script["gone@remote.test"] = ["550 5.1.1 no such user"]
    with connect(a) as s:
        assert send(s, "stuck-one", "stuck@remote.test") == 250
        assert send(s, "gone-one", "gone@remote.test") == 250
    # The permanent failure: a DSN into alice's mailbox (whichever host settled it).
    assert a.wait_for(lambda: [m for d in (a, b) for m in d.messages("alice")
                               if b"multipart/report" in m and b"gone@remote.test" in m], 20)
    # The deferred one is listed on the other host too: the queue is the database's.
    assert b.wait_for(lambda: len(queue_ids(b)) == 1 and "not now" in b.cli(
        "queue", "list").stdout, 20), b.cli("queue", "list").stdout
    [qid] = queue_ids(b)
    # B's metrics count the whole queue, not what B holds (A accepted the message).
    assert b.wait_for(lambda: metric(b, 'netsuite_queue_messages{state="deferred"}') == 1.0,
                      10), b.log()[-2000:]
    assert metric(b, "netsuite_queue_oldest_message_age_seconds") > 0
    shown = b.cli("queue", "show", qid).stdout
    assert "recipient: <stuck@remote.test> pending" in shown and "Subject: stuck-one" in shown
    before = sink.handler.rcpt_calls["stuck@remote.test"]
    pg_cluster.execute("UPDATE queue_messages SET next_attempt = extract(epoch FROM now()) "
                       "+ 3600", dbname(dsn))
    assert "1 message(s) due now" in b.cli("queue", "flush", qid).stdout
    assert a.wait_for(lambda: sink.handler.rcpt_calls["stuck@remote.test"] > before, 10)
    assert f"deleted {qid}" in a.cli("queue", "delete", qid).stdout
    assert a.wait_for(lambda: queue_ids(a) == [] and queue_ids(b) == [], 10)
    assert "queue is empty" in b.cli("queue", "list").stdout
    missing = b.cli("queue", "show", qid, check=False)
    assert missing.returncode != 0 and "no message" in missing.stderr
    assert not [m for m in sink.messages if b"stuck-one" in m["content"]]


def test_a_bounce_to_a_remote_sender_goes_out_through_the_queue(clean, sink, pg_cluster):
    a, b, dsn = clean
    sink.handler.script["refuses@remote.test"] = ["550 5.1.1 no such user"]
    with connect(b) as s:
        assert send(s, "to-bounce", "refuses@remote.test", sender="writer@remote.test") == 250
    # The DSN, from <>, is queued in the same tables and delivered to the sink.
    assert b.wait_for(lambda: [m for m in sink.messages if m["to"] == ["writer@remote.test"]],
                      20), b.log()[-3000:]
    [dsn_msg] = [m for m in sink.messages if m["to"] == ["writer@remote.test"]]
    assert dsn_msg["from"] in ("", "<>") and b"multipart/report" in dsn_msg["content"]
    assert b"refuses@remote.test" in dsn_msg["content"]
    assert b.wait_for(lambda: queue_rows(pg_cluster, dsn) == 0, 10)
    assert "(queued as " in b.log() and "notified: id=" in b.log()


def test_workers_each_claim_from_the_database(make_daemon, pg_dsn, sink):
    """--workers 2 on the PostgreSQL queue: every worker claims and sends, each message once."""
    sink.handler.messages.clear()
    config = host_config(pg_dsn, sink.port, "w")
    config["server"] = {**config["server"], "workers": 2}
    d = make_daemon(config=config, listeners=["smtps"], start=False)
    d.cli("db", "init")
    d.cli("user", "add", "alice", "--password-stdin", input="alice-pw\n")
    d.start()
    names = [f"workers-{i:02d}" for i in range(40)]
    for name in names:
        sink.handler.script[f"{name}@remote.test"] = ["451 4.3.0 try again"]
    codes = flood(d, names, rcpt=lambda x: f"{x}@remote.test")
    assert set(codes.values()) == {250}, codes
    assert d.wait_for(lambda: set(names) <= set(subjects(sink)), 30, 0.2), d.log()[-3000:]
    counts = subjects(sink)
    assert all(counts[n] == 1 for n in names), {n: counts[n] for n in names if counts[n] != 1}
    assert "submit-only" not in d.log() and "Traceback" not in d.log()


def test_hourly_sending_limit_counts_every_hosts_messages(make_daemon, pg_dsn, sink,
                                                          pg_cluster):
    """C{messages_per_hour} over two hosts: what a user sent through A counts on B (send_log)."""
    sink.handler.messages.clear()
    made = []
    for name in ("la", "lb"):
        config = host_config(pg_dsn, sink.port, name)
        config["queue"]["messages_per_hour"] = 2
        made.append(make_daemon(config=config, listeners=["smtps"], start=False))
    a, b = made
    a.cli("db", "init")
    a.cli("user", "add", "alice", "--password-stdin", input="alice-pw\n")
    for d in made:
        d.start()
    with connect(a) as s:
        assert [send(s, "limit-1"), send(s, "limit-2")] == [250, 250], a.log()[-3000:]
    assert int(pg_cluster.execute("SELECT count(*) FROM send_log WHERE user_name = 'alice'",
                                  dbname(pg_dsn))) == 2
    # B has sent nothing for alice, yet her third message of the hour is refused there
    # (the first try: B read her count at the login) and on A alike.
    for d in (b, a):
        with connect(d) as s:
            assert send(s, "limit-3") == 450, d.log()[-3000:]
        assert d.wait_for(lambda d=d: "rate limit: user=alice sent 2 messages" in d.log())
    assert sink.handler.wait(2)
    assert "limit-3" not in subjects(sink)

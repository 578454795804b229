"""
C{--workers 2} against the real daemon: one parent holding the listeners, two
worker processes serving them over one data dir.

Which worker serves a connection is read from /proc: the server side of the
connection is a socket inode in /proc/net/tcp, and the worker whose
/proc/PID/fd holds that inode accepted it.
"""

from __future__ import annotations

import imaplib
import json
import os
import poplib
import signal
import smtplib
import socket
import ssl

import pytest
from harness import wait_steady

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"),
                                reason="reads /proc to see which worker has a connection")

USERS = {"alice": "alice-pw", "bob": "bob-pw"}


def workers_of(d) -> dict[str, int]:
    info = json.loads((d.data_dir / "run" / "workers.json").read_text())
    return info["workers"] if all(info["ready"].values()) else {}


def start(make_daemon, config: dict | None = None, listeners=None):
    cfg = {"server": {"workers": 2, "allow_plaintext_auth": True}}
    for k, v in (config or {}).items():
        cfg.setdefault(k, {}).update(v)
    d = make_daemon(config=cfg, listeners=listeners or ["smtp", "pop3", "imap"], users=USERS)
    assert len(d.wait_for(lambda: workers_of(d), 10)) == 2
    return d


def _inode(server_port: int, client_port: int) -> str | None:
    want_local = f"0100007F:{server_port:04X}"
    want_remote = f"0100007F:{client_port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want_local and fields[2] == want_remote:
                return fields[9]
    return None


def owner(d, sock: socket.socket) -> int | None:
    """The pid of the worker that accepted C{sock}'s connection (after its greeting)."""
    server_port = sock.getpeername()[1]
    inode = _inode(server_port, sock.getsockname()[1])
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in workers_of(d).values():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


def connect_to(d, make, sock_of, want_pid: int | None = None, avoid_pid: int | None = None,
               tries: int = 300):
    """A client (made by C{make()}, after its greeting) served by the wanted worker."""
    for _ in range(tries):
        client = make()
        pid = owner(d, sock_of(client))
        if (want_pid is None or pid == want_pid) and (avoid_pid is None or pid != avoid_pid) \
                and pid is not None:
            return client, pid
        sock_of(client).close()
    wanted = want_pid or f"other than {avoid_pid}"
    raise AssertionError(f"no connection reached worker {wanted} in {tries} tries")


def imap(d):
    return imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=20)


def pop(d):
    return poplib.POP3("127.0.0.1", d.port("pop3"), timeout=20)


def smtp(d):
    s = smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=20)
    return s


def mail(subject: str) -> bytes:
    return (f"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@example.test>\r\n\r\nbody {subject}\r\n").encode()


def deliver(client: smtplib.SMTP, subject: str) -> None:
    client.sendmail("bob@example.test", ["alice@example.test"], mail(subject))


def test_connections_reach_both_workers(make_daemon):
    d = start(make_daemon)
    pids = set(workers_of(d).values())
    seen: set[int] = set()
    # One connection at a time, closed once its worker is known: holding them all
    # would meet the per-address connection limit when one worker takes a run of
    # them (the workers share one accept queue; who accepts is the kernel's choice).
    for _ in range(200):
        c = imap(d)
        try:
            seen.add(owner(d, c.sock))
        finally:
            c.sock.close()
        if seen >= pids:
            break
    assert seen == pids, (seen, pids)
    assert os.getpid() not in pids and d.proc.pid not in pids


def test_deliveries_land_once_readable_everywhere(make_daemon):
    d = start(make_daemon)
    pids = list(workers_of(d).values())
    subjects = []
    for n, pid in enumerate(pids * 3):
        client, _ = connect_to(d, lambda: smtp(d), lambda c: c.sock, want_pid=pid)
        subject = f"w{n}"
        deliver(client, subject)
        client.quit()
        subjects.append(subject)
    assert d.wait_for(lambda: len(d.messages("alice")) >= len(subjects))
    stored = d.messages("alice")
    assert sorted(m.split(b"Subject: ")[1].splitlines()[0].decode() for m in stored) \
        == sorted(subjects)
    for pid in pids:
        c, _ = connect_to(d, lambda: imap(d), lambda c: c.sock, want_pid=pid)
        c.login("alice", "alice-pw")
        typ, data = c.select("INBOX")
        assert typ == "OK" and int(data[0]) == len(subjects)
        typ, data = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        got = sorted(part[1].decode().split(":", 1)[1].strip() for part in data
                     if isinstance(part, tuple))
        assert got == sorted(subjects)
        c.logout()
        p, _ = connect_to(d, lambda: pop(d), lambda c: c.sock, want_pid=pid)
        p.user("alice")
        p.pass_("alice-pw")
        assert p.stat()[0] == len(subjects)
        got = sorted(next(line for line in p.top(i, 0)[1] if line.startswith(b"Subject: "))
                     [9:].decode() for i in range(1, len(subjects) + 1))
        assert got == sorted(subjects)
        p.quit()


def test_idle_sees_a_delivery_by_the_other_worker(make_daemon):
    d = start(make_daemon)
    c, idle_pid = connect_to(d, lambda: imap(d), lambda c: c.sock)
    c.login("alice", "alice-pw")
    c.select("INBOX")
    tag = c._new_tag().decode()
    c.send(f"{tag} IDLE\r\n".encode())
    assert c.readline().startswith(b"+")
    sender, sender_pid = connect_to(d, lambda: smtp(d), lambda s: s.sock, avoid_pid=idle_pid)
    assert sender_pid != idle_pid
    deliver(sender, "idle")
    sender.quit()
    c.sock.settimeout(10)
    line = c.readline()
    assert line.strip() == b"* 1 EXISTS", line
    c.send(b"DONE\r\n")
    while not (line := c.readline()).startswith(tag.encode()):
        assert line.startswith(b"* "), line
    assert line.startswith(tag.encode() + b" OK"), line
    c.logout()


def test_throttle_lockout_is_shared(make_daemon):
    d = start(make_daemon, {"throttle": {"lock_after": 3, "free_failures": 10}})
    pids = list(workers_of(d).values())
    # Three failures, all in one worker ...
    for _ in range(3):
        c, _ = connect_to(d, lambda: pop(d), lambda c: c.sock, want_pid=pids[0])
        c.user("alice")
        with pytest.raises(poplib.error_proto):
            c.pass_("wrong")
        c.sock.close()
    # ... lock the user in the other one: the right password is refused there.
    c, _ = connect_to(d, lambda: pop(d), lambda c: c.sock, want_pid=pids[1])
    c.user("alice")
    with pytest.raises(poplib.error_proto):
        c.pass_("alice-pw")
    c.sock.close()
    # The worker's log reaches the parent's file through a pipe: wait for it.
    assert d.wait_for(lambda: "login refused, locked" in d.log())
    # bob (same address: that key is locked too) is refused on the first worker as well.
    c, _ = connect_to(d, lambda: imap(d), lambda c: c.sock, want_pid=pids[0])
    with pytest.raises(imaplib.IMAP4.error):
        c.login("bob", "bob-pw")


def test_pop3_maildrop_lock_is_shared(make_daemon, mail_store):
    # With mail in PostgreSQL the lock is a leased row: a dead worker's lapses with the lease.
    d = start(make_daemon, {"database": {"lock_lease": 2.0}} if mail_store == "postgresql"
              else None)
    pids = list(workers_of(d).values())
    first, _ = connect_to(d, lambda: pop(d), lambda c: c.sock, want_pid=pids[0])
    first.user("alice")
    first.pass_("alice-pw")
    second, _ = connect_to(d, lambda: pop(d), lambda c: c.sock, want_pid=pids[1])
    second.user("alice")
    with pytest.raises(poplib.error_proto) as e:
        second.pass_("alice-pw")
    assert b"IN-USE" in e.value.args[0]
    second.sock.close()
    first.quit()
    third, _ = connect_to(d, lambda: pop(d), lambda c: c.sock, want_pid=pids[1])
    third.user("alice")
    assert third.pass_("alice-pw").startswith(b"+OK")
    # A session whose worker dies releases the lock with it.
    holder_pid = pids[1]
    os.kill(holder_pid, signal.SIGKILL)
    assert d.wait_for(lambda: len(workers_of(d)) == 2 and holder_pid not in
                      workers_of(d).values(), 20)
    def log_in_again():
        again, _ = connect_to(d, lambda: pop(d), lambda c: c.sock)
        again.user("alice")
        try:
            return again.pass_("alice-pw").startswith(b"+OK") and again.quit()
        except poplib.error_proto:  # (PostgreSQL: IN-USE until the lease has passed)
            again.sock.close()
            return False

    # Maildir's flock goes with the process at once; the row's lease takes its time.
    assert log_in_again() if mail_store != "postgresql" else d.wait_for(log_in_again, 10, 0.5)


def test_killed_worker_is_replaced_and_service_continues(make_daemon):
    d = start(make_daemon)
    before = workers_of(d)
    victim = before["0"]
    os.kill(victim, signal.SIGKILL)
    after = d.wait_for(lambda: (w := workers_of(d)) and len(w) == 2 and w["0"] != victim and w,
                       20)
    assert after and after["1"] == before["1"], (before, after)
    assert f"worker 0 (pid {victim}) died (killed by signal 9)" in d.log()
    client, _ = connect_to(d, lambda: smtp(d), lambda c: c.sock, want_pid=after["0"])
    deliver(client, "after-kill")
    client.quit()
    assert d.wait_for(lambda: len(d.messages("alice")) == 1)
    c, _ = connect_to(d, lambda: imap(d), lambda c: c.sock, want_pid=after["0"])
    c.login("alice", "alice-pw")
    assert c.select("INBOX")[1] == [b"1"]
    c.logout()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


def test_sigterm_stops_every_worker_exit_code_0(make_daemon):
    d = start(make_daemon)
    workers = workers_of(d)
    pids = list(workers.values())
    c, _ = connect_to(d, lambda: imap(d), lambda c: c.sock)  # an open session does not hang it
    # A graceful SIGTERM stop (netsuite.shutdown): every worker exits 0, and so does
    # the parent (twistd would otherwise re-raise the signal it stopped for).
    assert d.stop() == 0
    for index, pid in workers.items():
        assert f"worker {index} (pid {pid}) stopped (exit code 0)" in d.log()
    assert d.wait_for(lambda: all(_gone(p) for p in pids), 10), pids
    assert not (d.data_dir / "run" / "listening.json").exists()
    assert "Traceback" not in d.log(), d.log()[-3000:]
    c.sock.close()


def test_workers_exit_when_the_parent_is_killed(make_daemon):
    d = start(make_daemon)
    pids = list(workers_of(d).values())
    d.kill9()
    assert d.wait_for(lambda: all(_gone(p) for p in pids), 15), pids


def test_tls_listener_and_listening_json_ports(make_daemon):
    """Also: C{--workers} on the command line, and implicit TLS served by both workers."""
    d = make_daemon(config={"server": {"allow_plaintext_auth": True}},
                    listeners=["imaps", "pop3s", "imap"], users=USERS, start=False)
    d.start("--workers", "2")
    assert len(d.wait_for(lambda: workers_of(d), 10)) == 2
    assert set(d.ports) == {"imaps", "pop3s", "imap"} and all(d.ports.values())
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    pids = set(workers_of(d).values())
    # One client per worker, each made by connect_to (which closes the misses), so
    # the per-address limit is never approached however the kernel spreads them.
    held = [connect_to(d, lambda: imaplib.IMAP4_SSL("127.0.0.1", d.port("imaps"),
                                                    ssl_context=ctx, timeout=20),
                       lambda c: c.sock, want_pid=pid)[0] for pid in sorted(pids)]
    assert {owner(d, c.sock) for c in held} == pids
    typ, _ = held[0].login("alice", "alice-pw")
    assert typ == "OK"
    for c in held:
        c.sock.close()


def test_queue_sends_each_message_once(make_daemon):
    try:
        from queue_remote import Remote
    except ImportError:
        pytest.skip("aiosmtpd (pip) is the remote MX of this test")
    remote = Remote().start()
    try:
        d = start(make_daemon, {"queue": {"poll_interval": 0.1, "min_backoff": 0.3,
                                          "max_backoff": 0.6,
                                          "routes": {"remote.test": f"127.0.0.1:{remote.port}"}}},
                  listeners=["smtp", "submission", "imap"])
        pids = list(workers_of(d).values())
        subjects = []
        for n, pid in enumerate(pids * 3):
            client, _ = connect_to(d, lambda: smtplib.SMTP("127.0.0.1", d.port("submission"),
                                                           timeout=20),
                                   lambda c: c.sock, want_pid=pid)
            client.login("alice", "alice-pw")
            subject = f"out{n}"
            client.sendmail("alice@example.test", ["carol@remote.test"],
                            mail(subject).replace(b"alice@example.test", b"carol@remote.test"))
            client.quit()
            subjects.append(subject)
        msgs = remote.handler.wait(len(subjects))
        queue = d.data_dir / "queue" / "active"
        assert d.wait_for(lambda: not [n for n in os.listdir(queue) if n.endswith(".msg")])
        got = sorted(m["content"].split(b"Subject: ")[1].splitlines()[0].decode()
                     for m in remote.handler.messages)
        assert got == sorted(subjects), (got, d.log()[-3000:])
        assert len(msgs) >= len(subjects)
    finally:
        remote.stop()


def test_hourly_sending_limit_is_shared(make_daemon):
    """C{messages_per_hour} counts a user's messages on every worker, not per worker."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: the messages wait in the queue, which is fine here
    d = start(make_daemon, {"queue": {"messages_per_hour": 2,
                                      "routes": {"remote.test": f"127.0.0.1:{port}"}}},
              listeners=["submission"])
    pids = list(workers_of(d).values())

    def send(pid: int, subject: str) -> None:
        client, _ = connect_to(d, lambda: smtplib.SMTP("127.0.0.1", d.port("submission"),
                                                       timeout=20),
                               lambda c: c.sock, want_pid=pid)
        try:
            client.login("alice", "alice-pw")
            client.sendmail("alice@example.test", ["carol@remote.test"], mail(subject))
        finally:
            client.close()

    # Both allowed messages on the first worker ...
    send(pids[0], "one")
    send(pids[0], "two")
    # ... and the third is refused on the other one as well as on the first.
    for pid in (pids[1], pids[0]):
        with pytest.raises(smtplib.SMTPDataError) as e:
            send(pid, "three")
        assert e.value.smtp_code == 450 and e.value.smtp_error.startswith(b"4.7.1")
    assert d.wait_for(lambda: d.log().count("rate limit: user=alice") == 2)


def test_deferred_message_is_sent_once_when_the_queue_worker_restarts(make_daemon):
    """A message accepted by worker 1 and deferred (451) is retried by one worker only,
    also after worker 0 (which runs the queue) is killed and recovers the spool."""
    try:
        from queue_remote import Remote
    except ImportError:
        pytest.skip("aiosmtpd (pip) is the remote MX of this test")
    remote = Remote().start()
    try:
        remote.handler.script["carol@remote.test"] = ["451 4.3.0 busy"] * 10
        d = start(make_daemon, {"queue": {"poll_interval": 0.1, "min_backoff": 0.3,
                                          "max_backoff": 0.6,
                                          "routes": {"remote.test": f"127.0.0.1:{remote.port}"}}},
                  listeners=["submission"])
        w = workers_of(d)
        client, _ = connect_to(d, lambda: smtplib.SMTP("127.0.0.1", d.port("submission"),
                                                       timeout=20),
                               lambda c: c.sock, want_pid=w["1"])
        client.login("alice", "alice-pw")
        client.sendmail("alice@example.test", ["carol@remote.test"], mail("deferred"))
        client.quit()
        assert d.wait_for(lambda: remote.handler.rcpt_calls.get("carol@remote.test", 0) >= 1)
        os.kill(w["0"], signal.SIGKILL)
        assert d.wait_for(lambda: (n := workers_of(d)) and len(n) == 2 and n["0"] != w["0"], 20)
        assert remote.handler.wait(1)
        queue = d.data_dir / "queue" / "active"
        assert d.wait_for(lambda: not [n for n in os.listdir(queue) if n.endswith(".msg")], 20)
        # A second sender would retry within max_backoff (0.6 s): wait until the
        # count has stood still for 2 s, then stop the server.
        assert wait_steady(lambda: len(remote.handler.messages), polls=10)
        d.stop()
        assert len(remote.handler.messages) == 1, d.log()[-4000:]
    finally:
        remote.stop()


def test_workers_must_be_positive(make_daemon):
    d = make_daemon(config={"server": {"workers": 0}}, listeners=["imap"], start=False)
    with pytest.raises(RuntimeError) as e:
        d.start()
    assert "server.workers" in str(e.value)


def test_ftp_and_telnet_served_by_both_workers(make_daemon):
    import io

    d = start(make_daemon, {"ftp": {"require_tls": False}}, listeners=["ftp", "telnet"])
    pids = list(workers_of(d).values())
    for n, pid in enumerate(pids):
        f, _ = connect_to(d, lambda: _ftp(d), lambda c: c.sock, want_pid=pid)
        f.login("alice", "alice-pw")
        f.storbinary(f"STOR from-{n}.txt", io.BytesIO(f"written by {pid}\n".encode()))
        f.quit()
    for pid in pids:  # each worker reads what the other wrote
        f, _ = connect_to(d, lambda: _ftp(d), lambda c: c.sock, want_pid=pid)
        f.login("alice", "alice-pw")
        for n, writer in enumerate(pids):
            out = io.BytesIO()
            f.retrbinary(f"RETR from-{n}.txt", out.write)
            assert out.getvalue() == f"written by {writer}\n".encode()
        f.quit()
    for pid in pids:
        s, _ = connect_to(d, lambda: _telnet(d), lambda s: s, want_pid=pid)
        s.settimeout(10)
        got = b""
        while b"login: " not in got:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
        s.close()


def _ftp(d):
    import ftplib

    f = ftplib.FTP(timeout=20)
    f.connect("127.0.0.1", d.port("ftp"))
    return f


def _telnet(d):
    s = socket.create_connection(("127.0.0.1", d.port("telnet")), timeout=10)
    s.recv(1)  # the server has accepted once it speaks (option negotiation)
    return s


def test_shared_throttle_file_behaves_like_the_in_memory_one(tmp_path):
    """Two instances on one file (as two workers): same delays, locks and expiry as
    L{LoginThrottle}, on a fake clock."""
    from netsuite.auth.shared_throttle import SharedLoginThrottle
    from netsuite.auth.throttle import LoginThrottle
    from netsuite.config import ThrottleConfig

    now = [1000.0]
    cfg = ThrottleConfig(free_failures=1, base_delay=1, max_delay=4, lock_after=4,
                         window=10, lock_seconds=30)
    a = SharedLoginThrottle(cfg, tmp_path / "t.db", clock=lambda: now[0])
    b = SharedLoginThrottle(cfg, tmp_path / "t.db", clock=lambda: now[0])
    ref = LoginThrottle(cfg, clock=lambda: now[0])
    keys = ("addr:1.2.3.4", "user:alice")
    for i, shared in enumerate([a, b, a, b]):
        assert shared.fail(*keys) == ref.fail(*keys), i
    assert a.locked(*keys) and b.locked("user:alice") and ref.locked(*keys)
    assert not b.locked("user:bob")
    b.succeed(*keys)  # a success while locked does not unlock
    assert a.locked(*keys)
    now[0] += 31
    assert not a.locked(*keys) and not ref.locked(*keys)
    # Failures older than the window no longer count.
    assert a.fail("user:carol") == ref.fail("user:carol") == 0
    now[0] += 11
    assert b.fail("user:carol") == ref.fail("user:carol") == 0
    b.succeed("user:carol")
    assert a.fail("user:carol") == 0

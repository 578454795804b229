"""
The outgoing queue against the real daemon: submission with AUTH, relayed to
an aiosmtpd server on loopback (the remote MX) through a static route.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import socket
import ssl
import threading

import pytest
from mail_fixtures import FAST, message, queue_ids, submit
from queue_remote import Handler, Remote, free_port
from rawsmtp import insecure_context


def relay_daemon(make_daemon, remote_port: int, smtp: dict | None = None, **queue):
    config = {"queue": {**FAST, "routes": {"remote.test": f"127.0.0.1:{remote_port}"},
                        **queue}, "smtp": smtp or {}}
    return make_daemon(config=config, listeners=["smtp", "submission", "smtps"],
                       users={"alice": "alice-pw", "bob": "bob-pw"})


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def dsn_of(d, user: str, timeout: float = 15.0) -> bytes:
    msgs = d.wait_for(lambda: [m for m in d.messages(user) if b"multipart/report" in m],
                      timeout)
    assert msgs, f"no DSN in {user}'s mailbox\n{d.log()[-3000:]}"
    return msgs[-1]


def test_relay_end_to_end(make_daemon, remote):
    d = relay_daemon(make_daemon, remote.port)
    body = message("e2e", ".a leading dot\r\nline two\r\n")
    assert submit(d, ["carol@remote.test", "Dave@Remote.test"], body) == {}
    msgs = remote.handler.wait(1)
    assert len(msgs) == 1, d.log()[-3000:]
    m = msgs[0]
    assert m["from"] == "alice@example.test"
    assert sorted(m["to"]) == ["Dave@Remote.test", "carol@remote.test"]
    content = m["content"]
    assert content.startswith(b"Received: from ")
    assert b"with ESMTPSA id" in content
    assert b"\r\n.a leading dot\r\nline two\r\n" in content
    assert b"Return-Path" not in content
    assert d.wait_for(lambda: queue_ids(d) == [], 5)
    assert "sent: id=" in d.log()


def test_mx_path_still_refuses_relaying(make_daemon, remote):
    d = relay_daemon(make_daemon, remote.port)
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=10) as s:
        s.ehlo()
        s.mail("spammer@evil.test")
        code, text = s.rcpt("carol@remote.test")
    assert code == 554 and text.startswith(b"5.7.1")
    assert remote.messages == []


def test_451_twice_then_250_is_delivered_once(make_daemon, remote):
    remote.handler.script["slow@remote.test"] = ["451 4.3.0 try later", "451 4.3.0 try later"]
    d = relay_daemon(make_daemon, remote.port)
    submit(d, ["slow@remote.test"], message("retry"))
    msgs = remote.handler.wait(1)
    assert len(msgs) == 1, d.log()[-3000:]
    assert remote.handler.rcpt_calls["slow@remote.test"] == 3
    d.wait_for(lambda: "removed: id=" in d.log(), 5)
    assert len(remote.messages) == 1
    assert d.log().count("deferred: id=") == 2
    assert dsn_free(d, "alice")


def dsn_free(d, user: str) -> bool:
    return not any(b"multipart/report" in m for m in d.messages(user))


def test_550_bounces_to_local_sender_others_delivered(make_daemon, remote):
    remote.handler.script["nobody@remote.test"] = ["550 5.1.1 <nobody@remote.test>: no such user"]
    d = relay_daemon(make_daemon, remote.port)
    original = message("bounceme")
    submit(d, ["nobody@remote.test", "carol@remote.test"], original)
    msgs = remote.handler.wait(1)
    assert [m["to"] for m in msgs] == [["carol@remote.test"]]
    raw = dsn_of(d, "alice")
    assert raw.startswith(b"Return-Path: <>\n")
    report = parse(raw)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = report.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = parts[1].get_payload()
    fields = {}
    for block in status:
        for k, v in block.items():
            fields.setdefault(k, []).append(v)
    assert fields["Reporting-MTA"] == ["dns; mx.test"]
    assert fields["Final-Recipient"] == ["rfc822; nobody@remote.test"]
    assert fields["Action"] == ["failed"] and fields["Status"] == ["5.1.1"]
    assert "550 5.1.1" in fields["Diagnostic-Code"][0]
    assert "Subject: bounceme" in parts[2].get_payload()
    assert "carol@remote.test" not in raw.decode()  # only the failed one is reported
    d.wait_for(lambda: "removed: id=" in d.log(), 5)
    assert queue_ids(d) == []


def test_null_sender_is_never_bounced(make_daemon, remote):
    """The bounce (sender <>) of a bounce is dropped, never bounced again."""
    remote.handler.script["nobody@remote.test"] = ["550 5.1.1 no such user"]
    remote.handler.script["far@remote.test"] = ["550 5.1.1 no such user either"]
    d = relay_daemon(make_daemon, remote.port,
                     smtp={"shared_senders": {"far@remote.test": ["alice"]}})
    with pytest.raises(smtplib.SMTPSenderRefused) as e:  # clients may not send as <>
        submit(d, ["nobody@remote.test"], message("nullsender"), sender="")
    assert e.value.smtp_code == 553
    submit(d, ["nobody@remote.test"], message("nullsender"), sender="far@remote.test")
    assert d.wait_for(lambda: "null sender" in d.log(), 10), d.log()[-3000:]
    assert d.wait_for(lambda: queue_ids(d) == [], 5)
    assert dsn_free(d, "alice")
    assert remote.messages == []
    assert remote.handler.rcpt_calls == {"nobody@remote.test": 1, "far@remote.test": 1}


def test_remote_down_then_up(make_daemon):
    port = free_port()
    d = relay_daemon(make_daemon, port)
    submit(d, ["late@remote.test"], message("late"))
    assert d.wait_for(lambda: d.log().count("deferred: id=") >= 2, 10), d.log()[-3000:]
    assert len(queue_ids(d)) == 1
    r = Remote(port).start()
    try:
        msgs = r.handler.wait(1, timeout=15)
        assert len(msgs) == 1 and msgs[0]["to"] == ["late@remote.test"]
    finally:
        r.stop()
    assert d.wait_for(lambda: queue_ids(d) == [], 5)


@pytest.mark.maildir_only  # the queue's spool on disk (PostgreSQL's: test_pg_queue)
def test_sigkill_with_200_queued_all_arrive_after_restart(make_daemon):
    port = free_port()
    d = relay_daemon(make_daemon, port, min_backoff=0.5, max_backoff=1.0)
    with smtplib.SMTP_SSL("127.0.0.1", d.port("smtps"), timeout=30,
                          context=insecure_context()) as s:
        s.login("alice", "alice-pw")
        for i in range(200):
            s.sendmail("alice@example.test", [f"user{i % 7}@remote.test"],
                       message(f"crash{i}"))
    d.kill9()
    r = Remote(port).start()
    try:
        d.start()
        msgs = r.handler.wait(200, timeout=60)
        subjects = sorted(parse(m["content"])["Subject"] for m in msgs)
        assert subjects == sorted(f"crash{i}" for i in range(200)), d.log()[-3000:]
    finally:
        r.stop()
    assert "200 message(s) recovered" in d.log()


@pytest.mark.maildir_only  # the queue's spool on disk (PostgreSQL's: test_pg_queue)
def test_recorded_250_is_not_resent_after_kill9(make_daemon, remote):
    """
    One message for two destinations: remote.test accepts, other.test stays silent.
    Killed (-9) once remote.test's 250 is in the log, the restarted daemon sends
    only to other.test: the 250 was recorded durably the moment it came.
    """
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the backlog; no greeting ever comes
    other_port = silent.getsockname()[1]
    d = relay_daemon(make_daemon, remote.port, command_timeout=60, connect_timeout=60)
    d.config["queue"]["routes"]["other.test"] = f"127.0.0.1:{other_port}"
    d.restart()
    submit(d, ["x@remote.test", "y@other.test"], message("twodest"))
    assert remote.handler.wait(1) and d.wait_for(
        lambda: "sent: id=" in d.log() and "to=<x@remote.test>" in d.log()), d.log()[-3000:]
    qid = queue_ids(d)
    assert len(qid) == 1  # other.test is still pending
    d.kill9()
    silent.close()
    other = Remote(other_port).start()
    try:
        d.start()
        got = other.handler.wait(1, timeout=20)
        assert [m["to"] for m in got] == [["y@other.test"]], d.log()[-3000:]
        assert d.wait_for(lambda: queue_ids(d) == [], 10)
    finally:
        other.stop()
    assert len(remote.messages) == 1, "remote.test got the message twice"
    assert remote.handler.rcpt_calls == {"x@remote.test": 1}


def test_kill9_mid_delivery_resends_at_most_what_was_in_flight(make_daemon, remote):
    """Killed while relaying: only a message whose 250 was on the wire may arrive twice."""
    d = relay_daemon(make_daemon, remote.port, destination_concurrency=3)
    lease = 0.0
    if d.in_postgresql:
        # The killed process's messages wait for their lease before the new one takes them
        # (its 250s not recorded yet included): a short one, not the default minute.
        lease = 3.0
        d.config["database"]["lock_lease"] = lease
        d.restart()
    s = smtplib.SMTP_SSL("127.0.0.1", d.port("smtps"), timeout=30, context=insecure_context())
    s.login("alice", "alice-pw")
    accepted = 0
    while accepted < 120:
        s.sendmail("alice@example.test", [f"user{accepted % 7}@remote.test"],
                   message(f"mid{accepted}"))
        accepted += 1
        if len(remote.messages) >= 40:
            break  # the queue is busy relaying: kill it now
    d.kill9()
    s.close()
    d.start()
    expected = {f"mid{i}" for i in range(accepted)}
    assert d.wait_for(lambda: expected <= {parse(m["content"])["Subject"]
                                           for m in list(remote.messages)}, 60), d.log()[-3000:]
    assert d.wait_for(lambda: queue_ids(d) == [], 10 + 2 * lease), queue_ids(d)
    subjects = [parse(m["content"])["Subject"] for m in remote.messages]
    duplicates = len(subjects) - len(set(subjects))
    assert duplicates <= 3, f"{duplicates} messages sent twice (3 connections in flight)"


def test_8bit_becomes_quoted_printable_without_8bitmime(make_daemon):
    r = Remote(handler=Handler(no_8bitmime=True)).start()
    try:
        d = relay_daemon(make_daemon, r.port)
        text = "Grüße aus Köln\r\n.dot line\r\n"
        body = ("From: alice@example.test\r\nSubject: umlauts\r\nMIME-Version: 1.0\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\n" + text).encode()
        submit(d, ["k@remote.test"], body)
        msgs = r.handler.wait(1)
        assert len(msgs) == 1, d.log()[-3000:]
        content = msgs[0]["content"]
        assert content.isascii()
        m = parse(content)
        assert m["Content-Transfer-Encoding"] == "quoted-printable"
        assert m.get_payload(decode=True).decode("utf-8").replace("\r\n", "\n") \
            == text.replace("\r\n", "\n")
        assert "BODY=8BITMIME" not in msgs[0]["mail_options"]
    finally:
        r.stop()


def test_8bit_sent_as_is_with_8bitmime(make_daemon, remote):
    d = relay_daemon(make_daemon, remote.port)
    body = "Subject: raw\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße\r\n".encode()
    submit(d, ["k@remote.test"], body)
    msgs = remote.handler.wait(1)
    assert "Grüße".encode() in msgs[0]["content"]
    assert "BODY=8BITMIME" in msgs[0]["mail_options"]


def test_mail_loop_is_bounced_not_relayed(make_daemon, remote):
    d = relay_daemon(make_daemon, remote.port, max_hops=10)
    hops = "".join(f"Received: from hop{i}.test by hop{i + 1}.test; "
                   "Mon, 1 Jan 2024 00:00:00 +0000\r\n" for i in range(12))
    submit(d, ["loop@remote.test"], (hops + "Subject: loop\r\n\r\nx\r\n").encode())
    raw = dsn_of(d, "alice")
    assert b"Status: 5.4.6" in raw
    assert remote.messages == []


@pytest.mark.maildir_only  # the queue's spool on disk (PostgreSQL's: test_pg_queue)
def test_queue_cli_list_show_flush_delete(make_daemon):
    port = free_port()
    d = relay_daemon(make_daemon, port, min_backoff=60, max_backoff=60)
    submit(d, ["keep@remote.test"], message("keepme"))
    submit(d, ["drop@remote.test"], message("dropme"))
    assert d.wait_for(lambda: d.log().count("deferred: id=") >= 2, 10), d.log()[:6000]
    ids = queue_ids(d)
    assert len(ids) == 2
    listing = d.cli("queue", "list").stdout
    assert "<keep@remote.test>" in listing and "4.4.1 connect to" in listing
    shown = {i: d.cli("queue", "show", i).stdout for i in ids}
    keep = next(i for i, text in shown.items() if "keep@remote.test" in text)
    drop = next(i for i in ids if i != keep)
    assert "Subject: keepme" in shown[keep] and "sender: <alice@example.test>" in shown[keep]
    assert "deleted" in d.cli("queue", "delete", drop).stdout
    assert d.wait_for(lambda: queue_ids(d) == [keep] or None, 5), queue_ids(d)
    bad = d.cli("queue", "show", "../../etc", check=False)
    assert bad.returncode != 0 and "not a queue id" in bad.stderr
    missing = d.cli("queue", "delete", "ABCDEF012345", check=False)
    assert missing.returncode != 0 and "no message" in missing.stderr
    r = Remote(port).start()
    try:
        # The next retry is a minute away: only the flush gets it out now.
        out = d.cli("queue", "flush", keep).stdout
        assert "taken up" in out
        msgs = r.handler.wait(1, timeout=15)
        assert [m["to"] for m in msgs] == [["keep@remote.test"]]
    finally:
        r.stop()
    assert d.wait_for(lambda: queue_ids(d) == [], 5)
    assert dsn_free(d, "alice")


def test_per_user_hourly_limit(make_daemon, remote):
    d = relay_daemon(make_daemon, remote.port, messages_per_hour=2)
    submit(d, ["a@remote.test"], message("one"))
    submit(d, ["a@remote.test"], message("two"))
    with pytest.raises(smtplib.SMTPDataError) as e:
        submit(d, ["a@remote.test"], message("three"))
    assert e.value.smtp_code == 450 and e.value.smtp_error.startswith(b"4.7.1")
    # bob has his own allowance; local delivery is not limited
    submit(d, ["a@remote.test"], message("bob"), sender="bob@example.test", user="bob",
           password="bob-pw")
    submit(d, ["bob@example.test"], message("local"))
    assert len(remote.handler.wait(3)) == 3


def test_stalled_remote_times_out_without_blocking_others(make_daemon, remote):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        config = {"queue": {**FAST, "command_timeout": 1, "routes": {
            "remote.test": f"127.0.0.1:{remote.port}",
            "stall.test": f"127.0.0.1:{silent.getsockname()[1]}"}}}
        d = make_daemon(config=config, listeners=["smtps"], users={"alice": "alice-pw"})
        submit(d, ["x@stall.test"], message("stalled"))
        submit(d, ["y@remote.test"], message("fine"))
        assert len(remote.handler.wait(1)) == 1
        assert d.wait_for(lambda: "timed out waiting for the remote server" in d.log(), 10)
        assert any("x@stall.test" in line for line in d.cli("queue", "list").stdout.splitlines())
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        silent.close()


def test_config_errors_name_the_key(make_daemon, tmp_path):
    d = make_daemon(config={"queue": {"routes": {"remote.test": "not a host:port"}}},
                    start=False)
    with pytest.raises(RuntimeError) as e:
        d.start()
    assert "queue.routes.remote.test" in str(e.value)
    d2 = make_daemon(config={"queue": {"smarthost": "relay.test:25",
                                       "smarthost_user": "u"}}, start=False)
    with pytest.raises(RuntimeError) as e:
        d2.start()
    assert "queue.smarthost_password_file" in str(e.value)


def test_disabled_queue_refuses_relaying_clearly(make_daemon, remote):
    d = make_daemon(config={"queue": {"enabled": False}}, listeners=["smtps"],
                    users={"alice": "alice-pw"})
    with smtplib.SMTP_SSL("127.0.0.1", d.port("smtps"), timeout=10,
                          context=insecure_context()) as s:
        s.login("alice", "alice-pw")
        s.mail("alice@example.test")
        code, text = s.rcpt("someone@remote.test")
    assert code == 551 and text.startswith(b"5.7.1")


def test_smarthost_with_starttls_and_auth(make_daemon, tmp_path):
    from aiosmtpd.smtp import AuthResult

    from netsuite.tls import write_self_signed

    cert, key = tmp_path / "relay.pem", tmp_path / "relay.key"
    write_self_signed("localhost", cert, key)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((mechanism, auth_data.login, session.ssl is not None))
        ok = (auth_data.login, auth_data.password) == (b"relayuser", b"s3cret pass")
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535

    relay = Remote(tls_context=tls, require_starttls=True, authenticator=authenticator,
                   auth_require_tls=True).start()
    try:
        secret = tmp_path / "smarthost.pw"
        secret.write_text("s3cret pass\n")
        d = make_daemon(config={"queue": {
            **FAST, "smarthost": f"localhost:{relay.port}", "smarthost_user": "relayuser",
            "smarthost_password_file": str(secret), "smarthost_ca_file": str(cert)}},
            listeners=["smtps"], users={"alice": "alice-pw"})
        submit(d, ["far@elsewhere.test", "other@third.test"], message("viasmarthost"))
        msgs = relay.handler.wait(1)
        assert len(msgs) == 1, d.log()[-3000:]
        assert msgs[0]["tls"] and msgs[0]["auth"]
        assert sorted(msgs[0]["to"]) == ["far@elsewhere.test", "other@third.test"]
        assert logins and all(tls_on for _m, _l, tls_on in logins)

        # A wrong password is a temporary failure: the message waits in the queue.
        secret.write_text("wrong\n")
        d.restart()
        submit(d, ["far@elsewhere.test"], message("wrongpw"))
        assert d.wait_for(lambda: "deferred: id=" in d.log(), 10), d.log()[-3000:]
        assert "535" in d.cli("queue", "list").stdout, d.log()[-5000:]
        assert len(relay.messages) == 1
    finally:
        relay.stop()


def test_smarthost_require_tls_without_starttls_defers(make_daemon, remote, tmp_path):
    d = make_daemon(config={"queue": {**FAST, "smarthost": f"127.0.0.1:{remote.port}",
                                      "smarthost_require_tls": True}},
                    listeners=["smtps"], users={"alice": "alice-pw"})
    submit(d, ["far@elsewhere.test"], message("needtls"))
    assert d.wait_for(lambda: "deferred: id=" in d.log(), 10), d.log()[-3000:]
    assert remote.messages == []
    assert "TLS" in d.cli("queue", "list").stdout


def test_delay_warning_then_expiry_bounce(make_daemon):
    port = free_port()
    d = relay_daemon(make_daemon, port, delay_warning=0.5, lifetime=10)  # room for a slow CI box
    submit(d, ["never@remote.test"], message("expires"))
    warning = dsn_of(d, "alice")
    assert b"Action: delayed" in warning and b"Status: 4.4.1" in warning
    assert b"Subject: Delayed Mail" in warning
    assert len(queue_ids(d)) == 1  # still being retried
    final = d.wait_for(lambda: [m for m in d.messages("alice") if b"Action: failed" in m], 30)
    assert final, d.log()[-3000:]
    assert b"Status: 5.4.7" in final[0] and b"message expired" in final[0]
    assert b"Subject: expires" in final[0]
    assert queue_ids(d) == []
    assert sum(b"multipart/report" in m for m in d.messages("alice")) == 2  # one each


def test_bounce_for_remote_sender_goes_out_through_the_queue(make_daemon, remote):
    remote.handler.script["nobody@remote.test"] = ["550 5.1.1 no such user"]
    d = relay_daemon(make_daemon, remote.port,
                     smtp={"shared_senders": {"alice@remote.test": ["alice"]}})
    submit(d, ["nobody@remote.test"], message("fromafar"), sender="alice@remote.test")
    msgs = remote.handler.wait(1)
    assert len(msgs) == 1, d.log()[-3000:]
    assert msgs[0]["from"] == "<>" or msgs[0]["from"] == ""
    assert msgs[0]["to"] == ["alice@remote.test"]
    assert b"multipart/report" in msgs[0]["content"]
    assert b"Final-Recipient: rfc822; nobody@remote.test" in msgs[0]["content"]


@pytest.mark.parametrize("remote_utf8", [True, False])
def test_smtputf8_recipient(make_daemon, remote_utf8):
    r = Remote(enable_SMTPUTF8=remote_utf8).start()
    try:
        d = relay_daemon(make_daemon, r.port)
        with smtplib.SMTP_SSL("127.0.0.1", d.port("smtps"), timeout=20,
                              context=insecure_context()) as s:
            s.login("alice", "alice-pw")
            s.command_encoding = "utf-8"
            s.sendmail("alice@example.test", ["jörg@remote.test"], message("utf8"),
                       mail_options=["SMTPUTF8"])
        if remote_utf8:
            msgs = r.handler.wait(1)
            assert [m["to"] for m in msgs] == [["jörg@remote.test"]], d.log()[-3000:]
            assert "SMTPUTF8" in msgs[0]["mail_options"]
        else:
            raw = dsn_of(d, "alice")
            assert b"Status: 5.6.7" in raw
            assert r.messages == []
    finally:
        r.stop()


@pytest.mark.parametrize("reuse", [5.0, 0])
def test_connection_kept_for_the_next_message(make_daemon, remote, reuse):
    d = relay_daemon(make_daemon, remote.port, connection_reuse_time=reuse)
    submit(d, ["one@remote.test"], message("first"))
    remote.handler.wait(1)
    submit(d, ["two@remote.test"], message("second"))
    assert len(remote.handler.wait(2)) == 2
    assert len(remote.handler.ehlo_seen) == (1 if reuse else 2)


def test_big_message_spilled_to_disk_arrives_intact(make_daemon, remote):
    d = relay_daemon(make_daemon, remote.port)
    lines = "".join(f"{i:07d} {'x' * 70}\r\n" for i in range(20000))  # ~1.6 MB
    body = message("big", lines)
    submit(d, ["big@remote.test"], body)
    msgs = remote.handler.wait(1)
    assert len(msgs) == 1, d.log()[-3000:]
    assert msgs[0]["content"].endswith(body)
    assert not list((d.data_dir / "queue" / "tmp").iterdir())


class SlowHandler(Handler):
    """Holds each DATA for a while and records how many run at once."""

    def __init__(self):
        super().__init__()
        self.active = 0
        self.most = 0

    async def handle_DATA(self, server, session, envelope):
        import asyncio

        self.active += 1
        self.most = max(self.most, self.active)
        await asyncio.sleep(0.5)
        self.active -= 1
        return await super().handle_DATA(server, session, envelope)


def test_destination_concurrency_cap(make_daemon):
    r = Remote(handler=SlowHandler()).start()
    try:
        d = relay_daemon(make_daemon, r.port, destination_concurrency=2)
        with smtplib.SMTP_SSL("127.0.0.1", d.port("smtps"), timeout=20,
                              context=insecure_context()) as s:
            s.login("alice", "alice-pw")
            for i in range(8):
                s.sendmail("alice@example.test", [f"c{i}@remote.test"], message(f"cap{i}"))
        assert len(r.handler.wait(8)) == 8, d.log()[-3000:]
        assert r.handler.most == 2
    finally:
        r.stop()

"""Unit tests of the queue's pure parts, its spool, and its client over StringTransport."""

from __future__ import annotations

import email
import email.policy
import json
import os

import pytest
from twisted.internet.testing import StringTransport

from netsuite.queue import bounce, wire
from netsuite.queue.client import QueueClient
from netsuite.queue.spool import Envelope, Recipient, Spool
from netsuite.queue.wire import Reply


def test_to_wire_stuffs_dots_and_uses_crlf():
    assert wire.to_wire(b"a\n.b\n..c\n") == b"a\r\n..b\r\n...c\r\n.\r\n"
    assert wire.to_wire(b"no newline at end") == b"no newline at end\r\n.\r\n"
    assert wire.to_wire(b"") == b".\r\n"
    assert wire.to_wire(b"cr\r\n") == b"cr\r\n.\r\n"  # no doubled CR


@pytest.mark.parametrize("text,expected", [
    ("mx.example.test:2525", ("mx.example.test", 2525)),
    ("127.0.0.1", ("127.0.0.1", 25)),
    ("[::1]:26", ("::1", 26)),
])
def test_parse_hostport(text, expected):
    assert wire.parse_hostport(text) == expected


@pytest.mark.parametrize("bad", ["", "host:", "host:99999", "a b:25", "host:0", "[zz]:25"])
def test_parse_hostport_rejects(bad):
    with pytest.raises(ValueError):
        wire.parse_hostport(bad)


def test_parse_ehlo():
    ext = wire.parse_ehlo(b"mx.test hello\nPIPELINING\nsize 1000\nAUTH PLAIN LOGIN\n8BITMIME")
    assert ext == {b"PIPELINING": b"", b"SIZE": b"1000", b"AUTH": b"PLAIN LOGIN",
                   b"8BITMIME": b""}


def test_count_received_only_in_headers():
    msg = b"Received: a\nX: y\nreceived: b\n\nReceived: in the body\n"
    assert wire.count_received(msg) == 2


def test_backoff_grows_and_is_capped():
    assert [wire.backoff(n, 300, 1800) for n in (1, 2, 3, 4, 10)] == [300, 600, 1200, 1800,
                                                                       1800]


def test_reply_status():
    assert Reply(550, "5.1.1 no such user").status == "5.1.1"
    assert Reply(451, "try later").status == "4.0.0"
    assert Reply(550, "nope").status == "5.0.0" and Reply(550, "x").permanent


def test_downgrade_8bit_multipart_keeps_structure():
    msg = ("From: a@b\nMIME-Version: 1.0\n"
           "Content-Type: multipart/mixed; boundary=XX\n\n"
           "--XX\nContent-Type: text/plain; charset=utf-8\n"
           "Content-Transfer-Encoding: 8bit\n\nGrüße\n"
           "--XX\nContent-Type: text/plain\n\nplain ascii\n--XX--\n").encode()
    out = wire.downgrade_8bit(msg)
    assert out.isascii()
    parsed = email.message_from_bytes(out, policy=email.policy.default)
    parts = list(parsed.iter_parts())
    assert parts[0]["Content-Transfer-Encoding"] == "quoted-printable"
    assert parts[0].get_content().strip() == "Grüße"
    assert parts[1].get_content().strip() == "plain ascii"
    assert wire.downgrade_8bit(b"Subject: x\n\nascii\n") == b"Subject: x\n\nascii\n"


def test_dsn_is_rfc3464():
    original = b"Subject: hi\nFrom: a@example.test\n\nbody text\n"
    raw = bounce.render_dsn(
        hostname="mx.test", queue_id="ABCDEF012345", sender="a@example.test", arrival=0,
        recipients=[bounce.Failed("x@remote.test", "failed", "5.1.1",
                                  "550 5.1.1 unknown\x00\xe9 user", "remote.test", 10)],
        original=original, now=20)
    assert raw.isascii() and b"\r" not in raw
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/report"
    notice, status, headers = msg.get_payload()
    per_message, per_rcpt = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.test"
    assert per_rcpt["Action"] == "failed" and per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Remote-MTA"] == "dns; remote.test"
    assert "\x00" not in per_rcpt["Diagnostic-Code"]
    assert "Subject: hi" in headers.get_payload() and "body text" not in headers.get_payload()
    assert msg["Auto-Submitted"] == "auto-replied"


def test_spool_commit_update_recover(tmp_path):
    spool = Spool(tmp_path / "queue")
    env = Envelope(id=spool.new_id(b"\tby mx (netsuite) with ESMTPSA id 00AABBCCDDEE;"),
                   sender="a@b", recipients=[Recipient("x@y"), Recipient("z@y")])
    assert env.id == "00AABBCCDDEE"  # the SMTP server's id, so logs and 250 agree
    spool.add(env, b"Subject: x\n\nbody\n")
    env.recipients[0].state = "sent"
    assert spool.update(env)
    assert spool.read_message(env.id) == b"Subject: x\n\nbody\n"
    # Crash leftovers: a message never acknowledged (.new), a spilled body, a
    # half-written update, an envelope whose removal was cut short, a broken file.
    (spool.active / "DEAD00000000.new").write_bytes(b"partial")
    (spool.tmp / "0123abcd").write_bytes(b"spilled")
    (spool.active / f"{env.id}.env.tmp").write_bytes(b"{")
    (spool.active / "GONE00000000.env").write_bytes(b"{}")
    (spool.active / "BAD000000000.msg").write_bytes(b"{not json\nSubject: x\n")
    recovered = spool.recover()
    assert [e.id for e in recovered] == [env.id]
    assert recovered[0].recipients[0].state == "sent"  # the .env wins over the first line
    assert sorted(os.listdir(spool.active)) == [f"{env.id}.env", f"{env.id}.msg"]
    assert os.listdir(spool.corrupt) == ["BAD000000000.msg"]
    assert os.listdir(spool.tmp) == []
    assert spool.remove(env.id) and not spool.remove(env.id)
    assert spool.new_id(b" id 00AABBCCDDEE") == "00AABBCCDDEE"  # free again
    json.loads(env.to_json())


def test_spool_requests_ignore_junk(tmp_path):
    spool = Spool(tmp_path / "queue")
    spool.request("flush")
    spool.request("delete", "00AABBCCDDEE")
    (spool.control / "delete-..%2Fetc").write_bytes(b"")
    (spool.control / "format-ALL").write_bytes(b"")
    assert spool.take_requests() == [("delete", "00AABBCCDDEE"), ("flush", "ALL")]
    assert os.listdir(spool.control) == []


class FakeJob:
    def __init__(self, addresses, message=b"Subject: t\n\nbody\n", sender="a@example.test"):
        self.addresses = addresses
        self.message = message
        self.sender = sender
        self.eightbit = not message.isascii()
        self.smtputf8 = False


class FakeSource:
    def __init__(self, jobs):
        self.jobs = list(jobs)
        self.done = []
        self.lost = []

    def next_job(self, client):
        return self.jobs.pop(0) if self.jobs else None

    def job_done(self, job, results):
        self.done.append(results)

    def client_lost(self, client, job, error):
        self.lost.append((job, error))


def session(source, ehlo=b"250-mx\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n"):
    client = QueueClient(source, b"me.test", "remote:25")
    t = StringTransport()
    client.makeConnection(t)
    client.dataReceived(b"220 remote ESMTP\r\n")
    assert t.value() == b"EHLO me.test\r\n"
    t.clear()
    client.dataReceived(ehlo)
    return client, t


def test_client_pipelines_and_keeps_each_recipients_reply():
    source = FakeSource([FakeJob(["ok@r", "bad@r", "later@r", "many@r"])])
    client, t = session(source)
    sent = t.value()
    assert sent.startswith(b"MAIL FROM:<a@example.test> SIZE=")
    assert sent.endswith(b"RCPT TO:<ok@r>\r\nRCPT TO:<bad@r>\r\nRCPT TO:<later@r>\r\n"
                         b"RCPT TO:<many@r>\r\nDATA\r\n")
    t.clear()
    client.dataReceived(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n451 4.2.0 later\r\n"
                        b"552 5.5.3 too many recipients\r\n354 go\r\n")
    assert t.value() == b"Subject: t\r\n\r\nbody\r\n.\r\n"
    t.clear()
    client.dataReceived(b"250 2.0.0 queued\r\n")
    [results] = source.done
    assert results["ok@r"] == Reply(250, "2.0.0 queued")
    assert results["bad@r"].code == 550 and results["later@r"].code == 451
    assert results["many@r"].code == 452  # RFC 5321 4.5.3.1.10
    assert t.value() == b"QUIT\r\n"


def test_client_respects_size_and_sequential_without_pipelining():
    big = FakeJob(["x@r"], message=b"Subject: big\n\n" + b"y" * 2000 + b"\n")
    small = FakeJob(["x@r"])
    source = FakeSource([big, small])
    client, t = session(source, ehlo=b"250-mx\r\n250 SIZE 1000\r\n")
    assert source.done[0]["x@r"].code == 552  # not even tried
    assert t.value() == b"MAIL FROM:<a@example.test> SIZE=23\r\n"
    t.clear()
    client.dataReceived(b"550 5.7.1 sender refused\r\n")
    assert source.done[1]["x@r"] == Reply(550, "5.7.1 sender refused")
    assert t.value() == b"RSET\r\n"


def test_client_stalled_server_is_aborted():
    source = FakeSource([FakeJob(["x@r"])])
    client, t = session(source)
    client.timeoutConnection()
    assert t.disconnected
    client.connectionLost(None)
    [(job, error)] = source.lost
    assert job is not None and "timed out" in error and "MAIL/RCPT/DATA" in error


def test_routes_static_then_smarthost_then_literal_then_mx():
    from netsuite.config import load_dataclass
    from netsuite.queue.runner import route_for
    from netsuite.queue.service import QueueConfig

    plain = load_dataclass(QueueConfig, {"routes": {"Static.Test.": "10.0.0.1:2525"}})
    assert route_for(plain, "static.test").key == "route:10.0.0.1:2525"
    mx = route_for(plain, "Example.ORG")
    assert mx.mx_domain == "example.org" and mx.host is None
    lit = route_for(plain, "[192.0.2.7]")
    assert (lit.host, lit.port) == ("192.0.2.7", 25)
    smart = load_dataclass(QueueConfig, {"smarthost": "relay.test",
                                         "routes": {"static.test": "h:1"}})
    r = route_for(smart, "anything.test")
    assert (r.key, r.host, r.port, r.require_tls) == ("smarthost", "relay.test", 587, False)
    assert route_for(smart, "static.test").host == "h"


def test_mx_lookup_by_preference_with_address_fallback_and_nxdomain(tmp_path):
    from types import SimpleNamespace

    from twisted.internet import defer
    from twisted.internet.task import Clock
    from twisted.mail.relaymanager import MXCalculator
    from twisted.names import dns, error

    from netsuite.config import load_dataclass
    from netsuite.queue.runner import PermanentRouteError, QueueRunner, route_for
    from netsuite.queue.service import QueueConfig

    class Resolver:
        def lookupMailExchange(self, name, timeout=None):
            if name == "two.test":
                return defer.succeed(([
                    dns.RRHeader(name=name, type=dns.MX, payload=dns.Record_MX(20, b"b.mx.test")),
                    dns.RRHeader(name=name, type=dns.MX, payload=dns.Record_MX(10, b"a.mx.test")),
                ], [], []))
            if name == "servfail.test":
                return defer.fail(error.DNSServerError(name))
            return defer.fail(error.DNSNameError(name))

        def getHostByName(self, name, timeout=None):
            if name == "bare.test":
                return defer.succeed("192.0.2.9")
            return defer.fail(error.DNSNameError(name))

    settings = load_dataclass(QueueConfig, {})
    ctx = SimpleNamespace(reactor=Clock(), realm=None, config=SimpleNamespace(
        server=SimpleNamespace(hostname="mx.test"), data_dir=tmp_path))
    runner = QueueRunner(ctx, settings)
    runner._mx = MXCalculator(resolver=Resolver(), clock=ctx.reactor)

    def resolve(domain):
        results = []
        runner._resolve(route_for(settings, domain)).addBoth(results.append)
        return results[0]

    assert resolve("two.test") == ("a.mx.test", 25)
    runner._mx.markBad("a.mx.test")
    assert resolve("two.test") == ("b.mx.test", 25)
    assert resolve("bare.test") == ("192.0.2.9", 25)  # no MX: the address itself
    nx = resolve("nowhere.test")
    assert nx.check(PermanentRouteError) and "5.1.2" in str(nx.value)
    temporary = resolve("servfail.test")
    assert temporary.check(error.DNSServerError)


def test_client_hostile_replies_end_the_connection_not_the_server():
    source = FakeSource([FakeJob(["x@r"])])
    client = QueueClient(source, b"me.test", "remote:25")
    t = StringTransport()
    client.makeConnection(t)
    client.dataReceived(b"220 hi\r\n")
    client.dataReceived(b"250-x\r\n" * 500)
    assert t.disconnecting or t.disconnected
    client.connectionLost(None)
    assert "more than 200 lines" in source.lost[0][1]

    source = FakeSource([FakeJob(["x@r"])])
    client = QueueClient(source, b"me.test", "remote:25")
    t = StringTransport()
    client.makeConnection(t)
    client.dataReceived(b"hello, not smtp\r\n")
    client.connectionLost(None)
    assert source.lost and source.lost[0][1]
    assert source.done == []


def test_mx_hosts_tried_in_order_within_one_attempt(tmp_path):
    from types import SimpleNamespace

    from twisted.internet import defer
    from twisted.internet.error import ConnectionRefusedError
    from twisted.internet.task import Clock
    from twisted.mail.relaymanager import MXCalculator
    from twisted.names import dns

    from netsuite.config import load_dataclass
    from netsuite.queue.runner import Destination, Job, QueueRunner, route_for
    from netsuite.queue.service import QueueConfig

    class Resolver:
        def lookupMailExchange(self, name, timeout=None):
            return defer.succeed(([
                dns.RRHeader(name=name, type=dns.MX, payload=dns.Record_MX(10, b"a.mx.test")),
                dns.RRHeader(name=name, type=dns.MX, payload=dns.Record_MX(20, b"b.mx.test")),
            ], [], []))

    settings = load_dataclass(QueueConfig, {})
    ctx = SimpleNamespace(reactor=Clock(), realm=None, config=SimpleNamespace(
        server=SimpleNamespace(hostname="mx.test"), data_dir=tmp_path))
    runner = QueueRunner(ctx, settings)
    runner._mx = MXCalculator(resolver=Resolver(), clock=ctx.reactor)
    tried = []

    class Refusing:
        def __init__(self, host, port):
            self.host = host

        def connect(self, factory):
            tried.append(self.host)
            return defer.fail(ConnectionRefusedError(self.host))

    runner.endpoint = Refusing
    env = Envelope(id="00AABBCCDDEE", sender="a@example.test",
                   recipients=[Recipient("x@two.test")])
    dest = Destination(route_for(settings, "two.test"))
    dest.jobs.append(Job(env, env.recipients))
    runner.destinations[dest.route.key] = dest
    runner._connect(dest)
    assert tried == ["a.mx.test", "b.mx.test"]
    r = env.recipients[0]
    assert r.state == "pending" and "b.mx.test" in r.last_error and r.status == "4.4.1"
    assert dest.connections == 0 and runner.connections == 0 and not dest.jobs


def test_client_falls_back_to_helo_once():
    source = FakeSource([FakeJob(["x@r"], message=b"Subject: t\n\n\xc3\xa9\n")])
    client = QueueClient(source, b"me.test", "remote:25")
    t = StringTransport()
    client.makeConnection(t)
    client.dataReceived(b"220 old smtp\r\n")
    t.clear()
    client.dataReceived(b"500 what is EHLO\r\n")
    assert t.value() == b"HELO me.test\r\n"
    t.clear()
    client.dataReceived(b"250 hello\r\n")
    # No extensions: plain MAIL, and the 8-bit body goes out as quoted-printable.
    assert t.value() == b"MAIL FROM:<a@example.test>\r\n"
    client.dataReceived(b"250 ok\r\n")
    client.dataReceived(b"250 ok\r\n")
    t.clear()
    client.dataReceived(b"354 go\r\n")
    assert t.value().isascii() and b"=C3=A9" in t.value()

    source = FakeSource([FakeJob(["x@r"])])
    client = QueueClient(source, b"me.test", "remote:25")
    t = StringTransport()
    client.makeConnection(t)
    client.dataReceived(b"220 grumpy\r\n")
    client.dataReceived(b"502 no\r\n")
    t.clear()
    client.dataReceived(b"502 no either\r\n")
    assert t.value() == b""  # no second HELO
    client.connectionLost(None)
    assert "HELO refused: 502" in source.lost[0][1]

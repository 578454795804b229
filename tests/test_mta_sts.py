"""
MTA-STS (RFC 8461) for outgoing mail against the real daemon: the policy in
a loopback DNS server (tests/dns_zone.py) and on a local HTTPS server with a
test CA, the remote MX an aiosmtpd server doing STARTTLS with a certificate
from that CA for the right name (good) or another name / self-signed (bad).
"""

from __future__ import annotations

import datetime
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dns_zone import DNSServer
from mail_fixtures import FAST, message, queue_ids
from mail_fixtures import submit as submit_to
from queue_remote import Remote

from netsuite.queue.mtasts import Policy, PolicyError, parse_policy, parse_txt
from netsuite.tls import write_self_signed

MX = "mx.remote.test"
ENFORCE = b"version: STSv1\r\nmode: enforce\r\nmx: mx.remote.test\r\nmax_age: 86400\r\n"


# -- a test CA ------------------------------------------------------------------------------


class CertificateAuthority:
    def __init__(self, directory):
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "netsuite test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .sign(self.key, hashes.SHA256()))
        self.path = directory / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, hostname: str):
        """A certificate for C{hostname} signed by this CA: (cert path, key path)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), False)
                .sign(self.key, hashes.SHA256()))
        cert_path = self.directory / f"{hostname}.pem"
        key_path = self.directory / f"{hostname}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path


def server_context(cert_path, key_path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


class PolicyServer:
    """https://mta-sts.remote.test:PORT/.well-known/mta-sts.txt serving C{self.body}."""

    def __init__(self, ctx: ssl.SSLContext, body: bytes):
        self.body = body
        self.status = 200
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                if self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                self.send_response(server.status)
                if server.status in (301, 302):
                    self.send_header("Location", "https://mta-sts.remote.test/elsewhere")
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def ca(tmp_path):
    return CertificateAuthority(tmp_path)


@pytest.fixture
def policy_server(ca):
    server = PolicyServer(server_context(*ca.issue("mta-sts.remote.test")), ENFORCE)
    yield server
    server.stop()


def zone(tmp_path, policy_id: str | None = "id1") -> DNSServer:
    """remote.test's records; policy_id None: no TXT record, "silent": no answer for it."""
    txt = {"_mta-sts.remote.test": [f"v=STSv1; id={policy_id}"]} if policy_id else {}
    if policy_id == "silent":
        txt = {"SILENT _mta-sts.remote.test": []}
    directory = tmp_path / f"dns-{policy_id}"
    directory.mkdir()
    return DNSServer(directory, txt,
                     {"mta-sts.remote.test": "127.0.0.1", MX: "127.0.0.1"},
                     mx={"remote.test": [[10, MX]]})


@pytest.fixture
def dns_server(tmp_path):
    server = zone(tmp_path)
    yield server
    server.stop()


def remote_mx(ctx: ssl.SSLContext, port: int | None = None) -> Remote:
    return Remote(port=port, tls_context=ctx).start()


def daemon(make_daemon, dns_server, ca, https_port: int, mx_port: int, **queue):
    config = {"dns": {"nameservers": [dns_server.address], "timeout": 2},
              "queue": {**FAST, "mta_sts_ca_bundle": str(ca.path),
                        "mta_sts_https_port": https_port, "mx_port": mx_port, **queue}}
    return make_daemon(config=config, listeners=["smtps"], users={"alice": "alice-pw"})


def submit(d, subject: str, to: str = "someone@remote.test") -> None:
    assert submit_to(d, [to], message(subject, to=to)) == {}


def deferred_reason(d) -> str:
    assert d.wait_for(lambda: "deferred: id=" in d.log(), 15), d.log()[-4000:]
    ids = queue_ids(d)
    assert len(ids) == 1, d.cli("queue", "list").stdout
    return d.cli("queue", "show", ids[0]).stdout


# -- against the daemon -------------------------------------------------------------------


def test_enforce_good_certificate_is_delivered_over_tls(make_daemon, ca, policy_server,
                                                        dns_server):
    mx = remote_mx(server_context(*ca.issue(MX)))
    try:
        d = daemon(make_daemon, dns_server, ca, policy_server.port, mx.port)
        submit(d, "good")
        msgs = mx.handler.wait(1)
        assert len(msgs) == 1, d.log()[-4000:]
        assert msgs[0]["tls"]
        assert "mta-sts: remote.test: policy id id1 mode=enforce" in d.log()
        assert policy_server.requests == 1
        cached = d.data_dir / "queue" / "mta-sts" / "remote.test.json"
        assert cached.is_file() and '"enforce"' in cached.read_text()
        assert "Traceback" not in d.log()
    finally:
        mx.stop()


def test_txt_record_asked_once_not_per_connection(make_daemon, ca, policy_server, dns_server):
    """The _mta-sts TXT answer is kept (netsuite.queue.mtasts.TXT_RECHECK), not asked again."""
    mx = remote_mx(server_context(*ca.issue(MX)))
    try:
        d = daemon(make_daemon, dns_server, ca, policy_server.port, mx.port,
                   connection_reuse_time=0)  # a new connection for every message
        for i in range(3):
            submit(d, f"again{i}", to=f"user{i}@remote.test")
            assert len(mx.handler.wait(i + 1)) == i + 1, d.log()[-4000:]
        assert len(mx.handler.ehlo_seen) == 3 * 2  # three connections, EHLO again after TLS
        asked = dns_server.queries()
        assert asked.count("TXT _mta-sts.remote.test") == 1, asked
        assert asked.count("MX remote.test") >= 1, asked  # the zone does log what it answers
        assert policy_server.requests == 1
    finally:
        mx.stop()


def test_no_policy_domain_is_not_asked_per_connection(make_daemon, ca, policy_server,
                                                      tmp_path):
    """NXDOMAIN for _mta-sts is an answer too: kept like an id."""
    dns_server = zone(tmp_path, None)
    mx = remote_mx(server_context(*ca.issue(MX)))
    try:
        d = daemon(make_daemon, dns_server, ca, policy_server.port, mx.port,
                   connection_reuse_time=0)
        for i in range(2):
            submit(d, f"nopolicy{i}")
            assert len(mx.handler.wait(i + 1)) == i + 1, d.log()[-4000:]
        assert len(mx.handler.ehlo_seen) == 2 * 2
        assert dns_server.queries().count("TXT _mta-sts.remote.test") == 1
    finally:
        mx.stop()
        dns_server.stop()


def test_enforce_bad_certificate_is_deferred_with_the_reason(make_daemon, ca, policy_server,
                                                             dns_server, tmp_path):
    # A certificate from the trusted CA, but for another name.
    mx = remote_mx(server_context(*ca.issue("other.test")))
    try:
        d = daemon(make_daemon, dns_server, ca, policy_server.port, mx.port)
        submit(d, "wrongname")
        shown = deferred_reason(d)
        assert (f"MTA-STS enforce: {MX}: certificate not valid for {MX}" in shown), shown
        assert mx.messages == []
    finally:
        mx.stop()
    # Self-signed for the right name: not trusted.
    cert, key = tmp_path / "self.pem", tmp_path / "self.key"
    write_self_signed(MX, cert, key)
    mx = remote_mx(server_context(cert, key), port=mx.port)
    try:
        d.cli("queue", "flush")
        assert d.wait_for(lambda: "certificate not trusted" in d.log(), 15), d.log()[-4000:]
        shown = d.cli("queue", "show", queue_ids(d)[0]).stdout
        assert f"MTA-STS enforce: {MX}: certificate not trusted" in shown, shown
        assert mx.messages == []
        assert "Traceback" not in d.log()
    finally:
        mx.stop()


def test_enforce_without_starttls_is_deferred(make_daemon, ca, policy_server, dns_server):
    mx = Remote().start()  # no tls_context: no STARTTLS offered
    try:
        d = daemon(make_daemon, dns_server, ca, policy_server.port, mx.port)
        submit(d, "plain")
        shown = deferred_reason(d)
        assert f"MTA-STS enforce: {MX}: no STARTTLS offered" in shown, shown
        assert mx.messages == []
    finally:
        mx.stop()


def test_enforce_mx_not_in_the_policy_is_deferred(make_daemon, ca, policy_server, dns_server):
    policy_server.body = ENFORCE.replace(b"mx: mx.remote.test", b"mx: *.elsewhere.test")
    mx = remote_mx(server_context(*ca.issue(MX)))
    try:
        d = daemon(make_daemon, dns_server, ca, policy_server.port, mx.port)
        submit(d, "notlisted")
        shown = deferred_reason(d)
        assert f"MTA-STS enforce: {MX}: not an MX allowed by the policy" in shown, shown
        assert mx.messages == []
    finally:
        mx.stop()


def test_testing_mode_bad_certificate_is_delivered_and_logged(make_daemon, ca, policy_server,
                                                              dns_server):
    policy_server.body = ENFORCE.replace(b"enforce", b"testing")
    mx = remote_mx(server_context(*ca.issue("other.test")))
    try:
        d = daemon(make_daemon, dns_server, ca, policy_server.port, mx.port)
        submit(d, "testing")
        msgs = mx.handler.wait(1)
        assert len(msgs) == 1 and msgs[0]["tls"], d.log()[-4000:]
        assert d.wait_for(lambda: f"MTA-STS testing: {MX}: certificate not valid for {MX}"
                          in d.log(), 5), d.log()[-4000:]
    finally:
        mx.stop()


def test_policy_not_utf8_is_no_policy_and_mail_flows(make_daemon, ca, policy_server,
                                                     dns_server):
    policy_server.body = ENFORCE.replace(b"enforce", b"enf\xffrce")
    mx = remote_mx(server_context(*ca.issue("other.test")))  # bad: would be refused
    try:
        d = daemon(make_daemon, dns_server, ca, policy_server.port, mx.port)
        submit(d, "notutf8")
        msgs = mx.handler.wait(1)
        assert len(msgs) == 1, d.log()[-4000:]
        assert msgs[0]["tls"]  # opportunistic STARTTLS as ever
        assert "policy is not valid UTF-8" in d.log()
        assert "treated as no policy" in d.log()
        assert "Traceback" not in d.log()
    finally:
        mx.stop()


@pytest.mark.parametrize("status, body, logged", [
    (301, ENFORCE, "HTTP status 301"),  # RFC 8461 3.3: redirects are not followed
    (200, ENFORCE + b"# " + b"x" * (64 * 1024) + b"\r\n", "policy larger than 65536 bytes"),
    (200, ENFORCE.replace(b"STSv1", b"STSv2"), "policy version is not STSv1"),
])
def test_unusable_policy_is_no_policy(make_daemon, ca, policy_server, dns_server,
                                      status, body, logged):
    policy_server.status, policy_server.body = status, body
    mx = remote_mx(server_context(*ca.issue("other.test")))  # bad: enforce would refuse
    try:
        d = daemon(make_daemon, dns_server, ca, policy_server.port, mx.port)
        submit(d, "unusable")
        assert len(mx.handler.wait(1)) == 1, d.log()[-4000:]
        assert logged in d.log() and "treated as no policy" in d.log(), d.log()[-4000:]
        assert "Traceback" not in d.log()
    finally:
        mx.stop()


def test_no_txt_record_is_opportunistic(make_daemon, ca, policy_server, tmp_path):
    dns_server = zone(tmp_path, None)
    mx = remote_mx(server_context(*ca.issue("other.test")))
    try:
        d = daemon(make_daemon, dns_server, ca, policy_server.port, mx.port)
        submit(d, "nopolicy")
        msgs = mx.handler.wait(1)
        assert len(msgs) == 1 and msgs[0]["tls"], d.log()[-4000:]
        assert policy_server.requests == 0
        assert "MTA-STS" not in d.log()
    finally:
        mx.stop()
        dns_server.stop()


def test_txt_lookup_timeout_is_no_policy_and_asked_again(make_daemon, ca, policy_server,
                                                        tmp_path):
    """A DNS timeout for _mta-sts: no policy (mail flows), and not kept like an answer."""
    dns_server = zone(tmp_path, "silent")
    mx = remote_mx(server_context(*ca.issue("other.test")))  # enforce would refuse it
    try:
        d = daemon(make_daemon, dns_server, ca, policy_server.port, mx.port,
                   connection_reuse_time=0)
        d.config["dns"]["timeout"] = 0.5
        d.restart()
        for i in range(2):
            submit(d, f"dnstimeout{i}")
            assert len(mx.handler.wait(i + 1)) == i + 1, d.log()[-4000:]
        assert mx.messages[0]["tls"]  # opportunistic STARTTLS as ever
        assert dns_server.queries().count("TXT _mta-sts.remote.test") >= 2
        assert policy_server.requests == 0
        assert "Traceback" not in d.log()
    finally:
        mx.stop()
        dns_server.stop()


def test_cached_policy_used_when_the_https_server_is_down(make_daemon, ca, policy_server,
                                                          dns_server, tmp_path):
    good = remote_mx(server_context(*ca.issue(MX)))
    try:
        d = daemon(make_daemon, dns_server, ca, policy_server.port, good.port)
        submit(d, "first")
        assert len(good.handler.wait(1)) == 1, d.log()[-4000:]
    finally:
        good.stop()
    d.stop()
    policy_server.stop()
    # A new policy id in DNS, but its policy cannot be fetched: the cached
    # enforce policy (on disk, the daemon restarted) still holds.
    dns2 = zone(tmp_path, "id2")
    bad = remote_mx(server_context(*ca.issue("other.test")), port=good.port)
    try:
        d.config["dns"]["nameservers"] = [dns2.address]
        d.start()
        submit(d, "second")
        shown = deferred_reason(d)
        assert f"MTA-STS enforce: {MX}: certificate not valid for {MX}" in shown, shown
        assert "using the cached policy (id id1)" in d.log()
        assert bad.messages == []
        assert "Traceback" not in d.log()
    finally:
        bad.stop()
        dns2.stop()


def test_routes_bypass_mta_sts(make_daemon, ca, policy_server, dns_server):
    mx = remote_mx(server_context(*ca.issue("other.test")))
    try:
        d = daemon(make_daemon, dns_server, ca, policy_server.port, mx.port,
                   routes={"remote.test": f"127.0.0.1:{mx.port}"})
        submit(d, "routed")
        assert len(mx.handler.wait(1)) == 1, d.log()[-4000:]
        assert policy_server.requests == 0
    finally:
        mx.stop()


# -- the parsers ----------------------------------------------------------------------------


def test_parse_policy_lf_wildcards_and_errors():
    p = parse_policy(b"version: STSv1\nmode: testing\nmx: *.example.net\nmx: mx.example.org\n"
                     b"max_age: 999999999\nextension: ignored\n", "x")
    assert p.mode == "testing" and p.max_age == 31557600
    assert p.matches("a.example.net") and p.matches("MX.example.org.")
    assert not p.matches("a.b.example.net") and not p.matches("example.net")
    for bad in (b"version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",
                b"version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
                b"version: STSv1\nmode: enforce\nmax_age: 1\n",
                b"version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n",
                b"version: STSv1\nmode: enforce\nmx: a\nmax_age: \xd9\xa3\n",
                b"version: STSv1\nmode: enforce\nmx: a\n",
                b"\xc3\x28"):
        with pytest.raises(PolicyError):
            parse_policy(bad, "x")
    assert parse_policy(b"version: STSv1\r\nmode: none\r\nmax_age: 0\r\n", "x").mode == "none"


def test_parse_txt():
    assert parse_txt(["v=STSv1; id=20240101T0000;", "other"]) == "20240101T0000"
    for bad in ([], ["v=STSv1; id=a", "v=STSv1; id=b"], ["v=STSv1;"], ["v=STSv1; id=bad-id"]):
        with pytest.raises(PolicyError):
            parse_txt(bad)
    assert Policy("a", "enforce", ["mx"], 10, fetched=0).expires == 10

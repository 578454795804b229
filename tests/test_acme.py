"""
ACME (RFC 8555) against Pebble, Let's Encrypt's test CA, on loopback: the real
daemon obtains a certificate through an HTTP-01 challenge on its http listener,
installs it on every TLS listener without dropping a session opened before,
renews it, and after a restart serves the saved one without a new order.
"""

from __future__ import annotations

import imaplib
import json
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from dns_zone import DNSServer
from test_workers import connect_to, workers_of

from netsuite.config import ConfigError, load
from netsuite.tls import write_self_signed

DOMAIN = "mail.netsuite.test"

pytestmark = pytest.mark.skipif(shutil.which("pebble") is None,
                                reason="pebble is not installed (Debian package pebble)")


def free_port() -> int:
    """A loopback port nobody listens on now (Pebble's ports must be known up front)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pebble:
    """Pebble as a subprocess with its own config and TLS certificate, stopped by PID."""

    def __init__(self, directory: Path, dns: str, validity: int = 30 * 86400,
                 http_port: int | None = None, tls_port: int | None = None):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        # Its own listener's certificate: also the CA bundle netsuite trusts for it.
        self.ca_bundle = self.dir / "pebble-cert.pem"
        write_self_signed("localhost", self.ca_bundle, self.dir / "pebble-key.pem")
        self.port = free_port()
        self.management = free_port()
        self.http_port = http_port or free_port()
        self.tls_port = tls_port or free_port()
        self.dns = dns
        self.validity = validity
        self.log_path = self.dir / "pebble.log"
        self.proc: subprocess.Popen | None = None

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> None:
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": str(self.ca_bundle),
            "privateKey": str(self.dir / "pebble-key.pem"),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "certificateValidityPeriod": self.validity,
        }}
        path = self.dir / "pebble.json"
        path.write_text(json.dumps(config))
        env = {"PATH": "/usr/bin:/bin", "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
               # every order is validated afresh: the renewal answers a challenge too
               "PEBBLE_AUTHZREUSE": "0"}
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(["pebble", "-config", str(path), "-dnsserver", self.dns],
                                         stdout=out, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.dir)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            if "ACME directory available" in self.log():
                return
            time.sleep(0.05)
        raise RuntimeError(f"pebble did not start:\n{self.log()}")

    def root(self) -> str:
        """The root CA of this run (Pebble makes a new one at every start)."""
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.management}/roots/0",
                                    context=context, timeout=10) as r:
            return r.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def dns(tmp_path):
    server = DNSServer(tmp_path, {}, {DOMAIN: "127.0.0.1"})
    yield server
    server.stop()


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def served(port: int, context: ssl.SSLContext | None = None) -> x509.Certificate:
    """The certificate a new TLS connection to C{port} is shown (verified with C{context})."""
    context = context or unverified()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=DOMAIN) as s:
            der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def session_cert(m: imaplib.IMAP4_SSL) -> x509.Certificate:
    der = m.sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def issuer_cn(cert: x509.Certificate) -> str:
    return cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return ext.value.get_values_for_type(x509.DNSName)


def logged(d, text: str, count: int = 1, since: int = 0) -> None:
    """Wait until the daemon's log (from offset C{since}) has C{text} C{count} times."""
    assert d.wait_for(lambda: d.log()[since:].count(text) >= count, timeout=20), (
        f"{text!r} not logged {count} times:\n{d.log()[since:]}")


def test_pebble_issues_renews_and_restart_reuses(make_daemon, tmp_path, dns):
    http_port = free_port()
    # Certificates valid 30 days, renewed 40 days before expiry: every check renews.
    pebble = Pebble(tmp_path / "pebble", dns.address, validity=30 * 86400, http_port=http_port)
    acme = {"directory": pebble.directory, "email": "postmaster@netsuite.test",
            "domains": [DOMAIN], "renew_before": 40.0, "check_interval": 1.0,
            "ca_bundle": str(pebble.ca_bundle)}
    d = make_daemon(config={"tls": {"acme": acme},
                            "listen": {"http": [f"tcp:{http_port}:interface=127.0.0.1"]}},
                    listeners=["imaps", "submission", "http"])
    try:
        # Before the CA answers, the self-signed certificate serves; the session opened
        # now must survive both switches.
        m = imaplib.IMAP4_SSL("127.0.0.1", d.port("imaps"), ssl_context=unverified(),
                              timeout=10)
        first_session = session_cert(m)
        assert issuer_cn(first_session) == "mx.test"  # self-signed
        logged(d, "acme: the order for mail.netsuite.test failed")
        assert "keeps serving, retrying in" in d.log()

        pebble.start()
        logged(d, "installed a new certificate")
        root = pebble.root()
        # A client that trusts Pebble's root and checks the name accepts the new one:
        # the full chain is served, for the domain.
        verifying = ssl.create_default_context(cadata=root)
        issued = served(d.port("imaps"), verifying)
        assert issuer_cn(issued).startswith("Pebble Intermediate CA")
        assert sans(issued) == [DOMAIN]
        assert m.noop()[0] == "OK"
        # STARTTLS takes it as well (the name is checked below: smtplib checks the address).
        chain_only = ssl.create_default_context(cadata=root)
        chain_only.check_hostname = False
        with smtplib.SMTP("127.0.0.1", d.port("submission"), timeout=10) as smtp:
            smtp.starttls(context=chain_only)
            der = smtp.sock.getpeercert(binary_form=True)
        assert der is not None
        assert sans(x509.load_der_x509_certificate(der)) == [DOMAIN]

        # The renewal: a second, different certificate, the session still up.
        logged(d, "installed a new certificate", count=2)
        renewed = served(d.port("imaps"), verifying)
        assert renewed.serial_number != issued.serial_number
        assert sans(renewed) == [DOMAIN]
        assert m.noop()[0] == "OK"
        m.logout()
        # Pebble's validation requests reached the http listener and got the answer.
        assert re.search(r"http GET /\.well-known/acme-challenge/[\w-]+ 200 ", d.log())

        # A restart with a certificate that is not due serves the saved one, orders nothing.
        d.stop()
        saved = (d.data_dir / "tls" / "acme" / "certificate.pem")
        assert saved.stat().st_mode & 0o777 == 0o600
        assert (d.data_dir / "tls" / "acme" / "account.pem").stat().st_mode & 0o777 == 0o600
        saved_cert = x509.load_pem_x509_certificate(saved.read_bytes())
        offset = len(d.log())
        d.config["tls"]["acme"]["renew_before"] = 10.0
        d.start()
        logged(d, "is good until", since=offset)
        after = d.log()[offset:]
        assert "installed the saved certificate" in after
        assert "ordering" not in after
        assert served(d.port("imaps"), verifying).serial_number == saved_cert.serial_number
        # A reload leaves the certificate to ACME: not the self-signed one back.
        offset = len(d.log())
        d.cli("reload")
        logged(d, "reload: done", since=offset)
        assert "certificate kept (managed by [tls] acme)" in d.log()[offset:]
        assert served(d.port("imaps"), verifying).serial_number == saved_cert.serial_number
    finally:
        pebble.stop()


def test_workers_order_once_and_all_serve_it(make_daemon, tmp_path, dns):
    """C{--workers 2}: one worker orders (the lock), the other installs the saved certificate,
    and the CA's validation is answered whichever worker it reaches."""
    http_port = free_port()
    pebble = Pebble(tmp_path / "pebble", dns.address, http_port=http_port)
    pebble.start()
    try:
        acme = {"directory": pebble.directory, "domains": [DOMAIN], "renew_before": 10.0,
                "check_interval": 1.0, "ca_bundle": str(pebble.ca_bundle)}
        d = make_daemon(config={"server": {"workers": 2}, "tls": {"acme": acme},
                                "listen": {"http": [f"tcp:{http_port}:interface=127.0.0.1"]}},
                        listeners=["imaps", "http"])
        logged(d, "installed a new certificate")
        logged(d, "installed the saved certificate")
        verifying = ssl.create_default_context(cadata=pebble.root())
        verifying.check_hostname = False  # the name is checked below, per worker

        def make() -> ssl.SSLSocket:
            raw = socket.create_connection(("127.0.0.1", d.port("imaps")), timeout=10)
            s = verifying.wrap_socket(raw, server_hostname=DOMAIN)
            s.recv(100)  # the greeting: the worker has accepted it
            return s

        serials = set()
        for pid in workers_of(d).values():
            s, _ = connect_to(d, make, lambda s: s, want_pid=pid)
            der = s.getpeercert(binary_form=True)
            s.close()
            assert der is not None
            cert = x509.load_der_x509_certificate(der)
            assert sans(cert) == [DOMAIN]
            serials.add(cert.serial_number)
        assert len(serials) == 1, serials  # one order, one certificate for both
        assert d.log().count("acme: ordering a certificate") == 1, d.log()
    finally:
        pebble.stop()


def test_tls_alpn_01_on_the_https_listener(make_daemon, tmp_path, dns):
    """The CA validates over TLS (RFC 8737): the https listener shows it the challenge
    certificate for acme-tls/1, every other client the server's own."""
    https_port = free_port()
    pebble = Pebble(tmp_path / "pebble", dns.address, tls_port=https_port)
    pebble.start()
    try:
        acme = {"directory": pebble.directory, "domains": [DOMAIN], "challenge": "tls-alpn-01",
                "check_interval": 1.0, "ca_bundle": str(pebble.ca_bundle)}
        d = make_daemon(config={"tls": {"acme": acme},
                                "listen": {"https": [f"tcp:{https_port}:interface=127.0.0.1"]}},
                        listeners=["https", "imaps"])
        logged(d, "installed a new certificate")
        verifying = ssl.create_default_context(cadata=pebble.root())
        for listener in ("https", "imaps"):
            cert = served(d.port(listener), verifying)
            assert issuer_cn(cert).startswith("Pebble Intermediate CA")
            assert sans(cert) == [DOMAIN]
        assert "http GET /.well-known/acme-challenge/" not in d.log()
        # No challenge pending any more: acme-tls/1 is not chosen, the real certificate serves.
        context = unverified()
        context.set_alpn_protocols(["acme-tls/1"])
        with socket.create_connection(("127.0.0.1", https_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=DOMAIN) as s:
                assert s.selected_alpn_protocol() is None
                der = s.getpeercert(binary_form=True)
        assert der is not None
        assert issuer_cn(x509.load_der_x509_certificate(der)).startswith("Pebble Intermediate")
        assert not list((d.data_dir / "tls" / "acme" / "challenges").iterdir())
    finally:
        pebble.stop()


def test_challenge_route_serves_pending_tokens_only(make_daemon):
    d = make_daemon(listeners=["http"])
    challenges = d.data_dir / "tls" / "acme" / "challenges"
    challenges.mkdir(parents=True)
    (challenges / "tok-EN_1").write_text("tok-EN_1.thumbprint")
    (d.data_dir / "secret").write_text("not for the web")
    base = f"http://127.0.0.1:{d.port('http')}/.well-known/acme-challenge/"

    def get(path: str) -> tuple[int, bytes]:
        out = subprocess.run(["curl", "-s", "--path-as-is", "-o", "-", "-w", "\n%{http_code}",
                              base + path], capture_output=True, check=True, timeout=10).stdout
        body, _, code = out.rpartition(b"\n")
        return int(code), body

    assert get("tok-EN_1") == (200, b"tok-EN_1.thumbprint")
    assert get("unknown")[0] == 404
    assert get("../../secret")[0] == 404
    assert get("..%2f..%2fsecret")[0] == 404
    assert get("")[0] == 404


@pytest.mark.parametrize("acme, key, reason", [
    ({"directory": "http://ca.test/dir", "domains": ["a.test"]}, "tls.acme.directory", "https"),
    ({"directory": "https://ca.test/dir", "domains": []}, "tls.acme.domains", "at least one"),
    ({"directory": "https://ca.test/dir", "domains": ["*.a.test"]}, "tls.acme.domains[0]",
     "not a host name"),
    ({"directory": "https://ca.test/dir", "domains": ["a.test"], "challenge": "dns-01"},
     "tls.acme.challenge", "http-01, tls-alpn-01"),
    ({"directory": "https://ca.test/dir", "domains": ["a.test"], "renew": 3},
     "tls.acme.renew", "unknown key"),
    ({"directory": "https://ca.test/dir", "domains": ["a.test"], "check_interval": 0},
     "tls.acme.check_interval", "greater than 0"),
])
def test_bad_acme_config_names_key_and_reason(tmp_path, acme, key, reason):
    path = tmp_path / "netsuite.toml"
    inline = ", ".join(f"{k} = {json.dumps(v)}" for k, v in acme.items())
    path.write_text(f"[tls]\nacme = {{ {inline} }}\n")
    with pytest.raises(ConfigError) as e:
        load(path)
    assert e.value.key == key
    assert reason in e.value.reason
    assert str(path) in str(e.value)


def _saved(names: list[str], days_left: float, lifetime: float = 90.0):
    """A L{Saved} for a self-signed certificate with C{names}, expiring in C{days_left}."""
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from netsuite.tls_acme import Saved

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    not_after = now + datetime.timedelta(days=days_left)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_after - datetime.timedelta(days=lifetime))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()) + cert.public_bytes(
                                serialization.Encoding.PEM)
    return Saved.parse(pem), now


def test_renew_reason():
    saved, now = _saved(["a.test", "b.test"], days_left=40)
    assert saved.renew_reason(["a.test", "b.test"], 30.0, now) is None
    assert saved.renew_reason(["b.test"], 30.0, now) is None  # a subset is covered
    assert "does not cover c.test" in saved.renew_reason(["a.test", "c.test"], 30.0, now)
    assert "within renew_before" in saved.renew_reason(["a.test"], 41.0, now)
    expired, now = _saved(["a.test"], days_left=-1)
    assert expired.renew_reason(["a.test"], 0.0, now) == "it has expired"


def test_saved_file_must_hold_key_and_chain():
    from netsuite.tls_acme import Saved

    saved, _ = _saved(["a.test"], days_left=40)
    assert saved.chain_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" not in saved.chain_pem
    with pytest.raises(ValueError):
        Saved.parse(saved.chain_pem)  # no key
    with pytest.raises(ValueError):
        Saved.parse(saved.key_pem)  # no certificate

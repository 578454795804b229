"""
Behind Debian's real HAProxy (send-proxy / send-proxy-v2, TCP mode) on
loopback: the client's address, as HAProxy saw it, reaches SMTP's
C{Received:}, the IMAP failed-login throttle, the log and the per-address
connection counts, over plain and implicit-TLS listeners; a peer outside
C{[server] proxy_trusted}, a garbage header and a header that never comes are
refused while the server keeps serving.  Also through C{--workers 2} with a
socket-activated (C{haproxy:systemd:}) listener.

The clients bind 127.0.0.2 (and .3, .4, .5) as their source, HAProxy
connects from 127.0.0.1: what netsuite reports tells the two apart.  One
frontend takes IPv6 (::1) and passes it on in a TCP6 header over IPv4.
"""

from __future__ import annotations

import email
import ftplib
import imaplib
import io
import json
import re
import smtplib
import socket
import ssl
import subprocess
import time
import urllib.request
import uuid

import pytest
from harness import Daemon
from test_logs import find
from test_systemd import activation, listening_socket
from tools import require

CLIENT = "127.0.0.2"
TRUSTED = ["127.0.0.1"]
PROXIED = "haproxy:tcp:0:interface=127.0.0.1"


def free_ports(names: list[str]) -> dict[str, int]:
    """Distinct free ports (held open together while chosen: one closed may be given again)."""
    held = []
    try:
        for _ in names:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return {name: s.getsockname()[1] for name, s in zip(names, held, strict=True)}
    finally:
        for s in held:
            s.close()


class HAProxy:
    """A private haproxy in the foreground: frontend name -> (its port, backend port, send)."""

    def __init__(self, directory, routes: dict[str, tuple[int, str] | tuple[int, str, str]]):
        self.path = directory / "haproxy.cfg"
        self.ports = free_ports(list(routes))
        lines = ["global", "    maxconn 200", "defaults", "    mode tcp",
                 "    timeout connect 5s", "    timeout client 30s", "    timeout server 30s"]
        for name, (backend, send, *extra) in routes.items():
            bind = "[::1]" if name.endswith("_v6") else "127.0.0.1"
            lines += [f"frontend f_{name}", f"    bind {bind}:{self.ports[name]}",
                      f"    default_backend b_{name}", f"backend b_{name}", *extra,
                      f"    server netsuite 127.0.0.1:{backend} {send}"]
        self.path.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "HAProxy":
        self.proc = subprocess.Popen([require("haproxy"), "-db", "-f", str(self.path)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        waiting = {("::1" if name.endswith("_v6") else "127.0.0.1", port)
                   for name, port in self.ports.items()}
        while waiting and time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read().decode()
            for address in list(waiting):
                try:
                    socket.create_connection(address, 1).close()
                    waiting.discard(address)
                except OSError:
                    pass
            time.sleep(0.05)
        assert not waiting, f"haproxy did not listen on {waiting}"
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            self.proc = None


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class IMAPFrom(imaplib.IMAP4):
    """imaplib with a chosen source address (it has no source_address of its own)."""

    def __init__(self, port: int, source: str = CLIENT):
        self.source = source
        super().__init__("127.0.0.1", port, timeout=15)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))


class IMAPSFrom(imaplib.IMAP4_SSL):
    def __init__(self, port: int, source: str = CLIENT):
        self.source = source
        super().__init__("127.0.0.1", port, ssl_context=tls_context(), timeout=15)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def send_mail(port: int, source: str = CLIENT) -> bytes:
    """A message to alice through C{port}; its subject, to find it."""
    subject = f"proxied {uuid.uuid4().hex}".encode()
    host = "::1" if ":" in source else "127.0.0.1"
    with smtplib.SMTP(host, port, timeout=15, source_address=(source, 0),
                      local_hostname="client.test") as smtp:
        smtp.sendmail("bob@remote.test", ["alice@example.test"],
                      b"From: bob@remote.test\r\nSubject: " + subject + b"\r\n\r\nhi\r\n")
    return subject


def received_of(d: Daemon, subject: bytes) -> str:
    """The Received: header netsuite put on top of the message with C{subject}."""
    def look():
        return next((m for m in d.messages("alice") if subject in m), None)

    message = d.wait_for(look)
    assert message is not None, d.log()[-3000:]
    return email.message_from_bytes(message).get_all("Received")[0]


def direct(port: int, source: str, send: bytes = b"", wait: float = 10.0) -> tuple[bytes, float]:
    """Connect straight to netsuite from C{source}, send; (what came back, seconds until EOF)."""
    start = time.monotonic()
    got = b""
    try:  # refused at once: the server's reset may come at any step
        with socket.create_connection(("127.0.0.1", port), 5,
                                      source_address=(source, 0)) as s:
            s.settimeout(wait)
            if send:
                s.sendall(send)
            while chunk := s.recv(4096):
                got += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return got, time.monotonic() - start


def metric(d: Daemon, listener: str, result: str,
           name: str = "netsuite_proxy_headers_total") -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{d.port('http')}/metrics",
                                  timeout=10).read().decode()
    m = re.search(rf'^{name}\{{listener="{listener}",result="{result}"\}} (\S+)$', text, re.M)
    assert m, text[-2000:]
    return float(m.group(1))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require("haproxy")
    directory = tmp_path_factory.mktemp("proxy")
    d = Daemon(directory / "netsuite", config={
        "log": {"format": "json"},
        "server": {"allow_plaintext_auth": True, "proxy_trusted": TRUSTED,
                   "proxy_timeout": 1.0},
        "throttle": {"free_failures": 0, "base_delay": 0.01, "max_delay": 0.02,
                     "lock_after": 3},
        "listen": {"smtp": [PROXIED], "imap": [PROXIED], "imaps": [PROXIED], "ftp": [PROXIED],
                   "http": ["tcp:0:interface=127.0.0.1"]},
    }, listeners=["smtp", "imap", "imaps", "ftp", "http"])
    d.add_user("alice", "alice-pw")
    d.start()
    haproxy = HAProxy(directory, {
        "smtp_v1": (d.port("smtp"), "send-proxy"),
        # The health check of docs/scale-out.md: /readyz on the http port, no PROXY header.
        "smtp_v6": (d.port("smtp"), "send-proxy-v2"),  # a TCP6 header over IPv4
        "smtp_v2": (d.port("smtp"), f"send-proxy-v2 check port {d.port('http')} inter 200ms "
                    "fall 2 rise 1", "    option httpchk\n    http-check send meth GET uri "
                    "/readyz\n    http-check expect status 200"),
        # HAProxy's health checks send a v2 LOCAL header: served, not refused.
        "imap": (d.port("imap"), "send-proxy-v2 check inter 300ms"),
        "imaps": (d.port("imaps"), "send-proxy-v2"),
        "ftp": (d.port("ftp"), "send-proxy-v2"),
    }).start()
    yield d, haproxy
    haproxy.stop()
    d.stop()


@pytest.mark.parametrize("frontend", ["smtp_v1", "smtp_v2", "smtp_v6"])
def test_smtp_received_shows_the_client_address(stack, frontend):
    d, haproxy = stack
    client = "::1" if frontend == "smtp_v6" else CLIENT
    received = received_of(d, send_mail(haproxy.ports[frontend], client))
    assert f"([{client}])" in received, received
    assert "127.0.0.1" not in received, received


def test_readyz_health_checks_keep_the_server_up(stack):
    d, haproxy = stack
    find(d, message="http GET /readyz 200 127.0.0.1")  # HAProxy's check, answered
    # Several checks later (fall 2 every 200 ms would have marked it down), mail goes through.
    assert d.wait_for(lambda: d.log().count("http GET /readyz 200") >= 4)
    assert f"([{CLIENT}])" in received_of(d, send_mail(haproxy.ports["smtp_v2"]))


def test_imap_health_checks_and_sessions_are_served(stack):
    d, haproxy = stack
    # A few health checks have come by (every 300 ms), each with a LOCAL header.
    assert d.wait_for(lambda: metric(d, "imap", "ok") >= 3, timeout=10)
    assert metric(d, "imap", "header_invalid") == 0
    # STARTTLS over the PROXY wrapper: the handshake is reported (not left to its deadline).
    m = IMAPFrom(haproxy.ports["imap"], "127.0.0.3")
    m.starttls(tls_context())
    m.login("alice", "alice-pw")
    m.logout()
    assert find(d, event="login", protocol="imap", client="127.0.0.3")["user"] == "alice"
    assert metric(d, "imap", "ok", "netsuite_tls_handshakes_total") == 1


def test_imaps_through_haproxy_counts_the_client(stack):
    """PROXY header first, then TLS: the implicit-TLS listener sees the client too."""
    d, haproxy = stack
    m = IMAPSFrom(haproxy.ports["imaps"], "127.0.0.5")
    try:
        m.login("alice", "alice-pw")
        connections = d.data_dir / "run" / "connections.json"

        def counted():
            info = json.loads(connections.read_text())
            return info["listeners"]["imaps"]["addresses"]

        assert d.wait_for(lambda: counted() == {"127.0.0.5": 1}), counted()
    finally:
        m.logout()
    assert find(d, event="login", protocol="imap", client="127.0.0.5")["user"] == "alice"


def test_imap_failed_logins_throttle_the_client_address(stack):
    d, haproxy = stack
    port = haproxy.ports["imap"]
    attacker = "127.0.0.4"
    for _ in range(3):
        m = IMAPFrom(port, attacker)
        with pytest.raises(imaplib.IMAP4.error):
            m.login("mallory", "guess")
        m.logout()
    failed = find(d, event="login_failed", protocol="imap", user="mallory")
    assert failed["client"] == attacker
    # The attacker's address is locked, even with alice's right password...
    m = IMAPFrom(port, attacker)
    with pytest.raises(imaplib.IMAP4.error):
        m.login("alice", "alice-pw")
    m.logout()
    locked = find(d, event="login_refused", reason="locked", user="alice")
    assert locked["client"] == attacker
    # ... while another client behind the same HAProxy (127.0.0.1 to netsuite) is not.
    m = IMAPFrom(port, CLIENT)
    m.login("alice", "alice-pw")
    m.logout()


def test_ftp_control_through_haproxy_data_straight_from_the_client(stack):
    """
    The data-channel checks compare with the client's address from the header:
    a passive connection straight from that client (not through HAProxy) is
    served, on the socket's own address.
    """
    d, haproxy = stack
    ftp = ftplib.FTP(timeout=15, source_address=(CLIENT, 0))
    ftp.connect("127.0.0.1", haproxy.ports["ftp"])
    try:
        ftp.login("alice", "alice-pw")
        host, _port = ftplib.parse227(ftp.sendcmd("PASV"))
        assert host == "127.0.0.1"  # netsuite's own address, not the header's destination
        ftp.storbinary("STOR proxied.txt", io.BytesIO(b"through haproxy\n"))
        assert "proxied.txt" in ftp.nlst()
    finally:
        ftp.quit()
    assert (d.data_dir / "ftp" / "alice" / "proxied.txt").read_bytes() == b"through haproxy\n"
    assert find(d, event="login", protocol="ftp")["client"] == CLIENT


def test_untrusted_peer_is_refused(stack):
    d, _ = stack
    header = b"PROXY TCP4 192.0.2.1 127.0.0.1 1234 25\r\n"
    got, _ = direct(d.port("smtp"), CLIENT, header + b"EHLO x\r\n")
    assert got == b""  # no banner: closed before any protocol
    refused = find(d, reason="proxy_untrusted")
    assert refused["client"] == CLIENT and refused["listener"] == "smtp"
    assert metric(d, "smtp", "untrusted") >= 1


def test_garbage_header_is_refused_and_others_are_served(stack):
    d, haproxy = stack
    got, _ = direct(d.port("imap"), "127.0.0.1", b"A1 LOGIN alice alice-pw\r\n")
    assert got == b""
    refused = find(d, reason="proxy_header_invalid", listener="imap")
    assert refused["client"] == "127.0.0.1"
    assert metric(d, "imap", "header_invalid") == 1
    m = IMAPFrom(haproxy.ports["imap"])
    assert m.capability()[0] == "OK"
    m.logout()
    assert f"([{CLIENT}])" in received_of(d, send_mail(haproxy.ports["smtp_v2"]))


def test_a_header_that_never_comes_is_dropped_at_the_deadline(stack):
    d, _ = stack
    got, seconds = direct(d.port("smtp"), "127.0.0.1")  # trusted, silent
    assert got == b"" and 0.9 <= seconds < 4.0, seconds
    # Trickling part of a header does not extend the deadline either.
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", d.port("imaps")), 5) as s:
        s.settimeout(10)
        closed = False
        for byte in b"PROXY TCP4 192.0.2.1 ":
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
        if not closed:
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass
    assert time.monotonic() - start < 4.0
    find(d, reason="proxy_header_timeout", listener="imaps")


def test_workers_and_socket_activation(make_daemon, tmp_path):
    """--workers 2: the sockets are the parent's, the header is read in each worker."""
    require("haproxy")
    smtp_sock = listening_socket()
    d = make_daemon(config={
        "server": {"workers": 2, "proxy_trusted": TRUSTED},
        "listen": {"smtp": ["haproxy:systemd:domain=INET:name=smtp"], "imaps": [PROXIED]},
    }, listeners=[], users={"alice": "alice-pw"}, **activation([smtp_sock], ["smtp"]))
    smtp_sock.close()
    haproxy = HAProxy(tmp_path, {"smtp": (d.port("smtp"), "send-proxy-v2"),
                                 "imaps": (d.port("imaps"), "send-proxy")}).start()
    try:
        for _ in range(4):  # whichever worker accepts
            received = received_of(d, send_mail(haproxy.ports["smtp"]))
            assert f"([{CLIENT}])" in received, received
        m = IMAPSFrom(haproxy.ports["imaps"])
        m.login("alice", "alice-pw")
        m.logout()
        assert d.wait_for(lambda: re.search(
            r"login: protocol=imap address=127\.0\.0\.2 user=alice", d.log())), d.log()[-2000:]
    finally:
        haproxy.stop()



def _block(text: str, language: str) -> str:
    (block,) = re.findall(rf"^```{language}\n(.*?)^```$", text, re.M | re.S)
    return block


def test_scale_out_doc_configs_are_valid(tmp_path):
    """docs/scale-out.md: haproxy -c accepts its haproxy.cfg, netsuite loads its config."""
    from harness import ROOT

    from netsuite.config import load

    text = (ROOT / "docs" / "scale-out.md").read_text()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(_block(text, "haproxy"))
    result = subprocess.run([require("haproxy"), "-c", "-f", str(cfg)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "send-proxy-v2" in cfg.read_text()
    toml = tmp_path / "netsuite.toml"
    toml.write_text(_block(text, "toml"))
    config = load(toml)
    assert config.server.proxy_trusted == ["10.0.0.2"]
    for name in ("smtp", "submission", "smtps", "imap", "imaps", "pop3", "pop3s"):
        assert config.listen[name][0].startswith("haproxy:tcp:"), name
    assert not config.listen["ftp"][0].startswith("haproxy:")


def test_a_reload_adds_a_haproxy_listener(make_daemon):
    """A listener added by SIGHUP reads the header too (here written by hand, from 127.0.0.1)."""
    from test_reload import reloaded, rewrite

    d = make_daemon(config={"server": {"proxy_trusted": TRUSTED, "allow_plaintext_auth": True},
                            "log": {"format": "json"}}, listeners=["smtp"])
    rewrite(d, listen={"imap": [PROXIED]})
    assert "added imap" in reloaded(d)
    port = json.loads((d.data_dir / "run" / "listening.json").read_text())["listen"]["imap"][0]
    with socket.create_connection(("127.0.0.1", port), 10) as s:
        s.sendall(b"PROXY TCP4 192.0.2.9 127.0.0.1 4000 143\r\nA1 LOGIN mallory x\r\n")
        s.settimeout(10)
        got = b""
        while b"A1 " not in got and (chunk := s.recv(4096)):
            got += chunk
    assert got.startswith(b"* OK") and b"A1 NO" in got, got
    assert find(d, event="login_failed", user="mallory")["client"] == "192.0.2.9"

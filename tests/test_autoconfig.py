"""
Mail client autoconfiguration and the MTA-STS policy, from the real daemon:
the documents name the ports the listeners are really bound to, and a client
configured from them (imaplib, smtplib) logs in and sends.
"""

from __future__ import annotations

import plistlib
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import pytest

DOMAIN = "example.test"
CONFIG = {"server": {"hostname": "mail.example.test"},
          "mail": {"local_domains": [DOMAIN], "aliases": {"info": ["alice"]}}}
LISTENERS = ["http", "imaps", "imap", "pop3s", "submission", "smtps", "smtp"]
OUTLOOK_REQ = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
OUTLOOK_ACC = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"


def get(d, path: str, data: bytes | None = None, host: str | None = None,
        method: str | None = None):
    req = urllib.request.Request(f"http://127.0.0.1:{d.port('http')}{path}", data=data,
                                 method=method)
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.fixture
def daemon(make_daemon):
    return make_daemon(CONFIG, listeners=LISTENERS, users={"alice": "alice-pw"})


def test_thunderbird_autoconfig_names_the_bound_ports(daemon):
    d = daemon
    for path in ("/.well-known/autoconfig/mail/config-v1.1.xml",
                 "/mail/config-v1.1.xml?emailaddress=info%40example.test"):
        status, headers, body = get(d, path, host=f"autoconfig.{DOMAIN}")
        assert status == 200, body
        assert headers["content-type"].startswith("application/xml")
        provider = ET.fromstring(body).find("emailProvider")
        assert provider.get("id") == DOMAIN and provider.findtext("domain") == DOMAIN
        got = [(s.tag, s.get("type"), int(s.findtext("port")), s.findtext("socketType"))
               for s in provider if s.tag in ("incomingServer", "outgoingServer")]
        # Implicit TLS first (RFC 8314), STARTTLS next, never the MX port or plain text.
        assert got == [("incomingServer", "imap", d.port("imaps"), "SSL"),
                       ("incomingServer", "imap", d.port("imap"), "STARTTLS"),
                       ("incomingServer", "pop3", d.port("pop3s"), "SSL"),
                       ("outgoingServer", "smtp", d.port("smtps"), "SSL"),
                       ("outgoingServer", "smtp", d.port("submission"), "STARTTLS")]
        assert {s.findtext("hostname") for s in provider.iter("incomingServer")} == \
            {"mail.example.test"}
        usernames = {s.findtext("username") for s in provider
                     if s.tag in ("incomingServer", "outgoingServer")}
        # An alias resolving to one user logs in as that user.
        assert usernames == ({"alice"} if "emailaddress" in path else {"%EMAILLOCALPART%"})
    status, _, _ = get(d, "/mail/config-v1.1.xml?emailaddress=bob%40elsewhere.test")
    assert status == 404


def test_outlook_autodiscover_and_a_client_configured_from_it(daemon):
    d = daemon
    request = (f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{OUTLOOK_REQ}">'
               f"<Request><EMailAddress>alice@{DOMAIN}</EMailAddress>"
               f"<AcceptableResponseSchema>{OUTLOOK_ACC}</AcceptableResponseSchema>"
               f"</Request></Autodiscover>").encode()
    status, headers, body = get(d, "/autodiscover/autodiscover.xml", data=request)
    assert status == 200, body
    ns = {"a": OUTLOOK_ACC}
    protocols = ET.fromstring(body).findall("a:Response/a:Account/a:Protocol", ns)
    found = {(p.findtext("a:Type", namespaces=ns), int(p.findtext("a:Port", namespaces=ns)),
              p.findtext("a:Encryption", namespaces=ns)) for p in protocols}
    assert ("IMAP", d.port("imaps"), "SSL") in found
    assert ("SMTP", d.port("submission"), "TLS") in found
    smtp_ssl = next(p for p in protocols if p.findtext("a:Type", namespaces=ns) == "SMTP"
                    and p.findtext("a:Encryption", namespaces=ns) == "SSL")
    # Configure a real client from the answer: implicit-TLS submission, log in, send.
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP_SSL("127.0.0.1", int(smtp_ssl.findtext("a:Port", namespaces=ns)),
                          context=ctx, timeout=15) as s:
        s.login(smtp_ssl.findtext("a:LoginName", namespaces=ns), "alice-pw")
        s.sendmail(f"alice@{DOMAIN}", [f"alice@{DOMAIN}"], b"Subject: hi\r\n\r\nconfigured\r\n")
    assert d.wait_for(lambda: any(b"configured" in m for m in d.messages("alice")))
    # A body that is not the POX schema is refused, not guessed at.
    assert get(d, "/autodiscover/autodiscover.xml", data=b"<nonsense")[0] == 400
    assert get(d, "/autodiscover/autodiscover.xml", data=request.replace(
        DOMAIN.encode(), b"elsewhere.test"))[0] == 404


def test_apple_profile(daemon):
    d = daemon
    status, headers, body = get(d, f"/mail/netsuite.mobileconfig?emailaddress=alice%40{DOMAIN}")
    assert status == 200
    assert headers["content-type"].startswith("application/x-apple-aspen-config")
    profile = plistlib.loads(body)
    assert profile["PayloadType"] == "Configuration"
    (account,) = profile["PayloadContent"]
    assert account["PayloadType"] == "com.apple.mail.managed"
    assert account["EmailAccountType"] == "EmailTypeIMAP"
    assert account["IncomingMailServerPortNumber"] == d.port("imaps")
    assert account["OutgoingMailServerPortNumber"] == d.port("smtps")
    assert account["IncomingMailServerUsername"] == "alice"
    assert account["IncomingMailServerHostName"] == "mail.example.test"
    # Downloading it again gives the same identity: it replaces, not duplicates.
    assert plistlib.loads(get(d, f"/mail/netsuite.mobileconfig?emailaddress=alice%40{DOMAIN}")[2]
                          )["PayloadUUID"] == profile["PayloadUUID"]
    assert get(d, "/mail/netsuite.mobileconfig")[0] == 400


def test_mta_sts_policy(make_daemon):
    d = make_daemon(dict(CONFIG, http={"mta_sts_mode": "enforce",
                                       "mta_sts_mx": ["mx1.example.test", "*.example.test"]}),
                    listeners=["http"])
    status, headers, body = get(d, "/.well-known/mta-sts.txt", host=f"mta-sts.{DOMAIN}")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert body == (b"version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\n"
                    b"mx: *.example.test\r\nmax_age: 604800\r\n")
    assert get(d, "/.well-known/mta-sts.txt", host="mta-sts.elsewhere.test")[0] == 404


def test_oversized_body_is_refused_with_413(daemon):
    d = daemon
    status, _, _ = get(d, "/autodiscover/autodiscover.xml", data=b"x" * 70000)
    assert status == 413
    assert "reason=request_too_large" in d.log()
    # Chunked, with no length announced: counted as it arrives.
    with socket.create_connection(("127.0.0.1", d.port("http")), timeout=15) as sock:
        sock.sendall(b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (8192, b"y" * 8192)
        reply = b""
        try:
            for _ in range(20):
                sock.sendall(chunk)
        except OSError:
            pass  # the server closed after its 413
        while not reply.endswith(b"\r\n\r\n"):
            data = sock.recv(4096)
            if not data:
                break
            reply += data
        assert reply.startswith(b"HTTP/1.1 413 "), reply
    assert get(d, "/healthz")[0] == 200


def _raw_head(d, head: bytes) -> bytes:
    """Send a request head in pieces (the server may close mid-way); the reply's status line."""
    reply = b""
    with socket.create_connection(("127.0.0.1", d.port("http")), timeout=15) as sock:
        try:
            for i in range(0, len(head), 4096):
                sock.sendall(head[i:i + 4096])
        except OSError:
            pass  # closed after its answer
        while b"\r\n" not in reply:
            data = sock.recv(4096)
            if not data:
                break
            reply += data
    return reply.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("head, status", [
    # twisted.web alone closes these without a reply (a line over 16 KiB) ...
    (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 414 URI Too Long"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n",
     b"HTTP/1.1 431 Request Header Fields Too Large"),
    # ... or answers a bare 400 (a head over 16 KiB in short lines, over 500 fields).
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + (b"X-Long: " + b"c" * 90 + b"\r\n") * 200 + b"\r\n",
     b"HTTP/1.1 431 Request Header Fields Too Large"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Many: 0123456789abcdef\r\n" * 1000 + b"\r\n",
     b"HTTP/1.1 431 Request Header Fields Too Large"),
], ids=["request-line", "header-line", "head-size", "header-count"])
def test_oversized_request_head_gets_414_or_431(daemon, head, status):
    assert _raw_head(daemon, head) == status
    assert get(daemon, "/healthz")[0] == 200


def test_bad_mta_sts_config_stops_start_up(tmp_path):
    from harness import Daemon

    d = Daemon(tmp_path, {"http": {"mta_sts_mode": "strict"}}, ["http"])
    with pytest.raises(RuntimeError) as e:
        d.start()
    assert 'http.mta_sts_mode: must be "enforce", "testing" or "none"' in str(e.value)

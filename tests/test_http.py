"""
The operations listener against the real daemon, with curl: C{/healthz},
unknown paths and methods, the connection cap's 503, and bad config.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess

import pytest
from harness import Daemon


def curl(*args: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-cased names) and body of one request made by curl."""
    if shutil.which("curl") is None:
        pytest.skip("curl (Debian) is the HTTP client of these tests")
    out = subprocess.run(["curl", "-sS", "-i", "--max-time", "15", *args],
                         capture_output=True, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def test_healthz_404_405(make_daemon):
    d = make_daemon(listeners=["http", "imap"])
    base = f"http://127.0.0.1:{d.port('http')}"
    status, headers, body = curl(f"{base}/healthz")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["server"] == "netsuite"  # not Twisted's name and version
    info = json.loads(body)
    assert info["status"] == "ok" and info["pid"] == d.proc.pid and info["uptime"] >= 0
    status, headers, body = curl(f"{base}/no/such/page")
    assert status == 404 and json.loads(body) == {"error": "not found"}
    status, headers, body = curl("-X", "DELETE", f"{base}/healthz")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, body = curl("-I", f"{base}/healthz")
    assert status == 200 and body == b""
    # A request that is not HTTP gets twisted.web's 400, and the listener goes on serving.
    with socket.create_connection(("127.0.0.1", d.port("http")), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
    assert curl(f"{base}/healthz")[0] == 200
    assert "Traceback" not in d.log()


def test_https_and_the_connection_cap(make_daemon):
    d = make_daemon(config={"http": {"max_connections_per_address": 2}},
                    listeners=["http", "https"])
    status, _, body = curl("-k", f"https://127.0.0.1:{d.port('https')}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    held = [socket.create_connection(("127.0.0.1", d.port("http")), timeout=10)
            for _ in range(2)]
    try:
        assert d.wait_for(lambda: json.loads(
            (d.data_dir / "run" / "connections.json").read_text())
            ["listeners"]["http"]["open"] == 2)
        status, headers, _ = curl(f"http://127.0.0.1:{d.port('http')}/healthz")
        assert status == 503
    finally:
        for sock in held:
            sock.close()
    assert d.wait_for(lambda: curl(f"http://127.0.0.1:{d.port('http')}/healthz")[0] == 200)


def test_bad_http_config_stops_start_up(tmp_path):
    d = Daemon(tmp_path, {"http": {"idle_timeout": 0}}, ["http"])
    with pytest.raises(RuntimeError) as e:
        d.start()
    assert "[http]" in str(e.value) or "http" in str(e.value)
    assert "idle_timeout: must be greater than 0" in str(e.value)


def test_alpn_offers_do_not_break_tls_handshakes(make_daemon):
    """
    A client's ALPN list is answered with ours (C{http/1.1} on https) or with
    none: Twisted alone fails the handshake with internal_error when nothing
    overlaps (an IMAPS client offering C{imap}).
    """
    import ssl

    d = make_daemon(listeners=["https", "imaps"])
    for listener, offered, chosen, greeting in (
            ("https", ["h2", "http/1.1"], "http/1.1", None),
            ("imaps", ["imap"], None, b"* OK"),
            ("https", ["h2"], None, None)):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(offered)
        with socket.create_connection(("127.0.0.1", d.port(listener)), timeout=10) as raw:
            with ctx.wrap_socket(raw) as tls:
                assert tls.selected_alpn_protocol() == chosen, (listener, offered)
                if greeting is None:
                    tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    greeting = b"HTTP/1.1 200 "
                assert tls.recv(100).startswith(greeting)

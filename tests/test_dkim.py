"""
DKIM signing (RFC 6376, RFC 8463): keys from `netsuite dkim generate`, two
signatures on submitted mail and on netsuite's own bounces, checked by dkimpy
against the published records; `netsuite dkim check` against a DNS server on
loopback.
"""

from __future__ import annotations

import os
import socket
import stat

import dkim
import pytest
from dns_zone import DNSServer
from mail_fixtures import FAST, dnsfunc, message, records, submit


def signatures(content: bytes) -> list[dict[bytes, bytes]]:
    d = dkim.DKIM(content)
    out = []
    for name, value in d.headers:
        if name.lower() == b"dkim-signature":
            out.append(dkim.util.parse_tag_value(value))
    return out


def verify_all(content: bytes, published: dict[str, str]) -> list[dict[bytes, bytes]]:
    """Every DKIM-Signature of C{content} verifies; returns their tags."""
    sigs = signatures(content)
    d = dkim.DKIM(content)
    for i in range(len(sigs)):
        assert d.verify(idx=i, dnsfunc=dnsfunc(published)), (i, sigs[i])
    return sigs


def relay_daemon(make_daemon, remote_port: int, domains=("example.test",), **config):
    d = make_daemon(start=False, listeners=["smtp", "submission", "smtps"],
                    users={"alice": "alice-pw"},
                    config={"queue": {**FAST, "routes": {"remote.test":
                                                         f"127.0.0.1:{remote_port}"}},
                            **config})
    d.published = {}
    for domain in domains:
        out = d.cli("dkim", "generate", domain).stdout
        d.published.update(records(out))
    return d.start()


def test_generate_writes_private_keys_and_prints_records(make_daemon):
    d = make_daemon(start=False)
    out = d.cli("dkim", "generate", "Example.Test", "--selector", "s1").stdout
    published = records(out)
    assert sorted(published) == ["s1-ed25519._domainkey.example.test",
                                 "s1-rsa._domainkey.example.test"]
    assert published["s1-ed25519._domainkey.example.test"].startswith("v=DKIM1; k=ed25519; p=")
    assert published["s1-rsa._domainkey.example.test"].startswith("v=DKIM1; k=rsa; p=")
    for alg in ("ed25519", "rsa"):
        path = d.data_dir / "dkim" / "example.test" / f"s1-{alg}.key"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # The RSA record is over 255 octets: split into several TXT strings.
    line = [x for x in out.splitlines() if x.startswith("s1-rsa.")][0]
    assert line.count('"') >= 4
    again = d.cli("dkim", "generate", "example.test", "--selector", "s1", check=False)
    assert again.returncode != 0 and "never overwritten" in again.stderr


def test_submitted_mail_carries_two_valid_signatures(make_daemon, remote):
    d = relay_daemon(make_daemon, remote.port)
    body = message("signed", "body line\r\n.leading dot\r\n")
    assert submit(d, ["carol@remote.test"], body) == {}
    msgs = remote.handler.wait(1)
    assert len(msgs) == 1, d.log()[-3000:]
    content = msgs[0]["content"]
    sigs = verify_all(content, d.published)
    assert sorted(s[b"a"] for s in sigs) == [b"ed25519-sha256", b"rsa-sha256"]
    for s in sigs:
        assert s[b"d"] == b"example.test"
        assert s[b"c"] == b"relaxed/relaxed"
        signed = [h.strip().lower() for h in s[b"h"].split(b":")]
        assert signed.count(b"from") == 2  # present once, over-signed once
        assert signed.count(b"subject") == 2 and b"received" not in signed
    # A header added in transit breaks both signatures.
    tampered = b"Subject: changed\r\n" + content
    d2 = dkim.DKIM(tampered)
    assert not any(d2.verify(idx=i, dnsfunc=dnsfunc(d.published)) for i in range(2))


def test_unknown_from_domain_is_not_signed(make_daemon, remote):
    d = relay_daemon(make_daemon, remote.port,
                     smtp={"shared_senders": {"alice@other.test": ["alice"]}})
    body = b"From: alice@other.test\r\nSubject: x\r\n\r\nhi\r\n"
    assert submit(d, ["carol@remote.test"], body, sender="alice@other.test") == {}
    msgs = remote.handler.wait(1)
    assert len(msgs) == 1, d.log()[-3000:]
    assert signatures(msgs[0]["content"]) == []


def test_bounce_sent_out_is_signed_as_the_host(make_daemon, remote):
    remote.handler.script["nobody@remote.test"] = ["550 5.1.1 no such user"]
    d = relay_daemon(make_daemon, remote.port, domains=("example.test", "mx.test"),
                     smtp={"shared_senders": {"alice@remote.test": ["alice"]}})
    submit(d, ["nobody@remote.test"], message("fromafar"), sender="alice@remote.test")
    msgs = remote.handler.wait(1)
    assert len(msgs) == 1, d.log()[-3000:]
    content = msgs[0]["content"]
    assert b"multipart/report" in content
    sigs = verify_all(content, d.published)
    assert sorted((s[b"d"], s[b"a"]) for s in sigs) == [
        (b"mx.test", b"ed25519-sha256"), (b"mx.test", b"rsa-sha256")]


def test_bad_key_stops_start_up_naming_the_file(make_daemon):
    d = make_daemon(start=False, listeners=["smtp"])
    d.cli("dkim", "generate", "example.test")
    bad = d.data_dir / "dkim" / "example.test" / "netsuite-rsa.key"
    bad.write_text("not a key\n")
    with pytest.raises(RuntimeError) as e:
        d.start()
    text = str(e.value)
    assert f"dkim.key_directory: {bad}: not a rsa private key" in text
    assert "Traceback" not in text.split("twistd exited")[1].split("\n2")[0]


def test_dkim_check_against_local_dns(make_daemon, tmp_path):
    d = make_daemon(start=False)
    published = records(d.cli("dkim", "generate", "example.test").stdout)
    server = DNSServer(tmp_path, {k: [v] for k, v in published.items()})
    try:
        d.config["dns"] = {"nameservers": [server.address], "timeout": 2.0}
        ok = d.cli("dkim", "check", "example.test", check=False)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert ok.stdout.count(": OK") == 2
    finally:
        server.stop()
    # The RSA record replaced by another key; the Ed25519 one missing.
    other = records(make_daemon(start=False).cli("dkim", "generate", "example.test").stdout)
    rsa = "netsuite-rsa._domainkey.example.test"
    server = DNSServer(tmp_path, {rsa: [other[rsa]]})
    try:
        d.config["dns"] = {"nameservers": [server.address], "timeout": 2.0}
        bad = d.cli("dkim", "check", "example.test", check=False)
        assert bad.returncode == 1
        assert f"{rsa}: MISMATCH" in bad.stdout
        assert "netsuite-ed25519._domainkey.example.test: MISSING: no such name" in bad.stdout
    finally:
        server.stop()


def test_dkim_check_times_out(make_daemon):
    d = make_daemon(start=False)
    d.cli("dkim", "generate", "example.test")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # never answers
        silent.bind(("127.0.0.1", 0))
        d.config["dns"] = {"nameservers": [f"127.0.0.1:{silent.getsockname()[1]}"],
                           "timeout": 0.5}
        out = d.cli("dkim", "check", "example.test", check=False)
    assert out.returncode == 1
    assert out.stdout.count("(timeout)") == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr

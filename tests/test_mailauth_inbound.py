"""
On the MX: DKIM verification and SPF into one Authentication-Results header
(RFC 8601), forged ones with our authserv-id removed, DNS from a twisted.names
server on loopback; bad input and DNS timeouts get the RFC's result and the
mail still flows.
"""

from __future__ import annotations

import smtplib
import socket

import dkim
import pytest
from dns_zone import DNSServer
from mail_fixtures import auth_results as results
from mail_fixtures import records

SENDER = "news@sender.test"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Keys of sender.test (written by netsuite's own generator) and their records."""
    from harness import Daemon

    d = Daemon(tmp_path_factory.mktemp("keys"), listeners=[])
    published = records(d.cli("dkim", "generate", "sender.test").stdout)
    folder = d.data_dir / "dkim" / "sender.test"
    return {"published": published,
            "rsa": (folder / "netsuite-rsa.key").read_bytes(),
            "ed25519": (folder / "netsuite-ed25519.key").read_bytes().strip()}


@pytest.fixture(scope="module")
def zone(keys, tmp_path_factory):
    txt = {name: [text] for name, text in keys["published"].items()}
    txt["sender.test"] = ["v=spf1 ip4:127.0.0.1 -all"]
    # Twelve includes, each a lookup: past RFC 7208 4.6.4's limit of 10; padded to ~10 KB.
    txt["loop.test"] = ["v=spf1 " + " ".join(f"include:i{i}.loop.test" for i in range(12))
                        + " -all"]
    for i in range(12):
        txt[f"i{i}.loop.test"] = [f"v=spf1 ip4:192.0.2.{i} " + "a:" + "x" * 60
                                  + ".loop.test ?all" + " " * 800]
    server = DNSServer(tmp_path_factory.mktemp("zone"), txt)
    yield server
    server.stop()


@pytest.fixture
def mx(make_daemon, zone):
    return make_daemon(listeners=["smtp"], users={"alice": "pw"}, config={
        "checks": {"enabled": True}, "dns": {"nameservers": [zone.address], "timeout": 2.0}})


def signed(keys, body: bytes) -> bytes:
    out = body
    for alg, key in (("rsa", keys["rsa"]), ("ed25519", keys["ed25519"])):
        sig = dkim.sign(body, f"netsuite-{alg}".encode(), b"sender.test", key,
                        canonicalize=(b"relaxed", b"relaxed"),
                        signature_algorithm=f"{alg}-sha256".encode(),
                        include_headers=[b"from", b"subject", b"to"])
        out = sig + out
    return out


BODY = (b"From: News <news@sender.test>\r\nTo: alice@example.test\r\n"
        b"Subject: signed news\r\n\r\nhello\r\n")


def send(d, content: bytes, source: str = "127.0.0.1", sender: str = SENDER) -> bytes:
    before = len(d.messages("alice"))
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=30,
                      source_address=(source, 0)) as s:
        s.ehlo("client.sender.test")
        assert s.sendmail(sender, ["alice@example.test"], content) == {}
    got = d.wait_for(lambda: d.messages("alice")[before:], 10)
    assert got, d.log()[-2000:]
    return got[0]


def test_signed_message_from_an_allowed_address_passes(mx, keys):
    forged = (b"Authentication-Results: mx.test; dkim=pass header.d=bank.test\r\n"
              b"Authentication-Results: MX.TEST;\r\n\tspf=pass\r\n"
              b"Authentication-Results: other.example; spf=fail\r\n")
    stored = send(mx, forged + signed(keys, BODY))
    ar = results(stored)  # exactly one with our id: the forged ones are gone
    assert "bank.test" not in ar
    assert ar.count("dkim=pass") == 2, ar
    assert "header.d=sender.test" in ar and "header.a=ed25519-sha256" in ar
    assert "header.a=rsa-sha256" in ar
    assert "spf=pass smtp.mailfrom=news@sender.test" in ar
    assert b"Authentication-Results: other.example; spf=fail" in stored  # not ours: kept
    assert stored.index(b"Authentication-Results: mx.test") < stored.index(b"Received:")
    assert stored.endswith(b"\n\nhello\n")


def test_wrong_address_fails_spf_and_changed_body_fails_dkim(mx, keys):
    tampered = signed(keys, BODY).replace(b"hello", b"HELLO")
    ar = results(send(mx, tampered, source="127.0.0.2"))
    assert "spf=fail smtp.mailfrom=news@sender.test" in ar
    assert ar.count("dkim=fail") == 2 and "dkim=pass" not in ar, ar


def test_unsigned_null_sender_and_malformed_signature(mx):
    ar = results(send(mx, BODY, sender=""))
    assert "dkim=none" in ar
    assert "smtp.helo=client.sender.test" in ar
    bad = b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.test; garbage\r\n" + BODY
    ar = results(send(mx, bad))
    assert "dkim=permerror" in ar, ar
    assert "Traceback" not in mx.log()


def test_dns_timeout_is_temperror_and_mail_flows(make_daemon, keys):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        d = make_daemon(listeners=["smtp"], users={"alice": "pw"}, config={
            "checks": {"enabled": True},
            "dns": {"nameservers": [f"127.0.0.1:{silent.getsockname()[1]}"], "timeout": 0.3}})
        ar = results(send(d, signed(keys, BODY)))
    assert "spf=temperror" in ar
    assert ar.count("dkim=temperror") == 2, ar
    assert "Traceback" not in d.log()


def test_more_than_ten_lookups_is_permerror(mx):
    body = BODY.replace(b"news@sender.test", b"x@loop.test")
    ar = results(send(mx, body, sender="x@loop.test"))
    assert "spf=permerror smtp.mailfrom=x@loop.test" in ar, ar


#: Malformed DKIM-Signature values (RFC 6376 3.5, 6.1.1) and one without a key
#: (6.1.2): each is a permanent error (RFC 8601 2.7.1 permerror) for that
#: signature only, never a traceback; the valid ones beside it pass.
MALFORMED = {
    "not tag=value": b"v=1; a=rsa-sha256; d=sender.test; garbage",
    "no b=": b"v=1; a=rsa-sha256; d=sender.test; s=netsuite-rsa; h=from; bh=YWJj",
    "b= not base64": b"v=1; a=rsa-sha256; d=sender.test; s=netsuite-rsa; h=from; bh=!!; b=***",
    "unknown a=": b"v=1; a=rsa-sha3; d=sender.test; s=netsuite-rsa; h=from; bh=YWJj; b=YWJj",
    "repeated tag": b"v=1; v=1; a=rsa-sha256; d=sender.test; s=netsuite-rsa; h=from; "
                    b"bh=YWJj; b=YWJj",
    "empty": b"",
    "i= outside d=": b"v=1; a=rsa-sha256; d=sender.test; i=@other.test; s=netsuite-rsa; "
                     b"h=from; bh=YWJj; b=YWJj",
    "expired x=": b"v=1; a=rsa-sha256; d=sender.test; s=netsuite-rsa; h=from; t=0; x=1; "
                  b"bh=YWJj; b=YWJj",
    "not UTF-8": b"v=1; a=rsa-sha256; d=sender\xff.test; s=netsuite\xfe; h=from; "
                 b"bh=YWJj; b=YWJj",
    "no such key": b"v=1; a=rsa-sha256; d=sender.test; s=nokey; h=from; bh=YWJj; b=YWJj",
}
#: Well formed but wrong (a 10 KB h= list, a made-up body hash): a failed signature.
WRONG = b"v=1; a=rsa-sha256; d=sender.test; s=netsuite-rsa; h=" + b":".join([b"from"] * 2000) \
    + b"; bh=YWJj; b=YWJj"


def test_malformed_signatures_beside_a_valid_one(mx, keys):
    for name, value in [*MALFORMED.items(), ("wrong", WRONG)]:
        stored = send(mx, b"DKIM-Signature: " + value + b"\r\n" + signed(keys, BODY))
        ar = results(stored)
        verdicts = [p.split()[0] for p in ar.split(";")[1:] if p.strip().startswith("dkim=")]
        assert len(verdicts) == 3, (name, ar)
        assert verdicts.count("dkim=pass") == 2, (name, ar)  # the valid signatures
        (bad,) = [v for v in verdicts if v != "dkim=pass"]
        assert bad == ("dkim=fail" if value is WRONG else "dkim=permerror"), (name, ar)
        assert stored.endswith(b"\n\nhello\n")
    assert "Traceback" not in mx.log()


def test_dns_answers_are_kept_between_messages(mx, keys, zone):
    """The same sender twice: its SPF record and DKIM keys are asked once (MAX_TTL/TTL)."""
    names = ["TXT sender.test", "TXT netsuite-rsa._domainkey.sender.test",
             "TXT netsuite-ed25519._domainkey.sender.test", "TXT _dmarc.sender.test"]
    before = zone.queries()
    for _ in range(3):
        ar = results(send(mx, signed(keys, BODY)))
        assert ar.count("dkim=pass") == 2 and "spf=pass" in ar, ar
    asked = zone.queries()[len(before):]
    for name in names:  # _dmarc.sender.test: NXDOMAIN here, kept as well
        assert asked.count(name) == 1, (name, asked)

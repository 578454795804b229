"""
DMARC (RFC 7489) and ARC (RFC 8617) on the MX, against the real daemon with
DNS from a twisted.names server on loopback and smtplib clients: alignment,
the policy after DATA (p=reject -> 550 5.7.1 and nothing stored,
p=quarantine -> Junk, pct, p=none marked), malformed records, DNS timeouts,
multiple From fields, spf_fail and per-domain overrides; ARC chains made with
dkimpy's arc_sign verify as arc=pass, a tampered one as arc=fail.
"""

from __future__ import annotations

import smtplib
import socket

import dkim
import pytest
from dns_zone import DNSServer
from mail_fixtures import FAST, dnsfunc, records
from mail_fixtures import auth_results as results
from test_mailauth_inbound import BODY, SENDER, keys, signed  # noqa: F401 (keys: a fixture)

RCPT = "alice@example.test"


@pytest.fixture(scope="module")
def zone(keys, tmp_path_factory):  # noqa: F811
    txt = {name: [text] for name, text in keys["published"].items()}
    txt["sender.test"] = ["v=spf1 ip4:127.0.0.1 -all"]
    txt["_dmarc.sender.test"] = ["v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@sender.test"]
    for name, policy in (("bank", "p=reject"), ("quar", "p=quarantine; pct=100"),
                         ("sampled", "p=reject; pct=0"), ("open", "p=none"),
                         ("broken", "p=bogus; adkim=x"), ("strict", "p=reject; aspf=s")):
        txt[f"{name}.test"] = ["v=spf1 ip4:192.0.2.1 -all"]
        txt[f"_dmarc.{name}.test"] = [f"v=DMARC1; {policy}"]
    txt["strict.test"] = ["v=spf1 ip4:127.0.0.1 -all"]
    txt["mail.strict.test"] = ["v=spf1 ip4:127.0.0.1 -all"]
    server = DNSServer(tmp_path_factory.mktemp("zone"), txt)
    yield server
    server.stop()


def mx_config(zone, **checks):
    return {"checks": {"enabled": True, **checks},
            "dns": {"nameservers": [zone.address], "timeout": 2.0}}


@pytest.fixture
def mx(make_daemon, zone):
    return make_daemon(listeners=["smtp"], users={"alice": "pw"}, config=mx_config(zone))


def message(from_: str, subject: str = "hi", extra: bytes = b"") -> bytes:
    return extra + f"From: <{from_}>\r\nTo: {RCPT}\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()


def smtp_send(d, content: bytes, sender: str, source: str = "127.0.0.1") -> None:
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=30,
                      source_address=(source, 0)) as s:
        s.ehlo("client.sender.test")
        assert s.sendmail(sender, [RCPT], content) == {}


def delivered(d, content: bytes, sender: str, folder: str = "",
              source: str = "127.0.0.1") -> bytes:
    """Send; return the one new message in C{folder} (INBOX: "") and check the other is empty."""
    other = "Junk" if folder == "" else ""
    before, before_other = len(d.messages("alice", folder)), len(d.messages("alice", other))
    smtp_send(d, content, sender, source)
    got = d.wait_for(lambda: d.messages("alice", folder)[before:], 10)
    assert got, d.log()[-2000:]
    assert len(d.messages("alice", other)) == before_other
    return got[0]


def refused(d, content: bytes, sender: str, source: str = "127.0.0.1") -> smtplib.SMTPDataError:
    before = [len(d.messages("alice", f)) for f in ("", "Junk")]
    with pytest.raises(smtplib.SMTPDataError) as e:
        smtp_send(d, content, sender, source)
    assert [len(d.messages("alice", f)) for f in ("", "Junk")] == before  # nothing stored
    return e.value


def test_signed_aligned_message_passes_dmarc(mx, keys):  # noqa: F811
    ar = results(delivered(mx, signed(keys, BODY), SENDER))
    assert "dkim=pass" in ar and "spf=pass" in ar, ar
    assert "dmarc=pass (p=reject dis=none) header.from=sender.test policy.dmarc=reject" in ar
    assert "arc=none" in ar


def test_forged_from_of_reject_domain_is_refused(mx, keys):  # noqa: F811
    # SPF fails (bank.test allows only 192.0.2.1), no DKIM at all.
    e = refused(mx, message("ceo@bank.test"), "ceo@bank.test")
    assert e.smtp_code == 550 and e.smtp_error.startswith(b"5.7.1"), e
    assert b"DMARC policy of bank.test" in e.smtp_error
    # SPF and DKIM pass, but for sender.test: not aligned with the From domain.
    forged = signed(keys, BODY.replace(b"From: News <news@sender.test>",
                                       b"From: News <ceo@bank.test>"))
    e = refused(mx, forged, SENDER)
    assert e.smtp_code == 550
    assert mx.wait_for(lambda: mx.log().count("reason=dmarc_reject") == 2, 10)
    # One line per rejection, saying why and what the client heard.
    lines = [x for x in mx.log().splitlines() if "reason=dmarc_reject" in x]
    assert all("rejected: DATA reason=dmarc_reject size=" in x
               and "reply=550 5.7.1 Error: rejected by the DMARC policy of bank.test" in x
               for x in lines), lines
    assert "refused: DATA" not in mx.log()
    assert "Traceback" not in mx.log()


def test_quarantine_goes_to_junk_and_pct_zero_steps_down(mx):
    ar = results(delivered(mx, message("x@quar.test"), "x@quar.test", folder="Junk"))
    assert "spf=fail" in ar
    assert "dmarc=fail (p=quarantine dis=quarantine) header.from=quar.test" in ar, ar
    # p=reject with pct=0: not sampled, so quarantine instead (RFC 7489 6.6.4).
    ar = results(delivered(mx, message("x@sampled.test"), "x@sampled.test", folder="Junk"))
    assert "dmarc=fail (p=reject dis=quarantine) header.from=sampled.test" in ar, ar
    assert "reason=dmarc_quarantine" in mx.log()


def test_subdomain_uses_the_organizational_domain_record(mx):
    # No _dmarc.mail.sender.test: the record of sender.test applies, with its sp=.
    content = message("x@mail.sender.test")
    ar = results(delivered(mx, content, "x@mail.sender.test", folder="Junk",
                           source="127.0.0.2"))
    assert "dmarc=fail (p=quarantine dis=quarantine) header.from=mail.sender.test" in ar
    # Relaxed SPF alignment: the envelope at sender.test passes for mail.sender.test.
    ar = results(delivered(mx, content, SENDER))
    assert "spf=pass" in ar and "dmarc=pass" in ar, ar


def test_strict_alignment(mx):
    # aspf=s: an SPF pass for mail.strict.test does not align with strict.test.
    e = refused(mx, message("x@strict.test"), "x@mail.strict.test")
    assert e.smtp_code == 550
    ar = results(delivered(mx, message("x@mail.sender.test"), "x@sender.test"))
    assert "dmarc=pass" in ar


def test_p_none_is_delivered_marked_and_malformed_record_flows(mx):
    ar = results(delivered(mx, message("x@open.test"), "x@open.test"))
    assert "dmarc=fail (p=none dis=none) header.from=open.test" in ar, ar
    # v=DMARC1 without a valid p= (and no rua): permerror, no policy (RFC 7489 6.3, 11.2).
    ar = results(delivered(mx, message("x@broken.test"), "x@broken.test"))
    assert "dmarc=permerror" in ar and "header.from=broken.test" in ar, ar
    # No record at all: none.
    ar = results(delivered(mx, message("x@nodmarc.test"), "x@nodmarc.test"))
    assert "dmarc=none" in ar and "header.from=nodmarc.test" in ar, ar
    assert "Traceback" not in mx.log()


def test_no_or_several_from_domains_are_refused(mx):
    two = b"From: <a@sender.test>\r\n" + message("b@sender.test")
    e = refused(mx, two, SENDER)
    assert e.smtp_code == 550 and b"RFC 7489 6.6.1" in e.smtp_error
    mixed = message("a@sender.test>, <b@bank.test")
    e = refused(mx, mixed, SENDER)
    assert e.smtp_code == 550
    none = b"To: alice@example.test\r\nSubject: no from\r\n\r\nhello\r\n"
    refused(mx, none, SENDER)
    assert mx.log().count("reason=dmarc_bad_from") == 3


def test_mark_only_spf_reject_and_domain_overrides(make_daemon, zone):
    d = make_daemon(listeners=["smtp"], users={"alice": "pw"}, config=mx_config(
        zone, spf_fail="reject", domains={"Example.Test": {"dmarc_policy": "mark"}}))
    # DMARC marks only for example.test, but SPF -all fails are refused.
    e = refused(d, message("x@open.test"), "x@open.test")
    assert e.smtp_code == 550 and b"SPF" in e.smtp_error
    (line,) = [x for x in d.log().splitlines() if "reason=spf_fail" in x]
    assert "rejected: DATA reason=spf_fail" in line and "reply=550 5.7.1" in line, line
    assert "refused: DATA" not in d.log()
    # A DMARC failure with SPF passing (the envelope is not the From domain): delivered.
    ar = results(delivered(d, message("ceo@bank.test"), SENDER))
    assert "spf=pass" in ar and "dmarc=fail (p=reject dis=reject)" in ar, ar


def test_dns_timeout_is_temperror_and_mail_flows(make_daemon):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        d = make_daemon(listeners=["smtp"], users={"alice": "pw"}, config={
            "checks": {"enabled": True},
            "dns": {"nameservers": [f"127.0.0.1:{silent.getsockname()[1]}"], "timeout": 0.3}})
        ar = results(delivered(d, message("x@bank.test"), "x@bank.test"))
    assert "dmarc=temperror" in ar and "header.from=bank.test" in ar, ar
    assert "Traceback" not in d.log()


def arc_sealed(keys, content: bytes) -> bytes:  # noqa: F811
    """C{content} forwarded by fwd.sender.test: its AR, then one ARC set (i=1)."""
    content = (b"Authentication-Results: fwd.sender.test; spf=pass "
               b"smtp.mailfrom=news@sender.test\r\n" + content)
    sealed = dkim.arc_sign(content, b"netsuite-rsa", b"sender.test", keys["rsa"],
                           b"fwd.sender.test")
    return b"".join(sealed) + content


def test_arc_chain_pass_and_tampered_fail(mx, keys):  # noqa: F811
    ar = results(delivered(mx, arc_sealed(keys, message("x@open.test")), SENDER))
    assert "arc=pass" in ar, ar
    tampered = arc_sealed(keys, message("x@open.test")).replace(b"hello", b"HELLO")
    ar = results(delivered(mx, tampered, SENDER))
    assert "arc=fail" in ar, ar
    assert "arc=pass" not in ar


def test_forwarded_message_carries_a_valid_arc_set(make_daemon, zone, keys,  # noqa: F811
                                                    remote):
    d = make_daemon(start=False, listeners=["smtp"], users={"alice": "pw"}, config={
        **mx_config(zone), "mail": {"local_domains": ["example.test"],
                                    "aliases": {"fwd": ["bob@remote.test", "alice"]}},
        "queue": {**FAST, "routes": {"remote.test": f"127.0.0.1:{remote.port}"}}})
    published = records(d.cli("dkim", "generate", "example.test").stdout)
    d.start()
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=30) as s:
        s.ehlo("client.sender.test")
        assert s.sendmail(SENDER, ["fwd@example.test"], signed(keys, BODY)) == {}
    got = remote.handler.wait(1)
    assert got and got[0]["to"] == ["bob@remote.test"], d.log()[-2000:]
    content = got[0]["content"]
    assert b"ARC-Seal: i=1" in content and b"d=example.test" in content
    zone_keys = {**published, **keys["published"]}
    cv, _res, reason = dkim.arc_verify(content, dnsfunc=dnsfunc(zone_keys))
    assert cv == b"pass", (reason, content[:3000])
    assert d.wait_for(lambda: d.messages("alice"), 10)  # the local copy too

"""
DKIM signatures checked by an independent implementation: mail submitted on
587 (STARTTLS, AUTH) and relayed to an aiosmtpd sink must carry an Ed25519 and
an RSA-2048 signature that OpenDKIM 2.11 (Debian's C{opendkim}, in its test
mode C{-t}) verifies, with the public keys exactly as C{netsuite dkim generate}
printed them for DNS (OpenDKIM's C{TestDNSData}, so no DNS is needed); the same
message altered in transit must fail both.

C{opendkim-testmsg} would do as well, but it asks only the system's resolver
(no port, no test keys), so it could not be pointed at the loopback zone.
"""

from __future__ import annotations

import re
import smtplib
import subprocess

from mail_fixtures import message, records
from rawsmtp import insecure_context
from test_dkim import relay_daemon
from tools import require


def opendkim_results(tmp_path, content: bytes, published: dict[str, str]) -> list[dict]:
    """Each signature's result as OpenDKIM's Authentication-Results reports it."""
    binary = require("opendkim")
    keys = tmp_path / "keys"
    keys.write_text("".join(f"{name} {text}\n" for name, text in published.items()))
    conf = tmp_path / "opendkim.conf"
    conf.write_text(f"Mode v\nSyslog no\nAlwaysAddARHeader yes\nTestDNSData file:{keys}\n")
    path = tmp_path / "message.eml"
    path.write_bytes(content)
    done = subprocess.run([binary, "-x", str(conf), "-t", str(path), "-vv"],
                          capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    header = re.search(r"hname='Authentication-Results' hvalue='([^']*)'", out)
    assert header, out
    found = []
    for part in header.group(1).split(";")[1:]:
        m = re.match(r"\s*dkim=(\w+)", part)
        if m:
            tags = dict(re.findall(r"header\.(\w)=(\S+)", part))
            found.append({"result": m.group(1), **tags, "text": part.strip()})
    return found


def test_opendkim_verifies_both_signatures_of_submitted_mail(make_daemon, remote, tmp_path):
    d = relay_daemon(make_daemon, remote.port)
    body = message("independent", "a line\r\n.leading dot\r\ntrailing  spaces  \r\n")
    with smtplib.SMTP("127.0.0.1", d.port("submission"), timeout=20) as s:
        s.starttls(context=insecure_context())
        s.login("alice", "alice-pw")
        assert s.sendmail("alice@example.test", ["carol@remote.test"], body) == {}
    msgs = remote.handler.wait(1)
    assert len(msgs) == 1, d.log()[-3000:]
    content = msgs[0]["content"]
    assert content.count(b"DKIM-Signature:") == 2, content[:2000]

    got = opendkim_results(tmp_path, content, d.published)
    assert sorted(r["a"] for r in got) == ["ed25519-sha256", "rsa-sha256"], got
    for r in got:
        assert r["result"] == "pass", got
        assert r["d"] == "example.test"
    rsa = next(r for r in got if r["a"] == "rsa-sha256")
    assert "(2048-bit key)" in rsa["text"], rsa

    # Altered in transit: the body, then a signed (over-signed) header added.
    for tampered in (content.replace(b"a line", b"A line"),
                     content.replace(b"\r\n\r\n", b"\r\nFrom: mallory@example.test\r\n\r\n", 1)):
        got = opendkim_results(tmp_path, tampered, d.published)
        assert len(got) == 2 and all(r["result"] == "fail" for r in got), got
    # A key that is not the published one: both fail too.
    other = make_daemon(start=False).cli("dkim", "generate", "example.test").stdout
    wrong = records(other)
    assert wrong.keys() == d.published.keys()
    got = opendkim_results(tmp_path, content, wrong)
    assert len(got) == 2 and all(r["result"] != "pass" for r in got), got

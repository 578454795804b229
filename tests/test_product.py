"""
The whole product in one process: one account, one portal, one store, every protocol.

Each protocol has its own thorough tests; this one checks that they compose: mail
sent by SMTP is read by POP3 and IMAP in the same daemon, the same password opens
FTP and TELNET, and a password changed with the CLI changes for all of them at once.
"""

from __future__ import annotations

import imaplib
import io
import os
import poplib
import smtplib

import pytest
from rawsmtp import insecure_context
from test_ftp_helpers import FTPS

from netsuite.telnet.client import TelnetClient

PROMPT = r"[$#] $"


@pytest.fixture
def product(make_daemon):
    # The suite runs as root: a password-file user's shell then runs as root, which
    # netsuite refuses unless the config opts in.
    return make_daemon(users={"alice": "old-pw"}, config={
        "telnet": {"permit_root_login": os.geteuid() == 0, "utmp": False}})


def pop3(d, password: str) -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", d.port("pop3"), timeout=10)
    p.stls(context=insecure_context())
    p.user("alice")
    p.pass_(password)
    return p


def imap(d, password: str) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    m.starttls(ssl_context=insecure_context())
    m.login("alice", password)
    return m


def ftps(d, password: str) -> FTPS:
    f = FTPS(timeout=10)
    f.connect("127.0.0.1", d.port("ftp"))
    f.auth()
    f.login("alice", password)
    f.prot_p()
    return f


def telnet(d, password: str) -> TelnetClient:
    c = TelnetClient("127.0.0.1", d.port("telnet"))
    c.login("alice", password, PROMPT)
    return c


def test_one_account_across_every_protocol(product):
    d = product
    message = b"Subject: one store\r\n\r\nsent by SMTP, read by POP3 and IMAP\r\n"
    with smtplib.SMTP("127.0.0.1", d.port("submission"), timeout=10) as s:
        s.starttls(context=insecure_context())
        s.login("alice", "old-pw")
        s.sendmail("alice@example.test", ["alice@example.test"], message)

    m = imap(d, "old-pw")
    m.select("INBOX")
    typ, data = m.fetch("1", "(BODY.PEEK[])")
    imap_bytes = data[0][1]
    assert imap_bytes.endswith(message)
    m.logout()

    p = pop3(d, "old-pw")
    assert p.stat()[0] == 1
    pop_bytes = b"\r\n".join(p.retr(1)[1]) + b"\r\n"
    p.quit()
    assert pop_bytes == imap_bytes

    f = ftps(d, "old-pw")
    f.storbinary("STOR report.txt", io.BytesIO(b"uploaded over FTPS\n"))
    assert "report.txt" in f.nlst()
    f.quit()
    assert (d.data_dir / "ftp" / "alice" / "report.txt").read_bytes() == b"uploaded over FTPS\n"

    c = telnet(d, "old-pw")
    c.sendline("echo logged-in-as-$USER")
    c.expect(r"logged-in-as-alice\r\n")
    c.close()

    # One password database behind one portal: a change applies everywhere at once.
    d.cli("user", "passwd", "alice", "--password-stdin", input="new-pw\n")
    with smtplib.SMTP_SSL("127.0.0.1", d.port("smtps"), timeout=10,
                          context=insecure_context()) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("alice", "old-pw")
    with pytest.raises(poplib.error_proto):
        pop3(d, "old-pw")
    with pytest.raises(imaplib.IMAP4.error):
        imap(d, "old-pw")
    import ftplib

    with pytest.raises(ftplib.error_perm):
        ftps(d, "old-pw")
    pop3(d, "new-pw").quit()
    imap(d, "new-pw").logout()
    ftps(d, "new-pw").quit()
    telnet(d, "new-pw").close()

"""
Reload without a restart (SIGHUP, C{netsuite reload}) against the real daemon:
sessions in progress go on, listeners come and go as the file says, a
certificate replaced on disk is served to new connections, aliases apply,
and an invalid file changes nothing.
"""

from __future__ import annotations

import imaplib
import json
import poplib
import signal
import smtplib
import socket
import ssl

from rawsmtp import insecure_context

from netsuite.tls import write_self_signed

USERS = {"alice": "wonderland"}
LOCAL = "tcp:0:interface=127.0.0.1"
PLAIN = {"server": {"allow_plaintext_auth": True}}


def reloaded(d, send=None, timeout: float = 20.0) -> str:
    """SIGHUP the daemon (or call C{send}), wait for the reload to end; its log lines."""
    before = d.log()
    done = ("reload: done (", "reload refused")
    if send is None:
        d.proc.send_signal(signal.SIGHUP)
    else:
        send()
    assert d.wait_for(lambda: any(d.log()[len(before):].count(m) for m in done), timeout), \
        d.log()[len(before):]
    return d.log()[len(before):]


def rewrite(d, **sections) -> None:
    """Change tables of the daemon's config file (the next reload reads it)."""
    for name, table in sections.items():
        d.config.setdefault(name, {}).update(table)
    d.write_config()


def listening(d) -> dict[str, list[int]]:
    return json.loads((d.data_dir / "run" / "listening.json").read_text())["listen"]


def imap_login(port: int) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    m.login("alice", USERS["alice"])
    return m


def still_works(m: imaplib.IMAP4) -> None:
    assert m.noop()[0] == "OK"
    assert m.select("INBOX")[0] == "OK"
    assert m.list()[0] == "OK"


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def peer_cert(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with insecure_context().wrap_socket(raw) as tls:
            return tls.getpeercert(binary_form=True)


def der_of(path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


# -- (a) sessions in progress ----------------------------------------------------------

def test_logged_in_imap_session_survives_sighup(make_daemon):
    d = make_daemon(config=PLAIN, listeners=["imap"], users=USERS)
    m = imap_login(d.port("imap"))
    still_works(m)
    out = reloaded(d)
    assert "reload: done (" in out and "reload refused" not in out
    still_works(m)
    assert listening(d)["imap"] == [d.port("imap")]
    fresh = imap_login(d.port("imap"))  # the same port serves new sessions too
    still_works(fresh)
    fresh.logout()
    m.logout()


# -- (b) listeners added and removed ---------------------------------------------------

def test_listeners_follow_the_config(make_daemon):
    d = make_daemon(config=PLAIN, listeners=["imap"], users=USERS)
    imap_port = d.port("imap")
    m = imap_login(imap_port)
    assert "pop3" not in listening(d)

    rewrite(d, listen={"imap": [], "pop3": [LOCAL]})
    out = reloaded(d)
    assert "added pop3" in out and "removed imap" in out, out
    ports = listening(d)
    assert "imap" not in ports and len(ports["pop3"]) == 1, ports
    connections = d.data_dir / "run" / "connections.json"
    assert d.wait_for(lambda: set(json.loads(connections.read_text())["listeners"])
                      == {"pop3"}, 5), connections.read_text()

    p = poplib.POP3("127.0.0.1", ports["pop3"][0], timeout=10)
    p.user("alice")
    p.pass_(USERS["alice"])
    assert p.stat()[0] == 0
    p.quit()

    assert refused(imap_port)  # no longer accepting...
    still_works(m)  # ...while the session opened before goes on
    m.logout()

    # And back: the same listener name on a new port, the other one gone.
    rewrite(d, listen={"imap": [LOCAL], "pop3": []})
    out = reloaded(d)
    assert "added imap" in out and "removed pop3" in out, out
    ports = listening(d)
    assert "pop3" not in ports and len(ports["imap"]) == 1, ports
    imap_login(ports["imap"][0]).logout()


# -- (c) certificates --------------------------------------------------------------------

def test_certificate_replaced_on_disk_is_served_after_reload(make_daemon, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed("old.test", cert, key)
    old_der = der_of(cert)
    d = make_daemon(config={**PLAIN, "tls": {"certificate": str(cert), "key": str(key)}},
                    listeners=["imap", "imaps"], users=USERS)
    assert peer_cert(d.port("imaps")) == old_der
    old_session = imaplib.IMAP4_SSL("127.0.0.1", d.port("imaps"), timeout=10,
                                    ssl_context=insecure_context())
    old_session.login("alice", USERS["alice"])

    write_self_signed("new.test", cert, key)
    new_der = der_of(cert)
    assert new_der != old_der
    out = reloaded(d)
    assert "certificate reloaded" in out, out

    assert peer_cert(d.port("imaps")) == new_der  # implicit TLS
    starttls = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    starttls.starttls(insecure_context())  # and STARTTLS
    assert starttls.sock.getpeercert(binary_form=True) == new_der
    starttls.logout()
    assert old_session.sock.getpeercert(binary_form=True) == old_der
    still_works(old_session)  # the session from before keeps its TLS session

    # A certificate that cannot be loaded keeps the one being served.
    cert.write_text("not a certificate\n")
    out = reloaded(d)
    assert "certificate not replaced, the old one stays" in out and "tls.certificate" in out, out
    assert peer_cert(d.port("imaps")) == new_der

    # Nor does a certificate with another certificate's key.
    write_self_signed("other.test", tmp_path / "other.pem", tmp_path / "other.key")
    cert.write_bytes((tmp_path / "other.pem").read_bytes())
    out = reloaded(d)
    assert "certificate not replaced" in out and "keys do not match" in out, out
    assert peer_cert(d.port("imaps")) == new_der
    still_works(old_session)
    old_session.logout()


# -- (d) an invalid file -----------------------------------------------------------------

def test_invalid_config_is_refused_and_the_old_one_serves(make_daemon):
    d = make_daemon(config=PLAIN, listeners=["imap"], users=USERS)
    before = listening(d)
    rewrite(d, limits={"max_connections": 0}, listen={"pop3": [LOCAL]})
    out = reloaded(d)
    assert (f"netsuite: reload refused: {d.config_path}: limits.max_connections: "
            "must be greater than 0, got 0") in out, out
    assert "reload: done" not in out
    assert listening(d) == before  # pop3 not added
    imap_login(d.port("imap")).logout()

    d.config_path.write_text(d.config_path.read_text() + "\n[broken\n")
    out = reloaded(d)
    assert f"netsuite: reload refused: {d.config_path}: not valid TOML" in out, out
    imap_login(d.port("imap")).logout()

    # What start-up refuses beyond the file's own checks: a postmaster that resolves nowhere.
    del d.config["limits"]
    rewrite(d, listen={"pop3": []}, mail={"postmaster": "nobody"})
    out = reloaded(d)
    assert f"netsuite: reload refused: {d.config_path}: mail.postmaster: 'nobody' is not " \
           "a user" in out, out

    del d.config["mail"]["postmaster"]
    d.write_config()
    assert "reload: done (" in reloaded(d)


def test_restart_only_keys_are_named_and_kept(make_daemon):
    d = make_daemon(config=PLAIN, listeners=["smtp"], users=USERS)
    rewrite(d, server={"hostname": "other.test"}, throttle={"lock_after": 3})
    out = reloaded(d)
    assert "reload: server.hostname changed; it takes effect at a restart" in out, out
    assert "reload: throttle.lock_after changed; it takes effect at a restart" in out, out
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=10) as s:
        code, banner = s.ehlo("client.test")
    assert code == 250 and banner.startswith(b"mx.test"), banner


# -- aliases and the password file ---------------------------------------------------------

def test_aliases_apply_at_reload_and_passwords_without(make_daemon, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text("info: alice\n")
    d = make_daemon(config={**PLAIN, "mail": {"aliases_file": str(aliases)}},
                    listeners=["smtp", "imap"], users=USERS)

    def rcpt(address: str) -> int:
        with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=10) as s:
            s.ehlo("client.test")
            s.mail("someone@remote.test")
            return s.rcpt(address)[0]

    assert rcpt("info@example.test") == 250
    assert rcpt("sales@example.test") == 550
    rewrite(d, mail={"aliases": {"sales": ["alice"]}})
    out = reloaded(d)
    assert "mail.aliases" in out, out
    assert rcpt("sales@example.test") == 250

    # The aliases file alone changed: read again too.
    assert rcpt("help@example.test") == 550
    aliases.write_text("info: alice\nhelp: alice\n")
    out = reloaded(d)
    assert "applied mail.aliases" in out, out
    assert rcpt("help@example.test") == 250

    # The password file is read again whenever it changes: no reload needed.
    d.add_user("bob", "builder")
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    m.login("bob", "builder")
    m.logout()


# -- (e) the command -------------------------------------------------------------------

def test_netsuite_reload_command(make_daemon):
    d = make_daemon(config=PLAIN, listeners=["imap"], users=USERS)
    rewrite(d, listen={"pop3": [LOCAL]})
    results = []
    out = reloaded(d, send=lambda: results.append(d.cli("reload")))
    assert f"sent SIGHUP to the server (pid {d.proc.pid})" in results[0].stdout
    assert "added pop3" in out, out
    assert "pop3" in listening(d)

    d.stop()
    result = d.cli("reload", check=False)
    assert result.returncode != 0
    assert "no server is running" in result.stderr, result.stderr


# -- --workers -------------------------------------------------------------------------

def test_workers_reload_certificate_and_keep_listeners(make_daemon, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed("old.test", cert, key)
    d = make_daemon(config={"server": {"workers": 2, "allow_plaintext_auth": True},
                            "tls": {"certificate": str(cert), "key": str(key)}},
                    listeners=["imap", "imaps"], users=USERS)
    sessions = [imap_login(d.port("imap")) for _ in range(4)]
    write_self_signed("new.test", cert, key)
    new_der = der_of(cert)
    rewrite(d, listen={"pop3": [LOCAL]})
    before = d.log()
    d.proc.send_signal(signal.SIGHUP)
    # The parent's line, then one per worker.
    assert d.wait_for(lambda: d.log()[len(before):].count("reload: done (") >= 3, 20), \
        d.log()[len(before):]
    out = d.log()[len(before):]
    assert "passed to workers 0, 1" in out, out
    assert "reload: listen.pop3 changed; with --workers a listener change takes effect " \
           "at a restart" in out, out
    assert out.count("certificate reloaded") == 2, out
    assert "pop3" not in listening(d)
    for _ in range(6):  # whichever worker takes them
        assert peer_cert(d.port("imaps")) == new_der
    for m in sessions:
        still_works(m)
        m.logout()


def test_reload_with_generated_certificate(make_daemon):
    """No [tls]: the generated certificate is read again, the same one."""
    d = make_daemon(config=PLAIN, listeners=["imaps"], users=USERS)
    der = peer_cert(d.port("imaps"))
    out = reloaded(d)
    assert "certificate reloaded" in out, out
    assert peer_cert(d.port("imaps")) == der


def test_command_line_overrides_are_kept(make_daemon):
    """What twistd's options set wins over the file at a reload as at start-up."""
    d = make_daemon(config=PLAIN, listeners=["imap"], users=USERS, start=False)
    d.start(f"--pop3={LOCAL}", "--hostname=cli.test")
    pop3 = listening(d)["pop3"]
    rewrite(d, server={"hostname": "file.test"}, listen={"pop3": [], "smtp": [LOCAL]})
    out = reloaded(d)
    assert "added smtp" in out and "pop3" not in out, out
    assert "server.hostname" not in out, out
    ports = listening(d)
    assert ports["pop3"] == pop3 and len(ports["smtp"]) == 1, ports
    with smtplib.SMTP("127.0.0.1", ports["smtp"][0], timeout=10) as s:
        code, banner = s.ehlo("client.test")
    assert code == 250 and banner.startswith(b"cli.test"), banner


def test_endpoint_that_cannot_be_bound_is_logged_and_the_rest_applies(make_daemon):
    d = make_daemon(config=PLAIN, listeners=["imap"], users=USERS)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        rewrite(d, listen={"pop3": [endpoint], "smtp": [LOCAL]})
        out = reloaded(d)
    assert f"reload: listen.pop3: cannot listen on {endpoint}: " in out, out
    assert "added smtp" in out and "added pop3" not in out, out
    ports = listening(d)
    assert "pop3" not in ports and len(ports["smtp"]) == 1, ports
    imap_login(d.port("imap")).logout()

    # The next reload tries again (the address is free now).
    out = reloaded(d)
    assert f"added pop3 {endpoint}" in out, out
    assert listening(d)["pop3"] == [port]


# -- unit --------------------------------------------------------------------------------

def test_reread_uses_the_same_overrides(tmp_path):
    from netsuite.config import load
    from netsuite.reload import changed_keys

    path = tmp_path / "n.toml"
    path.write_text('[server]\nhostname = "file.test"\n[listen]\nimap = "tcp:1143"\n')
    first = load(path, {"server.hostname": "cli.test", "server.auth": ["passwd"]},
                 {"pop3": ["tcp6:1110:interface=::1"]})
    path.write_text('[server]\nhostname = "file2.test"\n[listen]\nimap = "tcp:2143"\n'
                    '[mail]\naliases = { sales = ["alice"] }\n')
    again = first.reread()
    assert again.server.hostname == "cli.test"
    assert again.listen["imap"] == ["tcp:2143"]
    assert again.listen["pop3"] == first.listen["pop3"] == ["tcp6:1110:interface=\\:\\:1"]
    assert again.listen_overrides == {"pop3": ["tcp6:1110:interface=::1"]}  # as given
    assert changed_keys(first.server, again.server, "server") == []
    assert changed_keys(first.mail, again.mail, "mail") == ["mail.aliases"]

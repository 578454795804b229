"""
C{/metrics} and C{/readyz} against the real daemon: real SMTP deliveries,
IMAP/POP3/FTP sessions and a broken TLS handshake, then a scrape parsed with
prometheus_client's own parser, with the exact counts of what the test did;
readiness turning 503 when the queue or the store directory cannot be written.
"""

from __future__ import annotations

import ftplib
import imaplib
import json
import poplib
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from pathlib import Path

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

USERS = {"alice": "alice-pw"}


def scrape(d) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float], dict]:
    """Content type, every sample by (name, sorted labels), and the families by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port('http')}/metrics",
                                timeout=15) as r:
        content_type = r.headers["content-type"]
        text = r.read().decode()
    samples = {}
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return content_type, samples, families


def value(samples, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no sample {name}{labels}; have: " + ", ".join(
        f"{n}{dict(ls)}" for n, ls in samples if n == name)
    return samples[key]


def unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def message(n: int) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "sender@remote.test"
    m["To"] = "alice@example.test"
    m["Subject"] = f"metrics {n}"
    m.set_content(f"message {n}\n" + "x" * 100 * n)
    return m


def test_metrics_count_what_clients_did(make_daemon):
    d = make_daemon(listeners=["http", "smtp", "imaps", "pop3s", "ftp"], users=USERS,
                    config={"ftp": {"require_tls": False}})

    # SMTP: two messages delivered, one recipient refused (unknown user), one session.
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=15) as s:
        s.ehlo("client.test")
        for n in (1, 2):
            s.send_message(message(n))
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("sender@remote.test", ["nobody@example.test"], b"Subject: x\r\n\r\nx\r\n")
    assert d.wait_for(lambda: len(d.messages("alice")) == 2)
    sizes = [int(m) for m in re.findall(r"accepted: id=\S+ size=(\d+)", d.log())]
    assert len(sizes) == 2

    # IMAP over implicit TLS: one failed login, one good one, SELECT, a FETCH, a UID FETCH.
    imap = imaplib.IMAP4_SSL("127.0.0.1", d.port("imaps"), ssl_context=unverified(),
                             timeout=15)
    with pytest.raises(imaplib.IMAP4.error):
        imap.login("alice", "wrong")
    imap.login("alice", USERS["alice"])
    assert imap.select("INBOX")[0] == "OK"
    assert imap.fetch("1:*", "(FLAGS)")[0] == "OK"
    assert imap.uid("FETCH", "1:*", "(UID)")[0] == "OK"
    with pytest.raises(imaplib.IMAP4.error, match="Unknown command"):
        imap.xatom("XNOSUCH")  # counted as "other"
    imap.logout()

    # POP3 over implicit TLS.
    pop = poplib.POP3_SSL("127.0.0.1", d.port("pop3s"), context=unverified(), timeout=15)
    pop.user("alice")
    pop.pass_(USERS["alice"])
    assert pop.stat()[0] == 2
    pop.quit()

    # FTP: one upload.
    data = b"0123456789" * 1234
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", d.port("ftp"), timeout=15)
    ftp.login("alice", USERS["alice"])
    import io
    ftp.storbinary("STOR upload.bin", io.BytesIO(data))
    ftp.quit()

    # A TLS handshake that fails: not TLS at all on the IMAPS port.
    with socket.create_connection(("127.0.0.1", d.port("imaps")), timeout=15) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n" * 4)
        while raw.recv(4096):
            pass

    def settled():
        _, samples, _ = scrape(d)
        idle = all(value(samples, "netsuite_connections_open", listener=name) == 0
                   for name in ("smtp", "imaps", "pop3s", "ftp"))
        done = value(samples, "netsuite_tls_handshakes_total",
                     listener="imaps", result="failed") == 1
        return samples if idle and done else None

    samples = d.wait_for(settled)
    assert samples, "connections did not all close"
    content_type, samples, families = scrape(d)
    assert content_type == CONTENT_TYPE_LATEST

    v = lambda name, **labels: value(samples, name, **labels)  # noqa: E731
    # Connections: one session per listener (the failed handshake is the second on imaps).
    assert v("netsuite_connections_total", listener="smtp") == 1
    assert v("netsuite_connections_total", listener="imaps") == 2
    assert v("netsuite_connections_total", listener="pop3s") == 1
    assert v("netsuite_connections_total", listener="ftp") == 1
    assert v("netsuite_connections_open", listener="http") == 1  # this scrape
    assert v("netsuite_connections_refused_total", listener="smtp") == 0
    assert v("netsuite_tls_handshakes_total", listener="imaps", result="ok") == 1
    assert v("netsuite_tls_handshakes_total", listener="pop3s", result="ok") == 1
    assert v("netsuite_tls_certificate_expiry_timestamp_seconds") > time.time() + 86400

    # SMTP and the local deliveries.
    assert v("netsuite_smtp_messages_total", listener="smtp", result="accepted") == 2
    assert v("netsuite_smtp_messages_total", listener="smtp", result="refused") == 0
    assert v("netsuite_smtp_received_bytes_total", listener="smtp") == sum(sizes)
    assert v("netsuite_smtp_refusals_total", listener="smtp", stage="rcpt",
             reason="5.1.1") == 1
    assert v("netsuite_delivery_attempts_total", destination="local",
             result="delivered") == 2

    # Logins: by protocol and mechanism.
    assert v("netsuite_logins_total", protocol="imap", mechanism="password",
             result="failed") == 1
    assert v("netsuite_logins_total", protocol="imap", mechanism="password",
             result="ok") == 1
    assert v("netsuite_logins_total", protocol="pop3", mechanism="password",
             result="ok") == 1
    assert v("netsuite_logins_total", protocol="ftp", mechanism="password",
             result="ok") == 1
    assert ("netsuite_logins_total", (("mechanism", "password"), ("protocol", "pop3"),
                                      ("result", "failed"))) not in samples

    # IMAP and POP3 commands, with their latency histograms.
    for command, count in (("LOGIN", 2), ("SELECT", 1), ("FETCH", 1), ("UID FETCH", 1),
                           ("LOGOUT", 1), ("other", 1)):
        assert v("netsuite_imap_commands_total", command=command) == count, command
    assert families["netsuite_imap_command_duration_seconds"].type == "histogram"
    assert v("netsuite_imap_command_duration_seconds_count", command="SELECT") == 1
    assert v("netsuite_imap_command_duration_seconds_count", command="LOGIN") == 2
    assert v("netsuite_imap_command_duration_seconds_bucket", command="LOGIN", le="+Inf") == 2
    assert v("netsuite_imap_command_duration_seconds_sum", command="SELECT") > 0
    for command in ("USER", "PASS", "STAT", "QUIT"):
        assert v("netsuite_pop3_commands_total", command=command) == 1, command
        assert v("netsuite_pop3_command_duration_seconds_count", command=command) == 1

    # FTP.
    assert v("netsuite_ftp_transfers_total", direction="upload", result="complete") == 1
    assert v("netsuite_ftp_transferred_bytes_total", direction="upload") == len(data)
    assert (d.data_dir / "ftp" / "alice" / "upload.bin").read_bytes() == data

    # Queue (nothing queued: every message was local), TELNET, store, the process.
    for state in ("new", "active", "deferred"):
        assert v("netsuite_queue_messages", state=state) == 0
    assert v("netsuite_queue_oldest_message_age_seconds") == 0
    assert v("netsuite_telnet_sessions_open") == 0
    assert "netsuite_store_index_compactions" in families
    assert v("process_resident_memory_bytes") > 0
    assert v("process_open_fds") > 0
    assert ("process_cpu_seconds_total", ()) in samples
    assert any(name == "python_info" for name, _ in samples)
    assert "netsuite_worker_info" in families and not [
        s for s in families["netsuite_worker_info"].samples]  # a single process
    assert "Traceback" not in d.log()


def submit(d, rcpts: list[str], subject: str) -> dict:
    """Over SMTPS with AUTH (smtplib picks PLAIN), as alice."""
    with smtplib.SMTP_SSL("127.0.0.1", d.port("smtps"), timeout=20,
                          context=unverified()) as s:
        s.login("alice", USERS["alice"])
        return s.sendmail("alice@example.test", rcpts,
                          f"Subject: {subject}\r\n\r\nhello\r\n".encode())


def test_queue_deliveries_and_bounces_by_result(make_daemon):
    pytest.importorskip("aiosmtpd")
    from queue_remote import Remote

    remote = Remote().start()
    try:
        remote.handler.script["slow@remote.test"] = ["451 4.3.0 try later"]
        remote.handler.script["bad@remote.test"] = ["550 5.1.1 no such user"]
        d = make_daemon(listeners=["http", "smtps"], users=USERS, config={"queue": {
            "min_backoff": 0.3, "max_backoff": 0.6, "poll_interval": 0.1,
            "routes": {"remote.test": f"127.0.0.1:{remote.port}"}}})
        refused = submit(d, ["ok@remote.test", "slow@remote.test", "bad@remote.test"], "q")
        assert refused == {}
        # ok at once, slow after one retry; bad bounced, its DSN into alice's mailbox.
        assert len(remote.handler.wait(2)) == 2, d.log()[-3000:]
        assert d.wait_for(lambda: "removed: id=" in d.log() and d.messages("alice"))
        _, samples, _ = scrape(d)
    finally:
        remote.stop()
    v = lambda name, **labels: value(samples, name, **labels)  # noqa: E731
    assert v("netsuite_delivery_attempts_total", destination="remote", result="delivered") == 2
    assert v("netsuite_delivery_attempts_total", destination="remote", result="deferred") == 1
    assert v("netsuite_delivery_attempts_total", destination="remote", result="bounced") == 1
    assert v("netsuite_delivery_attempts_total", destination="local", result="delivered") == 1
    assert v("netsuite_smtp_messages_total", listener="smtps", result="accepted") == 1
    assert v("netsuite_logins_total", protocol="smtp", mechanism="plain", result="ok") == 1
    for state in ("new", "active", "deferred"):
        assert v("netsuite_queue_messages", state=state) == 0


def test_queue_depth_locks_and_refusals(make_daemon):
    from queue_remote import free_port

    down = free_port()  # nothing listens there: every attempt is deferred
    d = make_daemon(listeners=["http", "smtps", "pop3s"], users=USERS, config={
        "queue": {"min_backoff": 3600, "max_backoff": 3600, "poll_interval": 0.1,
                  "routes": {"down.test": f"127.0.0.1:{down}"}},
        "throttle": {"lock_after": 2},
        "pop3": {"max_connections_per_address": 1}})
    assert submit(d, ["someone@down.test"], "waits") == {}

    def deferred():
        _, samples, _ = scrape(d)
        return samples if value(samples, "netsuite_queue_messages", state="deferred") else None

    samples = d.wait_for(deferred)
    assert samples, d.log()[-3000:]
    assert value(samples, "netsuite_queue_messages", state="new") == 0
    assert value(samples, "netsuite_queue_messages", state="active") == 0
    assert value(samples, "netsuite_queue_oldest_message_age_seconds") > 0
    assert value(samples, "netsuite_delivery_attempts_total", destination="remote",
                 result="deferred") == 1

    # Two failed POP3 logins lock alice (lock_after = 2); the third is refused unchecked.
    pop = poplib.POP3_SSL("127.0.0.1", d.port("pop3s"), context=unverified(), timeout=15)
    for _ in range(3):
        pop.user("alice")
        with pytest.raises(poplib.error_proto):
            pop.pass_("wrong")
    # A second connection from the same address is over the cap of 1.
    with socket.create_connection(("127.0.0.1", d.port("pop3s")), timeout=15) as raw:
        with unverified().wrap_socket(raw) as tls:
            assert tls.recv(100).startswith(b"-ERR")
    pop.quit()
    _, samples, _ = scrape(d)
    v = lambda name, **labels: value(samples, name, **labels)  # noqa: E731
    assert v("netsuite_logins_total", protocol="pop3", mechanism="password",
             result="failed") == 3
    assert v("netsuite_login_locks_total", protocol="pop3") == 1
    assert v("netsuite_login_locked_refusals_total", protocol="pop3") == 1
    assert v("netsuite_login_throttle_delays_total", protocol="pop3") >= 1
    assert v("netsuite_login_throttle_delay_seconds_total", protocol="pop3") > 0
    assert v("netsuite_connections_refused_total", listener="pop3s") == 1


def test_each_worker_answers_with_its_own_numbers(make_daemon):
    d = make_daemon(listeners=["http"], config={"server": {"workers": 2}})
    seen = set()
    for _ in range(40):  # connections spread over the workers; a few suffice to see both
        _, samples, families = scrape(d)
        workers = [s.labels["worker"] for s in families["netsuite_worker_info"].samples]
        assert len(workers) == 1 and workers[0] in ("0", "1")
        seen.add(workers[0])
        assert v_ok(samples)
        if seen == {"0", "1"}:
            break
    assert seen, "no worker answered"


def v_ok(samples) -> bool:
    """A worker's own scrape: its process metrics, and itself as the one open http connection."""
    return (value(samples, "process_resident_memory_bytes") > 0
            and value(samples, "netsuite_connections_open", listener="http") >= 1)


def readyz(d) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{d.port('http')}/readyz",
                                    timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_readyz_checks_listeners_store_and_queue(make_daemon):
    # A long queue poll: the runner's pass must not run while its directory is a file.
    d = make_daemon(listeners=["http", "imap", "smtp"], config={"queue": {"poll_interval": 3600}})
    status, body = readyz(d)
    assert status == 200 and body["status"] == "ready", body
    checks = body["checks"]
    assert set(checks) == {"listen.http", "listen.imap", "listen.smtp", "store", "queue"}
    assert all(check["ok"] for check in checks.values()), checks
    assert checks["listen.imap"]["bound"] == [d.port("imap")]
    assert checks["queue"]["path"] == str(d.data_dir / "queue")
    assert not list((d.data_dir / "queue").glob(".netsuite-ready-*"))  # the probe is removed

    # The queue directory replaced by a file (root ignores permission bits: not this).
    queue, aside = d.data_dir / "queue", d.data_dir / "queue.aside"
    queue.rename(aside)
    queue.write_bytes(b"")
    try:
        status, body = readyz(d)
        assert status == 503 and body["status"] == "not ready", body
        assert body["checks"]["queue"]["ok"] is False and body["checks"]["queue"]["error"]
        assert all(c["ok"] for name, c in body["checks"].items() if name != "queue")
    finally:
        queue.unlink()
        aside.rename(queue)
    assert readyz(d)[0] == 200

    # The mail store the same way.
    store = d.data_dir / "mail"
    store.rename(d.data_dir / "mail.aside")
    store.write_bytes(b"")
    try:
        status, body = readyz(d)
        assert status == 503 and body["checks"]["store"]["ok"] is False
        assert body["checks"]["queue"]["ok"] is True
    finally:
        store.unlink()
        (d.data_dir / "mail.aside").rename(store)
    status, body = readyz(d)
    assert status == 200 and all(c["ok"] for c in body["checks"].values())
    assert "Traceback" not in d.log()


# -- etc/prometheus/alerts.yml and the Grafana dashboard ----------------------------------

ROOT = Path(__file__).resolve().parent.parent


def exported_names() -> set[str]:
    """Every sample name netsuite's registry can export (counter and histogram suffixes too)."""
    from netsuite import metrics

    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
    return names


def referenced(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:netsuite|process)_[a-z0-9_]+)\b", expr))


def balanced(expr: str) -> bool:
    depth = {"(": 0, "[": 0, "{": 0}
    closing = {")": "(", "]": "[", "}": "{"}
    for c in re.sub(r'"[^"]*"', '""', expr):
        if c in depth:
            depth[c] += 1
        elif c in closing:
            depth[closing[c]] -= 1
            if depth[closing[c]] < 0:
                return False
    return not any(depth.values())


def test_alert_rules_are_well_formed_and_name_real_metrics():
    import yaml

    path = ROOT / "etc" / "prometheus" / "alerts.yml"
    rules = yaml.safe_load(path.read_text())
    names = exported_names()
    seen = set()
    assert [g["name"] for g in rules["groups"]] == ["netsuite"]
    for rule in rules["groups"][0]["rules"]:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["alert"] not in seen and re.fullmatch(r"Netsuite[A-Za-z]+", rule["alert"])
        seen.add(rule["alert"])
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0m"))
        assert balanced(rule["expr"]), rule["alert"]
        unknown = referenced(rule["expr"]) - names
        assert not unknown, f"{rule['alert']} uses metrics netsuite does not export: {unknown}"
    # What the issue asks alerts for: a growing queue, failing deliveries, an expiring
    # certificate, brute force.
    assert {"NetsuiteQueueGrowing", "NetsuiteRemoteDeliveriesFailing",
            "NetsuiteCertificateExpiring", "NetsuiteBruteForce"} <= seen
    promtool = shutil.which("promtool")
    if promtool is not None:  # where Prometheus is installed, its own checker too
        result = subprocess.run([promtool, "check", "rules", str(path)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_dashboard_queries_real_metrics():
    dashboard = json.loads((ROOT / "etc" / "grafana" / "netsuite-dashboard.json").read_text())
    names = exported_names()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 20 and all(balanced(e) for e in exprs)
    used = set().union(*(referenced(e) for e in exprs))
    assert used <= names, used - names
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    # Every netsuite metric family is on the dashboard, but these few.
    from netsuite import metrics

    families = {f.name for f in metrics.REGISTRY.collect() if f.name.startswith("netsuite_")}
    suffixes = ("", "_total", "_bucket", "_count", "_sum")
    missing = {f for f in families if not any(f + x in used for x in suffixes)}
    assert missing == {"netsuite_worker_info", "netsuite_login_throttle_delay_seconds",
                       "netsuite_login_locked_refusals", "netsuite_telnet_sessions",
                       "netsuite_pop3_commands", "netsuite_ftp_transfers"}, missing


# -- units ------------------------------------------------------------------------------


def test_bounded_labels():
    from twisted.cred import credentials

    from netsuite.auth import sasl
    from netsuite.auth.throttle import mechanism_of
    from netsuite.metrics import smtp_reason

    assert mechanism_of(sasl.PlainCredentials()) == "plain"
    assert mechanism_of(sasl.LoginCredentials()) == "login"
    assert mechanism_of(credentials.UsernamePassword(b"u", b"p")) == "password"
    assert mechanism_of(credentials.SSHPrivateKey(b"u", b"ssh-ed25519", b"k", None, None)) \
        == "publickey"
    assert mechanism_of(object()) == "other"
    assert smtp_reason("5.1.1", 550) == "5.1.1"
    assert smtp_reason(None, 552, b"5.2.2 <a@b>: Mailbox full") == "5.2.2"
    assert smtp_reason(None, 451, "no enhanced code here") == "4.0.0"
    assert smtp_reason("9.9.9", 250) == "2.0.0"
    assert smtp_reason(None, 999, b"") == "other"
    # A client-chosen string never becomes a label.
    assert smtp_reason(None, 550, b"<script> 5.1.1") == "5.0.0"


def test_every_metric_is_documented():
    from netsuite import metrics

    section = (ROOT / "docs" / "operations.md").read_text().split(
        "## Metrics and readiness", 1)[1]
    documented = set(re.findall(r"^\| `(netsuite_[a-z0-9_]+)` \|", section, re.M))
    families = {f.name + ("_total" if f.type == "counter" else "")
                for f in metrics.REGISTRY.collect() if f.name.startswith("netsuite_")}
    assert documented == families, (documented ^ families)

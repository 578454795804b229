"""
JSON logs (netsuite.logs) against the real daemon: with C{[log] format = "json"}
every line twistd writes is one object with the documented fields; logins,
refusals and deliveries carry protocol, user, client, message_id and a reason
code from the table; C{twistd --logger netsuite.logs.json_observer} does the
same; the plain format reads as before.
"""

from __future__ import annotations

import imaplib
import io
import json
import poplib
import re
import smtplib
import socket
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest
from twisted.logger import LogLevel, eventAsText, textFileLogObserver
from twisted.python.failure import Failure

from netsuite import logs
from netsuite.config import ConfigError, load
from netsuite.smtp.server import refusal_reason

ROOT = Path(__file__).resolve().parent.parent
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LEVELS = {"debug", "info", "warn", "error", "critical"}


def objects(d, complete: bool = True) -> list[dict]:
    """
    Every line of the daemon's log file, each parsed as JSON (a line that is not
    fails); C{complete=False} while it runs: a line being written is left out.
    """
    text = d.log()
    if complete:
        assert text.endswith("\n"), text[-200:]
    else:
        text = text[:text.rfind("\n") + 1]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {n} is not JSON: {line!r}") from None
        assert isinstance(obj, dict), line
        out.append(obj)
    return out


def check_schema(objs: list[dict]) -> None:
    assert objs
    for obj in objs:
        assert list(obj) == list(logs.FIELDS), obj
        assert TIME.match(obj["time"]), obj
        assert obj["level"] in LEVELS, obj
        assert isinstance(obj["message"], str) and obj["message"], obj
        for key in ("event", "protocol", "listener", "user", "client", "message_id",
                    "namespace", "system"):
            assert obj[key] is None or (isinstance(obj[key], str) and obj[key]), obj
        assert obj["reason"] is None or obj["reason"] in logs.REASONS, obj
        assert obj["worker"] is None or isinstance(obj["worker"], int), obj


def find(d, timeout: float = 10.0, **want) -> dict:
    """The first object of the log with every field of C{want}, waiting for it."""
    def look():
        for obj in objects(d, complete=False):
            if all(obj.get(k) == v for k, v in want.items()):
                return obj
        return None

    found = d.wait_for(look, timeout)
    assert found, f"no log object with {want}:\n{d.log()[-4000:]}"
    return found


def pop3_login(d, user: str, password: str) -> bool:
    p = poplib.POP3("127.0.0.1", d.port("pop3"), timeout=10)
    try:
        p.user(user)
        p.pass_(password)
        return True
    except poplib.error_proto:
        return False
    finally:
        p.close()


@pytest.fixture(scope="module")
def json_daemon(tmp_path_factory):
    from harness import Daemon

    d = Daemon(tmp_path_factory.mktemp("jsonlog"), config={
        "log": {"format": "json"},
        "server": {"allow_plaintext_auth": True},
        "throttle": {"base_delay": 0.01, "max_delay": 0.02, "lock_after": 3},
    }, listeners=["smtp", "pop3", "imap"])
    d.add_user("alice", "alice-pw")
    d.start()
    yield d
    d.stop()


def test_smtp_delivery_and_refusals_carry_message_id_and_reason(json_daemon):
    d = json_daemon
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "bob@remote.test", "alice@example.test", "hi"
    msg.set_content("hello\n")
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=10) as s:
        s.ehlo("client.test")
        s.mail("bob@remote.test")
        code, _ = s.rcpt("nobody@example.test")
        assert code == 550
        code, _ = s.rcpt("someone@remote.test")
        assert code == 554
        assert s.rcpt("alice@example.test")[0] == 250
        code, reply = s.data(msg.as_bytes())
        assert code == 250
    queue_id = reply.decode().rsplit(" ", 1)[1]
    accepted = find(d, event="accepted")
    assert accepted["message_id"] == queue_id
    assert accepted["protocol"] == "smtp" and accepted["listener"] == "smtp"
    assert accepted["client"] == "127.0.0.1" and accepted["level"] == "info"
    assert accepted["message"].startswith(f"accepted: id={queue_id} size=")
    unknown = find(d, event="refused", reason="unknown_recipient")
    assert unknown["protocol"] == "smtp" and unknown["client"] == "127.0.0.1"
    assert "to=<nobody@example.test>" in unknown["message"]
    relay = find(d, event="refused", reason="relay_denied")
    assert "to=<someone@remote.test>" in relay["message"]
    find(d, event="connect", protocol="smtp", client="127.0.0.1")
    find(d, event="disconnect", protocol="smtp", client="127.0.0.1")
    check_schema(objects(d))


def test_failed_logins_then_lockout(json_daemon):
    d = json_daemon
    # A good IMAP login first: the throttle forgets nothing a success did not earn.
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    m.login("alice", "alice-pw")
    m.logout()
    ok = find(d, event="login", protocol="imap")
    assert ok["user"] == "alice" and ok["client"] == "127.0.0.1" and ok["reason"] is None

    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    with pytest.raises(imaplib.IMAP4.error):
        m.login("alice", "wrong")
    m.logout()
    failed = find(d, event="login_failed", protocol="imap")
    assert failed["user"] == "alice" and failed["client"] == "127.0.0.1"
    assert failed["reason"] == "auth_failed" and failed["level"] == "warn"
    assert failed["namespace"] == "netsuite.auth"
    assert failed["message"] == "login failed: protocol=imap address=127.0.0.1 user=alice"

    assert not pop3_login(d, "mallory", "nope")
    pop = find(d, event="login_failed", protocol="pop3")
    assert pop["user"] == "mallory" and pop["client"] == "127.0.0.1"
    assert pop["reason"] == "auth_failed"

    # lock_after = 3: the third failure from 127.0.0.1 locks the address.
    assert not pop3_login(d, "mallory", "nope")
    assert not pop3_login(d, "alice", "alice-pw")
    locked = find(d, event="login_refused", reason="locked")
    assert locked["protocol"] == "pop3" and locked["user"] == "alice"
    assert locked["client"] == "127.0.0.1" and locked["level"] == "warn"
    check_schema(objects(d))


def test_connection_over_the_cap_names_connection_limit(make_daemon):
    d = make_daemon(config={"log": {"format": "json"},
                            "pop3": {"max_connections_per_address": 1}},
                    listeners=["pop3", "imap"])
    first = socket.create_connection(("127.0.0.1", d.port("pop3")), timeout=10)
    try:
        assert first.makefile("rb").readline().startswith(b"+OK")
        second = socket.create_connection(("127.0.0.1", d.port("pop3")), timeout=10)
        with second:
            assert second.makefile("rb").readline().startswith(b"-ERR")
    finally:
        first.close()
    refused = find(d, event="connection_refused")
    assert refused["reason"] == "connection_limit"
    assert refused["listener"] == "pop3" and refused["protocol"] == "pop3"
    assert refused["client"] == "127.0.0.1" and refused["level"] == "warn"
    # No TLS and plain text not allowed (the default): LOGIN is refused, and says why.
    m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=10)
    with pytest.raises(imaplib.IMAP4.error):
        m.login("alice", "alice-pw")
    m.logout()
    plain = find(d, event="login_refused", protocol="imap")
    assert plain["reason"] == "plaintext_refused" and plain["client"] == "127.0.0.1"
    check_schema(objects(d))


def test_twistd_logger_option_writes_json_to_the_logfile(make_daemon):
    """C{twistd --logger netsuite.logs.json_observer}: JSON into C{--logfile}, config plain."""
    d = make_daemon(listeners=["pop3"], start=False,
                    config={"server": {"allow_plaintext_auth": True}})
    plain_command = d.command

    def command(*extra: str) -> list[str]:
        argv = plain_command(*extra)
        at = argv.index("netsuite")
        return [*argv[:at], "--logger", "netsuite.logs.json_observer", *argv[at:]]

    d.command = command  # type: ignore[method-assign]
    d.start()
    assert not pop3_login(d, "alice", "nope")
    failed = find(d, event="login_failed")
    assert failed["protocol"] == "pop3" and failed["reason"] == "auth_failed"
    find(d, namespace="netsuite", listener="pop3")  # "pop3 listening on ..."
    d.stop()
    objs = objects(d)
    check_schema(objs)
    assert objs[-1]["message"] == "Server Shut Down."


def test_plain_format_is_unchanged(make_daemon):
    """No [log]: twistd's own text lines, with the substrings other tests and admins grep."""
    d = make_daemon(listeners=["pop3"], config={"server": {"allow_plaintext_auth": True}})
    assert not pop3_login(d, "alice", "nope")
    line = "login failed: protocol=pop3 address=127.0.0.1 user=alice"
    assert d.wait_for(lambda: line in d.log()), d.log()[-3000:]
    text = d.log()
    assert not any(row.startswith("{") for row in text.splitlines()), text[-2000:]
    # twistd's classic layout: "TIMESTAMP [SYSTEM] message", the message as before.
    row = next(r for r in text.splitlines() if line in r)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[^]]+\] " + re.escape(line)
                    + "$", row), row


def test_log_format_is_validated(tmp_path):
    path = tmp_path / "n.toml"
    path.write_text('[log]\nformat = "xml"\n')
    with pytest.raises(ConfigError) as e:
        load(path)
    assert e.value.key == "log.format" and "plain" in e.value.reason
    path.write_text('[log]\nformat = "json"\n')
    assert load(path).log.format == "json"
    assert load(None).log.format == "plain"


def test_destination_follows_twistd_options(tmp_path):
    """Where json_observer writes: twistd's own choice (UnixAppLogger._getLogObserver)."""
    assert logs._destination(None) is sys.stdout
    assert logs._destination({"logfile": "-", "nodaemon": True}) is sys.stdout
    with pytest.raises(SystemExit):  # as twistd: a daemon has no stdout
        logs._destination({"logfile": "-", "nodaemon": False})
    assert logs._destination({"logfile": None, "nodaemon": True}) is sys.stdout
    out = logs._destination({"logfile": str(tmp_path / "x.log"), "nodaemon": True})
    try:
        assert Path(out.path) == tmp_path / "x.log"
    finally:
        out.close()


def test_use_twistd_options_sets_the_logger_unless_one_is_given():
    opts: dict = {"logger": None, "syslog": False}
    logs.use_twistd_options(opts, "plain")
    assert opts["logger"] == "netsuite.logs.text_observer"
    opts = {"logger": None, "syslog": False}
    logs.use_twistd_options(opts, "json")
    assert opts["logger"] == "netsuite.logs.json_observer"
    mine: dict = {"logger": "my.observer", "syslog": False}
    logs.use_twistd_options(mine, "json")
    assert mine["logger"] == "my.observer"
    syslog: dict = {"logger": None, "syslog": True}
    logs.use_twistd_options(syslog, "json")
    assert syslog["logger"] is None
    logs.use_twistd_options(None, "json")  # not under twistd: nothing to set


def test_text_observer_writes_what_twistds_text_observer_writes():
    """Byte for byte, across second boundaries (the stamp is kept per second)."""
    failure = Failure(ZeroDivisionError("a traceback, indented line by line"))
    base = 1_780_000_000.0
    times = [base, base + 0.25, base + 0.9999994, base + 0.9999996, base + 1.0, base + 1.5,
             base + 3600.2, base - 0.0000004, None]
    events = []
    for i, when in enumerate(times):
        event = {"log_format": "line {n} for {user}\nsecond line", "n": i, "user": "alice",
                 "log_namespace": "netsuite.smtp", "log_level": LogLevel.info}
        if when is not None:
            event["log_time"] = when
        if i % 3 == 1:
            event["log_system"] = "SMTP,3,127.0.0.1"
        if i == 4:
            event["log_failure"] = failure
        events.append(event)
    events.append({"log_time": base})  # no format: no line at all
    # The formats str.format_map takes and those it leaves to Twisted's path.
    for fmt in ("{a.real} {b[0]} {c!r} {n:>6} {n:{width}}", "called: {f()}", "{missing}",
                "{}", "{c.nope}", b"bytes {n}", "", "{empty}", 42):
        events.append({"log_format": fmt, "a": 3, "b": ["x"], "c": "q", "n": 7, "width": 4,
                       "f": lambda: "yes", "empty": "", "log_time": base,
                       "log_namespace": "netsuite.imap", "log_level": LogLevel.warn})
    events.append({"log_format": "no level", "log_time": base})
    events.append({"log_format": "odd system", "log_system": 7, "log_time": base})
    mine, twistds = io.StringIO(), io.StringIO()
    ours, theirs = logs.text_observer(mine), textFileLogObserver(twistds)
    for event in events:
        ours(dict(event))
        theirs(dict(event))
    assert mine.getvalue() == twistds.getvalue()
    assert mine.getvalue().count("\n\tsecond line") == len(times)
    assert " 3 x 'q'      7    7\n" in mine.getvalue() and "called: yes" in mine.getvalue()
    for event in events:
        expected = eventAsText(event, includeTimestamp=False, includeSystem=False)
        assert logs.fields(dict(event))["message"] == expected, event


def test_fields_of_an_event():
    from twisted.logger import Logger, LogLevel

    events: list[dict] = []
    log = Logger(namespace="netsuite.imap", observer=events.append)
    log.info("login refused: address={client}", client="::1", event="login_refused",
             reason="locked", user="-")
    obj = logs.fields(events[0])
    assert obj["protocol"] == "imap"  # from the namespace
    assert obj["user"] is None and obj["client"] == "::1" and obj["reason"] == "locked"
    assert obj["message"] == "login refused: address=::1" and obj["level"] == "info"
    # A Failure under "reason" (Twisted's own events) is not a code.
    log.emit(LogLevel.warn, "lost", reason=ValueError("x"), listener="imaps")
    obj = logs.fields(events[1])
    assert obj["reason"] is None and obj["protocol"] == "imap" and obj["listener"] == "imaps"
    line = logs.format_json(events[1])
    assert line.endswith("\n") and "\n" not in line[:-1]
    assert list(json.loads(line)) == list(logs.FIELDS)


@pytest.mark.parametrize(("what", "code", "enhanced", "text", "reason"), [
    ("RCPT", 550, None, b"5.1.1 <x@example.test>: Recipient address rejected",
     "unknown_recipient"),
    ("RCPT", 552, None, b"5.2.2 <x@example.test>: Mailbox full", "quota_exceeded"),
    ("DATA", 552, "5.3.4", b"Error: message size exceeds fixed limit", "message_too_large"),
    ("RCPT", 554, None, b"5.7.1 <x@remote.test>: Relay access denied", "relay_denied"),
    ("RCPT", 451, None, b"4.3.5 Error: relaying is not enabled", "relay_denied"),
    ("MAIL", 553, None, b"5.7.1 <x@y>: Sender address rejected", "sender_rejected"),
    ("MAIL", 530, "5.7.0", b"Authentication required", "auth_required"),
    ("DATA", 450, None, b"4.7.1 Error: too many messages sent", "rate_limited"),
    ("DATA", 452, None, b"4.3.1 Error: insufficient system storage", "insufficient_storage"),
    ("RCPT", 550, None, b"no code at all", "refused"),
])
def test_smtp_refusal_reason(what, code, enhanced, text, reason):
    assert refusal_reason(what, code, enhanced, text) == reason


def _sources() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "netsuite").rglob("*.py"))
                     if p.name != "logs.py")


def test_every_reason_code_is_in_the_table_and_used():
    source = _sources()
    used = set(re.findall(r'\breason="([a-z_]+)"', source))
    assert used, "no reason= keys found"
    assert used <= set(logs.REASONS), used - set(logs.REASONS)
    unused = [code for code in logs.REASONS if f'"{code}"' not in source]
    assert not unused, f"codes in the table that nothing logs: {unused}"


def test_operations_doc_documents_every_field_and_reason():
    doc = (ROOT / "docs" / "operations.md").read_text()
    assert "\n## Logs\n" in doc
    section = doc.split("\n## Logs\n", 1)[1].split("\n## ", 1)[0]
    for name in logs.FIELDS:
        assert f"| `{name}` |" in section, name
    for code in logs.REASONS:
        assert f"| `{code}` |" in section, code
    assert "netsuite.logs.json_observer" in section and 'format = "json"' in section
    events = set(re.findall(r'\bevent="([a-z_]+)"', _sources())) | {"sent", "deferred",
                                                                    "bounced"}
    table = section.split("\nEvents:\n", 1)[1].split("\nReason codes", 1)[0]
    for name in sorted(events):
        assert f"`{name}`" in table, name


def test_workers_log_through_the_parent_in_json(make_daemon):
    """C{--workers 2}: the workers' events reach the one log file in the same schema."""
    d = make_daemon(config={"log": {"format": "json"},
                            "server": {"workers": 2, "allow_plaintext_auth": True}},
                    listeners=["pop3"])
    assert not pop3_login(d, "alice", "nope")
    failed = find(d, event="login_failed", protocol="pop3")
    assert failed["worker"] in (0, 1) and failed["reason"] == "auth_failed"
    assert failed["system"] and failed["system"].startswith(f"worker-{failed['worker']} ")
    d.stop()
    check_schema(objects(d))


def test_workers_log_through_the_parent_in_plain_text(make_daemon):
    """C{--workers 2}, no [log]: a worker's line in twistd's layout, its system C{worker-N PID}."""
    d = make_daemon(config={"server": {"workers": 2, "allow_plaintext_auth": True}},
                    listeners=["pop3"])
    assert not pop3_login(d, "alice", "nope")
    line = "login failed: protocol=pop3 address=127.0.0.1 user=alice"
    assert d.wait_for(lambda: line in d.log()), d.log()[-3000:]
    row = next(r for r in d.log().splitlines() if line in r)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[worker-[01] \d+\] "
                    + re.escape(line) + "$", row), row


def test_a_rendered_line_is_written_as_it_is():
    """A worker's ready-made line passes both observers untouched; other events are rendered."""
    for observer in (logs.text_observer, logs.json_observer):
        out = io.StringIO()
        write = observer(out)
        write({logs.RENDERED: "made elsewhere\n", "log_time": 1_780_000_000.0,
               "log_level": LogLevel.info, "log_format": "not {this}", "this": "used"})
        write({"log_format": "here {n}", "n": 1, "log_time": 1_780_000_000.0,
               "log_level": LogLevel.info, "log_namespace": "t"})
        first, second = out.getvalue().splitlines()
        assert first == "made elsewhere"
        assert "here 1" in second and "made elsewhere" not in second


def test_a_workers_line_reaches_the_parent_with_its_level_and_namespace():
    """
    What a worker's observer writes, the parent publishes with the real level
    and namespace (another observer in the parent can filter on them); a marked
    line that is not a worker's object is still logged, as raw text.
    """
    from twisted.logger import globalLogPublisher

    from netsuite.workers import RENDERED_MARK, WorkerSpec, _to_parent, _WorkerProcess

    out = io.StringIO()
    spec = WorkerSpec(index=3, config=None, sockets=[], log_format="plain")  # type: ignore[arg-type]
    _to_parent(out, spec)({"log_format": "disk {what}", "what": "full",
                           "log_level": LogLevel.warn, "log_namespace": "netsuite.store",
                           "log_time": 1_780_000_000.0})
    sent = out.getvalue().encode()
    assert sent.startswith(RENDERED_MARK) and sent.endswith(b"\n")

    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        worker = _WorkerProcess(parent=None, index=3)  # type: ignore[arg-type]
        worker.pid = 4242
        worker.childDataReceived(1, sent)
        worker.childDataReceived(1, RENDERED_MARK + b"{not json\n")
    finally:
        globalLogPublisher.removeObserver(seen.append)
    ours = [e for e in seen if e.get("log_system") == "worker-3 4242"]
    assert len(ours) == 2, ours
    line, raw = ours
    assert line["log_level"] == LogLevel.warn and line["log_namespace"] == "netsuite.store"
    assert re.match(r"^\S+ \[worker-3 \d+\] disk full\n$", line[logs.RENDERED]), line
    assert logs.RENDERED not in raw and raw["text"] == "\x1d{not json"

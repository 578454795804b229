"""
rspamd at the end of DATA/BDAT, against Debian's real rspamd on loopback with
a minimal private config (no Redis, no DNS that answers, a tiny TLD list so
it starts in seconds): GTUBE is refused 550 5.7.1 and not stored, its
add-header and rewrite-subject variants land in Junk, a clean message is
delivered with X-Spamd-Result, soft reject and greylist get 451 4.7.1, and
an rspamd that is down or silent follows [rspamd] fail (open: delivered and
logged; closed: 451).
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
import threading
import time
import urllib.request
from email.header import decode_header, make_header
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from queue_remote import free_port
from rawsmtp import insecure_context

RSPAMD = shutil.which("rspamd")
pytestmark = pytest.mark.skipif(RSPAMD is None, reason="Debian's rspamd is not installed")

GTUBE = "JS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
REJECT, ADD_HEADER, REWRITE_SUBJECT = "X" + GTUBE, "Y" + GTUBE, "Z" + GTUBE

#: Test-only rule: a Subject "netsuite-test-action: ACTION" makes rspamd answer
#: ACTION (rspamd's GTUBE variants have no soft reject or greylist).
RULES = """
rspamd_config:register_symbol{
  name = 'NETSUITE_TEST_ACTION',
  type = 'prefilter',
  priority = 10,
  callback = function(task)
    local subject = task:get_subject() or ''
    local action = subject:match('netsuite%-test%-action: ([%a ]+)')
    if action then
      task:set_pre_result(action, 'netsuite test: ' .. action, 'netsuite')
    end
  end,
}
-- And the Hostname header netsuite sent, as a symbol's option in X-Spamd-Result.
rspamd_config:register_symbol{
  name = 'NETSUITE_TEST_HOSTNAME',
  score = 0.0,
  callback = function(task)
    task:insert_result('NETSUITE_TEST_HOSTNAME', 1.0, task:get_hostname() or 'none')
  end,
}
"""

CONFIG = """
options {{
  pidfile = "{dir}/rspamd.pid";
  filters = "";
  dns {{ nameserver = ["127.0.0.1:9"]; timeout = 0.2s; retransmits = 1; }}
  enable_test_patterns = true;
  hs_cache_dir = "{dir}/";
  control_socket = "{dir}/rspamd.sock mode=0600";
  cache_file = "{dir}/symbols.cache";
  dynamic_conf = "{dir}/rspamd_dynamic";
  history_file = "{dir}/rspamd.history";
  stats_file = "{dir}/stats.ucl";
  tempdir = "{dir}";
  url_tld = "{dir}/tld.dat";
  task_timeout = 5s;
}}
logging {{ type = "file"; filename = "{dir}/rspamd.log"; level = "info"; }}
worker "normal" {{ bind_socket = "127.0.0.1:{port}"; count = 1; }}
actions {{ reject = 15; add_header = 6; greylist = 4; }}
lua = "{dir}/rules.lua";
modules {{ path = "/usr/share/rspamd/plugins"; }}
milter_headers {{ use = ["x-spamd-bar"]; skip_local = false; skip_authenticated = false; }}
"""


class Rspamd:
    """One private rspamd (main process plus its normal worker) in C{directory}."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.port = free_port()
        (directory / "rules.lua").write_text(RULES)
        # The Public Suffix List takes rspamd ~20 s to compile at each start.
        (directory / "tld.dat").write_text("com\norg\nnet\ntest\nexample\n")
        self.conf = directory / "rspamd.conf"
        self.conf.write_text(CONFIG.format(dir=directory, port=self.port))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.dir / "rspamd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 60.0) -> "Rspamd":
        args = [str(RSPAMD), "-f", "-c", str(self.conf)]
        if os.geteuid() == 0:  # rspamd refuses root unless told whom to run as
            args += ["-u", "root", "-g", "root"]
        self.proc = subprocess.Popen(args, cwd=self.dir, stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "stderr.txt", "wb"),
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rspamd exited {self.proc.returncode}: "
                                   f"{(self.dir / 'stderr.txt').read_text()[-2000:]}"
                                   f"{self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=2) as r:
                    if r.read().strip() == b"pong":
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"rspamd did not answer /ping in {timeout} s: {self.log()[-2000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # the main process stops its workers
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # its own session: only rspamd's processes
            proc.wait(5)


@pytest.fixture(scope="module")
def rspamd_server(tmp_path_factory):
    server = Rspamd(tmp_path_factory.mktemp("rspamd")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mx(rspamd_server, tmp_path_factory):
    """One MX for the tests that change no setting, with submission for its test."""
    from harness import Daemon

    d = Daemon(tmp_path_factory.mktemp("mx"), listeners=["smtp", "smtps"], config={
        "rspamd": {"enabled": True, "url": rspamd_server.url, "timeout": 10.0,
                   "reverse_dns": False}})
    d.add_user("alice", "alice-pw")
    d.add_user("bob", "bob-pw")
    d.start()
    yield d
    d.stop()


def message(subject: str, body: str = "hello\r\n", extra: str = "") -> bytes:
    return (f"From: News <news@sender.test>\r\nTo: alice@example.test\r\n{extra}"
            f"Subject: {subject}\r\nMessage-ID: <{time.monotonic_ns()}@sender.test>\r\n"
            f"Date: Wed, 02 Dec 2026 14:00:00 +0000\r\n\r\n{body}").encode()


def send(d, content: bytes, rcpt: str = "alice@example.test", bdat: bool = False,
         source: str = "127.0.0.1"):
    """(code, reply) of the end of data; smtplib's sendmail raises on a refusal."""
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=30,
                      source_address=(source, 0)) as s:
        s.ehlo("client.sender.test")
        assert s.mail("news@sender.test")[0] == 250
        assert s.rcpt(rcpt)[0] == 250
        if not bdat:
            return s.data(content)
        s.send(b"BDAT %d LAST\r\n" % len(content) + content)
        return s.getreply()


def everything(d, user: str) -> int:
    return sum(len(d.messages(user, f)) for f in ("", "Junk"))


def stored(d, user: str, folder: str, before: int) -> bytes:
    got = d.wait_for(lambda: d.messages(user, folder)[before:], 10)
    assert got, d.log()[-3000:]
    return got[0]


def head(raw: bytes) -> str:
    return raw.split(b"\n\n", 1)[0].decode()


def test_gtube_is_rejected_550_and_not_stored(mx):
    before = everything(mx, "alice")
    code, text = send(mx, message("gtube", f"spam\r\n{REJECT}\r\n"))
    assert (code, text.split()[0]) == (550, b"5.7.1"), text
    assert b"Gtube pattern" in text  # rspamd's smtp_message is the reply's text
    code, text = send(mx, message("gtube by bdat", f"spam\r\n{REJECT}\r\n"), bdat=True)
    assert (code, text.split()[0]) == (550, b"5.7.1"), text
    time.sleep(0.5)
    assert everything(mx, "alice") == before
    assert "action=reject" in mx.log() and "refused: DATA" in mx.log()


def test_clean_message_is_delivered_with_x_spamd_result(mx):
    before = len(mx.messages("alice"))
    forged = ("X-Spam: Yes\r\nX-Spamd-Result: default: False [-100.00 / 15.00]\r\n"
              "X-Spamd-Bar: forged+++\r\n")
    code, text = send(mx, message("clean", "a plain hello\r\n", extra=forged))
    assert code == 250, text
    raw = stored(mx, "alice", "", before)
    h = head(raw)
    assert h.count("X-Spamd-Result:") == 1, h  # the forged one is gone
    assert "X-Spamd-Result: default: False [" in h and "/ 15.00]" in h, h
    assert "-100.00" not in h and "X-Spam: Yes" not in h, h
    # rspamd's milter edits: its remove_headers took the forged bar, add_headers put its own.
    assert h.count("X-Spamd-Bar:") == 1 and "forged" not in h, h
    assert raw.endswith(b"\n\na plain hello\n")


def test_add_header_action_goes_to_junk_with_x_spam(mx):
    before_inbox, before_junk = len(mx.messages("alice")), len(mx.messages("alice", "Junk"))
    code, text = send(mx, message("maybe spam", f"buy\r\n{ADD_HEADER}\r\n"))
    assert code == 250, text
    raw = stored(mx, "alice", "Junk", before_junk)
    h = head(raw)
    assert "X-Spam: Yes" in h and "X-Spamd-Result: default: True [6.00 / 15.00]" in h, h
    assert "GTUBE(0.00)" in h
    assert "Subject: maybe spam" in h
    assert len(mx.messages("alice")) == before_inbox
    # Junk is a real folder: IMAP lists it with its special use.
    assert (mx.maildir("alice", "Junk") / "maildirfolder").exists()


def test_rewrite_subject_action_rewrites_and_goes_to_junk(mx):
    before = len(mx.messages("bob", "Junk"))
    code, text = send(mx, message("cheap pills", f"buy\r\n{REWRITE_SUBJECT}\r\n"),
                      rcpt="bob@example.test", bdat=True)
    assert code == 250, text
    h = head(stored(mx, "bob", "Junk", before))
    assert h.count("Subject:") == 1 and "Subject: *** SPAM *** cheap pills" in h, h
    assert "X-Spam: Yes" in h


@pytest.mark.parametrize("action", ["soft reject", "greylist"])
def test_soft_reject_and_greylist_get_451(mx, action):
    before = everything(mx, "alice")
    code, text = send(mx, message(f"netsuite-test-action: {action}"))
    assert (code, text.split()[0]) == (451, b"4.7.1"), text
    assert f"netsuite test: {action}".encode() in text
    time.sleep(0.5)
    assert everything(mx, "alice") == before


def test_submission_is_not_scanned_unless_configured(mx):
    before = len(mx.messages("bob"))
    with smtplib.SMTP_SSL("127.0.0.1", mx.port("smtps"), timeout=20,
                          context=insecure_context()) as s:
        s.login("alice", "alice-pw")
        assert s.sendmail("alice@example.test", ["bob@example.test"],
                          message("from alice", f"{REJECT}\r\n")) == {}
    h = head(stored(mx, "bob", "", before))
    assert "X-Spamd-Result" not in h


def test_submission_scanned_when_configured(make_daemon, rspamd_server):
    d = make_daemon(listeners=["smtps"], users={"alice": "alice-pw"}, config={
        "rspamd": {"enabled": True, "url": rspamd_server.url, "scan_submission": True,
                   "reverse_dns": False}})
    with smtplib.SMTP_SSL("127.0.0.1", d.port("smtps"), timeout=20,
                          context=insecure_context()) as s:
        s.login("alice", "alice-pw")
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("alice@example.test", ["alice@example.test"],
                       message("from alice", f"{REJECT}\r\n"))
        assert e.value.smtp_code == 550
        assert s.sendmail("alice@example.test", ["alice@example.test"],
                          message("fine")) == {}
    assert "X-Spamd-Result" in head(stored(d, "alice", "", 0))


@pytest.fixture
def silent():
    """A port that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


@pytest.mark.parametrize("down", ["refused", "silent"])
def test_rspamd_down_fail_open_delivers_and_logs(make_daemon, silent, down):
    url = f"http://127.0.0.1:{free_port()}" if down == "refused" else silent
    d = make_daemon(listeners=["smtp"], users={"alice": "pw"}, config={
        "rspamd": {"enabled": True, "url": url, "timeout": 1.0, "fail": "open",
                   "reverse_dns": False}})
    code, text = send(d, message("while rspamd is down", f"{REJECT}\r\n"))
    assert code == 250, text
    h = head(stored(d, "alice", "", 0))
    assert "X-Spamd-Result" not in h
    log = d.log()
    assert "rspamd: id=" in log and "fail=open: delivered unscanned" in log, log[-2000:]
    reason = "no answer within 1 s" if down == "silent" else "Connection was refused"
    assert reason in log, log[-2000:]


@pytest.mark.parametrize("down", ["refused", "silent"])
def test_rspamd_down_fail_closed_451(make_daemon, silent, down):
    url = f"http://127.0.0.1:{free_port()}" if down == "refused" else silent
    d = make_daemon(listeners=["smtp"], users={"alice": "pw"}, config={
        "rspamd": {"enabled": True, "url": url, "timeout": 1.0, "fail": "closed",
                   "reverse_dns": False}})
    code, text = send(d, message("while rspamd is down"))
    assert (code, text.split()[0]) == (451, b"4.7.1"), text
    time.sleep(0.3)
    assert everything(d, "alice") == 0
    assert "fail=closed: 451" in d.log()


class _Broken(BaseHTTPRequestHandler):
    """An rspamd that answers, but not with a verdict."""

    answers = {"/500/checkv2": (500, b"oops"), "/text/checkv2": (200, b"<html>no</html>"),
               "/error/checkv2": (200, b'{"error": "cannot parse message"}')}

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        code, body = self.answers[self.path]
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def broken():
    server = HTTPServer(("127.0.0.1", 0), _Broken)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_answer_that_is_not_a_verdict_follows_fail(make_daemon, broken):
    d = make_daemon(listeners=["smtp"], users={"alice": "pw"}, config={
        "rspamd": {"enabled": True, "url": broken + "/500", "fail": "open",
                   "reverse_dns": False}})
    code, text = send(d, message("rspamd says 500"))
    assert code == 250, text
    for where, reason in (("/text", "not JSON: <html>no</html>"),
                          ("/error", "rspamd error: cannot parse message")):
        d.config["rspamd"]["url"] = broken + where
        d.restart()
        assert send(d, message("rspamd says " + where))[0] == 250
        assert reason in d.log(), d.log()[-2000:]
    assert len(d.messages("alice")) == 3
    assert "unavailable (HTTP 500: oops); fail=open" in d.log()


@pytest.mark.parametrize("key,value,reason", [
    ("url", "ftp://127.0.0.1:11333", "expected http://host:port"),
    ("url", "http://127.0.0.1:99999", "out of range"),
    ("fail", "sometimes", 'expected "open" or "closed"'),
    ("timeout", 0, "must be positive"),
    ("junk_folder", "INBOX", "spam would go to INBOX"),
])
def test_bad_config_stops_startup(make_daemon, key, value, reason):
    d = make_daemon(start=False, listeners=["smtp"],
                    config={"rspamd": {"enabled": True, key: value}})
    with pytest.raises(RuntimeError) as e:
        d.start()
    assert f"rspamd.{key}: " in str(e.value) and reason in str(e.value), str(e.value)


# -- the header edits, on their own -------------------------------------------------

MSG = [b"Received: from a", b"\tby mx.test", b"Authentication-Results: mx.test; spf=pass",
       b"X-A: 1", b"X-A: 2", b"X-A: 3", b"Subject: old", b"\tfolded", b"", b"X-A: body"]


def test_milter_remove_headers_counts_and_keeps_trace_headers():
    from netsuite.mailauth.rspamd import edit

    def remaining(spec):
        out = edit(MSG, {"remove_headers": spec})
        assert out[-2:] == [b"", b"X-A: body"]  # the body is never touched
        return [line for line in out if line.startswith(b"X-A")][:-1]

    assert remaining({"X-A": 0}) == []
    assert remaining({"x-a": 2}) == [b"X-A: 1", b"X-A: 3"]
    assert remaining({"X-A": -1}) == [b"X-A: 1", b"X-A: 2"]
    assert remaining({"X-A": 7}) == [b"X-A: 1", b"X-A: 2", b"X-A: 3"]
    kept = edit(MSG, {"remove_headers": {"Received": 0, "Authentication-Results": 0}})
    assert kept == MSG


def test_milter_add_headers_forms_and_subject_rewrite():
    from netsuite.mailauth.rspamd import edit, set_subject

    out = edit(MSG, {"add_headers": {"X-One": "a", "X-Two": {"value": "b", "order": 0},
                                     "X-Three": [{"value": "c1"}, "c2"],
                                     "X-Bad": {"value": "x\r\n\tEvil: y"}}})
    assert out[:5] == [b"X-One: a", b"X-Two: b", b"X-Three: c1", b"X-Three: c2",
                       b"X-Bad: x Evil: y"]  # no header smuggled in by a line break
    assert out[5:] == MSG
    new = set_subject(MSG, "*** SPAM *** Grüße")
    subjects = [line for line in new if line.startswith(b"Subject:")]
    assert len(subjects) == 1 and subjects[0].startswith(b"Subject: =?utf-8?"), subjects
    assert str(make_header(decode_header(subjects[0][9:].decode()))) == "*** SPAM *** Grüße"
    assert b"\tfolded" not in new and new[-2:] == [b"", b"X-A: body"]


def test_x_spamd_result_format():
    from netsuite.mailauth.rspamd import summary

    lines = summary(True, 7.5, 15, {"B_SYM": {"score": 1}, "A_SYM": {"score": 6.5,
                                                                       "options": ["x;y"]}})
    assert lines == [b"X-Spamd-Result: default: True [7.50 / 15.00];",
                     b"\tA_SYM(6.50)[x,y];", b"\tB_SYM(1.00)"]


def test_with_spf_and_dkim_checks_both_headers_are_there(make_daemon, rspamd_server,
                                                         tmp_path):
    from dns_zone import DNSServer

    zone = DNSServer(tmp_path, {"sender.test": ["v=spf1 ip4:127.0.0.1 -all"],
                                "PTR 1.0.0.127.in-addr.arpa": ["client.sender.test"],
                                "A client.sender.test": ["127.0.0.1"],
                                # A PTR whose name does not lead back: not confirmed.
                                "PTR 3.0.0.127.in-addr.arpa": ["bank.test"],
                                "A bank.test": ["192.0.2.1"]})
    try:
        d = make_daemon(listeners=["smtp"], users={"alice": "pw"}, config={
            "checks": {"enabled": True},
            "dns": {"nameservers": [zone.address], "timeout": 2.0},
            "rspamd": {"enabled": True, "url": rspamd_server.url}})
        forged = "Authentication-Results: mx.test; spf=pass\r\n"
        assert send(d, message("checked", extra=forged))[0] == 250
        h = head(stored(d, "alice", "", 0))
        assert h.count("Authentication-Results: mx.test;") == 1, h
        assert "spf=pass smtp.mailfrom=news@sender.test" in h and "dkim=none" in h, h
        assert "X-Spamd-Result: default: False" in h
        # Both written by this hop: above its Received.
        assert h.index("X-Spamd-Result") < h.index("Received:")
        assert h.index("Authentication-Results: mx.test") < h.index("Received:")
        # The forward-confirmed reverse name went to rspamd as Hostname.
        assert "NETSUITE_TEST_HOSTNAME(0.00)[client.sender.test]" in h, h
        for source in ("127.0.0.2", "127.0.0.3"):  # no PTR; a PTR not confirmed
            assert send(d, message("from " + source), source=source)[0] == 250
            h = head(stored(d, "alice", "", 1 if source == "127.0.0.2" else 2))
            assert "NETSUITE_TEST_HOSTNAME(0.00)[unknown]" in h, h
        code, _text = send(d, message("checked spam", f"{REJECT}\r\n"))
        assert code == 550
    finally:
        zone.stop()


def test_store_delivers_into_junk_made_again_if_the_user_deleted_it(tmp_path):
    from netsuite.store.maildir import MaildirStore

    store = MaildirStore(tmp_path / "mail")
    store.ensure_special_folders("alice")
    store.delete_folder("alice", "Junk")
    d = store.delivery("alice", "Junk")
    d.write(b"Subject: spam\n\nbody\n")
    d._finish()  # the blocking step commit runs in a thread
    assert [m.uid for m in store.folder("alice", "Junk").messages] == [1]
    assert "Junk" in store.subscriptions("alice")
    assert store.folder("alice").messages == []  # nothing in INBOX

"""
The status page against the real daemon: Debian's headless Chromium loads it
and the test reads the DOM Chromium built (and keeps its screenshot); the
access rules are checked with curl.
"""

from __future__ import annotations

import base64
import html.parser
import imaplib
import json
import shutil
import smtplib
import subprocess
from pathlib import Path

import pytest

CONFIG = {"server": {"allow_plaintext_auth": True},
          "mail": {"local_domains": ["example.test"]},
          "throttle": {"lock_after": 3},
          "queue": {"routes": {"remote.test": "127.0.0.1:9"}}}
LISTENERS = ["http", "https", "smtp", "submission", "imap", "pop3"]
#: Kept after the run: what the page looked like.
SCREENSHOT_DIR = Path.home() / ".cache" / "netsuite-tests"


def chromium(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium renders the status page")
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-dev-shm-usage", "--no-first-run",
                           "--ignore-certificate-errors", *args],
                          capture_output=True, text=True, timeout=90, check=True)


class Tables(html.parser.HTMLParser):
    """Rows of every table by id, the chart's bar counts, and elements by id."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.bars: list[int] = []
        self.text_by_id: dict[str, str] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._span: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "rect" and "data-count" in a:
            self.bars.append(int(a["data-count"]))
        elif tag == "span" and "id" in a:
            self._span = a["id"]
            self.text_by_id[self._span] = ""

    def handle_endtag(self, tag):
        if tag == "span":
            self._span = None
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._span is not None:
            self.text_by_id[self._span] += data


def curl(*args: str) -> tuple[int, bytes]:
    out = subprocess.run(["curl", "-sk", "-o", "-", "-w", "\n%{http_code}", "--max-time", "15",
                          *args], capture_output=True, check=True).stdout
    body, _, code = out.rpartition(b"\n")
    return int(code), body


@pytest.fixture
def daemon(make_daemon):
    d = make_daemon(CONFIG, listeners=LISTENERS,
                    users={"alice": "alice-pw", "root2": "root2-pw"})
    # Mail in, mail queued for an unreachable remote, a failed login and a lock.
    with smtplib.SMTP("127.0.0.1", d.port("smtp"), timeout=15) as s:
        for _ in range(3):
            s.sendmail("bob@elsewhere.test", ["alice@example.test"], b"Subject: x\r\n\r\nx\r\n")
    with smtplib.SMTP("127.0.0.1", d.port("submission"), timeout=15) as s:
        s.login("alice", "alice-pw")
        s.sendmail("alice@example.test", ["carol@remote.test"], b"Subject: q\r\n\r\nq\r\n")
    held = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=15)
    held.login("alice", "alice-pw")
    for _ in range(3):  # the third locks the name (and this address)
        m = imaplib.IMAP4("127.0.0.1", d.port("imap"), timeout=15)
        with pytest.raises(imaplib.IMAP4.error):
            m.login("mallory", "guess")
        m.logout()
    d.held = held
    yield d
    held.logout()


def test_chromium_renders_the_status_page(daemon, tmp_path):
    d = daemon
    url = f"http://127.0.0.1:{d.port('http')}/"
    dom = chromium("--dump-dom", url).stdout
    page = Tables()
    page.feed(dom)
    listeners = {row[0]: row for row in page.tables["listeners"]}
    assert set(listeners) >= {"imap", "smtp", "submission", "pop3", "http", "https"}
    assert listeners["imap"][1] == str(d.port("imap"))
    assert int(listeners["imap"][2]) >= 1  # the session held by the fixture
    queue = page.tables["queue"]
    assert [row[2] for row in queue] == ["carol@remote.test"]
    failures = page.tables["failures"]
    assert [(r[1], r[3], r[4]) for r in failures] == [("imap", "mallory", "failed")] * 3
    assert any(row[0] == "user:mallory" for row in page.tables["locks"])
    assert len(page.bars) == 60 and sum(page.bars) == 4 == int(page.text_by_id["accepted"])
    assert page.text_by_id["queued"] == "1"
    shot = tmp_path / "status.png"
    chromium(f"--screenshot={shot}", "--window-size=1100,1400", url)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10000
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOT_DIR / "status-page.png")
    # The JSON twin says the same.
    code, body = curl(url + "status.json")
    data = json.loads(body)
    assert code == 200 and data["queue"][0]["recipients"][0]["address"] == "carol@remote.test"


def test_access_rules(make_daemon):
    d = make_daemon(dict(CONFIG, http={"status_loopback": False, "admins": ["alice"]}),
                    listeners=["http", "https"], users={"alice": "alice-pw", "bob": "bob-pw"})
    plain = f"http://127.0.0.1:{d.port('http')}/"
    secure = f"https://127.0.0.1:{d.port('https')}/"
    code, body = curl(plain)
    assert code == 403 and b"https" in body
    assert curl("-u", "alice:alice-pw", plain)[0] == 403  # never a password in clear text
    assert curl(secure)[0] == 401
    headers = subprocess.run(["curl", "-sk", "-D", "-", "-o", "/dev/null", secure],
                             capture_output=True, text=True).stdout.lower()
    assert 'www-authenticate: basic realm="netsuite"' in headers
    assert curl("-u", "alice:wrong", secure)[0] == 401
    assert curl("-u", "bob:bob-pw", secure)[0] == 403  # a user, not an admin
    code, body = curl("-u", "alice:alice-pw", secure)
    assert code == 200 and b"<h1>netsuite on" in body
    code, body = curl("-H", "Authorization: Basic " + base64.b64encode(b"alice:alice-pw")
                      .decode(), secure + "status.json")
    data = json.loads(body)
    # The wrong password was a failed login like any other, through the throttle.
    assert code == 200 and [(f["protocol"], f["user"]) for f in data["failed_logins"]] == \
        [("http", "alice")]
    assert "login failed: protocol=http " in d.log()

"""
The read-only status page (C{/}) and its data (C{/status.json}): listeners,
live sessions per protocol, the queue with its reasons, recent failed logins
and locks, and messages accepted per minute.

Who may read it: a client on loopback, or one of C{[http] admins} with HTTP
basic auth over TLS (the https listener). The password is checked through
the server's Portal and throttle, as for every protocol.
"""

from __future__ import annotations

import base64
import html
import ipaddress
import time
from collections import deque
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, task, threads
from twisted.web.server import Request

from netsuite import metrics
from netsuite.http.operator import IOperator
from netsuite.http.site import OperationsSite, json_body, route, text_body
from netsuite.queue.spool import Spool
from netsuite.service import ConnectionStatus, listening_ports

#: Minutes of history in the chart.
MINUTES = 60


class MessageRate:
    """Messages accepted per minute, sampled from a running total every few seconds."""

    def __init__(self, total, reactor: Any, interval: float = 5.0):
        self.total = total
        self.minutes: deque[tuple[int, int]] = deque(maxlen=MINUTES)
        #: The total at the last sample; it starts at zero with the process.
        self._last = 0
        self._loop = task.LoopingCall(self.sample)
        self._loop.clock = reactor
        self._loop.start(interval, now=True)

    def sample(self) -> None:
        now = self.total()
        if now is None:
            return
        minute = int(time.time() // 60)
        added = max(0, now - self._last)
        self._last = now
        if self.minutes and self.minutes[-1][0] == minute:
            self.minutes[-1] = (minute, self.minutes[-1][1] + added)
        else:
            self.minutes.append((minute, added))

    def series(self) -> list[tuple[int, int]]:
        """(minute start as a Unix time, messages) for the last hour, zeros filled in."""
        self.sample()
        known = dict(self.minutes)
        end = int(time.time() // 60)
        return [(m * 60, known.get(m, 0)) for m in range(end - MINUTES + 1, end + 1)]


def accepted_total() -> int | None:
    """Messages SMTP and LMTP accepted so far (the metrics counter)."""
    return metrics.messages_accepted()


#: The process's sampler, started by the first site (http and https share it).
_RATE: MessageRate | None = None


def site_built(site: OperationsSite) -> None:
    """Sample from start-up, so the chart counts the messages before the first page view."""
    _rate(site)


def _rate(site: OperationsSite) -> MessageRate:
    global _RATE
    if _RATE is None:
        _RATE = MessageRate(accepted_total, site.ctx.reactor)
    return _RATE


def _is_loopback(request: Request) -> bool:
    host = getattr(request.getClientAddress(), "host", "")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _credentials(request: Request) -> tuple[str, str] | None:
    header = request.getHeader(b"authorization") or b""
    scheme, _, value = header.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).decode(
            "utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return user, password


@defer.inlineCallbacks
def authorize(request: Request, site: OperationsSite):
    """None if the client may read the page, else the refusal's (code, message)."""
    if site.ctx.config.http.status_loopback and _is_loopback(request):
        return None
    admins = site.ctx.config.http.admins
    if not admins:
        return 403, "the status page is served to loopback only ([http] admins is empty)"
    if not request.isSecure():
        return 403, "use the https listener: passwords are not sent in clear text"
    given = _credentials(request)
    if given is None:
        return 401, "log in"
    user, password = given
    peer = getattr(request.getClientAddress(), "host", "?")
    portal = site.ctx.portal.bind(peer, "http")
    try:
        _iface, avatar, logout = yield portal.login(
            UsernamePassword(user.encode(), password.encode()), None, IOperator)
    except Exception:
        return 401, "log in"
    logout()
    if avatar.user not in admins:
        return 403, f"{avatar.user} is not in [http] admins"
    return None


def _sessions(site: OperationsSite) -> dict[str, dict[str, Any]]:
    top = site.ctx.top
    if top is None:
        return {}
    ports = listening_ports(top)
    counts: dict[str, dict[str, Any]] = {}
    for svc in top:
        if isinstance(svc, ConnectionStatus):
            for name, limits in svc.listeners.items():
                counts[name] = {"open": len(limits.protocols), "max": limits.total}
    return {name: {"ports": ports.get(name, []), **counts.get(name, {"open": 0})}
            for name in sorted(set(ports) | set(counts))}


def _queue(data_dir) -> list[dict[str, Any]]:
    """Blocking: the spool's messages, oldest first (in a thread)."""
    path = data_dir / "queue"
    if not (path / "active").is_dir():
        return []
    return [{"id": env.id, "sender": env.sender, "size": env.size, "arrived": env.created,
             "attempts": env.attempts, "next_attempt": env.next_attempt,
             "recipients": [{"address": r.address, "reason": r.last_error or env.last_error}
                            for r in env.pending()]}
            for env in Spool(path).list()[:200]]


@defer.inlineCallbacks
def snapshot(site: OperationsSite):
    ctx = site.ctx
    queue = yield threads.deferToThread(_queue, ctx.config.data_dir)
    throttle = ctx.portal.throttle
    locks = sorted(throttle.locks().items(), key=lambda kv: -kv[1])
    return {
        "hostname": ctx.config.server.hostname,
        "time": time.time(),
        "listeners": _sessions(site),
        "queue": queue,
        "failed_logins": list(reversed(ctx.portal.recent_failures)),
        "locks": [{"key": k, "seconds_left": round(left)} for k, left in locks],
        "messages_per_minute": _rate(site).series(),
    }


def _refused(request: Request, code: int, message: str) -> bytes:
    if code == 401:
        request.setHeader(b"www-authenticate", b'Basic realm="netsuite", charset="UTF-8"')
    return json_body(request, {"error": message}, code)


@route("/status.json")
@defer.inlineCallbacks
def status_json(request: Request, site: OperationsSite):
    refused = yield authorize(request, site)
    if refused is not None:
        return _refused(request, *refused)
    data = yield snapshot(site)
    return json_body(request, data)


@route("/")
@defer.inlineCallbacks
def status_page(request: Request, site: OperationsSite):
    refused = yield authorize(request, site)
    if refused is not None:
        return _refused(request, *refused)
    data = yield snapshot(site)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-security-policy",
                      b"default-src 'none'; style-src 'unsafe-inline'; img-src data:")
    return text_body(request, render(data), b"text/html")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _table(id_: str, head: list[str], rows: list[list[Any]], empty: str) -> str:
    e = html.escape
    if not rows:
        return f'<p id="{id_}" class="empty">{e(empty)}</p>'
    cells = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f'<table id="{id_}"><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>'


def chart(series: list[tuple[int, int]], width: int = 720, height: int = 160) -> str:
    """An inline SVG bar chart: no script, so the page works under a strict CSP."""
    peak = max([n for _, n in series] + [1])
    bar = width / max(len(series), 1)
    bars = []
    for i, (minute, n) in enumerate(series):
        h = round((height - 20) * n / peak, 1)
        label = html.escape(f"{time.strftime('%H:%M', time.localtime(minute))}: {n}")
        bars.append(f'<rect class="bar" data-count="{n}" x="{i * bar:.1f}" '
                    f'y="{height - 15 - h}" width="{max(bar - 1, 1):.1f}" height="{h}">'
                    f"<title>{label}</title></rect>")
    return (f'<svg id="chart" role="img" aria-label="messages accepted per minute" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
            f'<text x="0" y="{height - 2}">-{len(series)} min</text>'
            f'<text x="{width - 30}" y="{height - 2}">now</text>'
            f'<text x="0" y="12">peak {peak}/min</text>{"".join(bars)}</svg>')


STYLE = """
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:1.5em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}.empty{color:#777}.bar{fill:#3a7bd5}svg text{font-size:11px;fill:#555}
"""


def render(data: dict[str, Any]) -> str:
    e = html.escape
    listeners = [[name, ", ".join(map(str, info["ports"])), info["open"], info.get("max", "-")]
                 for name, info in data["listeners"].items()]
    queue = [[m["id"], f"<{m['sender']}>", r["address"], m["attempts"],
              _when(m["next_attempt"]), r["reason"] or "-"]
             for m in data["queue"] for r in m["recipients"]]
    failures = [[_when(f["time"]), f["protocol"], f["address"], f["user"], f["outcome"]]
                for f in data["failed_logins"]]
    locks = [[lock["key"], lock["seconds_left"]] for lock in data["locks"]]
    total = sum(n for _, n in data["messages_per_minute"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="30">
<title>netsuite status: {e(data["hostname"])}</title><style>{STYLE}</style></head>
<body>
<h1>netsuite on {e(data["hostname"])}</h1>
<p>As of {e(_when(data["time"]))}; refreshed every 30 s.
Machine-readable: <a href="/status.json">/status.json</a>.</p>
<h2>Listeners and live sessions</h2>
{_table("listeners", ["listener", "ports", "open", "cap"], listeners, "nothing listening")}
<h2>Messages accepted per minute (last hour: <span id="accepted">{total}</span>)</h2>
{chart(data["messages_per_minute"])}
<h2>Queue (<span id="queued">{len(data["queue"])}</span>
message{"" if len(data["queue"]) == 1 else "s"})</h2>
{_table("queue", ["id", "sender", "recipient", "attempts", "next attempt", "reason"], queue,
        "the queue is empty")}
<h2>Recent failed logins</h2>
{_table("failures", ["time", "protocol", "address", "user", "outcome"], failures,
        "no failed logins")}
<h2>Locks</h2>
{_table("locks", ["key", "seconds left"], locks, "nothing locked")}
</body></html>
"""

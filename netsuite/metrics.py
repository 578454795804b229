"""
The process's Prometheus metrics, in one registry of its own.

Protocol code imports this module (it needs no twisted.web) and counts with
C{metrics.X.labels(...).inc()}; C{/metrics} (L{netsuite.http.metrics})
renders L{REGISTRY}.  A registry of our own, not prometheus_client's global
one, so that a library or a test that registers metrics in the same process
does not collide with ours, and ours are all that C{/metrics} shows.

Labels stay bounded: listener and protocol names come from the config's known
set, commands from each protocol's own command table (others are C{other}),
SMTP refusal reasons are enhanced status codes; never a user name or address.

With C{--workers N} every worker process has its own registry, so a scrape
of the shared http port shows the numbers of the one worker that accepted it
(C{netsuite_worker_info} says which).
"""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# -- connections (netsuite.service.ConnectionLimits, TrackedConnection) -------------------

connections_open = Gauge(
    "netsuite_connections_open", "Connections open now, by listener.",
    ["listener"], registry=REGISTRY)
connections = Counter(
    "netsuite_connections_total", "Connections accepted (within the caps), by listener.",
    ["listener"], registry=REGISTRY)
connections_refused = Counter(
    "netsuite_connections_refused_total",
    "Connections refused with the busy reply: over max_connections or the per-address cap.",
    ["listener"], registry=REGISTRY)
proxy_headers = Counter(
    "netsuite_proxy_headers_total",
    "PROXY protocol headers on haproxy: listeners, by listener and result (ok; untrusted: "
    "the peer is not in proxy_trusted; header_invalid; header_timeout).",
    ["listener", "result"], registry=REGISTRY)
tls_handshakes = Counter(
    "netsuite_tls_handshakes_total",
    "TLS handshakes (implicit TLS and STARTTLS/STLS/AUTH TLS), by listener and result "
    "(ok; failed: a TLS error, a hang-up during the handshake, or the handshake timeout).",
    ["listener", "result"], registry=REGISTRY)
tls_certificate_expiry = Gauge(
    "netsuite_tls_certificate_expiry_timestamp_seconds",
    "When the certificate the TLS listeners serve now expires (notAfter, Unix time).",
    registry=REGISTRY)

# -- logins (netsuite.auth.throttle.ThrottledPortal) --------------------------------------

logins = Counter(
    "netsuite_logins_total",
    "Logins by protocol, mechanism (credential type) and result (ok, failed).",
    ["protocol", "mechanism", "result"], registry=REGISTRY)
login_throttle_delays = Counter(
    "netsuite_login_throttle_delays_total",
    "Failed logins whose answer the throttle delayed, by protocol.",
    ["protocol"], registry=REGISTRY)
login_throttle_delay_seconds = Counter(
    "netsuite_login_throttle_delay_seconds_total",
    "Seconds of delay the throttle added to failed logins, by protocol.",
    ["protocol"], registry=REGISTRY)
login_locks = Counter(
    "netsuite_login_locks_total",
    "Times a failed login locked its address or user name (lock_after reached).",
    ["protocol"], registry=REGISTRY)
login_locked_refusals = Counter(
    "netsuite_login_locked_refusals_total",
    "Logins refused without a check because the address or user was locked.",
    ["protocol"], registry=REGISTRY)

# -- SMTP and LMTP (netsuite.smtp.server) -------------------------------------------------

smtp_messages = Counter(
    "netsuite_smtp_messages_total",
    "Messages at the end of DATA/BDAT, by listener and result (accepted, refused).",
    ["listener", "result"], registry=REGISTRY)
smtp_refusals = Counter(
    "netsuite_smtp_refusals_total",
    "Refused SMTP commands and messages, by listener, stage (mail, rcpt, data) and reason "
    "(the reply's enhanced status code, e.g. 5.1.1 unknown user, 5.7.1 relay denied).",
    ["listener", "stage", "reason"], registry=REGISTRY)
smtp_received_bytes = Counter(
    "netsuite_smtp_received_bytes_total",
    "Bytes of accepted messages (as received, before the Received: header), by listener.",
    ["listener"], registry=REGISTRY)

# -- deliveries (netsuite.smtp.delivery local, netsuite.queue.runner remote) --------------

delivery_attempts = Counter(
    "netsuite_delivery_attempts_total",
    "Delivery attempts per recipient, by destination (local mailbox, remote via the queue) "
    "and result (delivered, deferred, bounced).",
    ["destination", "result"], registry=REGISTRY)

# -- IMAP and POP3 commands ---------------------------------------------------------------

#: Command latency buckets, seconds: most commands take a millisecond or less.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

imap_commands = Counter(
    "netsuite_imap_commands_total", "IMAP commands by name (UID ones as e.g. UID FETCH).",
    ["command"], registry=REGISTRY)
imap_command_duration = Histogram(
    "netsuite_imap_command_duration_seconds",
    "Time from an IMAP command's dispatch until its handler finished (IDLE and AUTHENTICATE "
    "without an initial response: until the continuation request).",
    ["command"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
pop3_commands = Counter(
    "netsuite_pop3_commands_total", "POP3 commands by name.", ["command"], registry=REGISTRY)
pop3_command_duration = Histogram(
    "netsuite_pop3_command_duration_seconds",
    "Time from a POP3 command's dispatch until its handler finished.",
    ["command"], buckets=LATENCY_BUCKETS, registry=REGISTRY)

# -- FTP, TELNET ----------------------------------------------------------------------------

ftp_transfers = Counter(
    "netsuite_ftp_transfers_total",
    "FTP file transfers by direction (upload: STOR/APPE/STOU, download: RETR) and result "
    "(complete, failed).",
    ["direction", "result"], registry=REGISTRY)
ftp_bytes = Counter(
    "netsuite_ftp_transferred_bytes_total",
    "Bytes of FTP file transfers by direction, failed ones included.",
    ["direction"], registry=REGISTRY)
telnet_sessions_open = Gauge(
    "netsuite_telnet_sessions_open", "TELNET sessions with a running program now.",
    registry=REGISTRY)
telnet_sessions = Counter(
    "netsuite_telnet_sessions_total", "TELNET sessions started (a program spawned on a pty).",
    registry=REGISTRY)

# -- store --------------------------------------------------------------------------------

store_index_compactions = Counter(
    "netsuite_store_index_compactions_total",
    "Folder indexes compacted (written whole, the change log started afresh).",
    registry=REGISTRY)
store_index_rebuilds = Counter(
    "netsuite_store_index_rebuilds_total",
    "Folder indexes rebuilt from the Maildir, by reason (missing: also a folder's first "
    "open; corrupt).",
    ["reason"], registry=REGISTRY)

# -- the process ----------------------------------------------------------------------------

worker_info = Gauge(
    "netsuite_worker_info",
    "1, labelled with this worker's index, in a --workers N worker process.",
    ["worker"], registry=REGISTRY)


def messages_accepted() -> int:
    """Messages accepted so far on every SMTP/LMTP listener (the status page's chart)."""
    return int(sum(sample.value for family in smtp_messages.collect()
                   for sample in family.samples
                   if sample.name == "netsuite_smtp_messages_total"
                   and sample.labels.get("result") == "accepted"))


def set_worker(index: int) -> None:
    worker_info.labels(str(index)).set(1)


# -- helpers --------------------------------------------------------------------------------

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


def smtp_reason(enhanced: str | None, code: int, text: bytes | str = b"") -> str:
    """The enhanced status code of a refusal, from the reply or its text; else the code's class."""
    if enhanced is None:
        raw = text.decode("ascii", "replace") if isinstance(text, bytes) else text
        enhanced = raw.split(" ", 1)[0] if raw else ""
    if _ENHANCED.match(enhanced or ""):
        return enhanced
    return f"{code // 100}.0.0" if 200 <= code < 600 else "other"


class Timer:
    """C{with Timer(histogram, label): ...} or C{.done()}: observe seconds since creation."""

    __slots__ = ("child", "start")

    def __init__(self, histogram: Histogram, *labels: str):
        self.child = histogram.labels(*labels)
        self.start = time.perf_counter()

    def done(self, _result: Any = None) -> Any:
        self.child.observe(time.perf_counter() - self.start)
        return _result


# -- the queue, read at scrape time ---------------------------------------------------------

#: Queue states as L{QueueCollector} reports them.
QUEUE_STATES = ("new", "active", "deferred")


class QueueCollector(Collector):
    """
    Queue depth by state and the oldest message's age, from the running queue
    runner's own memory when scraped (no counters to keep in step with it); for
    the PostgreSQL queue, the whole shared queue as the runner last counted it
    (every few seconds: a scrape cannot wait for the database).
    """

    def __init__(self) -> None:
        self._runner: Any = None

    def watch(self, runner: Any) -> None:
        self._runner = weakref.ref(runner)

    def forget(self, runner: Any) -> None:
        if self._runner is not None and self._runner() is runner:
            self._runner = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "netsuite_queue_messages",
            "Messages in the outgoing queue, by state (new: not tried yet; active: being "
            "delivered; deferred: waiting for a retry).", labels=["state"])
        oldest = GaugeMetricFamily(
            "netsuite_queue_oldest_message_age_seconds",
            "Age of the oldest message in the outgoing queue (0 when empty).")
        runner = self._runner() if self._runner is not None else None
        counts = dict.fromkeys(QUEUE_STATES, 0)
        first = None
        shared = getattr(runner, "shared_depth", None) if runner is not None else None
        if shared is not None:  # the PostgreSQL queue: every host's, counted every few s
            counts.update(shared[0])
            first = shared[1]
        elif runner is not None:
            busy = runner.busy
            for env in list(runner.envelopes.values()):
                if env.id in busy:
                    counts["active"] += 1
                elif env.attempts:
                    counts["deferred"] += 1
                else:
                    counts["new"] += 1
                first = env.created if first is None else min(first, env.created)
        for state in QUEUE_STATES:
            depth.add_metric([state], counts[state])
        oldest.add_metric([], max(0.0, time.time() - first) if first is not None else 0.0)
        yield depth
        yield oldest

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


queue = QueueCollector()
REGISTRY.register(queue)

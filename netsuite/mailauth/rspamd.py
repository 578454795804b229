"""
rspamd at the end of DATA/BDAT: the message goes to rspamd's normal worker
over its HTTP protocol (C{POST /checkv2}), and rspamd's action decides what
the client hears and where the message goes (docs/mail-auth.md, "rspamd"):

  - C{reject}: 550 5.7.1, nothing stored;
  - C{soft reject}, C{greylist}: 451 4.7.1, nothing stored (the client retries);
  - C{rewrite subject}: the Subject rspamd gives, delivered to Junk;
  - C{add header}: delivered to Junk;
  - C{no action}: delivered.

Every delivered message gets C{X-Spamd-Result} (the score and symbols) and
rspamd's milter header edits; spam gets C{X-Spam: Yes}.  The request goes
through C{twisted.web.client.Agent} with a timeout, never blocking the
reactor; a timeout or an unreachable rspamd follows C{[rspamd] fail}.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from email.header import Header
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns as names_dns
from twisted.names import error as names_error
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
    readBody,
)
from twisted.web.http_headers import Headers

from netsuite.config import ConfigError, section
from netsuite.mailauth import dns
from netsuite.store.maildir import BadFolderName, check_folder_name

log = Logger(namespace="netsuite.rspamd")

ACTIONS = ("reject", "soft reject", "greylist", "rewrite subject", "add header", "no action")
#: Actions whose message is spam: X-Spam: Yes, and filed into the Junk folder.
SPAM = ("rewrite subject", "add header")

#: Headers netsuite writes itself: taken out of arriving mail (forgeries) and
#: never removed by rspamd's milter edits (Authentication-Results is ours too).
OWN_HEADERS = (b"x-spamd-result", b"x-spam")
PROTECTED = (b"received", b"return-path", b"authentication-results")


@section("rspamd")
@dataclass
class RspamdConfig:
    """
    Spam filtering through rspamd (its normal worker, C{/checkv2}) at the end
    of each message on the MX, and optionally on submission.
    """

    enabled: bool = False
    #: The normal worker (not the controller): C{http://host:port}.
    url: str = "http://127.0.0.1:11333"
    #: Seconds rspamd has to answer (connect, send, verdict); rspamd's own
    #: task_timeout is 8 s.  The Hostname lookup has C{[dns] timeout}.
    timeout: float = 15.0
    #: rspamd timed out or unreachable: C{"open"} delivers (and logs),
    #: C{"closed"} answers 451 4.7.1 so the client retries later.
    fail: str = "open"
    #: Scan mail from authenticated users too (sent with the C{User} header).
    scan_submission: bool = False
    #: Where C{add header} and C{rewrite subject} mail is delivered (created if missing).
    junk_folder: str = "Junk"
    #: Look the client's host name up (PTR, forward-confirmed, through C{[dns]}) and
    #: send it as C{Hostname}; rspamd counts a missing one against the sender.
    reverse_dns: bool = True

    def validate(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"expected http://host:port, got {self.url!r}", "url")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as e:
            raise ConfigError(str(e), "url") from e
        if parts.query or parts.fragment:
            raise ConfigError("no query or fragment: the path /checkv2 is added", "url")
        if not self.timeout > 0:
            raise ConfigError("must be positive", "timeout")
        if self.fail not in ("open", "closed"):
            raise ConfigError(f"expected \"open\" or \"closed\", got {self.fail!r}", "fail")
        try:
            check_folder_name(self.junk_folder)
        except BadFolderName as e:
            raise ConfigError(str(e), "junk_folder") from e
        if self.junk_folder.upper() == "INBOX":
            raise ConfigError("spam would go to INBOX: name another folder", "junk_folder")

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/checkv2"


@dataclass
class Envelope:
    """What rspamd is told about the message besides its bytes."""

    ip: str
    helo: bytes
    sender: bytes
    recipients: list[bytes]
    queue_id: str
    user: str | None = None
    hostname: str | None = None


@dataclass
class Outcome:
    """
    The decision: C{reply} (code, enhanced, text) refuses the message;
    otherwise C{lines} are delivered, into C{folder} when it is set.
    """

    lines: list[bytes]
    reply: tuple[int, str, str] | None = None
    folder: str | None = None


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" log line per connection


class _Pool(HTTPConnectionPool):
    _factory = _QuietFactory


class Scanner:
    """One listener's rspamd client (a persistent connection pool)."""

    def __init__(self, settings: RspamdConfig, reactor: Any, resolver: Any = None):
        self.settings = settings
        self.reactor = reactor
        #: twisted.names, for the client's host name (None: not looked up).
        self.resolver = resolver
        self.pool = _Pool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 8
        self.pool.retryAutomatically = False
        self.agent = Agent(reactor, connectTimeout=settings.timeout, pool=self.pool)

    def request(self, message: bytes, envelope: Envelope) -> defer.Deferred:
        """rspamd's answer (a dict); fails with the reason on a timeout or a bad answer."""
        headers = Headers({b"IP": [envelope.ip.encode()],
                           b"Queue-Id": [envelope.queue_id.encode()],
                           b"From": [_field(envelope.sender) or b"<>"],
                           b"Rcpt": [_field(r) for r in envelope.recipients] or [b"<>"]})
        if envelope.helo:
            headers.setRawHeaders(b"Helo", [_field(envelope.helo)])
        if envelope.user:
            headers.setRawHeaders(b"User", [_field(envelope.user.encode())])
        if envelope.hostname:
            headers.setRawHeaders(b"Hostname", [_field(envelope.hostname.encode())])
        d = self.agent.request(b"POST", self.settings.endpoint.encode(), headers,
                               FileBodyProducer(BytesIO(message), cooperator=_Now()))

        def answered(response):
            if response.code != 200:
                return readBody(response).addCallback(
                    lambda body: _fail(f"HTTP {response.code}: {_short(body)}"))
            return readBody(response).addCallback(_parse)

        d.addCallback(answered)
        d.addTimeout(self.settings.timeout, self.reactor)
        return d

    def scan(self, lines: list[bytes], envelope: Envelope) -> defer.Deferred:
        """
        The L{Outcome} for a message (its LF-split lines, our Received first);
        never fails: rspamd's trouble becomes C{[rspamd] fail}'s outcome.
        """
        lines = strip_headers(lines, OWN_HEADERS)
        message = b"\r\n".join(lines) + b"\r\n"
        d = self.hostname(envelope.ip)

        def named(hostname: str | None):
            envelope.hostname = hostname
            return self.request(message, envelope)

        d.addCallback(named)
        d.addCallback(self.decide, lines, envelope)
        d.addErrback(self.unavailable, lines, envelope)
        return d

    def hostname(self, ip: str) -> defer.Deferred:
        """
        The client's forward-confirmed reverse DNS name, C{"unknown"} when it
        has none (as Postfix tells rspamd), or None when nothing was looked up.
        """
        if self.resolver is None:
            return defer.succeed(None)
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return defer.succeed(None)
        d = self.resolver.lookupPointer(address.reverse_pointer)

        def pointed(result):
            names = [str(rr.payload.name) for rr in result[0] if rr.type == names_dns.PTR]
            if not names:
                return "unknown"
            name = names[0].rstrip(".")
            ask = (self.resolver.lookupAddress if address.version == 4
                   else self.resolver.lookupIPV6Address)
            return ask(name).addCallback(confirmed, name)

        def confirmed(result, name: str):
            for rr in result[0]:
                if rr.type == names_dns.A and rr.payload.dottedQuad() == str(address):
                    return name
                if (rr.type == names_dns.AAAA
                        and ipaddress.ip_address(rr.payload.address) == address):
                    return name
            return "unknown"

        def failed(failure):
            if failure.check(names_error.DNSNameError, names_error.DomainError,
                             names_error.AuthoritativeDomainError):
                return "unknown"
            log.info("rspamd: reverse DNS of {ip}: {reason}", ip=ip,
                     reason=failure.getErrorMessage() or type(failure.value).__name__)
            return "unknown"

        return d.addCallback(pointed).addErrback(failed)

    def decide(self, answer: dict, lines: list[bytes], envelope: Envelope) -> Outcome:
        action = str(answer.get("action", "no action"))
        score, required = _number(answer.get("score")), _number(answer.get("required_score"))
        symbols = _dict(answer.get("symbols"))
        message = ""
        messages = answer.get("messages")
        if isinstance(messages, dict):
            message = _reply_text(messages.get("smtp_message"))
        log.info("rspamd: id={id} action={action} score={score:.2f}/{required:.2f} "
                 "symbols={symbols}", id=envelope.queue_id, action=action, score=score,
                 required=required, symbols=",".join(sorted(symbols)) or "-")
        if action == "reject":
            return Outcome(lines, (550, "5.7.1", message or "Message rejected as spam"))
        if action in ("soft reject", "greylist"):
            text = message or ("Greylisted, try again later" if action == "greylist"
                               else "Try again later")
            return Outcome(lines, (451, "4.7.1", text))
        if action not in ACTIONS:
            log.warn("rspamd: id={id}: unknown action {action!r}, delivered as no action",
                     id=envelope.queue_id, action=action)
        spam = action in SPAM
        milter = _dict(answer.get("milter"))
        lines = edit(lines, milter)
        if action == "rewrite subject" and isinstance(answer.get("subject"), str):
            lines = set_subject(lines, answer["subject"])
        added = {name.lower() for name in _added(milter)}
        ours: list[bytes] = []
        if b"x-spamd-result" not in added:
            ours += summary(spam, score, required, symbols)
        if spam and b"x-spam" not in added:
            ours.append(b"X-Spam: Yes")
        return Outcome(ours + lines, folder=self.settings.junk_folder if spam else None)

    def unavailable(self, failure, lines: list[bytes], envelope: Envelope) -> Outcome:
        reason = _reason(failure, self.settings.timeout)
        if self.settings.fail == "closed":
            log.warn("rspamd: id={id}: unavailable ({reason}); fail=closed: 451",
                     id=envelope.queue_id, reason=reason)
            return Outcome(lines, (451, "4.7.1", "Spam filter unavailable, try again later"))
        log.warn("rspamd: id={id}: unavailable ({reason}); fail=open: delivered unscanned",
                 id=envelope.queue_id, reason=reason)
        return Outcome(lines)


class _Now:
    """A cooperator that writes the (in-memory) body at once, not in reactor slices."""

    def cooperate(self, iterator):
        for _ in iterator:
            pass
        return _Done()


class _Done:
    def whenDone(self):
        return defer.succeed(None)

    def stop(self):
        pass

    def pause(self):
        pass

    def resume(self):
        pass


def _fail(reason: str):
    raise RspamdError(reason)


class RspamdError(Exception):
    """rspamd answered, but not with a verdict."""


def _parse(body: bytes) -> dict:
    try:
        answer = json.loads(body)
    except ValueError as e:
        raise RspamdError(f"not JSON: {_short(body)}") from e
    if not isinstance(answer, dict):
        raise RspamdError(f"not a JSON object: {_short(body)}")
    if "error" in answer and "action" not in answer:
        raise RspamdError(f"rspamd error: {_short(str(answer['error']).encode())}")
    return answer


def _reason(failure, timeout: float) -> str:
    """Why rspamd gave no verdict, for the log."""
    if failure.check(RspamdError):
        return str(failure.value)
    # ResponseNeverReceived and friends wrap the causes in .reasons.
    causes = getattr(failure.value, "reasons", None) or [failure]
    if any(c.check(defer.TimeoutError, defer.CancelledError) for c in causes):
        return f"no answer within {timeout:g} s"
    return "; ".join(f"{type(c.value).__name__}: {c.getErrorMessage()}" for c in causes)


def _short(body: bytes, limit: int = 120) -> str:
    text = body.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _field(value: bytes) -> bytes:
    """An HTTP header value: no line breaks or control characters."""
    return bytes(c for c in value if c >= 0x20 and c != 0x7F)


_PRINTABLE = re.compile(r"[^\x20-\x7e]")


def _reply_text(value: Any) -> str:
    """rspamd's smtp_message as one printable ASCII line (it goes into our reply)."""
    if not isinstance(value, str):
        return ""
    return _PRINTABLE.sub("?", value.strip())[:200]


def summary(spam: bool, score: float, required: float, symbols: dict) -> list[bytes]:
    """C{X-Spamd-Result}, as rspamd's milter_headers writes it: verdict, score, symbols."""
    parts = [f"default: {spam} [{score:.2f} / {required:.2f}]"]
    for name in sorted(symbols):
        info = symbols[name] if isinstance(symbols[name], dict) else {}
        text = f"{_token(name)}({_number(info.get('score')):.2f})"
        options = info.get("options")
        if isinstance(options, list) and options:
            text += "[" + ",".join(_token(str(o)) for o in options[:10]) + "]"
        parts.append(text)
    return fold(b"X-Spamd-Result: " + ";\n\t".join(parts).encode())


def _token(text: str) -> str:
    return _PRINTABLE.sub("?", text).replace(";", ",")[:100]


def fold(header: bytes) -> list[bytes]:
    return header.split(b"\n")


def _header_end(lines: list[bytes]) -> int:
    for i, line in enumerate(lines):
        if line in (b"", b"\r"):
            return i
    return len(lines)


def _headers(lines: list[bytes]) -> list[tuple[bytes, list[bytes]]]:
    """The header section as (lower-case name, its lines) pairs; a stray line is its own."""
    out: list[tuple[bytes, list[bytes]]] = []
    for line in lines[:_header_end(lines)]:
        if line[:1] in (b" ", b"\t") and out:
            out[-1][1].append(line)
            continue
        name = line.partition(b":")[0].strip().lower()
        out.append((name, [line]))
    return out


def _join(headers: list[tuple[bytes, list[bytes]]], lines: list[bytes]) -> list[bytes]:
    return [line for _n, ls in headers for line in ls] + lines[_header_end(lines):]


def strip_headers(lines: list[bytes], names: tuple[bytes, ...]) -> list[bytes]:
    """The message without any header of those names (arriving forgeries of ours)."""
    headers = _headers(lines)
    return _join([(n, ls) for n, ls in headers if n not in names], lines)


def _added(milter: dict) -> dict[bytes, list[bytes]]:
    """milter.add_headers as name -> values (rspamd gives a string, an object or a list)."""
    add = milter.get("add_headers")
    out: dict[bytes, list[bytes]] = {}
    if not isinstance(add, dict):
        return out
    for name, spec in add.items():
        items = spec if isinstance(spec, list) else [spec]
        values = []
        for item in items:
            value = item.get("value") if isinstance(item, dict) else item
            if isinstance(value, str):
                values.append(value.encode("utf-8", "replace"))
        clean = _field(name.encode("utf-8", "replace")).replace(b":", b"").strip()
        if clean and values:
            out[clean] = values
    return out


def edit(lines: list[bytes], milter: dict) -> list[bytes]:
    """
    rspamd's milter header edits: C{remove_headers} (name -> 0 for every
    one, N for the Nth, -N for the Nth from the end), then C{add_headers} at
    the top.  The trace and authentication headers are never removed.
    """
    headers = _headers(lines)
    remove = milter.get("remove_headers")
    if isinstance(remove, dict):
        for name, which in remove.items():
            key = name.lower().encode("utf-8", "replace")
            if key in PROTECTED or not isinstance(which, int):
                continue
            found = [i for i, (n, _ls) in enumerate(headers) if n == key]
            if which == 0:
                drop = set(found)
            elif 0 < abs(which) <= len(found):
                drop = {found[which - 1 if which > 0 else which]}
            else:
                drop = set()
            headers = [h for i, h in enumerate(headers) if i not in drop]
    top: list[bytes] = []
    for name, values in _added(milter).items():
        for value in values:
            text = b" ".join(value.replace(b"\r", b"").split(b"\n\t")).replace(b"\n", b" ")
            top.append(name + b": " + _field(text))
    return top + _join(headers, lines)


def set_subject(lines: list[bytes], subject: str) -> list[bytes]:
    """The message with C{subject} (RFC 2047-encoded if need be) as its only Subject."""
    try:
        subject.encode("ascii")
        value = _field(subject.encode())
    except UnicodeEncodeError:
        value = Header(subject, "utf-8").encode().encode("ascii")
    headers = [(n, ls) for n, ls in _headers(lines) if n != b"subject"]
    headers.append((b"subject", fold(b"Subject: " + value.replace(b"\r\n", b"\n"))))
    return _join(headers, lines)


def make_scanner(ctx, submission: bool) -> Scanner | None:
    """A listener's scanner, or None: rspamd off, or a submission listener not scanned."""
    settings = ctx.config.rspamd
    if not settings.enabled or (submission and not settings.scan_submission):
        return None
    resolver = dns.resolver(ctx.config.dns, ctx.reactor) if settings.reverse_dns else None
    return Scanner(settings, ctx.reactor, resolver)


def file_into(msg: Any, folder: str) -> None:
    """Deliver C{msg} (netsuite's Transaction) into C{folder}; other realms' are left."""
    if hasattr(msg, "folder"):
        msg.folder = folder

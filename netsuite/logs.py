"""
JSON logs: one object per line, with a fixed, documented set of fields.

twisted.logger's own C{jsonFileLogObserver} writes Twisted's internal event
dictionary (C{log_format}, C{log_namespace}, every keyword of the call), which
changes whenever a log call does.  L{json_observer} writes a stable schema
instead (L{FIELDS}, documented field by field in docs/operations.md, "Logs"):
the log calls of netsuite name what an administrator filters on as event keys
(C{event}, C{protocol}, C{listener}, C{user}, C{client}, C{message_id},
C{reason}), and the format strings render those same keys, so the plain lines
read exactly as before.  Every refusal carries a C{reason} code from
L{REASONS}.

How the format reaches the file twistd logs to, cleanly: twistd builds its log
observer in C{AppLogger.start} after C{makeService}, from the C{--logger}
option when given (a fully-qualified name of a factory it calls with no
arguments; it does not pass the log file), else from C{--logfile} /
C{--syslog}.  C{--logger} is resolved by twistd's C{ServerOptions.postOptions},
which runs after our plugin's options are parsed.  So L{netsuite.tap.Options}
records twistd's options here (L{use_twistd_options}) and, when the config says
C{[log] format = "json"} and no C{--logger} or C{--syslog} was given, sets
twistd's C{logger} option to C{netsuite.logs.json_observer}: twistd itself then
installs our observer, at the moment and in the way it installs its own,
buffered early events included.  L{json_observer} opens the same destination
twistd would have (C{--logfile}, C{-} or C{-n} without it for stdout,
C{twistd.log} otherwise; a L{LogFile} rotated at 1 MB and on SIGUSR1, as
twistd does), so C{twistd --logger netsuite.logs.json_observer netsuite} and
the config key give the same result.  With C{format = "plain"} the same way
installs L{text_observer}: twistd's text format byte for byte, with its time
stamp (whole seconds) formatted once per second instead of once per line
(C{formatTime} was 11% of the reactor's time under an SMTP flood).

C{--workers N}: workers send twisted.logger events to the parent, which
publishes them again; the parent's observer renders them, so the workers' lines
have the same schema (with C{worker} set).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    eventAsText,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python import logfile

#: The fields of every JSON object, in this order; a field that does not apply
#: to an event is present with the value C{null}, so every line has every key.
FIELDS = ("time", "level", "event", "protocol", "listener", "user", "client",
          "message_id", "reason", "message", "namespace", "system", "worker")

#: Reason codes (the C{reason} field) and what each means.  Every refusal
#: logged by netsuite carries one of these; docs/operations.md lists them too.
REASONS: dict[str, str] = {
    "auth_failed": "wrong user name or password (or a key or mechanism the checker refused)",
    "bad_username": "a user name the protocol refuses before any check (malformed)",
    "abandoned": "the client hung up while its password was being checked",
    "checker_error": "the credential checker broke on these credentials (a bug; traceback logged)",
    "locked": "too many failed logins: the address or the user is locked for a while",
    "in_use": "the password was right but another session holds the mailbox (POP3 [IN-USE]); "
              "not counted by the throttle",
    "db_unavailable": "the database (users, shared throttle) could not be reached: a "
                      "temporary failure, not counted by the throttle",
    "anonymous_disabled": "FTP: an anonymous login where anonymous access is off",
    "plaintext_refused": "a plain-text password offered without TLS where TLS is required",
    "connection_limit": "the listener's connection cap, in total or per address, is reached",
    "proxy_untrusted": "a haproxy: listener's peer is not in [server] proxy_trusted",
    "proxy_header_invalid": "a haproxy: listener got no valid PROXY protocol header",
    "proxy_header_timeout": "no complete PROXY protocol header within [server] proxy_timeout",
    "dmarc_reject": "DMARC failed and the From domain's policy is p=reject (550 5.7.1)",
    "dmarc_quarantine": "DMARC failed under p=quarantine: delivered to Junk",
    "dmarc_bad_from": "no single From domain to check DMARC against (RFC 7489 6.6.1)",
    "spf_fail": "SPF failed (-all) and [checks] spf_fail rejects or junks it",
    "request_too_large": "an HTTP request over a limit: body over [http] max_body (413), "
                         "request line (414) or head (431) over 16 KiB",
    "tls_handshake_timeout": "the TLS handshake did not finish in time",
    "close_timeout": "a closed connection lingered past the close deadline; aborted",
    "command_timeout": "a command line took too long from first to last byte",
    "login_timeout": "no successful login within the login timeout",
    "relay_denied": "mail for another domain from a client that may not relay",
    "unknown_recipient": "no such local user or alias",
    "quota_exceeded": "the recipient's mailbox is full",
    "message_too_large": "the message is over the size limit",
    "insufficient_storage": "the disk cannot take the message now (4.3.1; the client retries)",
    "too_many_recipients": "more recipients than one message may have",
    "sender_rejected": "the sender address is refused (not owned by the user, or null)",
    "auth_required": "a command that needs an authenticated session",
    "rate_limited": "the user sent more messages in the last hour than allowed",
    "active_data_refused": "FTP PORT/EPRT towards a host other than the client",
    "session_refused": "SSH: a channel or session the user may not open",
    "delivery_failed": "the remote server refused the message for good (bounced)",
    "delivery_deferred": "the remote server could not take the message now (retried)",
    "expired": "the message stayed in the queue past its lifetime (bounced)",
    "no_local_user": "a delivery status notification for a local address that does not exist",
    "refused": "refused by a rule with no more specific code (see the message)",
}

#: What the C{protocol} field is for a listener name.
_LISTENER_PROTOCOL = {"submission": "smtp", "smtps": "smtp", "pop3s": "pop3",
                      "imaps": "imap", "ftps": "ftp", "telnets": "telnet", "https": "http"}

#: Protocol packages whose logger namespace (C{netsuite.<name>}) gives C{protocol}.
_PROTOCOL_NAMESPACES = {"smtp", "lmtp", "pop3", "imap", "ftp", "telnet", "ssh", "http"}


def _text(value: Any) -> str | None:
    """A field value: a non-empty string, or C{None} (C{"-"} and C{"?"} mean unknown)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = str(value)
    return None if value in ("", "-", "?") else value


def _time(event: dict[str, Any]) -> str:
    when = event.get("log_time")
    if not isinstance(when, (int, float)):
        when = time.time()
    stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def fields(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON object for one twisted.logger event (see L{FIELDS})."""
    namespace = _text(event.get("log_namespace"))
    listener = _text(event.get("listener"))
    protocol = _text(event.get("protocol"))
    if protocol is None and listener is not None:
        protocol = _LISTENER_PROTOCOL.get(listener, listener)
    if protocol is None and namespace is not None:
        parts = namespace.split(".")
        if len(parts) > 1 and parts[0] == "netsuite" and parts[1] in _PROTOCOL_NAMESPACES:
            protocol = parts[1]
    level = event.get("log_level")
    worker = event.get("netsuite_worker")
    message = message_text(event)
    if message is None:
        message = eventAsText(event, includeTimestamp=False, includeSystem=False)
    reason = event.get("reason")
    return {
        "time": _time(event),
        "level": getattr(level, "name", None) or _text(level),
        "event": _text(event.get("event")),
        "protocol": protocol,
        "listener": listener,
        "user": _text(event.get("user")),
        "client": _text(event.get("client")),
        "message_id": _text(event.get("message_id")),
        # Only codes: a Failure or an exception under "reason" (Twisted's own
        # connectionLost events) is not one.
        "reason": reason if isinstance(reason, str) and reason else None,
        "message": message,
        "namespace": namespace,
        "system": _text(event.get("log_system")),
        "worker": worker if isinstance(worker, int) else None,
    }


def format_json(event: dict[str, Any]) -> str:
    """One line of the JSON log: L{fields} as JSON, then a newline."""
    try:
        obj = fields(event)
    except Exception as e:  # a log line must never break the logging
        obj = dict.fromkeys(FIELDS)
        obj.update(time=_time(event), level="error", event="log_format_error",
                   message=f"cannot render a log event: {e!r}")
    return json.dumps(obj, ensure_ascii=False, default=str) + "\n"


#: twistd's parsed options (C{logfile}, C{nodaemon}, ...), set by the plugin.
_twistd_options: Any = None


def use_twistd_options(options: Any, log_format: str) -> None:
    """
    Called by the plugin's options with twistd's own options (the parent of
    ours, or C{None} when not run by twistd) and the configured format;
    module docstring for why.
    """
    global _twistd_options
    _twistd_options = options
    if options is None:
        return
    if options.get("logger") is None and not options.get("syslog"):
        options["logger"] = ("netsuite.logs.json_observer" if log_format == "json"
                             else "netsuite.logs.text_observer")


def _destination(options: Any) -> IO[Any]:
    """Where twistd would log (twisted.scripts._twistd_unix.UnixAppLogger's choice)."""
    if options is None:
        return sys.stdout
    name = options.get("logfile") or ""
    if name == "-" and not options.get("nodaemon"):
        sys.exit("Daemons cannot log to stdout, exiting!")  # twistd's words
    if name == "-" or (not name and options.get("nodaemon")):
        return sys.stdout
    out = logfile.LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):
        def rotate(signum, frame) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(out.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return out


def json_observer(out: IO[Any] | None = None) -> ILogObserver:
    """
    The JSON log observer, for C{twistd --logger netsuite.logs.json_observer}
    (twistd calls it with no arguments: it writes where twistd's C{--logfile}
    says) or with an open file.
    """
    return FileLogObserver(out if out is not None else _destination(_twistd_options),
                           _passing_rendered(format_json))


class SecondsTime:
    """
    twisted.logger's C{formatTime} (RFC 3339, whole seconds, local offset),
    remembered for the second it was last asked for: a busy server logs many
    lines a second, and each C{strftime} with its time zone costs more than
    the rest of the line.
    """

    def __init__(self, time_format: str = timeFormatRFC3339):
        self.time_format = time_format
        self._second: int | None = None
        self._text = "-"

    def __call__(self, when: float | None) -> str:
        if when is None:
            return formatTime(None, self.time_format)
        # The second datetime.fromtimestamp would round C{when} into (to the microsecond).
        second = round(when * 1_000_000) // 1_000_000
        if second != self._second:
            self._text = formatTime(when, self.time_format)
            self._second = second
        return self._text


def text_observer(out: IO[Any] | None = None) -> ILogObserver:
    """
    twistd's text log observer (C{textFileLogObserver}), byte for byte, with
    the time stamp of L{SecondsTime}; called as L{json_observer} is.
    """
    return FileLogObserver(out if out is not None else _destination(_twistd_options),
                           _passing_rendered(renderer("plain")))


#: The key of an event that carries a line rendered elsewhere (a worker's, see
#: L{netsuite.workers}): L{text_observer} and L{json_observer} write it as it is.
RENDERED = "netsuite_rendered"

def renderer(log_format: str) -> Callable[[dict[str, Any]], str | None]:
    """One event as a line of the log: C{"json"} (L{format_json}) or C{"plain"} (twistd's)."""
    if log_format == "json":
        return format_json
    stamp = SecondsTime()

    def classic(event: dict[str, Any]) -> str | None:
        # formatEventAsClassicLogText, with the message from message_text.
        text = message_text(event)
        if text is None:
            return formatEventAsClassicLogText(event, formatTime=stamp)
        if not text:
            return None
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
        elif type(system) is not str:
            return formatEventAsClassicLogText(event, formatTime=stamp)
        return f"{stamp(event.get('log_time'))} [{system}] {text}".replace("\n", "\n\t") + "\n"

    return classic


def message_text(event: dict[str, Any]) -> str | None:
    """
    The message of an event as twisted.logger's C{formatEvent} makes it, for
    the events nearly all lines are (a C{str} format of plain fields, no
    traceback), by C{str.format_map}: Twisted's general path through
    C{string.Formatter} costs more than the rest of a line.  C{None} for any
    other event (a traceback, C{{name()}} calls, a format that fails): the
    caller takes Twisted's path, which handles them all.
    """
    fmt = event.get("log_format")
    if type(fmt) is not str or "log_failure" in event or "log_flattened" in event:
        return None
    try:
        return fmt.format_map(event)
    except Exception:
        return None


def _passing_rendered(render: Callable[[dict[str, Any]], str | None],
                      ) -> Callable[[dict[str, Any]], str | None]:
    def format_event(event: dict[str, Any]) -> str | None:
        text = event.get(RENDERED)
        if isinstance(text, str):
            return text
        return render(event)
    return format_event


def installed_format() -> str | None:
    """
    The format this twistd's own log observer writes, if it is one of ours
    (C{"plain"} or C{"json"}); C{None} for another C{--logger}, C{--syslog}, or
    when not run by twistd.  With our observer, workers render their lines
    themselves and the parent only writes them (L{RENDERED}).
    """
    if _twistd_options is None:
        return None
    # A name before twistd's postOptions, the factory itself after it.
    chosen = _twistd_options.get("logger")
    if chosen in (text_observer, "netsuite.logs.text_observer"):
        return "plain"
    if chosen in (json_observer, "netsuite.logs.json_observer"):
        return "json"
    return None

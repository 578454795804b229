"""
The queue's config section, its service hook, and the C{netsuite queue}
admin command.

The admin command and the running server share nothing but the spool
directory: C{flush} and C{delete} leave a request file in
C{DATA/queue/control/} that the server's runner picks up on its next pass
(every C{poll_interval} seconds).  With no server running, C{delete} removes
the files itself and a C{flush} request waits for the next start.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from twisted.logger import Logger
from twisted.mail import smtp

from netsuite import protocols
from netsuite.cli import command
from netsuite.config import Config, ConfigError, positive, section
from netsuite.db.errors import DatabaseUnavailable
from netsuite.db.pool import connect, database
from netsuite.mailauth.service import load_signer
from netsuite.queue import pgspool
from netsuite.queue.pgsendlog import PgSendLog
from netsuite.queue.runner import QueueRunner
from netsuite.queue.spool import QUEUE_ID, Envelope, Spool
from netsuite.queue.wire import header_block, parse_hostport

log = Logger(namespace="netsuite.queue")


@section("queue")
@dataclass
class QueueConfig:
    """The outgoing queue: routes, retry schedule, limits."""

    #: Off: submission of mail for other domains is refused (551 5.7.1).
    enabled: bool = True
    #: Static routes, domain -> "host:port" (checked before the smarthost and MX).
    routes: dict[str, str] = field(default_factory=dict)
    #: Send everything else through this "host:port" (default port 587) instead of MX.
    smarthost: str = ""
    smarthost_user: str = ""
    #: File whose first line is the smarthost password.
    smarthost_password_file: Path | None = None
    #: Refuse to send to the smarthost without STARTTLS (always on with a user).
    smarthost_require_tls: bool = False
    #: Verify the smarthost's certificate against this CA file (PEM).
    smarthost_ca_file: Path | None = None
    #: Name given in EHLO; defaults to server.hostname.
    helo_name: str = ""
    #: Seconds before the first retry; doubles per attempt up to max_backoff.
    min_backoff: float = 300.0
    max_backoff: float = 1800.0
    #: Seconds after which undeliverable mail is returned to the sender.
    lifetime: float = 5 * 86400.0
    #: Seconds after which the sender is told the mail is delayed; 0 = never.
    delay_warning: float = 4 * 3600.0
    #: How often the runner looks for due messages and admin requests.
    poll_interval: float = 1.0
    #: Outgoing connections at once, in total and per destination.
    concurrency: int = 20
    destination_concurrency: int = 5
    #: More Received headers than this: bounced as a mail loop.
    max_hops: int = 50
    #: Messages an authenticated user may submit for relaying per hour; 0 = no limit.
    messages_per_hour: int = 0
    #: Seconds an idle connection is kept for the next message to the same place; 0 = off.
    connection_reuse_time: float = 2.0
    connect_timeout: float = 30.0
    #: Seconds to wait for any reply of the remote server.
    command_timeout: float = 300.0
    #: MTA-STS (RFC 8461) for mail delivered by MX lookup: policies are fetched
    #: and obeyed (enforce: TLS with a verified certificate to a listed MX, or deferred).
    mta_sts: bool = True
    #: CA certificates (PEM) trusted for MTA-STS (policy fetch and MX certificates)
    #: instead of the system's store: for a private CA, and tests.
    mta_sts_ca_bundle: Path | None = None
    #: Port of the HTTPS policy host (443; other values only for tests).
    mta_sts_https_port: int = 443
    #: Port of MX hosts (25; other values only for tests).
    mx_port: int = 25

    @property
    def smarthost_password(self) -> str:
        """The first line of smarthost_password_file (read when the config is loaded)."""
        return getattr(self, "_password", "")

    def validate(self) -> None:
        for name in ("min_backoff", "max_backoff", "lifetime", "poll_interval", "concurrency",
                     "destination_concurrency", "max_hops", "connect_timeout",
                     "command_timeout"):
            positive(name, getattr(self, name))
        if self.max_backoff < self.min_backoff:
            raise ConfigError("must not be less than min_backoff", "max_backoff")
        if self.delay_warning < 0 or self.messages_per_hour < 0:
            raise ConfigError("must not be negative",
                              "delay_warning" if self.delay_warning < 0 else "messages_per_hour")
        self.routes = {k.lower().rstrip("."): v for k, v in self.routes.items()}
        for domain, target in self.routes.items():
            try:
                parse_hostport(target)
            except ValueError as e:
                raise ConfigError(str(e), f"routes.{domain}") from e
        if self.smarthost:
            try:
                parse_hostport(self.smarthost, 587)
            except ValueError as e:
                raise ConfigError(str(e), "smarthost") from e
        if self.smarthost_user and self.smarthost_password_file is None:
            raise ConfigError("smarthost_user needs smarthost_password_file",
                              "smarthost_password_file")
        if self.smarthost_password_file is not None:
            try:
                text = self.smarthost_password_file.read_text("utf-8")
            except OSError as e:
                raise ConfigError(f"cannot read: {e.strerror}", "smarthost_password_file") from e
            self._password = text.splitlines()[0] if text else ""
            if not self._password:
                raise ConfigError("the file is empty", "smarthost_password_file")
        if self.smarthost_ca_file is not None and not self.smarthost_ca_file.is_file():
            raise ConfigError("no such file", "smarthost_ca_file")
        if self.mta_sts_ca_bundle is not None and not self.mta_sts_ca_bundle.is_file():
            raise ConfigError("no such file", "mta_sts_ca_bundle")
        for name in ("mta_sts_https_port", "mx_port"):
            if not 0 < getattr(self, name) < 65536:
                raise ConfigError("must be a port number (1-65535)", name)


def start_queue(ctx, parent) -> None:
    """SERVICE_HOOKS entry: the runner as a child service, the realm's relay."""
    settings = ctx.config.queue
    if not settings.enabled:
        return
    runner = QueueRunner(ctx, settings)
    if ctx.config.store.backend == "postgresql":
        db = ctx.config.database
        shared = database(db, ctx.reactor)
        runner.spool = pgspool.PgSpool(shared, ctx.config.data_dir / "queue", db.lock_lease)
        # The hourly sending limit counts over every host's messages.
        runner.sends = PgSendLog(shared)
        if settings.messages_per_hour > 0:
            _read_counts_at_login(ctx.realm, runner.sends)
    runner.signer = load_signer(ctx.config)
    if ctx.config.checks.enabled:
        runner.authserv_id = ctx.config.checks.authserv_id or ctx.config.server.hostname
    runner.setServiceParent(parent)
    set_relay = getattr(ctx.realm, "set_relay", None)
    if set_relay is None:  # a realm of its own (IRealm only): it cannot hand mail on
        log.warn("queue: {realm} has no set_relay(); mail for other domains is refused, "
                 "queued mail is still delivered", realm=ctx.config.server.realm)
    else:
        set_relay(runner)


def _read_counts_at_login(realm, sends: PgSendLog) -> None:
    """
    A submission login starts the read of its user's sending count, so that
    the check at its first DATA counts every host's messages, not only this
    host's (L{PgSendLog.count} answers from what it has read).
    """
    makers = getattr(realm, "avatar_makers", None)
    if makers is None:
        return
    make = makers.get(smtp.IMessageDelivery)
    if make is None:
        return

    def make_and_read(user):
        if isinstance(user, str):
            sends.refresh(user)
        return make(user)

    makers[smtp.IMessageDelivery] = make_and_read


protocols.SERVICE_HOOKS.append(start_queue)


# -- netsuite queue ... ---------------------------------------------------------------


def _queue_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="list queued messages")
    sub.add_parser("show", help="a message's envelope and headers").add_argument("id")
    f = sub.add_parser("flush", help="retry now (every message, or one)")
    f.add_argument("id", nargs="?")
    sub.add_parser("delete", help="remove a message without notice").add_argument("id")


def _server_running(config: Config) -> bool:
    """Whether a server is running on this data directory (its ready file names a live pid)."""
    try:
        info = json.loads((config.data_dir / "run" / "listening.json").read_text())
        os.kill(int(info["pid"]), 0)
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _wait_picked_up(path: Path, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not path.exists():
            return True
        time.sleep(0.05)
    return not path.exists()


def _print_list(envelopes: list[Envelope]) -> None:
    for env in envelopes:
        pending = env.pending()
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(env.created))
        print(f"{env.id}  {env.size:>9}  {when}  <{env.sender}>")
        for r in pending:
            print(f"    <{r.address}>" + (f"  ({r.last_error})" if r.last_error else ""))
    print(f"-- {len(envelopes)} message(s)" if envelopes else "queue is empty")


def _print_show(env: Envelope, headers: bytes) -> None:
    fmt = "%Y-%m-%d %H:%M:%S"
    print(f"id: {env.id}\nsender: <{env.sender}>\nuser: {env.user or '-'}\n"
          f"size: {env.size}\narrived: {time.strftime(fmt, time.localtime(env.created))}\n"
          f"attempts: {env.attempts}")
    if env.next_attempt:
        print(f"next attempt: {time.strftime(fmt, time.localtime(env.next_attempt))}")
    for r in env.recipients:
        print(f"recipient: <{r.address}> {r.state} attempts={r.attempts}"
              + (f" last={r.last_error}" if r.last_error else ""))
    print()
    print(headers.decode("utf-8", "replace"), end="")


def _queue_pg(args: argparse.Namespace, config: Config, qid: str | None) -> int:
    """
    The queue in PostgreSQL: every host's messages; flush and delete act on the
    rows at once (the runner of whichever host claims the message next sees it).
    """
    try:
        with connect(config.database, autocommit=True) as conn:
            if args.action == "list":
                _print_list(pgspool.list_blocking(conn))
                return 0
            assert qid is not None or args.action == "flush"
            if qid is not None and args.action in ("show", "delete"):
                found = pgspool.load_blocking(conn, qid)
                if found is None:
                    raise SystemExit(f"netsuite: no message {qid} in the queue")
                if args.action == "show":
                    env, body, holder = found
                    if holder:
                        print(f"claimed by: {holder}")
                    _print_show(env, header_block(body))
                    return 0
                pgspool.delete_blocking(conn, qid)
                print(f"deleted {qid}")
                return 0
            n = pgspool.flush_blocking(conn, qid)
            if qid is not None and n == 0:
                raise SystemExit(f"netsuite: no message {qid} in the queue")
            print(f"flush of {qid or 'the queue'}: {n} message(s) due now")
            return 0
    except DatabaseUnavailable as e:
        raise SystemExit(f"netsuite: {e}") from None


@command("queue", _queue_args)
def _queue(args: argparse.Namespace, config: Config) -> int:
    qid: str | None = getattr(args, "id", None)
    if qid is not None:
        qid = qid.upper()
        if not QUEUE_ID.match(qid):
            raise SystemExit(f"netsuite: {args.id!r} is not a queue id")
    if config.store.backend == "postgresql":
        return _queue_pg(args, config, qid)
    spool = Spool(config.data_dir / "queue")
    if args.action == "list":
        _print_list(spool.list())
        return 0
    if args.action == "show":
        assert qid is not None  # a required argument of show
        try:
            env = spool.load(qid)
            headers = header_block(spool.read_message(qid))
        except FileNotFoundError:
            raise SystemExit(f"netsuite: no message {qid} in the queue") from None
        _print_show(env, headers)
        return 0
    running = _server_running(config)
    if args.action == "flush":
        if qid is not None and not spool.exists(qid):
            raise SystemExit(f"netsuite: no message {qid} in the queue")
        path = spool.request("flush", qid or "ALL")
        if running and _wait_picked_up(path):
            print(f"flush of {qid or 'the queue'}: taken up by the server")
        else:
            print(f"flush of {qid or 'the queue'}: requested (server not running: "
                  "done at its next start)")
        return 0
    # delete
    assert qid is not None  # a required argument of delete
    if not spool.exists(qid):
        raise SystemExit(f"netsuite: no message {qid} in the queue")
    if running:
        path = spool.request("delete", qid)
        if _wait_picked_up(path):
            print(f"deleted {qid}")
            return 0
        path.unlink(missing_ok=True)
        raise SystemExit("netsuite: the server did not take up the request; try again")
    spool.remove(qid)
    print(f"deleted {qid}")
    return 0

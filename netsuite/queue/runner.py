"""
The queue runner: takes accepted messages into the spool, delivers them per
destination with capped concurrency, retries temporary failures with growing
backoff, and reports permanent failures, expiry and long delays to the sender
(RFC 3464).  One L{QueueRunner} service per server, a child of the top
MultiService; the realm hands it mail for other domains as its L{IRelay}.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from twisted.application import service
from twisted.internet import defer, endpoints, ssl, task, threads
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from netsuite import metrics
from netsuite.db.errors import DatabaseUnavailable
from netsuite.mailauth.dns import resolver
from netsuite.queue import bounce, wire
from netsuite.queue.client import IDLE, QueueClient, QueueClientFactory
from netsuite.queue.mtasts import CertificateCheck, MtaSts, MtaStsError, ResolvingEndpoint
from netsuite.queue.sendlog import SendLog
from netsuite.queue.spool import FAILED, PENDING, SENT, Envelope, Recipient, Spool
from netsuite.queue.wire import Reply
from netsuite.realm import IRelay
from netsuite.smtp.delivery import MailAddress, Transaction, local_recipients
from netsuite.smtp.wire import Path as SMTPPath

log = Logger(namespace="netsuite.queue")

#: The reason code (netsuite.logs.REASONS) of a delivery attempt's log line.
_DELIVERY_REASONS = {"bounced": "delivery_failed", "deferred": "delivery_deferred"}

#: Threads for the queue's disk work (each mostly waits in fsync).
DISK_THREADS = 20
#: Messages up to this size are kept in memory until committed.
SPILL = 1 << 20
#: MX hosts tried in one delivery attempt before the attempt is deferred.
MAX_MX_HOSTS = 5
#: Seconds within which removals of delivered messages share one fsync.
REMOVAL_SYNC_DELAY = 0.05
#: With a shared spool (PostgreSQL): due messages claimed per pass, per connection allowed.
CLAIM_PER_CONNECTION = 5
#: With a shared spool: seconds between counts of the whole queue for the metrics.
DEPTH_INTERVAL = 2.0
#: How often, and past what age, spilled bodies left in queue/tmp are removed.
TMP_CLEAN_INTERVAL = 3600.0
TMP_MAX_AGE = 36 * 3600.0


# -- routes -----------------------------------------------------------------------------


@dataclass
class Route:
    """Where mail for a domain goes: a fixed host, or the domain's MX."""

    key: str
    host: str | None = None
    port: int = 25
    mx_domain: str | None = None
    username: bytes | None = None
    secret: bytes | None = None
    require_tls: bool = False
    ca_file: str | None = None

    def __str__(self) -> str:
        return self.key


def route_for(settings, domain: str) -> Route:
    """Static route, else smarthost, else a domain literal, else MX lookup (RFC 5321 5)."""
    domain = domain.lower().rstrip(".")
    if domain in settings.routes:
        host, port = wire.parse_hostport(settings.routes[domain])
        return Route(f"route:{host}:{port}", host, port)
    if settings.smarthost:
        host, port = wire.parse_hostport(settings.smarthost, 587)
        return Route("smarthost", host, port,
                     username=settings.smarthost_user.encode() or None,
                     secret=settings.smarthost_password.encode() or None,
                     require_tls=settings.smarthost_require_tls or bool(settings.smarthost_user),
                     ca_file=str(settings.smarthost_ca_file) if settings.smarthost_ca_file
                     else None)
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        literal = literal[5:] if literal.lower().startswith("ipv6:") else literal
        return Route(f"literal:{literal}", literal, 25)
    return Route(f"mx:{domain}", mx_domain=domain)


# -- jobs and destinations -------------------------------------------------------------


@dataclass
class Job:
    """Some recipients of one message, all for one destination."""

    env: Envelope
    recipients: list[Recipient]
    message: bytes = b""

    @property
    def sender(self) -> str:
        return self.env.sender

    @property
    def addresses(self) -> list[str]:
        return [r.address for r in self.recipients]

    @property
    def eightbit(self) -> bool:
        return self.env.eightbit

    @property
    def smtputf8(self) -> bool:
        return not (self.sender.isascii() and all(a.isascii() for a in self.addresses))


@dataclass
class Destination:
    route: Route
    jobs: deque = field(default_factory=deque)
    #: Connections open or being opened, and those of them that are open.
    connections: int = 0
    established: int = 0
    #: Open connections waiting for the next message, with their expiry calls.
    idle: dict = field(default_factory=dict)
    #: The MTA-STS policy (L{netsuite.queue.mtasts.Policy}) of an MX destination.
    policy: Any = None


class PermanentRouteError(Exception):
    """The destination cannot exist (no such domain): bounce, do not retry."""


# -- the writer the SMTP server streams into ----------------------------------------------


class QueueWriter:
    """
    The file-like object C{realm.relay()} returns: C{write} lines (LF),
    C{commit()} fires once the message is on disk, C{abort()}.

    The message is kept in memory up to L{SPILL} bytes (and handed to the
    first delivery attempt without a re-read); a bigger one is spilled to
    C{queue/tmp/} as it arrives.
    """

    def __init__(self, runner: "QueueRunner", sender: str, recipients: list[str],
                 user: str | None, forwarded_by: str | None = None):
        self.runner = runner
        self.sender = sender
        self.recipients = recipients
        self.user = user
        #: The local domain whose alias forwards this received message: ARC-sealed as it.
        self.forwarded_by = forwarded_by
        self.size = 0
        self.hops = 0
        self.eightbit = False
        self._in_headers = True
        self._chunks: list[bytes] = []
        #: The first bytes, where the SMTP server's Received header names the id.
        self._head = b""
        self._spill: BinaryIO | None = None
        self._spill_path: Path | None = None

    def write(self, data: bytes) -> None:
        """Raises L{OSError} (full disk) from the spill file; then call L{abort}."""
        self.size += len(data)
        if not self.eightbit and not data.isascii():
            self.eightbit = True
        if self._in_headers:
            if data in (b"\n", b"\r\n"):
                self._in_headers = False
            elif data[:9].lower() == b"received:":
                self.hops += 1
        if len(self._head) < 1024:
            self._head += data[:1024]
        if self._spill is not None:
            self._spill.write(data)
            return
        self._chunks.append(data)
        if self.size > SPILL:
            self._spill_path = self.runner.spool.tmp / secrets.token_hex(8)
            self._spill = open(self._spill_path, "xb", buffering=1 << 16)
            self._spill.write(b"".join(self._chunks))
            self._chunks = []

    def commit(self) -> defer.Deferred:
        spool = self.runner.spool
        content = b"".join(self._chunks)
        self._chunks = []
        spill, self._spill = self._spill, None
        if spill is not None:  # its last buffer (at most 64 KiB) flushed before it is read
            try:
                spill.close()
            except OSError:  # a full disk
                if self._spill_path is not None:
                    self._spill_path.unlink(missing_ok=True)
                return defer.fail()
        env = Envelope(id="", sender=self.sender,
                       recipients=[Recipient(a) for a in self.recipients],
                       user=self.user, size=self.size, hops=self.hops, eightbit=self.eightbit)

        signed = b""

        def store():
            nonlocal signed
            try:
                if self.user is not None:  # submitted: signed on its way out
                    whole = content if spill is None else self._spill_path.read_bytes()
                    signed = self.runner.dkim_sign(whole, self.sender)
                    env.size += len(signed)
                elif self.forwarded_by is not None:  # forwarded: an ARC set (RFC 8617)
                    whole = content if spill is None else self._spill_path.read_bytes()
                    signed = self.runner.arc_seal(whole, self.forwarded_by)
                    env.size += len(signed)
                env.id = spool.new_id(self._head)
                spool.commit(env, content, self._spill_path, prefix=signed)
            except BaseException:
                # A full disk: the spilled body must not stay in queue/tmp.
                if self._spill_path is not None:
                    self._spill_path.unlink(missing_ok=True)
                raise

        def refused(f: Failure) -> Failure:
            # Over the limit after all (another worker or host sent meanwhile).
            if self._spill_path is not None:
                self._spill_path.unlink(missing_ok=True)
            return f

        d = self.runner.admit(self.user)
        d.addErrback(refused)
        if spool.shared:
            return d.addCallback(lambda _: self._commit_shared(env, content, spill is not None))
        d.addCallback(lambda _: self.runner.disk(store))
        d.addCallback(lambda _: self.runner.accepted(env, None if spill else signed + content))
        return d

    def _commit_shared(self, env: Envelope, content: bytes, spilled: bool) -> defer.Deferred:
        """
        The database's spool: signed in a disk thread, then inserted (and
        claimed) in one transaction on a database thread; a database that is
        away is SMTP's temporary failure, and nothing was acknowledged.
        """
        runner, path = self.runner, self._spill_path

        def sign() -> bytes:
            if self.user is None and self.forwarded_by is None:
                return b""
            whole = content if path is None else path.read_bytes()
            if self.user is not None:
                return runner.dkim_sign(whole, self.sender)
            if self.forwarded_by is not None:
                return runner.arc_seal(whole, self.forwarded_by)
            return b""

        def store(signed: bytes) -> defer.Deferred:
            env.size += len(signed)
            d = runner.spool.accept(env, content, path, prefix=signed, hint=self._head)
            if path is None:
                d.addCallback(lambda _: runner.accepted(env, signed + content))
                return d

            def fetched(body: bytes) -> None:
                runner.accepted(env, body)

            def unfetched(f: Failure) -> None:
                # Queued all the same (the 250 stands): its first attempt waits for a claim.
                log.failure("queue: cannot read back {id} for its first attempt", f,
                            id=env.id)
                runner.accepted(env, None)

            # A spilled message: read back for the first attempt (a claim reads it too).
            d.addCallback(lambda _: runner.spool.body(env.id).addCallbacks(fetched, unfetched))
            return d

        def failed(f: Failure):
            if path is not None:
                path.unlink(missing_ok=True)
            if f.check(DatabaseUnavailable):
                log.warn("queue: cannot queue the message from <{sender}>: {error}",
                         sender=self.sender, error=str(f.value))
                raise smtp.SMTPServerError(451, b"4.3.0 Error: could not queue the message, "
                                                b"try again later")
            return f

        d = runner.disk(sign)
        d.addCallback(store)
        d.addErrback(failed)
        return d

    def abort(self) -> None:
        self._chunks = []
        spill, self._spill = self._spill, None
        if spill is not None:
            try:
                spill.close()
            except OSError:
                pass  # a full disk: the unwritten tail goes with the file
        if self._spill_path is not None:
            self._spill_path.unlink(missing_ok=True)


# -- the runner ----------------------------------------------------------------------------


@implementer(IRelay)
class QueueRunner(service.Service):
    """Owns the spool and every delivery; see the module docstring."""

    name = "queue"  # type: ignore[assignment]  # Service declares name = None

    def __init__(self, ctx, settings):
        self.ctx = ctx
        self.settings = settings
        self.reactor = ctx.reactor
        self.realm = ctx.realm
        self.hostname = ctx.config.server.hostname
        self.identity = (settings.helo_name or self.hostname).encode("idna")
        self.spool = Spool(ctx.config.data_dir / "queue")
        self.envelopes: dict[str, Envelope] = {}
        self.busy: set[str] = set()
        self.doomed: set[str] = set()
        self.destinations: dict[str, Destination] = {}
        self.connections = 0
        self._outstanding: dict[str, int] = {}
        #: Messages just accepted, still in memory for their first attempt.
        self._fresh: dict[str, bytes] = {}
        self._sync_call = None
        #: With a shared spool: a claim is under way; the lease renewal.
        self._claiming = False
        self._renewal: task.LoopingCall | None = None
        #: Attempts whose outcome the database could not take: settled again later.
        self._unsaved: dict[str, Envelope] = {}
        self._unsaved_said: set[str] = set()
        #: Until then (monotonic) claim no other process's lapsed claims (after an outage).
        self._own_only_until = 0.0
        #: With a shared spool: the whole queue's depth and oldest arrival (for
        #: netsuite.metrics, which cannot wait for the database when scraped).
        self.shared_depth: tuple[dict[str, int], float | None] | None = None
        self._depth_at = 0.0
        #: Per-user hourly counts; a worker process swaps in the shared one.
        self.sends = SendLog()
        self._loop: task.LoopingCall | None = None
        #: The queue's own threads for fsync work, so a burst of queue writes
        #: does not wait behind (or hold up) the Maildir deliveries in the
        #: reactor's pool.
        self._pool = ThreadPool(0, DISK_THREADS, name="netsuite-queue")
        self._mx = None
        self._tls_default = None
        dns_settings = getattr(ctx.config, "dns", None)
        #: The C{[dns]} servers, when configured, answer MX and address lookups too.
        self._dns = None
        if dns_settings is not None and dns_settings.nameservers:
            self._dns = resolver(dns_settings, self.reactor)
        self.mta_sts = None
        self._sts_check = None
        if settings.mta_sts and dns_settings is not None:
            self.mta_sts = MtaSts(self.reactor, self._dns or resolver(dns_settings, self.reactor),
                                  ctx.config.data_dir / "queue" / "mta-sts",
                                  address_resolver=self._dns,
                                  ca_bundle=settings.mta_sts_ca_bundle,
                                  https_port=settings.mta_sts_https_port,
                                  timeout=min(settings.connect_timeout, 30.0),
                                  disk=self.disk)
            self._sts_check = CertificateCheck(settings.mta_sts_ca_bundle)
        #: The DKIM signer (L{netsuite.mailauth.signing.Signer}); None: nothing signed.
        self.signer = None
        #: The MX checks' authserv-id, whose Authentication-Results an ARC set
        #: seals; None: the checks are off and forwarded mail goes unsealed.
        self.authserv_id: str | None = None
        #: recover() empties queue/tmp at start-up; later, by age, hourly.
        self._tmp_cleaned = time.time()

    # -- service ---------------------------------------------------------------------

    def disk(self, f, *args) -> defer.Deferred:
        """Run blocking spool work C{f(*args)} in the queue's thread pool."""
        return threads.deferToThreadPool(self.reactor, self._pool, f, *args)

    def startService(self) -> None:
        super().startService()
        metrics.queue.watch(self)
        self._pool.start()
        if self.spool.shared:
            # Nothing to recover: what this host held is claimed again by whoever
            # comes first once its lease has passed.  Ours is renewed meanwhile.
            self._renewal = task.LoopingCall(self._renew)
            self._renewal.clock = self.reactor
            self._renewal.start(self.spool.lease / 3, now=False)
        else:
            for env in self.spool.recover():
                self.envelopes[env.id] = env
        if self.envelopes:
            log.info("queue: {n} message(s) recovered from the spool", n=len(self.envelopes))
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.reactor
        self._loop.start(self.settings.poll_interval, now=True).addErrback(
            lambda f: log.failure("queue runner stopped", f))

    def stopService(self):
        super().stopService()
        metrics.queue.forget(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._sync_call is not None and self._sync_call.active():
            self._sync_call.cancel()
        self._pool.stop()
        if not self.spool.shared:
            self.spool.sync()
            return None
        if self._renewal is not None and self._renewal.running:
            self._renewal.stop()
        # Another host need not wait for the lease of what this one gives up.
        return self.spool.release().addErrback(lambda f: None)

    def _renew(self) -> defer.Deferred | None:
        """Push forward the lease of every message this process holds (shared spool)."""
        held = list(self.envelopes)
        if not held:
            return None

        def renewed(still: list[str]) -> None:
            for qid in set(held) - set(still):
                env = self.envelopes.get(qid)
                if env is None:
                    continue  # settled meanwhile
                log.warn("queue: lost the claim on {id} (lease expired or deleted); "
                         "left to the host that has it", id=qid)
                if qid not in self.busy:
                    self.envelopes.pop(qid, None)
                    self._fresh.pop(qid, None)

        return self.spool.renew(held).addCallbacks(
            renewed, lambda f: None)  # the database is away: the next renewal tries again

    # -- accepting -----------------------------------------------------------------------

    def writer(self, sender: smtp.Address, recipients: list[smtp.Address],
               user: str | None = None, forwarded_by: str | None = None) -> QueueWriter:
        """For C{realm.relay()}: refuses (450) a user over the hourly sending limit."""
        if user is not None and self.settings.messages_per_hour > 0:
            sent = self.sends.count(user)
            if sent >= self.settings.messages_per_hour:
                raise self._over_limit(user, sent)
        return QueueWriter(self, _addr(sender), [_addr(r) for r in recipients], user,
                           forwarded_by)

    def admit(self, user: str | None) -> defer.Deferred:
        """
        The hourly limit once more as a message is committed, and the message
        counted: L{writer}'s check answers from what this process knows, this
        one is atomic over every worker (and, on PostgreSQL, every host), so
        two sessions racing on two hosts cannot both take the last message.
        A message refused after this (a full disk) still counts: rare, and on
        the side of the limit.
        """
        limit = self.settings.messages_per_hour
        if user is None or limit <= 0:
            return defer.succeed(None)

        def checked(sent: int) -> None:
            if sent >= limit:
                raise self._over_limit(user, sent)

        return self.sends.reserve(user, limit).addCallback(checked)

    @staticmethod
    def _over_limit(user: str, sent: int) -> smtp.SMTPServerError:
        log.warn("rate limit: user={user} sent {n} messages in the last hour",
                 user=user, n=sent, event="refused", reason="rate_limited")
        return smtp.SMTPServerError(
            450, b"4.7.1 Error: too many messages sent in the last hour, try again later")

    def accepted(self, env: Envelope, content: bytes | None = None) -> None:
        log.info("queued: id={message_id} from=<{sender}> nrcpt={n} size={size} user={user}",
                 message_id=env.id, sender=env.sender, n=len(env.recipients), size=env.size,
                 user=env.user or "-", event="queued")
        self.envelopes[env.id] = env
        if content is not None:
            self._fresh[env.id] = content
        if self.running:
            self.attempt(env)

    # -- the periodic pass -------------------------------------------------------------

    def tick(self) -> None:
        if self.spool.shared:
            self._tick_shared()
            return
        for action, qid in self.spool.take_requests():
            if action == "flush":
                self.flush(None if qid == "ALL" else qid)
            elif action == "delete":
                self.delete(qid)
            elif action == "load":
                self.load(qid)
        now = time.time()
        for env in list(self.envelopes.values()):
            if env.id not in self.busy and env.next_attempt <= now:
                self.attempt(env)
        if now - self._tmp_cleaned >= TMP_CLEAN_INTERVAL:
            self._tmp_cleaned = now
            self.disk(self.spool.clean_tmp, TMP_MAX_AGE).addErrback(
                lambda f: log.failure("queue: tmp cleanup failed", f))

    def _tick_shared(self) -> None:
        """
        A shared spool: claim due messages no live process holds (SKIP LOCKED
        and the lease, L{netsuite.queue.pgspool}) and start them; admin
        requests are the database's own (C{netsuite queue} writes the rows).
        """
        now = time.time()
        for env in list(self.envelopes.values()):
            if env.id not in self.busy and env.next_attempt <= now:
                self.attempt(env)
        if self._unsaved:
            # Save first what the database could not take (before claiming rows
            # whose lease lapsed meanwhile, ours among them); claim next pass.
            unsaved, self._unsaved = self._unsaved, {}
            for env in unsaved.values():
                self._settle(env)
            return
        room = CLAIM_PER_CONNECTION * self.settings.concurrency - len(self.envelopes)
        if not self._claiming and room > 0:
            self._claiming = True
            clock = time.monotonic()
            d = self.spool.claim(room, now, clock >= self._own_only_until)
            d.addCallback(self._claimed)

            def unavailable(f: Failure) -> None:
                f.trap(DatabaseUnavailable)  # logged once by the pool
                # Every lease lapses in an outage, not only a dead host's: once the
                # database is back, other live hosts get one lease to save and renew
                # theirs before this one takes expired claims over.
                self._own_only_until = time.monotonic() + 2 * self.spool.lease

            d.addErrback(unavailable)
            d.addErrback(lambda f: log.failure("queue: claiming due messages failed", f))

            def done(_):
                self._claiming = False

            d.addBoth(done)
        if now - self._depth_at >= DEPTH_INTERVAL:
            self._depth_at = now

            def counted(depth: tuple[dict[str, int], float | None]) -> None:
                self.shared_depth = depth

            self.spool.depth().addCallbacks(counted, lambda f: None)  # away: the last count
        if now - self._tmp_cleaned >= TMP_CLEAN_INTERVAL:
            self._tmp_cleaned = now
            self.disk(self.spool.clean_tmp, TMP_MAX_AGE).addErrback(
                lambda f: log.failure("queue: tmp cleanup failed", f))

    def _claimed(self, claimed: list[tuple[Envelope, bytes]]) -> None:
        for env, body in claimed:
            if env.id in self.envelopes:
                continue
            self.envelopes[env.id] = env
            self._fresh[env.id] = body
            if self.running:
                self.attempt(env)

    def load(self, qid: str) -> None:
        """Take over a message that another worker process wrote to the spool."""
        if qid in self.envelopes:
            return
        try:
            env = self.spool.load(qid)
        except FileNotFoundError:
            return  # deleted meanwhile
        self.envelopes[env.id] = env
        if self.running:
            self.attempt(env)

    def flush(self, qid: str | None) -> int:
        """Make one (or every) message due now."""
        targets = [self.envelopes[qid]] if qid in self.envelopes else (
            list(self.envelopes.values()) if qid is None else [])
        for env in targets:
            env.next_attempt = 0.0
        log.info("flush: {what} ({n} message(s))", what=qid or "all", n=len(targets))
        return len(targets)

    def delete(self, qid: str) -> None:
        if qid not in self.envelopes:
            self.spool.remove(qid)
            return
        if qid in self.busy:
            self.doomed.add(qid)
            return
        del self.envelopes[qid]
        self.spool.remove(qid)
        log.info("deleted: id={id} by the administrator", id=qid)

    # -- attempts ------------------------------------------------------------------------

    def attempt(self, env: Envelope) -> None:
        """Start one delivery attempt for every pending recipient of C{env}."""
        if env.id in self.busy:
            return
        self.busy.add(env.id)
        env.attempts += 1
        pending = env.pending()
        if env.hops > self.settings.max_hops:
            loop = Reply(554, f"5.4.6 Too many hops: {env.hops} Received headers "
                              "(mail forwarding loop?)")
            self._record(env, pending, {r.address: loop for r in pending}, "-")
            self._outstanding[env.id] = 0
            self._settle(env)
            return
        groups: dict[str, tuple[Route, list[Recipient]]] = {}
        for r in pending:
            domain = r.address.rpartition("@")[2]
            try:
                route = route_for(self.settings, domain)
            except ValueError as e:
                route = Route(f"bad:{domain}")
                log.error("bad route for {domain}: {e}", domain=domain, e=e)
            groups.setdefault(route.key, (route, []))[1].append(r)
        self._outstanding[env.id] = len(groups)
        if not groups:
            self._settle(env)
            return
        for key, (route, recipients) in groups.items():
            dest = self.destinations.get(key)
            if dest is None:
                dest = self.destinations[key] = Destination(route)
            dest.jobs.append(Job(env, recipients))
        self.pump()

    def pump(self) -> None:
        """Open connections where jobs wait, within the per-destination and total caps."""
        for key, dest in list(self.destinations.items()):
            while dest.jobs and dest.idle:
                client, expiry = dest.idle.popitem()
                expiry.cancel()
                client.wake()
            while (dest.jobs and dest.connections < len(dest.jobs)
                   and dest.connections < self.settings.destination_concurrency):
                if self.connections >= self.settings.concurrency:
                    self._shed_idle()
                    break
                self._connect(dest)
            if not dest.jobs and not dest.connections:
                del self.destinations[key]

    def _shed_idle(self) -> None:
        """At the total cap: close an idle connection so waiting mail can have its place."""
        for dest in self.destinations.values():
            if dest.idle:
                client, expiry = dest.idle.popitem()
                expiry.cancel()
                client.quit_idle()
                return

    def _connect(self, dest: Destination) -> None:
        """Open one connection for C{dest}; for MX, try the next host when one fails."""
        dest.connections += 1
        self.connections += 1
        self._try_host(dest, [], None)

    def _try_host(self, dest: Destination, tried: list[str], last: Failure | None) -> None:
        route = dest.route
        if not tried and route.mx_domain is not None and self.mta_sts is not None:
            # Routes and the smarthost are the administrator's choice: no MTA-STS there.
            d = self.mta_sts.policy_for(route.mx_domain)

            def have(policy):
                dest.policy = policy if policy is not None and policy.mode != "none" else None
                return self._resolve(route)

            d.addCallback(have)
        else:
            d = defer.maybeDeferred(self._resolve, route)

        def connect(hostport):
            host, port = hostport
            if host in tried:  # every MX host has failed now: report the last failure
                return last
            tried.append(host)
            remote = f"{host}:{port}"
            policy = dest.policy
            sts = None
            if policy is not None:
                if policy.matches(host):
                    sts = (policy.mode, host, self._sts_check)
                elif policy.mode == "enforce":
                    return Failure(MtaStsError(
                        f"4.7.5 MTA-STS enforce: {host}: not an MX allowed by the policy "
                        f"of {route.mx_domain}"))
                else:
                    log.warn("MTA-STS testing: {host}: not an MX allowed by the policy of "
                             "{domain}; delivered anyway", host=host, domain=route.mx_domain,
                             event="mta_sts_testing")

            def make():
                return QueueClient(_Source(self, dest), self.identity, remote,
                                   secret=route.secret, username=route.username,
                                   context=self._tls_for(route, host),
                                   require_tls=route.require_tls or (
                                       sts is not None and sts[0] == "enforce"),
                                   timeout=self.settings.command_timeout, mta_sts=sts)

            c = self.endpoint(host, port).connect(QueueClientFactory(make))
            c.addCallback(self._connected, dest)
            return c

        def failed(f: Failure):
            if route.mx_domain is None or f.check(PermanentRouteError) or not tried:
                return self._connect_failed(f, dest)
            if f is not last:
                self._mx.markBad(tried[-1])  # skipped for an hour by MXCalculator
            if f is last or len(tried) >= MAX_MX_HOSTS:
                return self._connect_failed(f, dest)
            if f.check(MtaStsError):
                log.warn("{error}; trying the next MX", error=str(f.value),
                         event="mta_sts_refused")
                return self._try_host(dest, tried, f)
            log.info("cannot connect to {host} for {domain}: {error}; trying the next MX",
                     host=tried[-1], domain=route.mx_domain, error=_reason(f))
            self._try_host(dest, tried, f)

        d.addCallback(connect)
        d.addErrback(failed)

    def endpoint(self, host: str, port: int):
        """The client endpoint for one remote host (A and AAAA, happy eyeballs)."""
        if self._dns is not None:
            return ResolvingEndpoint(self.reactor, self._dns, host, port,
                                     self.settings.connect_timeout)
        return endpoints.HostnameEndpoint(self.reactor, host, port,
                                          timeout=self.settings.connect_timeout)

    def _resolve(self, route: Route):
        if route.host is not None:
            return (route.host, route.port)
        if route.mx_domain is None:
            raise PermanentRouteError("5.1.2 Bad destination domain")
        if self._mx is None:
            from twisted.mail.relaymanager import MXCalculator

            self._mx = MXCalculator(resolver=self._dns, clock=self.reactor)
        d = self._mx.getMX(route.mx_domain)

        def found(record):
            name = str(record.name)
            if name in ("", "."):  # RFC 7505 null MX
                raise PermanentRouteError(f"5.1.10 Domain {route.mx_domain} accepts no mail")
            return (name, self.settings.mx_port)

        def failed(f: Failure):
            from twisted.internet.error import DNSLookupError
            from twisted.names.error import DNSNameError

            # MXCalculator turns "no MX and no address" (NXDOMAIN) into
            # DNSLookupError; a server failure or timeout stays temporary.
            if f.check(DNSNameError, DNSLookupError):
                raise PermanentRouteError(f"5.1.2 Host or domain name not found: "
                                          f"{route.mx_domain}")
            return f

        d.addCallbacks(found, failed)
        return d

    def _connected(self, client: QueueClient, dest: Destination) -> QueueClient:
        dest.established += 1
        return client

    def _connect_failed(self, f: Failure, dest: Destination) -> None:
        dest.connections -= 1
        self.connections -= 1
        if f.check(PermanentRouteError):
            reply = Reply(550, str(f.value))
        elif f.check(MtaStsError):
            reply = Reply(-1, str(f.value))
        else:
            reply = Reply(-1, f"4.4.1 connect to {dest.route}: {_reason(f)}")
        log.info("cannot connect: destination={dest} error={error}", dest=dest.route,
                 error=str(reply))
        self._dead(dest, reply)
        self.pump()

    def _dead(self, dest: Destination, reply: Reply) -> None:
        """
        A destination failed and no open connection to it is left: every job
        waiting for it gets C{reply} now rather than a connection of its own.
        """
        if dest.established:
            return
        jobs, dest.jobs = list(dest.jobs), deque()
        for job in jobs:
            self.job_done(job, {a: reply for a in job.addresses}, "-")

    def _tls_for(self, route: Route, host: str):
        if route.ca_file:
            with open(route.ca_file, "rb") as f:
                trust = ssl.Certificate.loadPEM(f.read())
            return ssl.optionsForClientTLS(host, trustRoot=trust)
        if self._tls_default is None:
            # Opportunistic TLS (Postfix's "may"/"encrypt"): encrypted, not verified.
            self._tls_default = ssl.CertificateOptions()
        return self._tls_default

    # -- results ---------------------------------------------------------------------------

    def job_done(self, job: Job, results: dict[str, Reply], remote: str) -> None:
        env = job.env
        sent = [r.address for r in job.recipients
                if r.state == PENDING and (results.get(r.address) or Reply(-1, "")).ok]
        synced: defer.Deferred = defer.succeed(None)
        if sent and self.spool.shared:
            # The database's row says so before anything else happens to the message.
            synced = self.spool.mark_sent(env, sent)
            synced.addErrback(self._unrecorded, env)
            sent = []
        if sent:
            # First of all, before the log, the next message or the removal:
            # the remote's 250, per recipient, where a restart will read it.
            # What remains is the moment between the remote's 250 reaching our
            # socket and this write (a kill -9 there resends), and until the
            # fsync below, a power loss; neither window can be zero.
            try:
                self.spool.record_sent(env.id, sent)
            except OSError as e:
                log.error("queue: cannot record delivery of {id}: {e}", id=env.id, e=e)
                sent = []
        self._record(env, job.recipients, results, remote)
        if sent and any(r.state == PENDING for r in env.recipients):
            # Others still wait (here or at another destination): the record must
            # outlive a power loss too.  When none does, the message is removed
            # next, and the record dies with it: an fsync would buy nothing
            # (Postfix does not fsync its done-markers either).
            synced = self.disk(self.spool.sync_sent, env.id)
        synced.addErrback(lambda f: log.failure("queue: recording the delivery of {id} failed",
                                                f, id=env.id))

        def settle(_):
            left = self._outstanding.get(env.id, 1) - 1
            self._outstanding[env.id] = left
            if left <= 0:
                self._settle(env)

        synced.addCallback(settle)

    def _record(self, env: Envelope, recipients: list[Recipient],
                results: dict[str, Reply], remote: str) -> None:
        now = time.time()
        delay = now - env.created
        for r in recipients:
            reply = results.get(r.address) or Reply(-1, "4.3.0 no result")
            r.attempts += 1
            r.last_attempt = now
            r.remote = remote
            r.status = _status(reply)
            if reply.ok:
                r.state = SENT
                status = "sent"
            elif reply.permanent:
                r.state = FAILED
                r.last_error = str(reply)
                status = "bounced"
            else:
                r.last_error = str(reply)
                status = "deferred"
            metrics.delivery_attempts.labels(
                "remote", "delivered" if status == "sent" else status).inc()
            log.info("{status}: id={message_id} to=<{to}> relay={relay} delay={delay:.2f} "
                     "attempts={attempts} ({reply})", status=status, message_id=env.id,
                     to=r.address, relay=remote, delay=delay, attempts=r.attempts,
                     reply=str(reply), event=status, protocol="smtp", user=env.user,
                     reason=_DELIVERY_REASONS.get(status))
        errors = [r.last_error for r in recipients if r.state == PENDING]
        if errors:
            env.last_error = errors[-1]

    def _settle(self, env: Envelope) -> None:
        """After an attempt: report, then reschedule or remove, durably."""
        self._outstanding.pop(env.id, None)
        shared = self.spool.shared
        if not shared:
            self._fresh.pop(env.id, None)
        d = defer.maybeDeferred(self._settle_steps, env)
        if shared:
            d.addErrback(self._unsettled, env)
        d.addErrback(lambda f: log.failure("queue: could not update {id}", f, id=env.id))

        def done(_):
            if env.id in self._unsaved:
                return  # still busy: settled again when the database is back
            self._unsaved_said.discard(env.id)
            self.busy.discard(env.id)
            if shared:
                # The claim is given up (or lapses): the row is the message now;
                # whoever claims it next (this host or another) reads it afresh.
                self.envelopes.pop(env.id, None)
                self._fresh.pop(env.id, None)

        d.addBoth(done)

    def _unrecorded(self, f: Failure, env: Envelope) -> None:
        """A remote's 250 the database could not take now: saving the attempt says it later."""
        f.trap(DatabaseUnavailable)
        log.warn("queue: cannot record the delivery of {id} now: {error}", id=env.id,
                 error=str(f.value))

    def _unsettled(self, f: Failure, env: Envelope) -> None:
        """
        The database went away while an attempt was saved: the message stays
        held here and is saved again once a claim succeeds (the database is
        back).  If the lease lapses first, whoever claims it retries it, and a
        recipient sent meanwhile may be sent again.
        """
        f.trap(DatabaseUnavailable)
        if env.id not in self._unsaved_said:  # once per message and outage
            self._unsaved_said.add(env.id)
            log.warn("queue: cannot save the attempt on {id}: {error}; saved again when the "
                     "database is back", id=env.id, error=str(f.value))
        self._unsaved[env.id] = env

    @defer.inlineCallbacks
    def _settle_steps(self, env: Envelope):
        s = self.settings
        if env.id in self.doomed:
            self.doomed.discard(env.id)
            self.envelopes.pop(env.id, None)
            if self.spool.shared:
                yield self.spool.discard(env.id)
            else:
                yield self.disk(self.spool.remove, env.id)
            log.info("deleted: id={id} by the administrator", id=env.id)
            return
        now = time.time()
        pending = env.pending()
        if pending and now - env.created >= s.lifetime:
            for r in pending:
                r.state = FAILED
                r.status = "4.4.7"  # delivery time expired (reported as 5.4.7)
                r.last_error = f"message expired, last error: {r.last_error or 'none'}"
                log.info("expired: id={message_id} to=<{to}>", message_id=env.id,
                         to=r.address, event="expired", reason="expired")
            pending = []
        failed = [r for r in env.recipients if r.state == FAILED and not r.reported]
        warn = (pending and s.delay_warning > 0 and not env.warned
                and now - env.created >= s.delay_warning)
        if failed:
            yield self._notify(env, failed, "failed")
            for r in failed:
                r.reported = True
        if warn:
            yield self._notify(env, pending, "delayed")
            env.warned = True
        if not pending:
            if self.spool.shared:
                # Held (and renewed) until the row is gone: a removal the database
                # could not take is done again, not left to another host's claim.
                yield self.spool.discard(env.id)
                self.envelopes.pop(env.id, None)
            else:
                self.envelopes.pop(env.id, None)
                yield self.disk(self.spool.remove, env.id, False)
                self._sync_soon()
            log.info("removed: id={message_id}", message_id=env.id, event="removed")
            return
        env.next_attempt = now + wire.backoff(env.attempts, s.min_backoff, s.max_backoff)
        if self.spool.shared:
            still = yield self.spool.save(env)
        else:
            still = yield self.disk(self.spool.update, env)
        if not still:
            self.envelopes.pop(env.id, None)

    def _sync_soon(self) -> None:
        """
        One directory fsync for the removals of the next few milliseconds (a
        crash before it can only make a delivered message be sent again).
        """
        if self._sync_call is None or not self._sync_call.active():
            self._sync_call = self.reactor.callLater(REMOVAL_SYNC_DELAY, self._sync_now)

    def _sync_now(self):
        return self.disk(self.spool.sync).addErrback(
            lambda f: log.failure("queue: fsync of the spool failed", f))

    # -- bounces -----------------------------------------------------------------------------

    def _notify(self, env: Envelope, recipients: list[Recipient], action: str):
        """A DSN to the sender: into a local mailbox, else out through the queue; never to <>."""
        if not env.sender:
            log.info("no notification for id={id}: null sender", id=env.id)
            return defer.succeed(None)
        items = [bounce.Failed(r.address, action, _dsn_status(r.status, action),
                               r.last_error or "unknown error",
                               _remote_host(r.remote),
                               r.last_attempt or None)
                 for r in recipients]
        try:
            original = self.message(env.id)
        except OSError:
            original = b""
        report = bounce.render_dsn(hostname=self.hostname, queue_id=env.id,
                                   sender=env.sender, arrival=env.created,
                                   recipients=items, original=original)
        return self.deliver_notice(env.sender, report, about=env.id, action=action)

    def arc_seal(self, message: bytes, domain: str) -> bytes:
        """
        The ARC set (blocking: call in a thread) that C{domain} adds to a
        message it forwards, or C{b""} (no key, no Authentication-Results of
        ours to seal, an error: logged, the message goes unsealed).
        """
        if self.signer is None or self.authserv_id is None:
            return b""
        try:
            return self.signer.arc_seal(message, domain, self.authserv_id)
        except Exception:
            log.failure("arc: sealing failed; forwarded unsealed")
            return b""

    def dkim_sign(self, message: bytes, sender: str) -> bytes:
        """
        The DKIM-Signature headers for C{message} (blocking: call in a thread),
        or C{b""}; a signing error is logged and the message goes unsigned.
        """
        if self.signer is None:
            return b""
        try:
            return self.signer.sign(message, fallback=sender.rpartition("@")[2] or None)
        except Exception:
            log.failure("dkim: signing failed; sent unsigned")
            return b""

    def message(self, qid: str) -> bytes:
        fresh = self._fresh.get(qid)
        if fresh is not None:
            return fresh
        if self.spool.shared:  # every claimed message is read with its claim
            raise OSError(f"message {qid} is not held by this process")
        return self.spool.read_message(qid)

    def deliver_notice(self, to: str, message: bytes, about: str = "-",
                       action: str = "failed") -> defer.Deferred:
        local, _, domain = to.rpartition("@")
        realm = self.realm
        if realm.is_local_domain(domain):
            users = local_recipients(realm, local, domain)
            if not users:
                log.warn("notification for id={message_id} dropped: no local user <{to}>",
                         message_id=about, to=to, event="notification_dropped",
                         reason="no_local_user")
                return defer.succeed(None)
            tx = Transaction(realm, MailAddress(SMTPPath()))
            tx.local.extend(users)
            for line in message.split(b"\n")[:-1]:
                tx.lineReceived(line)
            d = tx.eomReceived()
            d.addCallback(lambda _: log.info(
                "notified: id={message_id} action={action} to=<{to}> (local mailbox)",
                message_id=about, action=action, to=to, event="notified"))

            def refused(f):
                # A notice cannot bounce (it is to the sender, from <>): a full mailbox
                # is said loudly, once, instead of failing the settlement for ever.
                f.trap(smtp.SMTPServerError)
                if f.value.code != 552:
                    return f
                reply = f"{f.value.code} {f.value.resp.decode('utf-8', 'replace')}"
                log.error("notification for id={message_id} not delivered: <{to}> {reply}",
                          message_id=about, to=to, reply=reply,
                          event="notification_refused", reason="quota_exceeded")
                return None

            d.addErrback(refused)
            return d
        env = Envelope(id=self.spool.new_id(), sender="", recipients=[Recipient(to)],
                       size=len(message), eightbit=wire.has_8bit(message))

        def store():
            # Signed as the host name's domain (the From: is MAILER-DAEMON@hostname).
            signed = self.dkim_sign(message, self.hostname)
            env.size += len(signed)
            if self.spool.shared:
                return signed
            self.spool.add(env, message, prefix=signed)
            return None

        d = self.disk(store)
        if self.spool.shared:
            def insert(signed: bytes) -> defer.Deferred:
                d = self.spool.accept(env, message, prefix=signed,
                                      hint=b" id " + env.id.encode())
                d.addCallback(lambda _: self._fresh.__setitem__(env.id, signed + message))
                return d

            d.addCallback(insert)

        def queued(_):
            log.info("notified: id={message_id} action={action} to=<{to}> (queued as {new})",
                     message_id=about, action=action, to=to, new=env.id, event="notified")
            self.envelopes[env.id] = env
            env.next_attempt = 0.0

        d.addCallback(queued)
        return d


class _Source:
    """One connection's view of its destination (L{netsuite.queue.client.JobSource})."""

    def __init__(self, runner: QueueRunner, dest: Destination):
        self.runner = runner
        self.dest = dest
        self.remote = "-"

    def next_job(self, client: QueueClient):
        self.remote = client.remote
        while self.dest.jobs:
            job = self.dest.jobs.popleft()
            if job.env.id in self.runner.doomed:
                self.runner.job_done(job, {a: Reply(-1, "deleted") for a in job.addresses},
                                     client.remote)
                continue
            try:
                job.message = self.runner.message(job.env.id)
            except OSError as e:
                log.error("queue: cannot read {id}: {e}", id=job.env.id, e=e)
                self.runner.job_done(job, {a: Reply(-1, f"4.3.0 spool: {e}")
                                           for a in job.addresses}, client.remote)
                continue
            return job
        keep = self.runner.settings.connection_reuse_time
        if keep > 0 and self.runner.running:
            self.dest.idle[client] = self.runner.reactor.callLater(keep, self._expire, client)
            return IDLE
        return None

    def _expire(self, client: QueueClient) -> None:
        if self.dest.idle.pop(client, None) is not None:
            client.quit_idle()

    def job_done(self, job: Job, results: dict[str, Reply]) -> None:
        job.message = b""
        self.runner.job_done(job, results, self.remote)

    def client_lost(self, client: QueueClient, job, error: str) -> None:
        runner = self.runner
        expiry = self.dest.idle.pop(client, None)
        if expiry is not None and expiry.active():
            expiry.cancel()
        self.dest.connections -= 1
        self.dest.established -= 1
        runner.connections -= 1
        if job is not None:
            job.message = b""
            runner.job_done(job, {a: Reply(-1, error) for a in job.addresses}, client.remote)
        if error:
            log.info("connection to {remote} ended: {error}", remote=client.remote,
                     error=error)
            if client.delivered == 0:
                runner._dead(self.dest, Reply(-1, error))
        runner.pump()


def _addr(address: Any) -> str:
    raw = address if isinstance(address, bytes) else bytes(address)
    return raw.decode("utf-8", "replace")


def _reason(f: Failure) -> str:
    v = f.value
    return getattr(v, "osError", None) and str(v.osError) or str(v) or f.type.__name__


def _remote_host(remote: str) -> str | None:
    """C{"mx.example:25"} -> C{"mx.example"}; C{"-"} (never reached) -> None."""
    if not remote or remote == "-":
        return None
    return remote.rpartition(":")[0] or remote


def _status(reply: Reply) -> str:
    """The RFC 3463 status of a reply; ours (code -1) may start with one too."""
    if reply.code > 0:
        return reply.status
    m = wire.ENHANCED.match(reply.text.encode("utf-8", "replace"))
    return b".".join(m.groups()).decode() if m else "4.4.1"


def _dsn_status(status: str, action: str) -> str:
    """A failed recipient's status class is 5 (RFC 3464 2.3.4), a delayed one's 4."""
    status = status or "4.0.0"
    if action == "failed" and not status.startswith("5."):
        return "5" + status[1:] if status[:2] == "4." else "5.0.0"
    return status

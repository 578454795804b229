"""
Where each SMTP recipient goes: the built-in realm's C{IMessageDelivery}.

Twisted's model asks for one C{IMessage} per recipient.  L{Delivery} returns
the same L{Transaction} for every recipient of one message, so a message is
parsed once and written once per distinct mailbox; the server calls each
distinct C{IMessage} once.  Custom realms may return any Twisted
C{IMessageDelivery} instead: the server treats them the same way.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import smtp
from zope.interface import implementer

from netsuite import metrics
from netsuite.durable import disk_full
from netsuite.realm import ANONYMOUS
from netsuite.smtp.wire import Path
from netsuite.store.quota import over_quota

log = Logger(namespace="netsuite.smtp")


class MailAddress(smtp.Address):
    """A C{twisted.mail.smtp.Address} built from an already-parsed L{Path}."""

    def __init__(self, path: Path):
        self.local = path.local
        self.domain = path.domain
        self.addrstr = bytes(path)

    def __str__(self) -> str:
        # Twisted decodes as ASCII; SMTPUTF8 addresses are UTF-8.
        return self.addrstr.decode("utf-8", "replace")

    @property
    def path(self) -> Path:
        return Path(self.local, self.domain)


@implementer(smtp.IMessage)
class Transaction:
    """
    One message on its way into one or more mailboxes (and, for authenticated
    senders, into the outgoing queue through the realm's C{relay} hook).
    Nothing is visible before L{eomReceived}'s Deferred fires.
    """

    def __init__(self, realm, sender: smtp.Address, user: str | None = None):
        self.realm = realm
        self.sender = sender
        self.user = user
        self.local: list[str] = []
        self.remote: list[smtp.Address] = []
        #: Outside addresses that local aliases forward to, and the alias's domain.
        self.forward: list[Path] = []
        self.forward_domain: str | None = None
        self._files: list = []
        self._opened = False
        #: The disk error that spoilt this message: the rest is discarded, and
        #: the end of data is answered 452/451 instead of dropping the session.
        self.error: OSError | None = None
        #: The message's size on the wire (CRLF), as quotas count it.
        self.size = 0
        #: The local recipients' folder (None: INBOX); a filter (rspamd) sets it
        #: before the first line is written.
        self.folder: str | None = None

    def _open(self) -> None:
        self._opened = True
        return_path = b"Return-Path: <" + bytes(self.sender) + b">\n"
        try:
            for user in self.local:
                if self.folder:
                    f = self.realm.store.delivery(user, self.folder)
                else:
                    f = self.realm.store.delivery(user)
                self._files.append(f)
                f.write(return_path)
            if self.remote:
                self._files.append(self.realm.relay(self.sender, self.remote, user=self.user))
            if self.forward:
                self._files.append(self.realm.relay(self.sender, self.forward, user=None,
                                                    forwarded_by=self.forward_domain))
        except OSError as e:
            self._failed(e)

    def _failed(self, error: OSError) -> None:
        """Give up on the whole message (one reply for all its recipients); keep nothing."""
        if self.error is None:
            self.error = error
            log.warn("cannot store the message from <{sender}>: {error}",
                     sender=bytes(self.sender).decode("utf-8", "replace"), error=error)
        self.connectionLost()

    def lineReceived(self, line: bytes) -> None:
        self._write(line + b"\n")

    def linesReceived(self, lines: list[bytes]) -> None:
        """Many lines at once (what one read of DATA held): one write, not one per line."""
        if self.remote or self.forward:
            # The queue's writer reads the headers (hops, the end of the headers)
            # one write per line.
            for line in lines:
                self._write(line + b"\n")
        elif lines:
            self._write(b"\n".join(lines) + b"\n")

    def _write(self, data: bytes) -> None:
        if not self._opened:
            self._open()
        if self.error is not None:
            return
        self.size += len(data) + data.count(b"\n")  # on the wire each LF is CRLF
        try:
            for f in self._files:
                f.write(data)
                if getattr(f, "error", None) is not None:
                    raise f.error
        except OSError as e:
            self._failed(e)

    def eomReceived(self) -> defer.Deferred:
        if not self._opened:
            self._open()
        if self.error is not None:
            metrics.delivery_attempts.labels("local", "deferred").inc(len(self.local))
            return defer.fail(storage_error(self.error))
        full = [u for u in self.local if over_user_quota(self.realm, u, self.size)]
        if full:
            # One reply for every recipient (SMTP): the whole message is refused, so
            # the sender hears of it; nothing is delivered to anyone, nothing lost.
            log.info("refused for quota: from=<{sender}> to={users} size={size}",
                     sender=bytes(self.sender).decode("utf-8", "replace"),
                     users=",".join(full), size=self.size)
            self.connectionLost()
            metrics.delivery_attempts.labels("local", "bounced").inc(len(self.local))
            return defer.fail(quota_error())
        files, self._files = self._files, []
        results = [defer.maybeDeferred(f.commit) for f in files]
        # The mailboxes' files come first (L{_open}), the queue's writer last.
        for result in results[:len(self.local)]:
            result.addCallbacks(_counted, _counted, callbackArgs=("delivered",),
                                errbackArgs=("deferred",))
        d = defer.gatherResults(results, consumeErrors=True)
        d.addErrback(lambda failure: failure.value.subFailure)

        def failed(failure):
            failure.trap(OSError)
            log.warn("cannot store the message from <{sender}>: {error}",
                     sender=bytes(self.sender).decode("utf-8", "replace"),
                     error=failure.value)
            # Each file that failed to commit removed itself; the others are
            # delivered (the client's retry may duplicate them, as with any MTA).
            raise storage_error(failure.value)

        d.addErrback(failed)
        return d

    def connectionLost(self) -> None:
        files, self._files = self._files, []
        for f in files:
            f.abort()


def _counted(result, outcome: str):
    """One local delivery attempt's result into C{netsuite_delivery_attempts_total}."""
    metrics.delivery_attempts.labels("local", outcome).inc()
    return result


def storage_error(error: OSError) -> smtp.SMTPServerError:
    """The reply for a message the disk could not take: full (452 4.3.1) or otherwise (451)."""
    if disk_full(error):
        return smtp.SMTPServerError(452, b"4.3.1 Error: insufficient system storage, "
                                         b"try again later")
    return smtp.SMTPServerError(451, b"4.3.0 Error: could not store the message, "
                                     b"try again later")


def over_user_quota(realm, user: str, extra: int) -> bool:
    """Whether C{extra} more bytes take C{user} past the realm's quota for it."""
    quota_for = getattr(realm, "quota_for", None)
    if quota_for is None or getattr(realm.store, "usage", None) is None:
        return False  # a custom realm or store without quotas
    return over_quota(realm.store, user, quota_for(user), extra)


def quota_error() -> smtp.SMTPServerError:
    """The reply for a message a mailbox's quota cannot take (RFC 3463 5.2.2)."""
    return smtp.SMTPServerError(552, b"5.2.2 Error: mailbox full (quota exceeded)")


def local_recipients(realm, local: str, domain: str) -> list[str]:
    """
    The users for C{local@domain} (a local domain): the realm's answer, and for
    C{postmaster} with no user or alias of that name, the realm's postmaster
    target (RFC 5321 4.5.1: every domain accepts postmaster).
    """
    users = realm.resolve_local(local, domain)
    if not users and local.lower() == "postmaster":
        fallback = getattr(realm, "postmaster_users", None)
        if fallback is not None:
            users = fallback()
    return users


@implementer(smtp.IMessageDelivery)
class Delivery:
    """
    Local users and aliases for everyone; other domains only for an
    authenticated user, and only while the realm can relay (the queue).
    """

    def __init__(self, realm, user: str | None):
        self.realm = realm
        self.user = user
        self._tx: Transaction | None = None

    def receivedHeader(self, helo, origin, recipients):
        return None  # the server writes the trace header

    def validateFrom(self, helo, origin):
        self._tx = Transaction(self.realm, origin, self.user)
        return origin

    def validateTo(self, user: smtp.User):
        tx = self._tx
        assert tx is not None, "validateFrom comes first"
        local = user.dest.local.decode("utf-8", "replace")
        domain = user.dest.domain.decode("utf-8", "replace")
        shown = f"<{local}@{domain}>"
        if self.realm.is_local_domain(domain):
            users = local_recipients(self.realm, local, domain)
            forward: list[str] = getattr(self.realm, "resolve_forward",
                                         lambda _l, _d: [])(local, domain)
            if forward and not getattr(self.realm, "can_relay", lambda: False)():
                log.warn("{shown} forwards to {to}, but relaying is off", shown=shown,
                         to=",".join(forward))
                forward = []
            for address in forward:
                target = Path(*(p.encode("utf-8") for p in address.rsplit("@", 1)))
                if target not in tx.forward:
                    tx.forward.append(target)
                tx.forward_domain = tx.forward_domain or domain.lower().rstrip(".")
            if not users and not forward:
                raise smtp.SMTPBadRcpt(user, 550, f"5.1.1 {shown}: Recipient address "
                                                  "rejected: User unknown in local recipient table")
            for name in users:
                # Already full: refused now (the message itself is checked at its end).
                if over_user_quota(self.realm, name, 1):
                    raise smtp.SMTPBadRcpt(user, 552, f"5.2.2 {shown}: Mailbox full "
                                                      "(quota exceeded)")
            for name in users:
                if name not in tx.local:
                    tx.local.append(name)
            return lambda: tx
        if self.user is None:
            raise smtp.SMTPBadRcpt(user, 554, f"5.7.1 {shown}: Relay access denied")
        if not getattr(self.realm, "can_relay", lambda: False)():
            raise smtp.SMTPBadRcpt(user, 551, f"5.7.1 {shown}: Relaying to other domains "
                                              "is not enabled on this server")
        tx.remote.append(user.dest)
        return lambda: tx


def delivery_for(realm, user) -> Delivery:
    """The SMTP avatar: local delivery, and relaying for an authenticated C{user}."""
    return Delivery(realm, None if user is ANONYMOUS else user)

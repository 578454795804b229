"""
The LMTP session (RFC 2033): netsuite's SMTP server with LHLO for EHLO and
one reply per recipient after the data.

Everything else is the MX session of L{netsuite.smtp.server}: the framer,
pipelining, SIZE/8BITMIME/SMTPUTF8/CHUNKING, DATA and BDAT readers, limits.
LMTP never relays and never authenticates: its client is the MTA in front
(Postfix's C{lmtp:} transport, Exim's C{lmtp} transport), so only local
recipients are accepted and AUTH is refused as on the MX.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure

from netsuite import metrics
from netsuite.lmtp.delivery import ILMTPDelivery
from netsuite.realm import ANONYMOUS
from netsuite.smtp.server import SMTPFactory, SMTPServer, _show, _text

log = Logger(namespace="netsuite.lmtp")


class LMTPServer(SMTPServer):
    """One LMTP session."""

    trace_protocol = "LMTP"
    protocol_name = "lmtp"

    def connectionMade(self) -> None:
        super().connectionMade()
        # A local MTA on loopback or a unix socket: no STARTTLS offered.
        self.canStartTLS = False

    def _reset_delivery(self) -> None:
        self.delivery = None
        self.authenticated = False
        self.auth_user = None
        _iface, self.delivery, self._onLogout = self.factory.ctx.realm.requestAvatar(
            ANONYMOUS, None, ILMTPDelivery, smtp.IMessageDelivery)

    # -- greeting --------------------------------------------------------------

    def do_LHLO(self, rest: bytes) -> None:
        if not rest:
            self.say(501, "5.5.4", "Syntax: LHLO hostname")
            return
        self._hello(rest, esmtp=True)

    def do_HELO(self, rest: bytes) -> None:
        self.say(500, "5.5.1", "Error: this is LMTP, send LHLO (RFC 2033)")

    do_EHLO = do_HELO

    # -- one IMessage, and one reply, per recipient ------------------------------

    def _checks_at_end_of_data(self) -> bool:
        """The MTA in front checked the mail: LMTP delivers what it is given."""
        return False

    def _end_message(self, too_big: bool, size: int):
        recipients = [u for u, _f in self._to]
        if too_big:
            for user in recipients:
                self._refuse("DATA", user.dest, 552, "5.3.4",
                             b"Error: message size exceeds fixed limit")
            self._count_message(False)
            self._reset_transaction()
            return None
        msgs, self._msgs = self._msgs, []
        per_rcpt, self._rcpt_msgs = self._rcpt_msgs, []
        sender = self._from
        queue_id = getattr(self, "_queue_id", "-")
        outcome: dict[int, Failure | None] = {}

        def finish(msg):
            d = defer.maybeDeferred(msg.eomReceived)
            d.addCallbacks(lambda _: outcome.__setitem__(id(msg), None),
                           lambda f: outcome.__setitem__(id(msg), f))
            return d

        d = defer.gatherResults([finish(m) for m in msgs])

        def answer(_):
            delivered = []
            for user, msg in zip(recipients, per_rcpt, strict=True):
                failure = outcome.get(id(msg))
                shown = _show(user.dest)
                if failure is None:
                    delivered.append(f"<{shown}>")
                    self.say(250, "2.0.0", f"<{shown}> Ok: delivered as {queue_id}")
                    continue
                failure = getattr(failure.value, "subFailure", failure)
                if failure.check(smtp.SMTPServerError):
                    self._refuse("DATA", user.dest, failure.value.code, None,
                                 _text(failure.value.resp))
                else:
                    log.failure("delivery failed: id={id} to=<{rcpt}>", failure,
                                id=queue_id, rcpt=shown)
                    self.say(451, "4.3.0", f"<{shown}> Error: could not store the "
                                           "message, try again later")
                    metrics.smtp_refusals.labels(self.factory.listener, "data",
                                                 "4.3.0").inc()
            self._count_message(bool(delivered), size)
            if delivered:
                log.info("accepted: id={message_id} size={size} from=<{sender}> "
                         "to={recipients} address={client} via=lmtp", message_id=queue_id,
                         size=size, sender=_show(sender), recipients=",".join(delivered),
                         client=self.peer, event="accepted", protocol="lmtp",
                         listener=self.factory.listener)

        self._from, self._to, self._params, self._reader = None, [], {}, None
        d.addCallback(answer)
        return d


class LMTPFactory(SMTPFactory):
    """Builds L{LMTPServer} sessions for one listener."""

    protocol = LMTPServer

    def __init__(self, ctx, listener: str):
        super().__init__(ctx, listener, submission=False)
        self.banner = b"LMTP netsuite"
        self.checker = None  # the MTA in front has checked it
        self.rspamd = None  # and filtered it

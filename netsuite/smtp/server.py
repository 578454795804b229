"""
The ESMTP session: C{twisted.mail.smtp.ESMTP}, extended where Twisted 26.10
falls short (see TWISTED-GAPS.md).

Kept from Twisted: command dispatch (C{do_*}/C{ext_*}), C{Address}/C{User},
C{IMessageDelivery}/C{IMessage} through the realm, the SASL credentials,
C{TimeoutMixin}.  Replaced: the byte framing (so BDAT, pipelining and the
STARTTLS buffer rule can be right), MAIL/RCPT parameters (SIZE, BODY,
SMTPUTF8), DATA (streamed, size-limited, smuggling-proof), AUTH (TLS first,
PLAIN and LOGIN), and every reply, which now carries an enhanced status code.

Commands are answered strictly in order: while one waits on a Deferred (a
recipient lookup, a login, a delivery) later pipelined commands stay in the
buffer and, once such input is there, the transport is paused (never while
closing: a TLS peer's close_notify must still be read).  Bytes are framed by L{netsuite.framer}.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from typing import Any

from twisted.cred import error as cred_error
from twisted.internet import defer, interfaces, protocol
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure
from zope.interface import implementer

from netsuite import metrics
from netsuite.auth.sasl import MECHANISMS, SASLError
from netsuite.config import plaintext_auth_allowed
from netsuite.db.errors import DatabaseUnavailable
from netsuite.deadline import CommandDeadline
from netsuite.framer import LineFramer, Overlong
from netsuite.mailauth import rspamd
from netsuite.mailauth.inbound import make_checker
from netsuite.realm import ANONYMOUS
from netsuite.shutdown import IGracefulStop
from netsuite.smtp import wire
from netsuite.smtp.delivery import MailAddress

log = Logger(namespace="netsuite.smtp")

COMMAND, DATA, AUTH, BDAT = "COMMAND", "DATA", "AUTH", "BDAT"

#: After this many error replies in one session the server hangs up (Postfix's
#: smtpd_hard_error_limit).
MAX_ERRORS = 20

HELP_TEXT = ("Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP "
             "STARTTLS AUTH\nSee RFC 5321")


def _peer_host(transport) -> str:
    peer = transport.getPeer()
    return getattr(peer, "host", None) or str(peer)


#: The MX checks' policy reasons (L{netsuite.mailauth.inbound.decide}) as log codes.
_POLICY_REASONS = {"dmarc-reject": "dmarc_reject", "dmarc-quarantine": "dmarc_quarantine",
                   "dmarc-bad-from": "dmarc_bad_from", "spf-fail": "spf_fail"}


@implementer(IGracefulStop)
class SMTPServer(smtp.ESMTP, CommandDeadline):
    """One SMTP session, on the MX or a submission listener."""

    #: The C{protocol} key of its log events (netsuite.logs).
    protocol_name = "smtp"
    #: A TCP or TLS connection (C{startTLS}, C{pauseProducing}), wrapped by
    #: L{netsuite.service.TrackedConnection}.
    transport: Any
    #: The client's L{netsuite.auth.throttle.PeerPortal}.
    portal: Any
    #: The realm's C{IMessageDelivery} for this session (None before AUTH on submission).
    delivery: Any
    #: The protocol name in the Received: header (RFC 3848), before its S and A.
    trace_protocol = "ESMTP"

    def __init__(self, factory: "SMTPFactory"):
        super().__init__(chal=dict(MECHANISMS), contextFactory=factory.ctx.tls)
        self.factory = factory
        self.settings = factory.ctx.config.smtp
        self.timeout = self.settings.idle_timeout
        self.host = factory.hostname
        self.submission = factory.submission
        # The line cap counts CRLF (RFC 5321 4.5.3.1.4); the framer's does not.
        self._framer = LineFramer(self.settings.max_line_length - 2,
                                  factory.ctx.config.limits.command_timeout)
        self._waiting: defer.Deferred | None = None
        self._paused = False
        self._closing = False
        #: The server is stopping: 421 as soon as no message is being received.
        self._stopping = False
        #: Set in connectionLost: callbacks that fire later must not act on the session.
        self._lost = False
        self._errors = 0
        self._esmtp = False
        self._params: dict[str, Any] = {}
        self._msgs: list = []
        self._reader: wire.DataReader | wire.ChunkReader | None = None
        #: MX with checks on: the message held here until its checks are done,
        #: because Authentication-Results goes before the first line.
        self._held: list[bytes] | None = None
        #: The IMessage of each accepted recipient, in RCPT order (set at DATA/BDAT).
        self._rcpt_msgs: list = []
        self._bdat_left = 0
        self._bdat_last = False
        self._bdat_error: bytes | None = None
        self._started = 0.0
        self.peer = "?"
        self.auth_user: str | None = None

    # -- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        self.peer = _peer_host(self.transport)
        self.portal = self.factory.ctx.portal.bind(self.peer, "smtp")
        self._helo = None
        tls = interfaces.ISSLTransport.providedBy(self.transport)
        log.info("connect: listener={listener} address={client} tls={tls}",
                 listener=self.factory.listener, client=self.peer, tls=tls, event="connect",
                 protocol=self.protocol_name)
        self._reset_delivery()
        self.transport.write(wire.reply(220, None, self.host + b" " + self.factory.banner))
        self.setTimeout(self.timeout)
        self.canStartTLS = (interfaces.ITLSTransport.providedBy(self.transport)
                            and self.ctx is not None and not tls)
        self.startedTLS = tls

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self._lost = True
        self._abort_messages()
        self.setTimeout(None)
        self.cancelDeadline()
        if self._onLogout:
            self._onLogout()
            self._onLogout = None
        log.info("disconnect: address={client}", client=self.peer, event="disconnect",
                 listener=self.factory.listener, protocol=self.protocol_name)

    def timeoutConnection(self) -> None:
        self.say(421, "4.4.2", self.host.decode() + " Error: timeout exceeded")
        self._close()

    # -- graceful stop (netsuite.shutdown) ---------------------------------------------

    def shutdown(self) -> None:
        """SIGTERM: a message being received is finished and answered first, then 421."""
        if self._lost or self._closing:
            return
        self._stopping = True
        self._stop_if_idle()

    def _stop_if_idle(self) -> bool:
        """Stopping and no message in progress (DATA, BDAT chunks, its storing): 421, close."""
        if not self._stopping or self._closing or self._lost:
            return False
        if self._waiting is not None or self._reader is not None or self.mode in (DATA, BDAT):
            return False
        log.info("shutdown: address={address}, 421", address=self.peer)
        self.transport.write(wire.reply(421, "4.3.2", "Service shutting down"))
        self._close()
        return True

    # -- the whole-line deadline (netsuite.deadline) ---------------------------------

    def deadlineFramer(self) -> LineFramer | None:
        return None if self._closing or self.mode in (DATA, BDAT) else self._framer

    def deadlineWaiting(self) -> bool:
        return self._waiting is not None

    def deadlineExpired(self) -> None:
        log.info("command timeout: address={client}", client=self.peer, event="timeout",
                 reason="command_timeout", listener=self.factory.listener,
                 protocol=self.protocol_name)
        self.say(421, "4.4.2", self.host.decode() + " Error: command line timeout exceeded")
        self._close()

    def greeting(self) -> bytes:
        return self.host + b" " + self.factory.banner

    def _reset_delivery(self) -> None:
        """MX sessions deliver as ANONYMOUS; submission sessions wait for AUTH."""
        self.delivery = None
        self.authenticated = False
        self.auth_user = None
        if not self.submission:
            _iface, self.delivery, self._onLogout = self.factory.ctx.realm.requestAvatar(
                ANONYMOUS, None, smtp.IMessageDelivery)

    def _close(self) -> None:
        self._closing = True
        self._framer.discard()
        if self._paused:
            # Read on while closing: a TLS peer's close_notify must be seen.
            self._paused = False
            self.transport.resumeProducing()
        self.transport.loseConnection()

    # -- replies -------------------------------------------------------------

    def say(self, code: int, enhanced: str | None, text: str | bytes) -> None:
        if self._lost:
            return
        if code >= 400:
            self._errors += 1
        self.transport.write(wire.reply(code, enhanced, text))
        if self._errors >= MAX_ERRORS and not self._closing:
            self.transport.write(wire.reply(421, "4.7.0", "Too many errors"))
            self._close()

    def sendCode(self, code: int, message: bytes = b"") -> None:
        """Twisted's replies (from inherited paths) still get an enhanced code."""
        self.say(code, None, message)

    # -- framing ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.resetTimeout()
        self._framer.feed(data, self.deadlineNow())
        self._process()

    def _process(self) -> None:
        framer = self._framer
        while framer.buffered and self._waiting is None and not self._closing:
            if self.mode == DATA:
                self._data_bytes()
            elif self.mode == BDAT:
                self._bdat_bytes()
            else:
                if self._stop_if_idle():  # pipelined after the last message: not run
                    break
                line = framer.line()
                if line is None:
                    break
                if isinstance(line, Overlong):
                    self.say(500, "5.5.2", "Error: line too long")
                    continue
                self._wait(self.lineReceived(line))
        if self._stop_if_idle():
            return
        # Paused only while a command waits: a closing session must go on reading,
        # or a TLS peer's close_notify (and the FIN) is never seen.  And only once
        # input is waiting too (pipelined after the command, or arriving while it
        # waits): a client that waits for each reply, as most do, costs no
        # pause and resume (two epoll_ctl calls) per message; one that does not
        # has at most one read more held in the buffer.
        if self._waiting is not None and not self._closing:
            if not self._paused and framer.buffered:
                self._paused = True
                self.transport.pauseProducing()
        elif not self._closing:
            self.armDeadline()

    def _wait(self, result: Any) -> None:
        """Hold later commands until C{result}, if a Deferred, has fired."""
        if not isinstance(result, defer.Deferred):
            return
        self._waiting = result
        asynchronous = False

        def done(value):
            self._waiting = None
            if asynchronous and not self._closing and not self._lost:
                self._framer.restart(self.deadlineNow())
                if self._paused:
                    self._paused = False
                    self.transport.resumeProducing()
                self._process()
            return value

        result.addErrback(self._internal_error)
        result.addBoth(done)
        asynchronous = True

    def _internal_error(self, failure: Failure) -> None:
        log.failure("internal error, address={address}", failure, address=self.peer)
        if not self._closing and not self._lost:
            self.say(451, "4.3.0", "Error: internal error, try again later")

    def lineReceived(self, line: bytes):
        if self.mode == AUTH:
            return self.state_AUTH(line)
        if b"\0" in line:
            self.say(500, "5.5.2", "Error: NUL character in command")
            return None
        verb, rest = wire.split_command(line)
        if not verb:
            self.say(500, "5.5.2", "Error: bad syntax")
            return None
        if not (verb.isascii() and verb.isalpha() and len(verb) <= 16):
            self.say(500, "5.5.2", "Error: command not recognized")
            return None
        method = self.lookupMethod(verb)
        if method is None:
            self.say(502, "5.5.2", "Error: command not recognized")
            return None
        return method(rest)

    def lookupMethod(self, command: bytes):
        return getattr(self, "do_" + command.decode("ascii").upper(), None)

    # -- session commands ---------------------------------------------------

    def do_HELO(self, rest: bytes) -> None:
        self._hello(rest, esmtp=False)

    def do_EHLO(self, rest: bytes) -> None:
        self._hello(rest, esmtp=True)

    def _hello(self, rest: bytes, esmtp: bool) -> None:
        if not rest:
            self.say(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname")
            return
        self._reset_transaction()
        self._helo = (rest, self.peer.encode())
        self._esmtp = esmtp
        greeting = self.host + b" Hello " + rest + b" [" + self.peer.encode() + b"]"
        if not esmtp:
            self.say(250, None, greeting)
            return
        lines = [greeting] + self.extensions_list()
        self.say(250, None, b"\n".join(lines))

    def extensions_list(self) -> list[bytes]:
        ext = [b"SIZE %d" % self.settings.max_message_size, b"8BITMIME", b"SMTPUTF8",
               b"PIPELINING", b"CHUNKING", b"ENHANCEDSTATUSCODES"]
        if self.canStartTLS and not self.startedTLS:
            ext.append(b"STARTTLS")
        if self._auth_offered():
            ext.append(b"AUTH " + b" ".join(self.challengers))
        ext.append(b"HELP")
        return ext

    def _auth_offered(self) -> bool:
        plaintext_ok = plaintext_auth_allowed(self.factory.ctx.config, "smtp")
        return self.submission and not self.authenticated and (self.startedTLS or plaintext_ok)

    def do_NOOP(self, rest: bytes) -> None:
        self.say(250, "2.0.0", "Ok")

    def do_RSET(self, rest: bytes) -> None:
        self._reset_transaction()
        self.say(250, "2.0.0", "Ok")

    def do_VRFY(self, rest: bytes) -> None:
        if not rest:
            self.say(501, "5.5.4", "Syntax: VRFY address")
            return
        self.say(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")

    def do_EXPN(self, rest: bytes) -> None:
        self.say(502, "5.5.1", "Error: EXPN is not available")

    def do_HELP(self, rest: bytes) -> None:
        self.say(214, "2.0.0", HELP_TEXT)

    def do_QUIT(self, rest: bytes) -> None:
        self.say(221, "2.0.0", "Bye")
        self._close()

    def do_STARTTLS(self, rest: bytes) -> None:
        if rest:
            self.say(501, "5.5.4", "Syntax: STARTTLS")
        elif self.startedTLS:
            self.say(503, "5.5.1", "Error: TLS already active")
        elif not self.canStartTLS:
            self.say(454, "4.7.0", "TLS not available")
        else:
            self.say(220, "2.0.0", "Ready to start TLS")
            # Anything pipelined in plain text after STARTTLS is discarded, and
            # the session starts afresh (RFC 3207 4.2; CVE-2011-0411).
            self._framer.discard()
            self.transport.startTLS(self.ctx)
            self.startedTLS = True
            self._reset_transaction()
            self._reset_delivery()
            self._helo = None
            self._esmtp = False
            log.info("starttls: address={address}", address=self.peer)

    # -- AUTH ----------------------------------------------------------------

    def do_AUTH(self, rest: bytes):
        if not self.submission:
            self.say(503, "5.5.1", "Error: authentication not enabled")
            return None
        if not self._esmtp:
            self.say(503, "5.5.1", "Error: send EHLO first")
            return None
        if self.authenticated:
            self.say(503, "5.5.1", "Error: already authenticated")
            return None
        if self._from is not None:
            self.say(503, "5.5.1", "Error: MAIL transaction in progress")
            return None
        if not self._auth_offered():
            self.say(538, "5.7.11", "Encryption required for requested authentication mechanism")
            log.info("auth refused without TLS: address={client}", client=self.peer,
                     event="login_refused", reason="plaintext_refused",
                     listener=self.factory.listener, protocol=self.protocol_name)
            return None
        parts = rest.split()
        if not parts or len(parts) > 2:
            self.say(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
            return None
        factory = self.challengers.get(parts[0].upper())
        if factory is None:
            self.say(504, "5.5.4", "Unrecognized authentication type")
            return None
        self.challenger = factory()
        self.mode = AUTH
        if len(parts) == 2:
            if parts[0].upper() != b"PLAIN":
                self.challenger.getChallenge()  # LOGIN's initial response is the user name
            return self.state_AUTH(b"" if parts[1] == b"=" else parts[1], initial=True)
        return self.state_AUTH(None)

    def state_AUTH(self, response: bytes | None, initial: bool = False):
        if response is None:
            challenge = self.challenger.getChallenge()
            self.say(334, None, base64.b64encode(challenge))
            return None
        if response == b"*":
            self.mode = COMMAND
            self.say(501, "5.7.0", "Authentication aborted")
            return None
        try:
            decoded = base64.b64decode(response, validate=True) if response else b""
            self.challenger.setResponse(decoded)
        except (binascii.Error, SASLError, ValueError) as e:
            self.mode = COMMAND
            self.say(501, "5.5.2", f"Cannot decode response: {e}")
            return None
        if self.challenger.moreChallenges():
            self.say(334, None, base64.b64encode(self.challenger.getChallenge()))
            return None
        self.mode = COMMAND
        d = self.portal.login(self.challenger, None, smtp.IMessageDelivery)
        d.addCallbacks(self._authenticated, self._auth_failed)
        return d

    def _authenticated(self, result) -> None:
        _iface, avatar, logout = result
        if self._lost:
            # The client left while the password was checked: log out, nothing else.
            logout()
            return
        self.delivery, self._onLogout = avatar, logout
        self.authenticated = True
        self.auth_user = getattr(avatar, "user", None) or self.challenger.username.decode(
            "utf-8", "replace")
        self.challenger = None
        self.say(235, "2.7.0", "Authentication successful")

    def _auth_failed(self, failure: Failure) -> None:
        self.challenger = None
        if failure.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
            self.say(535, "5.7.8", "Error: authentication failed")
        elif failure.check(DatabaseUnavailable):  # logged by the portal; RFC 4954's answer
            self.say(454, "4.7.0", "Temporary authentication failure, try again later")
        else:
            log.failure("authentication error", failure)
            self.say(454, "4.7.0", "Temporary authentication failure")

    # -- envelope ------------------------------------------------------------

    def _reset_transaction(self) -> None:
        self._abort_messages()
        self._held = None
        self._from = None
        self._to = []
        self._params = {}
        self._reader = None
        self._bdat_error = None

    def _abort_messages(self) -> None:
        msgs, self._msgs = self._msgs, []
        for m in msgs:
            try:
                m.connectionLost()
            except Exception:
                log.failure("message connectionLost failed")

    def do_MAIL(self, rest: bytes):
        if self._helo is None:
            self.say(503, "5.5.1", "Error: send HELO/EHLO first")
            return None
        if self._from is not None:
            self.say(503, "5.5.1", "Error: nested MAIL command")
            return None
        if self.submission and not self.authenticated:
            self._refuse("MAIL", None, 530, "5.7.0", b"Authentication required")
            return None
        try:
            path, params_text = wire.parse_path(rest, b"FROM:", allow_null=True)
            params = wire.parse_params(params_text)
            checked = self._check_mail_params(params)
        except wire.WireError as e:
            if e.code == 552:  # SIZE over the limit: a refusal, logged
                self._refuse("MAIL", None, e.code, e.enhanced, _text(e.text))
            else:
                self.say(e.code, e.enhanced, e.text)
            return None
        if not path.ascii and "SMTPUTF8" not in checked:
            self.say(553, "5.6.7", "Non-ASCII sender address needs SMTPUTF8")
            return None
        origin = MailAddress(path)
        d = defer.succeed(None)
        if self.submission and self.authenticated:
            d = self._check_sender(origin)
        d.addCallback(lambda _: self.delivery.validateFrom(self._helo, origin))

        def accepted(result):
            self._from = result if isinstance(result, smtp.Address) else origin
            self._to = []
            self._params = checked
            self._started = time.monotonic()
            self.say(250, "2.1.0", "Ok")

        d.addCallbacks(accepted, self._refused_sender)
        return d

    def _check_sender(self, origin: MailAddress) -> defer.Deferred:
        """
        Submission: the authenticated user may send only as an address the
        realm says it owns (Postfix's C{reject_sender_login_mismatch}); the
        null sender is for the server's own bounces, never a client's.
        """
        user = self.auth_user or ""
        shown = _show(origin)
        if not origin.addrstr:
            return defer.fail(smtp.SMTPBadSender(
                origin, 553, "5.7.1 <>: Sender address rejected: the null sender is "
                             "not allowed on submission"))
        if not self.settings.sender_login_match:
            return defer.succeed(None)
        realm = self.factory.ctx.realm
        check = getattr(realm, "may_send_as", None)
        if check is None:  # a realm without the hook: only user@local-domain
            def check(user, address):
                local, _, domain = address.rpartition("@")
                is_local = getattr(realm, "is_local_domain", lambda d: False)
                return local == user and is_local(domain)
        d = defer.maybeDeferred(check, user, shown)

        def decided(allowed):
            if allowed:
                return None
            log.info("sender mismatch: address={client} user={user} from=<{sender}>",
                     client=self.peer, user=user, sender=shown, event="sender_mismatch",
                     protocol=self.protocol_name, listener=self.factory.listener)
            raise smtp.SMTPBadSender(
                origin, 553, f"5.7.1 <{shown}>: Sender address rejected: not owned by "
                             f"user {user}")

        return d.addCallback(decided)

    def _check_mail_params(self, params: dict[str, bytes | None]) -> dict[str, Any]:
        if params and not self._esmtp:
            raise wire.WireError(555, "5.5.4", "Parameters need EHLO")
        checked: dict[str, Any] = {}
        for name, value in params.items():
            if name == "SIZE":
                if value is None or not value.isdigit() or len(value) > 15:
                    raise wire.WireError(501, "5.5.4", "Bad SIZE parameter")
                if int(value) > self.settings.max_message_size:
                    raise wire.WireError(552, "5.3.4", "Message size exceeds fixed limit")
                checked[name] = int(value)
            elif name == "BODY":
                if value is None or value.upper() not in (b"7BIT", b"8BITMIME"):
                    raise wire.WireError(501, "5.5.4", "BODY must be 7BIT or 8BITMIME")
                checked[name] = value.upper().decode()
            elif name == "SMTPUTF8":
                if value is not None:
                    raise wire.WireError(501, "5.5.4", "SMTPUTF8 takes no value")
                checked[name] = True
            elif name == "AUTH":
                checked[name] = value  # RFC 4954 5: accepted, not trusted
            else:
                raise wire.WireError(555, "5.5.4", f"Unsupported parameter {name}")
        return checked

    def _refuse(self, what: str, address: Any, code: int, enhanced: str | None,
                text: bytes, policy: str | None = None, size: int | None = None) -> None:
        """
        Answer a refusal and log it once, Postfix-style (no message was queued).
        C{policy}: the MX checks' reason code (L{_POLICY_REASONS}); the one line
        is then the C{rejected} event, naming it and the message's size.
        """
        self.say(code, enhanced, text)
        metrics.smtp_refusals.labels(self.factory.listener, what.lower(),
                                     metrics.smtp_reason(enhanced, code, text)).inc()
        if policy is None:
            form, event = "refused: {what} ", "refused"
            reason = refusal_reason(what, code, enhanced, text)
        else:
            form, event = "rejected: {what} reason={reason} size={size} ", "rejected"
            reason = policy
        shown = text.decode("utf-8", "replace")
        if enhanced and not shown.startswith(enhanced):
            shown = f"{enhanced} {shown}"  # as the client heard it
        log.info(form + "address={client} from=<{sender}> to=<{rcpt}> reply={code} {text}",
                 what=what, client=self.peer, size=size,
                 sender=_show(self._from) if self._from is not None else "-",
                 rcpt=_show(address) if address is not None else "-", code=code,
                 text=shown, event=event, reason=reason,
                 user=self.auth_user, protocol=self.protocol_name,
                 listener=self.factory.listener)

    def _refused_sender(self, failure: Failure) -> None:
        if failure.check(smtp.SMTPBadSender, smtp.SMTPServerError):
            self._refuse("MAIL", None, failure.value.code, _enhanced(failure.value),
                         _text(failure.value.resp))
        else:
            log.failure("sender check failed", failure)
            self.say(451, "4.3.0", "Error: local error in processing")

    def do_RCPT(self, rest: bytes):
        if self._from is None:
            self.say(503, "5.5.1", "Error: need MAIL command")
            return None
        if len(self._to) >= self.settings.max_recipients:
            self._refuse("RCPT", None, 452, "4.5.3", b"Error: too many recipients")
            return None
        try:
            path, params_text = wire.parse_path(rest, b"TO:", allow_bare_postmaster=True)
            if wire.parse_params(params_text):
                raise wire.WireError(555, "5.5.4", "RCPT parameters are not supported")
        except wire.WireError as e:
            self.say(e.code, e.enhanced, e.text)
            return None
        if not path.ascii and "SMTPUTF8" not in self._params:
            self.say(553, "5.6.7", "Non-ASCII recipient address needs SMTPUTF8")
            return None
        if not path.domain:  # RFC 5321 4.5.1: <Postmaster> with no domain
            domain = self.factory.ctx.config.mail.local_domains[0].encode()
            path = wire.Path(path.local, domain)
        user = smtp.User(MailAddress(path), self._helo, self, self._from)
        d = defer.maybeDeferred(self.delivery.validateTo, user)

        def accepted(message_factory):
            self._to.append((user, message_factory))
            self.say(250, "2.1.5", "Ok")

        d.addCallbacks(accepted, self._refused_recipient)
        return d

    def _refused_recipient(self, failure: Failure) -> None:
        if failure.check(smtp.SMTPBadRcpt, smtp.SMTPServerError):
            rcpt = getattr(failure.value, "addr", None)  # Twisted keeps an Address here
            self._refuse("RCPT", rcpt, failure.value.code, _enhanced(failure.value),
                         _text(failure.value.resp))
        else:
            log.failure("recipient check failed", failure)
            self.say(451, "4.3.0", "Error: local error in processing")

    def _open_messages(self) -> bool:
        """
        Create each distinct IMessage once (C{_msgs}), note each recipient's
        (C{_rcpt_msgs}: LMTP replies per recipient) and give them the trace header.
        """
        header = self._received_header()
        msgs: list = []
        per_rcpt: list = []
        try:
            for _user, factory in self._to:
                msg = factory()
                per_rcpt.append(msg)
                if not any(m is msg for m in msgs):
                    msgs.append(msg)
            self._give_header(header.split(b"\n"), msgs)
        except smtp.SMTPServerError as e:
            return self._open_failed(msgs, e.code, None, _text(e.resp))
        except Exception:
            log.failure("opening the message failed")
            return self._open_failed(msgs, 451, "4.3.0", "Error: local error in processing")
        self._msgs, self._rcpt_msgs = msgs, per_rcpt
        return True

    def _checks_at_end_of_data(self) -> bool:
        """Whether mail checks or rspamd see the message before it is delivered."""
        return self.factory.checker is not None or self.factory.rspamd is not None

    def _give_header(self, lines: list[bytes], msgs: list) -> None:
        """The trace header into each message now, or held for the checks at the end of DATA."""
        if self._checks_at_end_of_data():
            self._held = lines
            return
        for line in lines:
            for msg in msgs:
                msg.lineReceived(line)

    def _open_failed(self, msgs: list, code: int, enhanced: str | None,
                     text: str | bytes) -> bool:
        self._msgs = msgs
        self._reset_transaction()
        self.say(code, enhanced, text)
        return False

    def _received_header(self) -> bytes:
        self._queue_id = secrets.token_hex(6).upper()
        custom = None
        if self.delivery is not None:
            custom = self.delivery.receivedHeader(
                self._helo, self._from, [u for u, _f in self._to])
        if custom:
            return custom.replace(b"\r\n", b"\n")
        proto = "UTF8" if "SMTPUTF8" in self._params else ""
        proto += self.trace_protocol if self._esmtp else "SMTP"
        proto += ("S" if self.startedTLS else "") + ("A" if self.authenticated else "")
        helo = self._helo[0] if self._helo else b"unknown"
        recipient = b""
        if len(self._to) == 1:
            recipient = b"\n\tfor <" + bytes(self._to[0][0].dest) + b">"
        # Postfix's smtpd_sasl_authenticated_header: who submitted it, for abuse handling.
        who = b""
        if self.authenticated and self.auth_user:
            who = b"\n\t(Authenticated sender: " + _clean(self.auth_user) + b")"
        return (b"Received: from " + helo + b" ([" + self.peer.encode() + b"])" + who
                + b"\n\tby "
                + self.host + b" (netsuite) with " + proto.encode() + b" id "
                + self._queue_id.encode() + recipient + b";\n\t"
                + smtp.rfc822date(time.localtime()))

    def _ready_for_data(self, verb: str) -> bool:
        if self._from is None:
            self.say(503, "5.5.1", "Error: need MAIL command")
            return False
        if not self._to:
            self.say(554, "5.5.1", "Error: no valid recipients")
            return False
        return True

    # -- DATA ----------------------------------------------------------------

    def do_DATA(self, rest: bytes) -> None:
        if rest:
            self.say(501, "5.5.4", "Syntax: DATA")
            return
        if isinstance(self._reader, wire.ChunkReader):
            self.say(503, "5.5.1", "Error: DATA after BDAT")
            return
        if not self._ready_for_data("DATA") or not self._open_messages():
            return
        self._reader = wire.DataReader(self.settings.max_message_size)
        self.mode = DATA
        self.say(354, None, "End data with <CR><LF>.<CR><LF>")

    def _data_bytes(self) -> None:
        reader = self._reader
        assert isinstance(reader, wire.DataReader)  # mode DATA
        data = self._framer.take()
        was_big = reader.too_big
        lines = reader.feed(data)
        if reader.too_big and not was_big:
            self._abort_messages()
        self._feed(lines)
        if reader.done:
            self._framer.unread(reader.rest)
            self.mode = COMMAND
            self._wait(self._end_message(reader.too_big, reader.size))

    def _feed(self, lines: list[bytes]) -> None:
        if not lines:
            return
        if self._held is not None:
            self._held.extend(lines)
            return
        for msg in self._msgs:
            # netsuite's own Transaction takes a read's lines in one call; any
            # other realm's IMessage gets Twisted's one call per line.
            bulk = getattr(msg, "linesReceived", None)
            if bulk is not None:
                bulk(lines)
            else:
                for line in lines:
                    msg.lineReceived(line)

    def _end_message(self, too_big: bool, size: int):
        held, self._held = self._held, None
        if too_big or held is None:
            return self._deliver(too_big, size)
        helo = self._helo[0] if self._helo else b""
        d: defer.Deferred = defer.succeed(held)
        if self.factory.checker is not None:
            domains = tuple(sorted({u.dest.domain.decode("utf-8", "replace").lower()
                                    for u, _f in self._to}))
            d = self.factory.checker.check(held, self.peer, helo, bytes(self._from), domains)
            d.addCallback(self._apply_policy, size)
        if self.factory.rspamd is not None:
            d.addCallback(lambda lines: None if lines is None
                          else self._spam_filter(lines, helo))

        def checked(lines: list[bytes] | None):
            if self._lost or lines is None:
                return None
            self._feed(lines)
            return self._deliver(False, size)

        return d.addCallback(checked)

    def _apply_policy(self, verdict, size: int) -> list[bytes] | None:
        """The checks' verdict: the lines to go on with (maybe into Junk), or None once refused."""
        if self._lost:
            return None
        if verdict.action == "reject":
            self._refuse_checked(verdict, size)
            return None
        if verdict.action == "junk":
            for msg in self._msgs:
                if hasattr(msg, "folder"):
                    msg.folder = "Junk"
            log.info("junked: reason={reason} from=<{sender}> address={client}",
                     reason=_POLICY_REASONS.get(verdict.reason, verdict.reason),
                     sender=_show(self._from), client=self.peer, event="junked",
                     protocol=self.protocol_name, listener=self.factory.listener)
        return verdict.lines

    # -- rspamd (netsuite.mailauth.rspamd) ---------------------------------------

    def _spam_filter(self, lines: list[bytes], helo: bytes):
        """rspamd's verdict: the lines to deliver (maybe into Junk), or None once refused."""
        if self._lost:
            return None
        envelope = rspamd.Envelope(
            ip=self.peer, helo=helo, sender=bytes(self._from),
            recipients=[bytes(u.dest) for u, _f in self._to],
            queue_id=getattr(self, "_queue_id", "-"), user=self.auth_user)
        d = self.factory.rspamd.scan(lines, envelope)

        def decided(outcome: rspamd.Outcome):
            if self._lost:
                return None
            if outcome.reply is not None:
                code, enhanced, text = outcome.reply
                self._refuse("DATA", None, code, enhanced, text.encode())
                self._reset_transaction()
                return None
            if outcome.folder:
                for msg in self._msgs:
                    rspamd.file_into(msg, outcome.folder)
            return outcome.lines

        return d.addCallback(decided)

    def _refuse_checked(self, verdict, size: int) -> None:
        """The checks' policy refuses the message (550 5.7.1): nothing is stored."""
        d = verdict.dmarc
        if verdict.reason == "spf-fail":
            text = "Error: SPF check failed for the envelope sender"
        elif verdict.reason == "dmarc-bad-from":
            text = "Error: the message needs exactly one From address domain (RFC 7489 6.6.1)"
        else:
            text = (f"Error: rejected by the DMARC policy of "
                    f"{d.header_from if d is not None else 'the sender'}")
        self._abort_messages()
        self._refuse("DATA", None, 550, "5.7.1", text.encode(),
                     policy=_POLICY_REASONS.get(verdict.reason, verdict.reason), size=size)
        self._reset_transaction()

    def _deliver(self, too_big: bool, size: int):
        if too_big:
            self._refuse("DATA", None, 552, "5.3.4", b"Error: message size exceeds fixed limit")
            self._count_message(False)
            self._reset_transaction()
            return None
        msgs, self._msgs = self._msgs, []
        sender, recipients = self._from, [u for u, _f in self._to]
        queue_id = getattr(self, "_queue_id", "-")
        d = defer.gatherResults([defer.maybeDeferred(m.eomReceived) for m in msgs],
                                consumeErrors=True)

        def stored(_):
            self._count_message(True, size)
            self.say(250, "2.0.0", f"Ok: queued as {queue_id}")
            log.info("accepted: id={message_id} size={size} from=<{sender}> to={recipients} "
                     "address={client} user={user}",
                     message_id=queue_id, size=size, sender=_show(sender),
                     recipients=",".join(f"<{_show(u.dest)}>" for u in recipients),
                     client=self.peer, user=self.auth_user or "-", event="accepted",
                     protocol=self.protocol_name, listener=self.factory.listener)

        def failed(failure: Failure):
            failure = getattr(failure.value, "subFailure", failure)
            self._count_message(False)
            if failure.check(smtp.SMTPServerError):
                self._refuse("DATA", None, failure.value.code, None, _text(failure.value.resp))
            else:
                log.failure("delivery failed: id={message_id}", failure, message_id=queue_id)
                self.say(451, "4.3.0", "Error: could not store the message, try again later")
                metrics.smtp_refusals.labels(self.factory.listener, "data",
                                             metrics.smtp_reason("4.3.0", 451)).inc()

        self._from, self._to, self._params, self._reader = None, [], {}, None
        d.addCallbacks(stored, failed)
        return d

    def _count_message(self, accepted: bool, size: int = 0) -> None:
        """C{netsuite_smtp_messages_total} (and the bytes of an accepted one)."""
        factory = self.factory
        factory.counted["accepted" if accepted else "refused"].inc()
        if accepted:
            factory.received_bytes.inc(size)

    # -- BDAT (RFC 3030) -------------------------------------------------------

    def do_BDAT(self, rest: bytes) -> None:
        try:
            size, last = wire.parse_bdat(rest)
        except wire.WireError as e:
            # Without a valid size the chunk cannot be skipped: close (RFC 3030 3).
            self.say(e.code, e.enhanced, e.text)
            self._close()
            return
        self._bdat_left, self._bdat_last = size, last
        self._bdat_error = None
        self.mode = BDAT
        if isinstance(self._reader, wire.DataReader):
            self._bdat_error = wire.reply(503, "5.5.1", "Error: BDAT after DATA")
        elif self._from is None:
            self._bdat_error = wire.reply(503, "5.5.1", "Error: need MAIL command")
        elif not self._to:
            self._bdat_error = wire.reply(554, "5.5.1", "Error: no valid recipients")
        elif self._reader is None:
            if self._open_messages():
                self._reader = wire.ChunkReader(self.settings.max_message_size)
            else:
                self._bdat_error = b""  # already answered
        if size == 0:
            self._end_chunk()

    def _bdat_bytes(self) -> None:
        take = self._framer.take(self._bdat_left)
        self._bdat_left -= len(take)
        if self._bdat_error is None:
            reader = self._reader
            assert isinstance(reader, wire.ChunkReader)  # no error: the transaction's reader
            was_big = reader.too_big
            lines = reader.feed(take)
            if reader.too_big and not was_big:
                self._abort_messages()
            self._feed(lines)
        if self._bdat_left == 0:
            self._end_chunk()

    def _end_chunk(self) -> None:
        self.mode = COMMAND
        if self._bdat_error is not None:
            if self._bdat_error:
                self._errors += 1
                self.transport.write(self._bdat_error)
            self._bdat_error = None
            return
        reader = self._reader
        assert isinstance(reader, wire.ChunkReader)  # no error: the transaction's reader
        if reader.too_big:
            self._wait(self._end_message(True, reader.size))
        elif self._bdat_last:
            self._feed(reader.finish())
            self._wait(self._end_message(False, reader.size))
        else:
            self.say(250, "2.0.0", f"{reader.size} octets received")


def _show(address: Any) -> str:
    """An address for the log, whatever the realm handed us."""
    raw = bytes(address) if not isinstance(address, bytes) else address
    return raw.decode("utf-8", "replace")


def _clean(text: str) -> bytes:
    """A user name as a header comment: no line breaks, parentheses or backslashes."""
    return "".join(c for c in text if c.isprintable() and c not in "()\\").encode(
        "utf-8", "replace")


def _text(resp: Any) -> bytes:
    return resp if isinstance(resp, bytes) else str(resp).encode("utf-8", "replace")


def refusal_reason(what: str, code: int, enhanced: str | None, text: bytes) -> str:
    """
    The reason code (L{netsuite.logs.REASONS}) of a refused MAIL, RCPT or DATA,
    from its enhanced status code (RFC 3463), given or leading the text.
    """
    status = enhanced
    if status is None:
        m = wire.ENHANCED.match(text)
        status = m.group(0).strip().decode() if m else f"{code // 100}.0.0"
    detail = status.split(".", 1)[1] if "." in status else ""
    if detail == "1.1":
        return "unknown_recipient" if what != "MAIL" else "sender_rejected"
    if detail == "2.2":
        return "quota_exceeded"
    if detail in ("3.4", "2.3"):
        return "message_too_large"
    if detail == "3.1":
        return "insufficient_storage"
    if detail == "5.3":
        return "too_many_recipients"
    if code == 530:
        return "auth_required"
    if code == 450 and detail == "7.1":
        return "rate_limited"
    if detail in ("7.1", "3.5"):
        return "sender_rejected" if what == "MAIL" else "relay_denied"
    return "refused"


def _enhanced(exc: smtp.SMTPServerError) -> str | None:
    """A default enhanced code for a realm's reply that carries none (RFC 3463)."""
    text = _text(exc.resp)
    if wire.ENHANCED.match(text):
        return None
    return f"{exc.code // 100}.{'1.1' if exc.code in (550, 553) else '0.0'}"


class SMTPFactory(protocol.ServerFactory):
    """Builds L{SMTPServer} sessions for one listener."""

    protocol = SMTPServer
    noisy = False

    def __init__(self, ctx, listener: str, submission: bool):
        self.ctx = ctx
        self.listener = listener
        self.submission = submission
        # Listed at 0 from the start; kept, as labels() costs a lock and a look-up.
        self.counted = {result: metrics.smtp_messages.labels(listener, result)
                        for result in ("accepted", "refused")}
        self.received_bytes = metrics.smtp_received_bytes.labels(listener)
        self.hostname = ctx.config.server.hostname.encode("idna")
        self.banner = ctx.config.smtp.banner.encode("utf-8")
        #: SPF/DKIM on the MX (None: off, and always on submission).
        self.checker = None if submission else make_checker(ctx)
        #: rspamd (None: off, or a submission listener it does not scan).
        self.rspamd = rspamd.make_scanner(ctx, submission)

    def buildProtocol(self, addr):
        p = self.protocol(self)
        p.factory = self
        return p

"""
The ESMTP client that delivers queued mail: Twisted's C{ESMTPClient}, kept
for the session set-up (EHLO, STARTTLS, AUTH) and extended for the
transaction, which Twisted does one command at a time without parameters.

Here: MAIL FROM carries SIZE / BODY=8BITMIME / SMTPUTF8 when the server
offers them, MAIL, RCPT and DATA go in one write under PIPELINING (RFC 2920),
every recipient keeps its own reply, several messages share one connection,
an 8-bit message becomes quoted-printable for a server without 8BITMIME, and
a stalled server is cut off by the command timeout instead of sent a QUIT it
will never answer.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import error as neterror
from twisted.internet import protocol
from twisted.logger import Logger
from twisted.mail import smtp

from netsuite.queue import wire
from netsuite.queue.wire import Reply

log = Logger(namespace="netsuite.queue")

#: What L{JobSource.next_job} returns to keep a connection open, idle, for
#: the next message to the same destination (Postfix's connection cache).
IDLE = object()

#: A multi-line reply longer than this is hostile or broken (Twisted keeps them all).
MAX_REPLY_LINES = 200


class JobSource(Protocol):
    """What a client connection takes its messages from (the runner's destination)."""

    def next_job(self, client: "QueueClient"): ...

    def job_done(self, job, results: dict[str, Reply]) -> None: ...

    def client_lost(self, client: "QueueClient", job, error: str) -> None: ...


class QueueClient(smtp.ESMTPClient):
    """One connection to one remote server, carrying as many jobs as the source gives."""

    #: Twisted's transcript would keep the AUTH exchange in memory: off.
    debug = False

    #: A TCP or TLS connection: both have C{disconnecting} and C{abortConnection},
    #: which no single Twisted interface declares.
    transport: Any
    #: Seconds without a reply before the connection is dropped (Twisted's is None).
    timeout: Any

    def __init__(self, source: JobSource, identity: bytes, remote: str,
                 secret: bytes | None = None, username: bytes | None = None,
                 context=None, require_tls: bool = False, timeout: float = 300,
                 mta_sts: Any = None):
        super().__init__(secret, context, identity, logsize=20)
        #: (mode, MX host, L{netsuite.queue.mtasts.CertificateCheck}) when the
        #: domain has an MTA-STS policy in mode enforce or testing.
        self.mta_sts = mta_sts
        self._sts_checked = False
        self.source = source
        self.remote = remote
        self.timeout = timeout
        self.requireTransportSecurity = require_tls
        if username is not None:
            self.requireAuthentication = True
            self.registerAuthenticator(smtp.PLAINAuthenticator(username))
            self.registerAuthenticator(smtp.LOGINAuthenticator(username))
        self.extensions: dict[bytes, bytes] = {}
        self.job: Any = None
        self._error: str | None = None
        self.delivered = 0
        #: The verb of the last command sent, for error messages ("after RCPT").
        self.last_command = "the greeting"

    def sendLine(self, line: bytes) -> None:
        self.last_command = line.split(b" ", 1)[0].decode("ascii", "replace").upper()
        super().sendLine(line)

    def lineReceived(self, line: bytes):
        if line[3:4] == b"-" and len(self.resp) >= MAX_REPLY_LINES:
            self._fail(f"reply of more than {MAX_REPLY_LINES} lines after {self.last_command}")
            return None
        if self.transport is not None and self.transport.disconnecting:
            return None
        return super().lineReceived(line)

    # -- session set-up (Twisted's, with the capabilities kept) --------------------

    def esmtpState_serverConfig(self, code, resp):
        self.extensions = wire.parse_ehlo(resp)
        if self.mta_sts is not None and not self._sts_checked:
            mode, host, check = self.mta_sts
            if self._tlsMode:  # the EHLO after STARTTLS: the handshake is done
                self._sts_checked = True
                try:
                    problem = check.problem(self.transport, host)
                except Exception as e:  # a broken certificate the libraries choke on
                    problem = f"certificate check failed ({type(e).__name__}: {e})"[:300]
                if problem is not None and not self._sts_failed(f"{host}: {problem}"):
                    return
            elif b"STARTTLS" not in self.extensions:
                self._sts_checked = True
                if not self._sts_failed(f"{host}: no STARTTLS offered"):
                    return
        self.tryTLS(code, resp, self.extensions)

    def _sts_failed(self, problem: str) -> bool:
        """An MTA-STS check failed: C{enforce} ends the connection, C{testing} logs; go on?"""
        mode = self.mta_sts[0]
        if mode == "enforce":
            log.warn("MTA-STS enforce: {problem}; delivery deferred", problem=problem,
                     event="mta_sts_refused")
            self._fail(f"4.7.5 MTA-STS enforce: {problem}")
            return False
        log.warn("MTA-STS testing: {problem}; delivered anyway", problem=problem,
                 event="mta_sts_testing")
        return True

    def smtpState_helo(self, code, resp):
        """EHLO refused: HELO once (Twisted would repeat HELO as long as it is refused)."""
        super().smtpState_helo(code, resp)
        self._failresponse = self._helo_refused

    def _helo_refused(self, code, resp):
        self._fail(f"HELO refused: {code} {_text(resp)}")

    def smtpConnectionFailed(self, code, resp):
        self._fail(f"remote greeting: {code} {_text(resp)}")

    def sendError(self, exc):
        """Any set-up error (no TLS, AUTH refused, bad reply): give up this connection."""
        code = getattr(exc, "code", -1)
        resp = getattr(exc, "resp", exc)
        self._fail(f"{code} {_text(resp)}" if isinstance(code, int) and code > 0
                   else _text(resp))

    def timeoutConnection(self):
        self._fail(f"timed out waiting for the remote server after {self.last_command}")

    def _fail(self, error: str) -> None:
        if self._error is None:
            self._error = error
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason=protocol.connectionDone):
        super().connectionLost(reason)
        job, self.job = self.job, None
        if (self._error is None and self._tlsMode and not self._sts_checked
                and self.mta_sts is not None and self.mta_sts[0] == "enforce"
                and not reason.check(neterror.ConnectionDone)):
            # The TLS handshake itself failed (no shared cipher, an alert).
            self._error = (f"4.7.5 MTA-STS enforce: {self.mta_sts[1]}: TLS failed: "
                           f"{reason.getErrorMessage()[:200]}")
        error = self._error
        if error is None and job is not None:
            error = f"lost connection with {self.remote} while sending"
        self.source.client_lost(self, job, error or "")

    # -- transactions ------------------------------------------------------------------

    def smtpState_from(self, code, resp):
        """Ready for a message: after EHLO/STARTTLS/AUTH, and after each message."""
        job = self.source.next_job(self)
        if job is IDLE:
            self.setTimeout(None)
            self._expected = range(0, 1000)
            self._okresponse = self._failresponse = self._spoke_while_idle
            return
        if job is None:
            self._disconnectFromServer()
            return
        self.job = job
        self._start(job)

    def wake(self) -> None:
        """An idle connection gets work: start the next message."""
        self.setTimeout(self.timeout)
        self.smtpState_from(250, b"")

    def quit_idle(self) -> None:
        self.setTimeout(self.timeout)
        self._disconnectFromServer()

    def _spoke_while_idle(self, code: int, resp: bytes) -> None:
        """A server closing an idle connection (421 timeout, say): just go."""
        self.transport.loseConnection()

    def _start(self, job) -> None:
        ext = self.extensions
        message = job.message
        eightbit = job.eightbit
        if eightbit and b"8BITMIME" not in ext:
            message = wire.downgrade_8bit(message)
            eightbit = False
        self._payload = wire.to_wire(message)
        limit = ext.get(b"SIZE", b"")
        if limit.isdigit() and 0 < int(limit) < len(self._payload):
            self._finish_all(Reply(552, "5.3.4 Message size exceeds fixed maximum message "
                                        f"size of {self.remote} ({int(limit)} bytes)"), rset=False)
            return
        smtputf8 = job.smtputf8
        if smtputf8 and b"SMTPUTF8" not in ext:
            self._finish_all(Reply(553, "5.6.7 Recipient or sender needs SMTPUTF8, which "
                                        f"{self.remote} does not support"), rset=False)
            return
        size = len(self._payload) if b"SIZE" in ext else None
        self._cmds = [wire.mail_command(job.sender.encode("utf-8"), size,
                                        eightbit, smtputf8)]
        self._cmds += [wire.rcpt_command(r.encode("utf-8")) for r in job.addresses]
        self._cmds.append(b"DATA")
        self._replies: list[Reply] = []
        self._pipelining = b"PIPELINING" in ext
        self._expected = range(0, 1000)
        self._okresponse = self._failresponse = self._on_reply
        if self._pipelining:
            self.last_command = "MAIL/RCPT/DATA"
            self.transport.write(b"\r\n".join(self._cmds) + b"\r\n")
        else:
            self.sendLine(self._cmds[0])

    def _on_reply(self, code: int, resp: bytes) -> None:
        reply = Reply(code, _text(resp))
        self._replies.append(reply)
        got, total = len(self._replies), len(self._cmds)
        mail_ok = self._replies[0].ok
        accepted = any(r.ok for r in self._replies[1:total - 1])
        if got < total:
            if self._pipelining:
                return
            if not mail_ok:
                self._finish()
            elif got < total - 1:
                self.sendLine(self._cmds[got])
            elif accepted:
                self.sendLine(b"DATA")
            else:
                self._finish()
            return
        if code == 354:
            self._okresponse = self._failresponse = self._on_final
            if mail_ok and accepted:
                self.last_command = "end of data"
                self.transport.write(self._payload)
            else:  # RFC 2920 3.1: a server that says 354 anyway gets an empty message
                self.transport.write(b".\r\n")
            return
        self._finish()

    def _on_final(self, code: int, resp: bytes) -> None:
        self._replies.append(Reply(code, _text(resp)))
        self._finish()

    def _finish(self) -> None:
        """Hand every recipient its own answer; then the next message."""
        replies, total = self._replies, len(self._cmds)
        mail = replies[0]
        last = replies[-1]
        results: dict[str, Reply] = {}
        for i, address in enumerate(self.job.addresses, 1):
            rcpt = replies[i] if i < len(replies) else None
            if not mail.ok:
                results[address] = mail
            elif rcpt is None:
                results[address] = Reply(-1, "no reply to RCPT")
            elif rcpt.code == 552:
                # RFC 5321 4.5.3.1.10: a 552 to RCPT (too many recipients) is temporary.
                results[address] = Reply(452, rcpt.text)
            elif not rcpt.ok:
                results[address] = rcpt
            elif len(replies) <= total - 1:
                results[address] = Reply(-1, "no reply to DATA")
            else:
                results[address] = last
        self._done(results, rset=not (len(replies) > total and last.ok))

    def _finish_all(self, reply: Reply, rset: bool) -> None:
        self._done({a: reply for a in self.job.addresses}, rset)

    def _done(self, results: dict[str, Reply], rset: bool) -> None:
        job, self.job = self.job, None
        if any(r.ok for r in results.values()):
            self.delivered += 1
        self.source.job_done(job, results)
        if rset:
            self.sendLine(b"RSET")
            self._expected = range(0, 1000)
            self._okresponse = self._failresponse = self.smtpState_from
        else:
            self.smtpState_from(250, b"")


def _text(resp) -> str:
    if isinstance(resp, bytes):
        return resp.decode("utf-8", "replace").replace("\n", " / ")
    return str(resp)


class QueueClientFactory(protocol.Factory):
    """Builds one L{QueueClient} per connection attempt."""

    noisy = False

    def __init__(self, make):
        self.make = make

    def buildProtocol(self, addr):
        p = self.make()
        p.factory = self
        return p

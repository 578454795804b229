"""
The POP3 session, on Twisted's L{pop3.POP3}.

Twisted's class supplies the timeout, the greeting and the pipelining queue
(C{blocked}).  Replaced here, because Twisted 26.10 gets them wrong: the line
reader (an overlong line is answered and the session continues), the
dispatcher (AUTHORIZATION vs TRANSACTION state, RFC 2449 response codes), CAPA,
STLS with injection protection, USER/PASS and AUTH PLAIN through the
throttled Portal with a TLS-first policy, and RETR/TOP (byte-exact CRLF and
dot-stuffing; Twisted's chunked stuffer misses dots at chunk boundaries).
"""

from __future__ import annotations

from typing import Any, BinaryIO

from twisted.cred import credentials
from twisted.cred import error as cred_error
from twisted.internet import defer, interfaces
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.mail import pop3
from zope.interface import implementer

from netsuite import metrics
from netsuite.auth import sasl
from netsuite.config import plaintext_auth_allowed
from netsuite.db.errors import DatabaseUnavailable
from netsuite.deadline import CommandDeadline
from netsuite.framer import LineFramer, Overlong
from netsuite.pop3 import wire
from netsuite.pop3.mailbox import MailboxInUse
from netsuite.sendnow import send_now, write_now
from netsuite.shutdown import IGracefulStop, StopWhenIdle
from netsuite.store.folder import to_wire

log = Logger(namespace="netsuite.pop3")

AUTHORIZATION_COMMANDS = {"CAPA", "USER", "PASS", "AUTH", "STLS", "QUIT", "NOOP"}
TRANSACTION_COMMANDS = {"CAPA", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "QUIT",
                        "TOP", "UIDL"}


@implementer(interfaces.IPullProducer)
class _Retrieval:
    """One RETR body, read and sent a chunk at a time as the transport drains."""

    CHUNK = 65536

    def __init__(self, proto: "POP3Server", f: BinaryIO):
        self.proto = proto
        self.file: BinaryIO | None = f
        self.stuffer = wire.Stuffer()

    def resumeProducing(self) -> None:
        if self.file is None:
            return
        while True:
            chunk = self.file.read(self.CHUNK)
            out = self.stuffer.feed(chunk) if chunk else b""
            if len(chunk) < self.CHUNK:
                # The last piece: the terminating dot goes in the same write, so
                # the end of a body is never a small segment of its own.
                self.proto.transport.write(out + self.stuffer.finish())
                self._end()
                return
            if out:  # a pull producer must write, or it is never asked again
                self.proto.transport.write(out)
                return

    def stopProducing(self) -> None:
        self._end()

    def _end(self) -> None:
        if self.file is None:
            return
        self.file.close()
        self.file = None
        self.proto.transport.unregisterProducer()
        self.proto._resume()


@implementer(IGracefulStop)
class POP3Server(StopWhenIdle, pop3.POP3, CommandDeadline):
    """One POP3 connection; see the module docstring."""

    #: Bytes of one command line, CRLF excluded (SASL responses need more than 255).
    MAX_LENGTH = 2048

    #: A TCP or TLS connection (C{startTLS}, C{disconnecting}, producers).
    transport: Any
    #: The client's L{netsuite.auth.throttle.PeerPortal}.
    portal: Any
    #: After login, the realm's C{pop3.IMailbox} (netsuite's, or a custom realm's).
    mbox: Any

    def __init__(self, ctx, implicit_tls: bool = False, timeout: int = 600):
        self.ctx = ctx
        self.tls = implicit_tls
        self.timeOut = timeout
        limits = getattr(ctx.config, "limits", None)
        self._command_timeout = getattr(limits, "command_timeout", 60)
        self._framer = LineFramer(self.MAX_LENGTH, self._command_timeout)
        self._user: bytes | None = None
        self._sasl_pending = False
        self._busy = False
        #: The command that set C{_busy}, timed until L{_resume}.
        self._command_timer: metrics.Timer | None = None
        self._idle = timeout
        #: Set in connectionLost: callbacks that fire later must not act on the session.
        self._lost = False
        #: The server is stopping: -ERR once no command is in progress.
        self._stopping = False
        self.magic = b""

    # -- connection ---------------------------------------------------------------------

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", str(peer))
        self.portal = self.ctx.portal.bind(self.peer, "pop3")
        self.transport.write(wire.ok("netsuite POP3 ready"))
        self.setTimeout(self.timeOut)

    def connectionLost(self, reason):
        self._lost = True
        self._user = None
        self.cancelDeadline()
        super().connectionLost(reason)

    def plaintext_allowed(self) -> bool:
        return self.tls or plaintext_auth_allowed(self.ctx.config, "pop3")

    def dataReceived(self, data: bytes) -> None:
        """Lines end in LF (CR optional); an overlong line gets -ERR, the session goes on."""
        if self.transport.disconnecting:
            return
        self._framer.feed(data, self.deadlineNow())
        self._read_lines()
        send_now(self.transport)

    def _read_lines(self) -> None:
        framer = self._framer
        while not self.transport.disconnecting:
            if self.blocked is not None or self._busy:
                return
            if self._stop_if_idle():  # pipelined after the last command (a QUIT too): not run
                return
            line = framer.line()
            if line is None:
                break
            if isinstance(line, Overlong):
                self.transport.write(wire.err("Line too long"))
                continue
            starting_tls = self.lineReceived(line)
            if starting_tls:
                # Anything the client pipelined after STLS arrived in plain
                # text: drop it, never run it inside TLS (RFC 2595 4).
                framer.discard()
                break
        if not self.transport.disconnecting:
            self.armDeadline()

    # -- the whole-line deadline (netsuite.deadline) ---------------------------------

    def deadlineFramer(self) -> LineFramer | None:
        return None if self.transport.disconnecting else self._framer

    def deadlineWaiting(self) -> bool:
        return self.blocked is not None or self._busy

    def deadlineExpired(self) -> None:
        self.transport.write(wire.err("Command took too long, closing connection"))
        self._framer.discard()
        self.transport.loseConnection()

    def _resume(self, _=None):
        """A long operation finished: run what was pipelined meanwhile."""
        self._busy = False
        timer, self._command_timer = self._command_timer, None
        if timer is not None:
            timer.done()
        if self._lost or self._stop_if_idle():
            return
        if self.timeOut is None:
            self.setTimeout(self._idle)  # off while a login was checked
        self.resetTimeout()
        if self._framer.buffered and not self.transport.disconnecting:
            self._framer.restart(self.deadlineNow())
            self._read_lines()

    def lineReceived(self, line: bytes):
        self.resetTimeout()
        if self._sasl_pending:
            return self._sasl_response(line)
        try:
            cmd, args = wire.parse_command(line)
        except wire.CommandError as e:
            self.transport.write(wire.err(str(e)))
            return None
        allowed = TRANSACTION_COMMANDS if self.mbox is not None else AUTHORIZATION_COMMANDS
        handler = getattr(self, f"pop3_{cmd}", None)
        # The label comes from our own command table: a client cannot add names.
        metrics.pop3_commands.labels("other" if handler is None else cmd).inc()
        if handler is None:
            self.transport.write(wire.err("Unknown command"))
            return None
        if cmd not in allowed:
            self.transport.write(wire.err(f"{cmd} not allowed in this state"))
            return None
        timer = metrics.Timer(metrics.pop3_command_duration, cmd)
        try:
            return handler(*args)
        except TypeError:
            self.transport.write(wire.err(f"Wrong number of arguments for {cmd}"))
        except wire.CommandError as e:
            self.transport.write(wire.err(str(e)))
        finally:
            if self._busy:  # a login being checked, a body being streamed: until _resume
                self._command_timer = timer
            else:
                timer.done()
        return None

    # -- AUTHORIZATION state ------------------------------------------------------------

    def capabilities(self) -> list[bytes]:
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING",
                b"EXPIRE NEVER", b"LOGIN-DELAY 0", b"IMPLEMENTATION netsuite"]
        if self.mbox is None:
            if self.plaintext_allowed():
                caps += [b"USER", b"SASL PLAIN"]
            if not self.tls and self.ctx.tls is not None:
                caps.append(b"STLS")
        return caps

    def pop3_CAPA(self):
        self.transport.write(wire.ok("Capability list follows") +
                             b"".join(c + b"\r\n" for c in self.capabilities()) + b".\r\n")

    def pop3_STLS(self):
        if self.tls:
            self.transport.write(wire.err("Already using TLS"))
            return None
        if self.ctx.tls is None or interfaces.ITLSTransport(self.transport, None) is None:
            self.transport.write(wire.err("TLS not available"))
            return None
        self.transport.write(wire.ok("Begin TLS negotiation"))
        self.transport.startTLS(self.ctx.tls)
        self.tls = True
        self._user = None
        return True

    def _no_plaintext(self) -> bool:
        if self.plaintext_allowed():
            return False
        self.transport.write(wire.err(
            "Plaintext authentication disallowed on non-secure connections; use STLS", "AUTH"))
        log.info("login refused without TLS: protocol=pop3 address={client}",
                 client=self.peer, protocol="pop3", event="login_refused",
                 reason="plaintext_refused")
        return True

    def pop3_USER(self, *args):
        if self._no_plaintext():
            return
        if len(args) != 1 or not args[0]:
            raise wire.CommandError("USER takes one argument")
        self._user = args[0]
        self.transport.write(wire.ok())

    def pop3_PASS(self, *words):
        if self._no_plaintext():
            return
        if self._user is None:
            self.transport.write(wire.err("USER first"))
            return
        user, self._user = self._user, None
        self._login(user, b" ".join(words))

    def pop3_AUTH(self, *args):
        if not args:
            self.transport.write(wire.ok("Methods follow") + b"PLAIN\r\n.\r\n")
            return
        if args[0].upper() != b"PLAIN" or len(args) > 2:
            self.transport.write(wire.err("Unsupported authentication mechanism"))
            return
        if self._no_plaintext():
            return
        if len(args) == 2:
            self._sasl_response(args[1] if args[1] != b"=" else b"")
        else:
            self._sasl_pending = True
            self.transport.write(b"+ \r\n")

    def _sasl_response(self, line: bytes):
        self._sasl_pending = False
        if line == b"*":
            self.transport.write(wire.err("Authentication cancelled"))
            return
        try:
            authz, user, password = sasl.decode_plain(line)
        except sasl.SASLError as e:
            self.transport.write(wire.err(str(e)))
            return
        if authz and authz != user:
            self.transport.write(wire.err("Proxy authorization is not supported", "AUTH"))
            return
        self._login(user, password)

    def _login(self, user: bytes, password: bytes) -> None:
        self._busy = True
        self.setTimeout(None)
        d = self.portal.login(credentials.UsernamePassword(user, password), None, pop3.IMailbox)
        d.addCallbacks(self._logged_in, self._login_failed)
        d.addErrback(self._unexpected)
        d.addBoth(self._resume)

    def _logged_in(self, result):
        iface, avatar, logout = result
        if self._lost or self.transport.disconnecting:
            # Gone while the password was checked: release the maildrop lock at once.
            logout()
            return
        self.mbox = avatar
        self._onLogout = logout
        count = len(avatar.messages)
        size = sum(m.size for m in avatar.messages)
        self.transport.write(wire.ok(f"Logged in, {count} messages ({size} octets)"))

    def _login_failed(self, failure):
        if self._lost:
            if failure.check(MailboxInUse, cred_error.UnauthorizedLogin,
                             cred_error.UnhandledCredentials):
                return None
            return failure
        if failure.check(MailboxInUse):
            self.transport.write(wire.err("Mailbox is locked by another POP3 session",
                                          "IN-USE"))
        elif failure.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
            self.transport.write(wire.err("Authentication failed", "AUTH"))
        elif failure.check(DatabaseUnavailable):  # logged by the portal
            self.transport.write(wire.err("User database unavailable, try again later",
                                          "SYS/TEMP"))
        else:
            return failure

    def _unexpected(self, failure):
        log.failure("POP3 login", failure)
        if self._lost:
            return
        self.transport.write(wire.err("Temporary server failure", "SYS/TEMP"))

    # -- TRANSACTION state --------------------------------------------------------------

    def _number(self, arg: bytes) -> int:
        """A message number -> 0-based index, or CommandError."""
        i = wire.message_number(arg) - 1
        if i >= len(self.mbox.messages):
            raise wire.CommandError("No such message")
        if i in self.mbox.deleted:
            raise wire.CommandError("Message is deleted")
        return i

    def pop3_NOOP(self):
        self.transport.write(wire.ok())

    def pop3_STAT(self):
        sizes = self.mbox.listMessages()
        live = [s for n, s in enumerate(sizes) if n not in self.mbox.deleted]
        self.transport.write(wire.ok(f"{len(live)} {sum(live)}"))

    def pop3_LIST(self, *args):
        if args:
            if len(args) > 1:
                raise TypeError
            i = self._number(args[0])
            self.transport.write(wire.ok(f"{i + 1} {self.mbox.messages[i].size}"))
            return
        lines = [b"%d %d\r\n" % (n + 1, m.size) for n, m in enumerate(self.mbox.messages)
                 if n not in self.mbox.deleted]
        self.transport.write(wire.ok("Scan list follows") + b"".join(lines) + b".\r\n")

    def pop3_UIDL(self, *args):
        if args:
            if len(args) > 1:
                raise TypeError
            i = self._number(args[0])
            self.transport.write(wire.ok(b"%d %s" % (i + 1, self.mbox.getUidl(i))))
            return
        lines = [b"%d %s\r\n" % (n + 1, self.mbox.getUidl(n))
                 for n in range(len(self.mbox.messages)) if n not in self.mbox.deleted]
        self.transport.write(wire.ok("Unique-id list follows") + b"".join(lines) + b".\r\n")

    def _send(self, i: int, transform, retrieve: bool = True) -> None:
        try:
            data = self.mbox.wire(i, retrieve)
        except KeyError:
            self.transport.write(wire.err("Message was removed by another session"))
            return
        body = transform(data)
        self.transport.write(wire.ok(f"{len(data)} octets") + wire.dot_stuff(body))
        self._highest = max(self._highest, i + 1)

    def pop3_RETR(self, arg):
        """Stream the message: memory stays flat and a slow reader slows only itself."""
        i = self._number(arg)
        try:
            size, f = self.mbox.retrieve(i, _Retrieval.CHUNK)
        except KeyError:
            self.transport.write(wire.err("Message was removed by another session"))
            return
        self._highest = max(self._highest, i + 1)
        if isinstance(f, bytes):
            # Most mail: the status line, the body and the dot in one write, in
            # this reactor turn (no producer, no extra round of small segments).
            write_now(self.transport, b"+OK %d octets\r\n" % size + wire.dot_stuff(to_wire(f)))
            return
        self.transport.write(wire.ok(f"{size} octets"))
        self._busy = True  # pipelined commands wait until the body is out
        self.transport.registerProducer(_Retrieval(self, f), False)

    def pop3_TOP(self, arg, lines):
        i = self._number(arg)
        if not lines.isdigit() or len(lines) > 9:
            raise wire.CommandError("Invalid line count")
        self._send(i, lambda data: wire.top(data, int(lines)), retrieve=False)

    def pop3_DELE(self, arg):
        i = self._number(arg)
        self.mbox.deleteMessage(i)
        self.transport.write(wire.ok(f"Message {i + 1} marked for deletion"))

    def pop3_RSET(self):
        self.mbox.undeleteMessages()
        self.transport.write(wire.ok())

    def pop3_QUIT(self):
        if self.mbox is None:
            self.transport.write(wire.ok("Bye"))
            self.transport.loseConnection()
            return
        # Pipelined commands wait (and are then dropped): the UPDATE state may
        # wait for a thread (fsyncs of the copies into Trash).
        self._busy = True

        def done(_) -> None:
            self.transport.write(wire.ok("Bye"))

        def failed(f) -> None:
            log.failure("POP3 UPDATE state", f)
            self.transport.write(wire.err("Some deleted messages were not removed"))

        def unlocked(result):
            # RFC 1939 6: the lock is released as the session ends; before the
            # +OK here, so a client that reconnects at once finds it free.
            unlock = getattr(self.mbox, "unlock", None)
            if unlock is None:
                return result
            return unlock().addBoth(lambda _: result)

        d = defer.maybeDeferred(self.mbox.sync).addBoth(unlocked).addCallbacks(done, failed)
        d.addBoth(lambda _: self.transport.loseConnection())
        d.addBoth(self._resume)

    def timeoutConnection(self):
        self.transport.write(wire.err("Idle for too long, closing connection"))
        self.transport.loseConnection()

    # -- graceful stop (netsuite.shutdown) ---------------------------------------------

    # SIGTERM: a RETR being sent (or a login being checked) finishes, then
    # -ERR [SYS/TEMP] (RFC 3206).  Never the UPDATE state: messages marked
    # with DELE stay, as after any connection that ends without QUIT.

    def _in_progress(self) -> bool:
        return bool(self.blocked is not None or self._busy)

    def _goodbye(self) -> None:
        log.info("shutdown: address={address}, -ERR [SYS/TEMP]", address=self.peer)
        self.transport.write(wire.err("Server shutting down", "SYS/TEMP"))
        self._framer.discard()
        self.transport.loseConnection()


class POP3Factory(Factory):
    """Builds L{POP3Server} for one listener."""

    def __init__(self, ctx, implicit_tls: bool = False):
        self.ctx = ctx
        self.implicit_tls = implicit_tls

    def buildProtocol(self, addr):
        cfg = self.ctx.config.pop3
        p = POP3Server(self.ctx, self.implicit_tls, cfg.idle_timeout)
        p.MAX_LENGTH = cfg.max_line_length
        p.factory = self
        return p

"""
The TELNET server protocol: option negotiation, the login dialogue, and the
bridge to the session's pseudo-terminal.

Built on L{twisted.conch.telnet.Telnet} for the option state machine (the Q
method of RFC 1143, so negotiation never loops).  Its byte parser is
replaced by L{netsuite.telnet.wire.Decoder}, which survives every command
byte (Twisted raises on IAC EOF/SUSP/ABORT) and knows BINARY.
"""

from __future__ import annotations

import ipaddress
import os
import termios
import time
from typing import Any

from twisted.conch import telnet as ctelnet
from twisted.cred import credentials, error
from twisted.internet import defer, protocol
from twisted.internet.interfaces import ISSLTransport, ITransport
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from netsuite.config import ConfigError, plaintext_auth_allowed
from netsuite.realm import ITerminalAvatar
from netsuite.shutdown import IGracefulStop
from netsuite.telnet import wire
from netsuite.telnet.session import PTYSession
from netsuite.telnet.utmp import Recorder

log = Logger(namespace="netsuite.telnet")


def _b(option: int) -> bytes:
    return bytes((option,))


#: Options we agree to perform ourselves when asked.
LOCAL_OPTIONS = {wire.ECHO, wire.SGA, wire.BINARY}
#: Options we let the client perform.
REMOTE_OPTIONS = {wire.SGA, wire.NAWS, wire.TTYPE, wire.BINARY, wire.NEW_ENVIRON}

MAX_NAME = 64
MAX_PASSWORD = 512
MAX_TYPEAHEAD = 4096
MAX_ENV_VARS = 32
#: Longest subnegotiation: room for a generous NEW-ENVIRON, then the client is cut off.
MAX_SUBNEGOTIATION = 16384
MAX_ENV_VALUE = 1024
#: How long a login waits for TTYPE / NAWS / NEW-ENVIRON answers still in flight.
SETTLE_TIMEOUT = 2.0

BS, DEL, CTRL_C, CTRL_D, CTRL_U = 8, 127, 3, 4, 21


@implementer(IGracefulStop)
class TelnetServer(ctelnet.Telnet, TimeoutMixin):
    """One TELNET connection: NVT negotiation, login, then a pty session."""

    # Only write/loseConnection are used, and only once makeConnection has set it.
    transport: ITransport

    def __init__(self, factory: "TelnetFactory", peer: str):
        super().__init__()
        self.factory = factory
        self.config = factory.config
        self.reactor = factory.reactor
        self.peer = peer
        self.decoder = wire.Decoder(max_subnegotiation=MAX_SUBNEGOTIATION)
        self.encoder = wire.Encoder()
        #: login, password, checking, session, closed
        self.phase = "login"
        self.line = bytearray()
        self._last_cr = False
        self.username = ""
        self.failures = 0
        self.typeahead = bytearray()
        self.term: str | None = None
        self.size: tuple[int, int] | None = None
        self.client_env: dict[str, str] = {}
        self._ttype_asked = False
        self._ttype_done = False
        self._env_asked = False
        self._env_done = False
        self._settle_waiters: list[defer.Deferred] = []
        self._login_timer = None
        self._pending: Any = None
        self.session: PTYSession | None = None
        self.avatar: Any = None
        self._logout = None
        self.started = time.monotonic()

    # -- connection ----------------------------------------------------------------

    def connectionMade(self) -> None:
        for option in (wire.ECHO, wire.SGA):
            self._ask(self.will, option)
        asked = [wire.NAWS, wire.TTYPE] + ([wire.NEW_ENVIRON] if self.config.new_environ else [])
        for option in asked:
            self._ask(self.do, option)
        banner = self.config.banner.replace("{hostname}", self.factory.hostname)
        if banner:
            self.say(banner.replace("\r\n", "\n").replace("\n", "\r\n") + "\r\n\r\n")
        if not self.factory.plaintext_ok(self.transport, self.peer):
            self.say("Logins over plain TELNET are disabled here: connect with TLS (telnets).\r\n")
            log.info("telnet: plain-text login refused address={client}", client=self.peer,
                     event="login_refused", reason="plaintext_refused")
            self._close()
            return
        self._login_timer = self.reactor.callLater(self.config.login_timeout, self._login_timeout)
        self.say("login: ")

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.phase = "closed"
        super().connectionLost(reason)
        self.setTimeout(None)
        self._cancel_login_timer()
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        for d in self._settle_waiters:
            d.cancel()
        self._settle_waiters = []
        if self.session is not None:
            self.session.hangup()
            log.info("telnet: connection closed user={user} address={client} pid={pid}",
                     user=self.username, client=self.peer, pid=self.session.pid,
                     event="disconnect")
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()
        self.factory.connections.discard(self)

    def _live_session(self) -> PTYSession:
        """The pty session: the "session" phase is entered only once it is set."""
        assert self.session is not None, "phase 'session' without a session"
        return self.session

    def _close(self) -> None:
        self.phase = "closed"
        self.transport.loseConnection()

    def shutdown(self) -> None:
        """SIGTERM (netsuite.shutdown): SIGHUP to the session's programs, a line, hang up."""
        if self.phase == "closed":
            return
        log.info("telnet: shutdown user={user} address={address}", user=self.username,
                 address=self.peer)
        if self.session is not None:
            self.session.hangup()
        self.say("\r\nServer shutting down\r\n")
        self._close()

    def say(self, text: str) -> None:
        """Server text (prompts, messages): already NVT-formed, IAC escaped."""
        self.transport.write(text.encode("utf-8").replace(b"\xff", b"\xff\xff"))

    # -- bytes in ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        for event in self.decoder.feed(data):
            if isinstance(event, wire.Data):
                self.applicationDataReceived(event.data)
            elif isinstance(event, wire.Command):
                self._command(event.cmd, event.option)
            elif isinstance(event, wire.Subnegotiation):
                self._subnegotiation(event.option, event.payload)
            else:
                log.warn("telnet: subnegotiation over {limit} bytes from {address}; "
                         "closing", limit=event.limit, address=self.peer)
                self._close()
                return

    def applicationDataReceived(self, data: bytes) -> None:
        if self.phase == "session":
            self.resetTimeout()
            self._live_session().write(data)
        elif self.phase in ("login", "password"):
            self._edit(data)
        elif self.phase == "checking":
            room = MAX_TYPEAHEAD - len(self.typeahead)
            self.typeahead += data[:max(room, 0)]

    # -- commands ---------------------------------------------------------------------

    def _command(self, cmd: int, option: int | None) -> None:
        if option is not None:
            self.commandReceived(_b(cmd), _b(option))
            if cmd == wire.WILL:
                self._remote_maybe_enabled(option)
            self._check_settled()
            return
        if cmd == wire.AYT:
            self.say("\r\n[Yes]\r\n")
        elif self.phase == "session":
            control = {wire.IP: termios.VINTR, wire.BRK: termios.VQUIT,
                       wire.ABORT: termios.VQUIT, wire.SUSP: termios.VSUSP,
                       wire.EOF: termios.VEOF, wire.EC: termios.VERASE,
                       wire.EL: termios.VKILL}.get(cmd)
            if control is not None:
                self._live_session().send_control(control)
            elif cmd == wire.AO:
                self._live_session().discard_output()
                self.transport.write(wire.command(wire.DM))
        elif self.phase in ("login", "password"):
            key = {wire.IP: CTRL_C, wire.EC: DEL, wire.EL: CTRL_U, wire.EOF: CTRL_D}.get(cmd)
            if key is not None:
                self._edit(bytes((key,)))
        # NOP, DM, GA, EOR and the rest: nothing to do.

    def enableLocal(self, option: bytes) -> bool:
        opt = option[0]
        if opt == wire.BINARY:
            self.encoder.binary = True
        return opt in LOCAL_OPTIONS

    def disableLocal(self, option: bytes) -> None:
        if option[0] == wire.BINARY:
            self.encoder.binary = False

    def enableRemote(self, option: bytes) -> bool:
        opt = option[0]
        if opt == wire.NEW_ENVIRON and not self.config.new_environ:
            return False
        if opt == wire.BINARY:
            self.decoder.binary = True
        return opt in REMOTE_OPTIONS

    def disableRemote(self, option: bytes) -> None:
        if option[0] == wire.BINARY:
            self.decoder.binary = False

    def _ask(self, how, option: int) -> None:
        d = how(_b(option))
        d.addErrback(lambda f: None)  # refused, or the connection went away
        d.addBoth(lambda _: self._check_settled())

    def _him(self, option: int):
        return self.getOptionState(_b(option)).him

    def _remote_maybe_enabled(self, option: int) -> None:
        """After the client's WILL took effect: ask for the type or the environment."""
        if self._him(option).state != "yes":
            return
        if option == wire.TTYPE and not self._ttype_asked:
            self._ttype_asked = True
            self.transport.write(wire.ttype_send())
        elif option == wire.NEW_ENVIRON and not self._env_asked:
            self._env_asked = True
            self.transport.write(wire.environ_send())

    # -- subnegotiations ---------------------------------------------------------------

    def _subnegotiation(self, option: int, payload: bytes) -> None:
        if option == wire.NAWS and self._him(option).state == "yes":
            size = wire.parse_naws(payload)
            if size is not None and size[0] and size[1]:
                self.size = size
                if self.session is not None:
                    self.session.resize(*size)
        elif option == wire.TTYPE and self._ttype_asked and not self._ttype_done:
            self._ttype_done = True
            self.term = wire.parse_ttype(payload)
        elif option == wire.NEW_ENVIRON and self._env_asked and self.session is None:
            parsed = wire.parse_environ(payload)
            if parsed is not None:
                self._env_done = True
                self._take_environment(parsed[1])
        self._check_settled()

    def _take_environment(self, variables: list[tuple[str, str | None]]) -> None:
        """Keep the whitelisted variables; everything else is dropped, USER included."""
        for name, value in variables:
            if value is None or not self.config.env_allowed(name):
                if name in ("USER", "LOGNAME"):
                    log.info("telnet: ignored client {name}={value!r} from {address}",
                             name=name, value=value, address=self.peer)
                continue
            if "\0" in value or len(value) > MAX_ENV_VALUE:
                continue
            if name in self.client_env or len(self.client_env) < MAX_ENV_VARS:
                self.client_env[name] = value

    def _settled(self) -> bool:
        """No answer we asked for is still in flight."""
        for option in (wire.NAWS, wire.TTYPE, wire.NEW_ENVIRON):
            if self._him(option).negotiating:
                return False
        if self._ttype_asked and not self._ttype_done:
            return False
        if self._env_asked and not self._env_done:
            return False
        return True

    def _check_settled(self) -> None:
        if self._settle_waiters and self._settled():
            waiters, self._settle_waiters = self._settle_waiters, []
            for d in waiters:
                d.callback(None)

    def _wait_settled(self) -> defer.Deferred:
        if self._settled():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._settle_waiters.append(d)

        def settle_anyway() -> None:
            if not d.called:
                d.callback(None)

        timer = self.reactor.callLater(SETTLE_TIMEOUT, settle_anyway)

        def done(result):
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(done)

    # -- the login dialogue ------------------------------------------------------------------

    def _echoing(self) -> bool:
        return self.getOptionState(_b(wire.ECHO)).us.state == "yes"

    def _edit(self, data: bytes) -> None:
        """Line editing for the login and password prompts (we echo, when agreed)."""
        for i, byte in enumerate(data):
            if self.phase not in ("login", "password"):
                self.applicationDataReceived(data[i:])
                return
            last_cr, self._last_cr = self._last_cr, byte == 13
            echo = self._echoing() and self.phase == "login"
            if byte in (10, 13):
                if byte == 10 and last_cr:
                    continue
                if self._echoing():
                    self.say("\r\n")
                self._line_done(bytes(self.line))
                self.line.clear()
            elif byte in (BS, DEL):
                if self.line:
                    # Drop one UTF-8 character.
                    del self.line[-1]
                    while self.line and (self.line[-1] & 0xC0) == 0x80:
                        del self.line[-1]
                    if echo:
                        self.say("\b \b")
            elif byte == CTRL_U:
                if echo:
                    self.say("\b \b" * len(self.line.decode("utf-8", "replace")))
                self.line.clear()
            elif byte == CTRL_C:
                self.line.clear()
                self.phase = "login"
                self.say("^C\r\nlogin: ")
            elif byte == CTRL_D:
                if not self.line:
                    self.say("\r\n")
                    self._close()
                    return
            elif byte < 32:
                continue
            else:
                limit = MAX_NAME * 4 if self.phase == "login" else MAX_PASSWORD
                if len(self.line) < limit:
                    self.line.append(byte)
                    if echo:
                        self.transport.write(bytes((byte,)).replace(b"\xff", b"\xff\xff"))

    def _line_done(self, line: bytes) -> None:
        if self.phase == "login":
            name = line.decode("utf-8", "replace").strip()
            if not name:
                self.say("login: ")
                return
            self.username = name
            self.phase = "password"
            self.say("Password: ")
        else:
            self.phase = "checking"
            self._check(self.username, line)

    def _check(self, name: str, password: bytes) -> None:
        if (len(name) > MAX_NAME or name.startswith("-")
                or any(ord(c) < 32 or c == "\ufffd" for c in name)):
            # Refused without a checker, but counted by the throttle like any bad login.
            d = self.factory.portal(self.peer).refuse(name.encode("utf-8", "replace"))
        else:
            creds = credentials.UsernamePassword(name.encode("utf-8"), password)
            d = self.factory.portal(self.peer).login(creds, None, ITerminalAvatar)
        self._pending = d
        d.addCallbacks(self._logged_in, self._login_failed)
        d.addErrback(self._internal_error)

    def _login_failed(self, reason: Failure) -> defer.Deferred | None:
        self._pending = None
        if reason.check(defer.CancelledError):
            return None
        reason.trap(error.UnauthorizedLogin, error.UnhandledCredentials, NotImplementedError)
        self.failures += 1
        log.info("telnet: login failed user={user} address={client} try={n} reason={why}",
                 user=self.username, client=self.peer, n=self.failures,
                 why=reason.getErrorMessage())
        delay = self.config.fail_delay * 2 ** (self.failures - 1)
        d: defer.Deferred[None] = defer.Deferred()
        call = self.reactor.callLater(delay, d.callback, None)
        self._pending = d
        d.addErrback(lambda f: call.active() and call.cancel())
        d.addCallback(self._after_failure_delay)
        return d

    def _after_failure_delay(self, _=None) -> None:
        self._pending = None
        if self.phase == "closed":
            return
        self.say("\r\nLogin incorrect\r\n")
        if self.failures >= self.config.max_tries:
            self.say(f"Maximum number of tries exceeded ({self.config.max_tries})\r\n")
            self._close()
            return
        self.phase = "login"
        self.say("login: ")
        self._replay_typeahead()

    def _replay_typeahead(self) -> None:
        if self.typeahead:
            data, self.typeahead = bytes(self.typeahead), bytearray()
            self.applicationDataReceived(data)

    def _logged_in(self, result) -> defer.Deferred | None:
        self._pending = None
        interface, avatar, logout = result
        if self.phase == "closed":
            logout()
            return None
        self.avatar, self._logout = avatar, logout
        self._cancel_login_timer()
        d = self._wait_settled()
        self._pending = d
        d.addCallback(self._start_session)
        return d

    def _start_session(self, _=None) -> None:
        self._pending = None
        if self.phase == "closed":
            return
        term = self.term or self.config.default_term
        session = PTYSession(self, self.avatar, term, self.size, self.client_env,
                             grace=self.config.hangup_grace, echo=self._echoing(),
                             host=self.peer, recorder=self.factory.recorder)
        try:
            session.start(self.reactor)
        except Exception:
            log.failure("telnet: cannot start the session for {user}", user=self.username)
            self.say("\r\nCannot start your session; try again later.\r\n")
            self._close()
            return
        self.session = session
        self.phase = "session"
        log.info("telnet: login user={user} address={client} tty={tty} pid={pid} term={term}",
                 user=self.username, client=self.peer, tty=session.tty, pid=session.pid,
                 term=term, event="session_start")
        if self.config.idle_timeout:
            self.setTimeout(self.config.idle_timeout)
        self._replay_typeahead()

    def _internal_error(self, reason: Failure) -> None:
        self._pending = None
        if reason.check(defer.CancelledError):
            return
        log.failure("telnet: login error user={user}", reason, user=self.username)
        if self.phase != "closed":
            self.say("\r\nLogin failed (server error).\r\n")
            self._close()

    def _login_timeout(self) -> None:
        self._login_timer = None
        if self.phase in ("login", "password", "checking"):
            self.say(f"\r\nLogin timed out after {self.config.login_timeout:g} seconds.\r\n")
            self._close()

    def _cancel_login_timer(self) -> None:
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None

    def timeoutConnection(self) -> None:
        """Idle session (C{idle_timeout})."""
        self.say("\r\nIdle too long; hanging up.\r\n")
        self._close()

    # -- the session's side ------------------------------------------------------------

    def terminalOutput(self, data: bytes) -> None:
        if self.phase != "closed":
            self.transport.write(self.encoder.encode(data))

    def terminalEnded(self, status: Failure) -> None:
        log.info("telnet: logout user={user} address={client} after {seconds:.0f}s ({status})",
                 user=self.username, client=self.peer, seconds=time.monotonic() - self.started,
                 status=status.getErrorMessage(), event="session_end")
        if self.phase != "closed":
            self._close()


class TelnetFactory(protocol.ServerFactory):
    """Builds L{TelnetServer}s; knows the portal, the config and the live connections."""

    def __init__(self, ctx, listener: str):
        self.ctx = ctx
        self.config = ctx.config.telnet
        self.reactor = ctx.reactor
        self.listener = listener
        self.hostname = ctx.config.server.hostname
        self.allow_plaintext = plaintext_auth_allowed(ctx.config, "telnet")
        self.connections: set[TelnetServer] = set()
        self.recorder = Recorder(self.config.utmp_file, self.config.wtmp_file,
                                 enabled=self.config.utmp and os.geteuid() == 0)
        self._shutdown_trigger = None
        if self.config.virtual_user:
            import pwd

            try:
                pwd.getpwnam(self.config.virtual_user)
            except KeyError:
                raise ConfigError(f"no system account {self.config.virtual_user!r}",
                                  "telnet.virtual_user", ctx.config.path) from None
        if os.geteuid() == 0 and not self.config.virtual_user:
            log.info("telnet: password-file users without a system account run as root "
                     "(set telnet.virtual_user to change that)")

    def portal(self, peer: str):
        return self.ctx.portal.bind(peer, "telnet")

    def plaintext_ok(self, transport, peer: str) -> bool:
        """Passwords in clear only over TLS, from loopback, or when the config allows."""
        if self.allow_plaintext or ISSLTransport.providedBy(transport):
            return True
        try:
            return ipaddress.ip_address(peer).is_loopback
        except ValueError:
            return True  # a UNIX socket: local

    def buildProtocol(self, addr) -> TelnetServer:
        server = TelnetServer(self, getattr(addr, "host", "local"))
        self.connections.add(server)
        return server

    def startFactory(self) -> None:
        # Kept for the factory's life: stopFactory runs inside the same
        # "before shutdown" phase, too late to take the trigger back safely.
        if self._shutdown_trigger is None:
            self._shutdown_trigger = self.reactor.addSystemEventTrigger(
                "before", "shutdown", self.hangup_all)

    def hangup_all(self) -> defer.Deferred:
        """At shutdown: hang up every session and wait (bounded) until they are reaped."""
        sessions = [c.session for c in list(self.connections) if c.session is not None]
        for conn in list(self.connections):
            conn.shutdown()  # the same goodbye as netsuite.shutdown's, whichever runs first
        waiting = [s for s in sessions if not s.exited]
        if not waiting:
            return defer.succeed(None)
        deadline = time.monotonic() + self.config.hangup_grace + 1.0
        d: defer.Deferred[None] = defer.Deferred()

        def poll():
            if all(s.exited for s in waiting) or time.monotonic() > deadline:
                d.callback(None)
            else:
                self.reactor.callLater(0.05, poll)

        poll()
        return d

"""
The FTP protocol interpreter (RFC 959, 2228, 2389, 2428, 2640, 3659, 4217).

Twisted's C{FTP} pauses the control connection for every command, so ABOR
cannot reach a running transfer and QUIT after an unused EPSV hangs.  This
interpreter keeps reading: commands that arrive while one is still running
(a login being checked, a transfer) wait in a queue and are answered in
order, except ABOR and STAT, which act on the running transfer at once.
The avatar is Twisted's C{IFTPShell} seam (see L{netsuite.ftp.shell}).
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.cred import credentials
from twisted.cred import error as cred_error
from twisted.internet import defer, protocol
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.protocols import ftp
from twisted.python.failure import Failure
from zope.interface import implementer

from netsuite import metrics, sendnow
from netsuite.config import plaintext_auth_allowed
from netsuite.deadline import CommandDeadline
from netsuite.framer import LineFramer, Overlong
from netsuite.ftp import wire
from netsuite.ftp.data import (
    ActiveChannel,
    DataChannel,
    DataChannelError,
    DataConnection,
    PassiveChannel,
    cap_tls_version,
)
from netsuite.ftp.shell import FileShrank, INetsuiteFTPShell, TransferStopped
from netsuite.ftp.timer import SessionTimer
from netsuite.shutdown import IGracefulStop, StopWhenIdle

log = Logger(namespace="netsuite.ftp")

#: Commands answered even while another command (a transfer) is running.
URGENT = {"ABOR", "STAT"}
#: Commands allowed before login.
PRE_LOGIN = {"USER", "PASS", "QUIT", "AUTH", "PBSZ", "PROT", "FEAT", "OPTS", "SYST", "NOOP",
             "HELP", "REIN", "ABOR", "CLNT"}
#: Commands that take no argument / need one.
NEEDS_ARG = {"USER", "RNFR", "RNTO", "DELE", "MKD", "XMKD", "RMD", "XRMD", "CWD", "XCWD",
             "RETR", "STOR", "APPE", "SIZE", "MDTM", "REST", "TYPE", "MODE", "STRU", "PORT",
             "EPRT", "AUTH", "PBSZ", "PROT", "OPTS"}
#: Known verbs this server deliberately does not implement.
NOT_IMPLEMENTED = {"ACCT", "SMNT", "SITE", "CCC", "ADAT", "MIC", "CONF", "ENC", "LANG"}
#: The control connection's idle deadline in the session's L{SessionTimer}.
IDLE = "idle"
#: Lines queued behind a running command before reading pauses.
QUEUE_LIMIT = 64

FEATURES = ["AUTH TLS", "PBSZ", "PROT", "EPRT", "EPSV", "MDTM", "SIZE", "REST STREAM",
            "TVFS", "UTF8"]


#: File transfer verbs -> the C{direction} label of the FTP metrics.
_DIRECTIONS = {"RETR": "download", "STOR": "upload", "APPE": "upload", "STOU": "upload"}


class Transfer:
    """The transfer in progress, for ABOR and STAT."""

    def __init__(self, verb: str, name: str, channel: DataChannel):
        self.verb = verb
        self.name = name
        self.channel = channel
        self.conn: DataConnection | None = None
        self.aborted = False
        self.bytes = 0
        self.size: int | None = None
        #: Called after the transfer's final reply went out (ABOR's 226 waits on it).
        self._on_finished: list[Any] = []
        self.counter: Any = None
        #: The final 226 went out (for C{netsuite_ftp_transfers_total}).
        self.complete = False

    def when_finished(self, f) -> None:
        """Call C{f()} once the transfer's final reply went out."""
        self._on_finished.append(f)

    def finished(self) -> None:
        waiting, self._on_finished = self._on_finished, []
        for f in waiting:
            f()

    def transferred(self) -> int:
        return self.counter() if self.counter else self.bytes

    def abort(self) -> None:
        self.aborted = True
        if self.conn is not None:
            self.conn.abort()
        else:
            self.channel.close()


class _ASCIIConsumer:
    """TYPE A downloads: LF to CRLF on the way out."""

    def __init__(self, conn: DataConnection):
        self.conn = conn
        self.convert = wire.ToNetASCII()

    def write(self, data: bytes) -> None:
        self.conn.write(self.convert(data))

    def registerProducer(self, producer, streaming) -> None:
        self.conn.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.conn.unregisterProducer()


@implementer(IGracefulStop)
class FTPServer(StopWhenIdle, protocol.Protocol, CommandDeadline):
    """One control connection."""

    # A tcp.Server (startTLS'd by AUTH TLS) or a TLSMemoryBIOProtocol (implicit FTPS):
    # disconnecting, startTLS, pauseProducing, setTcpNoDelay are used beyond ITransport.
    transport: Any

    def __init__(self, factory: "FTPFactory", implicit_tls: bool):
        self.factory = factory
        self.config = factory.config
        # CommandDeadline's clock (the reactor, or a test's Clock).
        self.callLater = factory.reactor.callLater
        #: Every deadline of the session: idle, passive accept, data idle (netsuite.ftp.timer).
        self.timer = SessionTimer(factory.reactor, horizon=self.config.connect_timeout)
        limits = getattr(factory.ctx.config, "limits", None)
        # max_line_length counts the CR before the LF, as LineReceiver did.
        self._framer = LineFramer(self.config.max_line_length - 1,
                                  getattr(limits, "command_timeout", 60))
        self.implicit_tls = implicit_tls
        self.tls = implicit_tls
        #: PBSZ seen (RFC 2228 wants it before PROT); implicit FTPS implies it.
        self.pbsz = implicit_tls
        #: Data connections under TLS (PROT P): the default for implicit FTPS.
        self.prot_private = implicit_tls
        self.user: str | None = None
        self.anonymous = False
        self.shell: INetsuiteFTPShell | None = None
        self.logout = None
        self.cwd: list[str] = []
        self.binary = True
        self.rest = 0
        self.rename_from: list[str] | None = None
        self.channel: DataChannel | None = None
        self.epsv_all = False
        self.transfer: Transfer | None = None
        #: This session's passive port, kept between transfers (see data._PassivePort).
        self._passive_port: Any = None
        self.failed_logins = 0
        self.mlst_facts: list[str] = list(wire.MLST_FACTS)
        self._queue: deque[bytes] = deque()
        #: The server is stopping: 421 once no command (a transfer) is in progress.
        self._stopping = False
        self._busy: defer.Deferred | None = None
        self._reading_paused = False
        self._draining = False
        self._lost = False
        self.peer_host = "?"
        #: The socket replies go to directly while nothing is queued (see L{reply}).
        self.local_host = "?"
        self.local_ipv4: str | None = None

    # -- connection ------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer_host = getattr(peer, "host", "?")
        # The local address, and its IPv4 form, once: PASV/EPSV ask at every transfer.
        self.local_host = getattr(self.transport.getHost(), "host", "?")
        self.local_ipv4 = wire.ipv4_of(self.local_host)
        self.portal = self.factory.ctx.portal.bind(self.peer_host, "ftp")
        if hasattr(self.transport, "setTcpNoDelay"):
            # Replies are small and come in pairs (150 ... 226): no Nagle delay.
            try:
                self.transport.setTcpNoDelay(True)
            except OSError:
                pass
        handle = getattr(self.transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket):
            # ABOR sent as urgent data (ftplib) must stay in the command stream.
            try:
                handle.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
            except OSError:
                pass
        if self.implicit_tls:
            cap_tls_version(self.transport, self.config.tls_max_version)
        self.timer.set(IDLE, self.config.idle_timeout, self.timeoutConnection)
        self.reply(220, self.config.banner)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost = True
        self.timer.stop()
        self.cancelDeadline()
        self._framer.discard()
        if self.transfer is not None:
            self.transfer.abort()
        self._close_channel()
        port, self._passive_port = self._passive_port, None
        if port is not None:
            port.release()
        self._logout()
        self._queue.clear()

    def timeoutConnection(self) -> None:
        self.reply(421, "Timeout.")
        self.transport.loseConnection()

    # -- graceful stop (netsuite.shutdown) ---------------------------------------------

    # SIGTERM: the command in progress (an upload or download) finishes and
    # is answered, then 421.  One still running when the shutdown timeout
    # aborts the control connection is aborted as a lost connection is
    # (connectionLost: the transfer is aborted, the upload's partial file
    # handled as on any abort).

    def _in_progress(self) -> bool:
        return self._busy is not None or self.transfer is not None

    def _goodbye(self) -> None:
        log.info("shutdown: address={address}, 421", address=self.peer_host)
        self.reply(421, "Service shutting down")
        self._framer.discard()
        self._queue.clear()
        self.transport.loseConnection()

    def reply(self, code: int, text: str | list[str]) -> None:
        transport = self.transport
        if transport is None or transport.disconnecting:
            return
        # Nothing queued: sent in this turn (through write() a reply costs two
        # epoll registrations and a later reactor turn); TLS falls back to write().
        sendnow.write_now(transport, wire.render_reply(code, text))

    # -- reading commands --------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._lost or self.transport.disconnecting:
            return
        self._framer.feed(data, self.deadlineNow())
        self._read_lines()

    def _read_lines(self) -> None:
        """Split what is buffered into commands, unless the queue is full (then wait)."""
        framer = self._framer
        while not self._reading_paused and not self._lost and not self.transport.disconnecting:
            line = framer.line()
            if line is None:
                break
            if isinstance(line, Overlong):
                self.reply(500, "Command line too long.")
                continue
            self.lineReceived(line)
        if not self._lost and not self.transport.disconnecting:
            self.armDeadline()

    # -- the whole-line deadline (netsuite.deadline) ---------------------------------

    def deadlineFramer(self) -> LineFramer | None:
        return None if self._lost or self.transport.disconnecting else self._framer

    def deadlineWaiting(self) -> bool:
        return self._reading_paused

    def deadlineExpired(self) -> None:
        self.reply(421, "Command line took too long.")
        self._framer.discard()
        self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        self.timer.touch(IDLE, self.config.idle_timeout)
        if self._busy is not None:
            try:
                verb, arg = wire.parse_command(line)
            except wire.CommandError:
                verb = ""
            if verb in URGENT:
                result = self._dispatch(verb, arg)
                if isinstance(result, defer.Deferred):
                    result.addErrback(self._command_failed)
                return
            self._queue.append(line)
            if len(self._queue) >= QUEUE_LIMIT and not self._reading_paused:
                # Stop reading (and stop splitting what is buffered) until drained.
                self._reading_paused = True
                self.transport.pauseProducing()
            return
        self._process(line)

    def _process(self, line: bytes) -> None:
        try:
            verb, arg = wire.parse_command(line)
        except wire.CommandError as e:
            self.reply(e.code, e.text)
            return
        result = self._dispatch(verb, arg)
        if isinstance(result, defer.Deferred):
            self._busy = result
            result.addErrback(self._command_failed).addBoth(self._command_done)

    def _command_done(self, _=None) -> None:
        """The running command finished: answer the queued ones, in order, without recursion."""
        self._busy = None
        if self._stop_if_idle():  # what was queued behind it is not run
            return
        if self._draining:
            return
        self._draining = True
        try:
            while self._queue and self._busy is None and not self._lost \
                    and not self.transport.disconnecting:
                self._process(self._queue.popleft())
        finally:
            self._draining = False
        if self._reading_paused and not self._queue and not self._lost:
            self._reading_paused = False
            self.transport.resumeProducing()
            self._framer.restart(self.deadlineNow())
            self._read_lines()

    def _dispatch(self, verb: str, arg: str):
        handler = getattr(self, f"ftp_{verb}", None)
        if handler is None:
            if verb in NOT_IMPLEMENTED:
                self.reply(502, f"{verb} not implemented.")
            else:
                self.reply(500, "Unknown command.")
            return None
        if self.shell is None and verb not in PRE_LOGIN:
            self.reply(530, "Please login with USER and PASS.")
            return None
        if verb in NEEDS_ARG and not arg.strip():
            self.reply(501, f"Syntax: {wire.HELP.get(verb, verb)}")
            return None
        if verb != "RNTO":
            self.rename_from = None  # RNTO must follow RNFR at once
        if verb != "REST" and verb not in ("RETR", "STOR", "APPE", "STAT", "NOOP", "ABOR",
                                           "PASV", "EPSV", "PORT", "EPRT", "TYPE"):
            self.rest = 0
        try:
            return handler(arg)
        except ftp.FTPCmdError as e:
            self._reply_error(e)
        except ftp.InvalidPath:
            self.reply(550, "No such file or directory.")
        except wire.CommandError as e:
            self.reply(e.code, e.text)
        except DataChannelError as e:
            self.reply(e.code, e.text)
        return None

    def _reply_error(self, e: ftp.FTPCmdError) -> None:
        text = e.response()
        if isinstance(text, bytes):
            text = text.decode(wire.ENCODING, wire.ERRORS)
        code, _, rest = text.partition(" ")
        self.reply(int(code) if code.isdigit() else 550, rest or text)

    def _command_failed(self, failure: Failure) -> None:
        if failure.check(ftp.FTPCmdError):
            self._reply_error(failure.value)
        elif failure.check(ftp.InvalidPath):
            self.reply(550, "No such file or directory.")
        elif failure.check(DataChannelError, wire.CommandError):
            self.reply(failure.value.code, failure.value.text)
        else:
            log.failure("FTP command failed", failure)
            self.reply(451, "Requested action aborted: local error in processing.")

    # -- helpers -----------------------------------------------------------------

    def _path(self, arg: str) -> list[str]:
        """The absolute segments of C{arg} relative to the working directory."""
        return ftp.toSegments(self.cwd, arg)

    def _display(self, segments: list[str]) -> str:
        return "/" + "/".join(segments)

    def _close_channel(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            channel.close()

    def _shell(self) -> INetsuiteFTPShell:
        """The logged-in user's shell: _dispatch runs no post-login command without one."""
        assert self.shell is not None, "command past PRE_LOGIN ran before login"
        return self.shell

    def _logout(self) -> None:
        logout, self.logout = self.logout, None
        self.shell = None
        if logout is not None:
            try:
                logout()
            except Exception:
                log.failure("FTP avatar logout failed")

    # -- login (RFC 959 4.1.1) --------------------------------------------------------

    def ftp_USER(self, arg: str):
        if self.shell is not None:
            self.reply(530, "Can't change to another user.")
            return
        name = arg.strip()
        self.anonymous = name.lower() in ("anonymous", "ftp")
        if not self.anonymous and self.factory.require_tls and not self.tls:
            self.user = None
            self.reply(530, "Non-anonymous sessions must use encryption (AUTH TLS).")
            log.info("login refused without TLS: protocol=ftp address={client} user={user}",
                     client=self.peer_host, user=name, protocol="ftp", event="login_refused",
                     reason="plaintext_refused")
            return
        self.user = name
        if self.anonymous:
            self.reply(331, "Please specify the password (any, e.g. your e-mail address).")
        else:
            self.reply(331, "Please specify the password.")

    def ftp_PASS(self, arg: str):
        if self.shell is not None:
            self.reply(230, "Already logged in.")
            return None
        if self.user is None:
            self.reply(503, "Login with USER first.")
            return None
        if self.anonymous:
            creds: Any = credentials.Anonymous()
            if not self.factory.anonymous_enabled:
                log.info("anonymous login refused: protocol=ftp address={client}",
                         client=self.peer_host, user=self.user, protocol="ftp",
                         event="login_refused", reason="anonymous_disabled")
                return self._login_failed(Failure(cred_error.UnauthorizedLogin()))
        else:
            creds = credentials.UsernamePassword(
                self.user.encode(wire.ENCODING, wire.ERRORS),
                arg.encode(wire.ENCODING, wire.ERRORS))
        d = self.portal.login(creds, None, ftp.IFTPShell)
        return d.addCallbacks(self._logged_in, self._login_failed)

    def _logged_in(self, result) -> None:
        _iface, avatar, logout = result
        if self._lost:
            logout()
            return
        self.shell, self.logout = avatar, logout
        self.cwd = []
        self.failed_logins = 0
        self.reply(230, "Login successful.")

    def _login_failed(self, failure: Failure) -> None:
        if not failure.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials,
                             NotImplementedError):
            log.failure("FTP login error", failure)
        self.user = None
        self.failed_logins += 1
        self.reply(530, "Login incorrect.")
        if self.failed_logins >= self.config.max_login_failures:
            self.transport.loseConnection()

    def ftp_REIN(self, arg: str):
        if self.transfer is not None:
            self.transfer.abort()
        self._close_channel()
        self._logout()
        self.user = None
        self.anonymous = False
        self.cwd = []
        self.binary = True
        self.rest = 0
        self.epsv_all = False
        self.reply(220, "Service ready for new user.")

    def ftp_QUIT(self, arg: str):
        self.reply(221, "Goodbye.")
        self._close_channel()
        self.transport.loseConnection()

    # -- TLS (RFC 2228, 4217) -----------------------------------------------------------

    def ftp_AUTH(self, arg: str):
        mech = arg.strip().upper()
        if mech not in ("TLS", "TLS-C", "SSL", "TLS-P"):
            self.reply(504, "Unknown AUTH type; use AUTH TLS.")
            return
        if self.tls:
            self.reply(503, "Already using TLS.")
            return
        if self.shell is not None:
            self.reply(503, "AUTH after login is not supported; log in over TLS.")
            return
        self.reply(234, "Proceed with negotiation.")
        # Plain text pipelined after AUTH must not be executed inside TLS.
        self._framer.discard()
        self._queue.clear()
        self.transport.startTLS(self.factory.ctx.tls)
        cap_tls_version(self.transport, self.config.tls_max_version)
        self.tls = True
        self.pbsz = False
        self.prot_private = mech in ("SSL", "TLS-P")
        self.user = None

    def ftp_PBSZ(self, arg: str):
        if not self.tls:
            self.reply(503, "PBSZ needs a TLS connection (AUTH TLS first).")
            return
        if not arg.strip().isdigit():
            self.reply(501, "Syntax: PBSZ 0")
            return
        self.pbsz = True
        self.reply(200, "PBSZ=0")

    def ftp_PROT(self, arg: str):
        level = arg.strip().upper()
        if not self.tls:
            self.reply(503, "PROT needs a TLS connection (AUTH TLS first).")
        elif not self.pbsz:
            self.reply(503, "PBSZ first.")
        elif level == "P":
            self.prot_private = True
            self.reply(200, "PROT now Private.")
        elif level == "C":
            if self.factory.require_tls_data and not self.anonymous:
                self.reply(534, "Data connections must be protected (PROT P).")
                return
            self.prot_private = False
            self.reply(200, "PROT now Clear.")
        elif level in ("S", "E"):
            self.reply(536, "PROT level not supported.")
        else:
            self.reply(504, "Unknown PROT level.")

    # -- session options -------------------------------------------------------------------

    def ftp_NOOP(self, arg: str):
        self.reply(200, "NOOP ok.")

    def ftp_CLNT(self, arg: str):
        """The client's name (FileZilla, some others): noted, nothing more."""
        self.reply(200, "Noted.")

    def ftp_SYST(self, arg: str):
        self.reply(215, "UNIX Type: L8")

    def ftp_FEAT(self, arg: str):
        feats = FEATURES + [wire.feat_mlst(self.mlst_facts)]
        self.reply(211, ["Features:", *(" " + f for f in sorted(feats)), "End"])

    def ftp_OPTS(self, arg: str):
        option, _, value = arg.strip().partition(" ")
        option = option.upper()
        if option == "UTF8":
            if value.strip().upper() in ("ON", ""):
                self.reply(200, "Always in UTF8 mode.")
            else:
                self.reply(504, "UTF8 cannot be turned off.")
        elif option == "MLST":
            self.mlst_facts = wire.parse_mlst_opts(value)
            self.reply(200, "MLST OPTS " + "".join(f"{f};" for f in self.mlst_facts))
        else:
            self.reply(501, "Option not understood.")

    def ftp_HELP(self, arg: str):
        verb = arg.strip().upper()
        if not verb:
            self.reply(214, wire.help_lines())
        elif verb in wire.HELP:
            self.reply(214, f"Syntax: {wire.HELP[verb]}")
        else:
            self.reply(502, f"Unknown command {verb[:20]}.")

    def ftp_TYPE(self, arg: str):
        words = arg.strip().upper().split()
        if words and words[0] == "I" or words == ["L", "8"]:
            self.binary = True
            self.reply(200, "Switching to Binary mode.")
        elif words and words[0] == "A" and (len(words) == 1 or words[1] == "N"):
            self.binary = False
            self.reply(200, "Switching to ASCII mode.")
        else:
            self.reply(504, "Unsupported TYPE; use A or I.")

    def ftp_MODE(self, arg: str):
        if arg.strip().upper() == "S":
            self.reply(200, "Mode set to S.")
        else:
            self.reply(504, "Only MODE S is supported.")

    def ftp_STRU(self, arg: str):
        if arg.strip().upper() == "F":
            self.reply(200, "Structure set to F.")
        else:
            self.reply(504, "Only STRU F is supported.")

    def ftp_ALLO(self, arg: str):
        self.reply(202, "ALLO command ignored.")

    def ftp_REST(self, arg: str):
        text = arg.strip()
        if not text.isdigit() or len(text) > 19:
            self.reply(501, "REST takes a byte offset.")
            return
        self.rest = int(text)
        self.reply(350, f"Restart position accepted ({self.rest}).")

    # -- navigation --------------------------------------------------------------------------

    def ftp_PWD(self, arg: str):
        self.reply(257, f"{wire.quote_path(self._display(self.cwd))} is the current directory")

    ftp_XPWD = ftp_PWD

    def ftp_CWD(self, arg: str):
        segments = self._path(arg)

        def changed(_):
            self.cwd = segments
            self.reply(250, "Directory successfully changed.")

        return self._shell().access(segments).addCallback(changed)

    ftp_XCWD = ftp_CWD

    def ftp_CDUP(self, arg: str):
        return self.ftp_CWD("..")

    ftp_XCUP = ftp_CDUP

    # -- file management ------------------------------------------------------------------------

    def ftp_MKD(self, arg: str):
        segments = self._path(arg)
        return self._shell().makeDirectory(segments).addCallback(
            lambda _: self.reply(257, f"{wire.quote_path(self._display(segments))} created"))

    ftp_XMKD = ftp_MKD

    def ftp_RMD(self, arg: str):
        segments = self._path(arg)
        if not segments or segments == self.cwd[:len(segments)]:
            self.reply(550, "Cannot remove the current directory or one above it.")
            return None
        return self._shell().removeDirectory(segments).addCallback(
            lambda _: self.reply(250, "Remove directory operation successful."))

    ftp_XRMD = ftp_RMD

    def ftp_DELE(self, arg: str):
        return self._shell().removeFile(self._path(arg)).addCallback(
            lambda _: self.reply(250, "Delete operation successful."))

    def ftp_RNFR(self, arg: str):
        segments = self._path(arg)

        def found(_):
            self.rename_from = segments
            self.reply(350, "Ready for RNTO.")

        if not self._shell().writable:
            raise ftp.PermissionDeniedError(self._display(segments))
        return self._shell().stat(segments, ("size",)).addCallback(found)

    def ftp_RNTO(self, arg: str):
        source, self.rename_from = self.rename_from, None
        if source is None:
            self.reply(503, "RNFR required first.")
            return None
        return self._shell().rename(source, self._path(arg)).addCallback(
            lambda _: self.reply(250, "Rename successful."))

    def ftp_SIZE(self, arg: str):
        def got(e):
            if e.directory:
                self.reply(550, "Could not get file size.")
            else:
                self.reply(213, str(e.size))
        return self._shell().entry(self._path(arg)).addCallback(got)

    def ftp_MDTM(self, arg: str):
        return self._shell().entry(self._path(arg)).addCallback(
            lambda e: self.reply(213, wire.format_time(e.mtime)))

    def ftp_MLST(self, arg: str):
        segments = self._path(arg) if arg.strip() else list(self.cwd)

        def got(e):
            e.name = self._display(segments)
            kind = "cdir" if e.directory and not arg.strip() else None
            self.reply(250, [f"Listing {e.name}",
                             " " + wire.format_facts(e, self.mlst_facts, kind), "End"])

        return self._shell().entry(segments).addCallback(got)

    def ftp_STAT(self, arg: str):
        if self.transfer is not None and not arg.strip():
            t = self.transfer
            total = f" of {t.size}" if t.size is not None else ""
            self.reply(213, f"Status: {t.verb} {t.name}: {t.transferred()}{total} "
                            "bytes transferred.")
            return None
        if not arg.strip():
            who = "anonymous" if self.anonymous else (self.user or "(not logged in)")
            lines = ["FTP server status:",
                     f"     Connected to {self.peer_host}",
                     f"     Logged in as {who}",
                     f"     TYPE: {'BINARY' if self.binary else 'ASCII'}",
                     f"     Control connection {'TLS' if self.tls else 'plain'}; "
                     f"data {'private' if self.prot_private else 'clear'}",
                     "End of status"]
            self.reply(211, lines)
            return None
        if self.shell is None:
            self.reply(530, "Please login with USER and PASS.")
            return None
        _opts, target = wire.split_list_args(arg)
        segments = self._path(target)

        def got(entries):
            self.reply(213, [f"Status of {self._display(segments)}:",
                             *(wire.format_list_line(e) for e in entries), "End of status"])

        return self.shell.entries(segments).addCallback(got)

    # -- data channel setup (RFC 959, 2428) -------------------------------------------------------

    def _make_data_connection(self) -> DataConnection:
        return DataConnection(tls=self.prot_private, require_reuse=self.factory.require_reuse,
                              idle_timeout=self.config.data_timeout,
                              tls_max_version=self.config.tls_max_version, timer=self.timer)

    def _tls_options(self):
        return self.factory.ctx.tls

    def _passive(self) -> PassiveChannel:
        self._close_channel()
        local = self.local_host
        channel = PassiveChannel(self.factory.reactor, self.peer_host, self._tls_options(),
                                 self.config.connect_timeout, self.timer)
        channel.set_maker(self._make_data_connection)
        kept = self._passive_port
        channel.listen(local, self.config.passive_port_min, self.config.passive_port_max,
                       reuse=kept)
        if channel.port is not kept:
            if kept is not None:
                kept.release()
            port = channel.port
            self._passive_port = port if port is not None and port.keep else None
        self.channel = channel
        return channel

    def ftp_PASV(self, arg: str):
        if self.epsv_all:
            self.reply(503, "Only EPSV is allowed after EPSV ALL.")
            return
        local = self.local_ipv4
        if local is None:
            # Permanent (RFC 2428 section 3): a 4xx would only make the client retry.
            self.reply(522, "PASV not available on IPv6, use EPSV.")
            return
        announce = self.config.masquerade_address or local
        channel = self._passive()
        self.reply(227, wire.render_pasv(announce, channel.number))

    def ftp_EPSV(self, arg: str):
        proto = arg.strip().upper()
        if proto == "ALL":
            self.epsv_all = True
            self.reply(200, "EPSV ALL ok.")
            return
        family = "1" if self.local_ipv4 is not None else "2"
        if proto and proto != family:
            if proto in ("1", "2"):
                self.reply(522, f"Network protocol not supported, use ({family})")
            else:
                self.reply(501, "Syntax: EPSV [1|2|ALL]")
            return
        channel = self._passive()
        self.reply(229, wire.render_epsv(channel.number))

    def _active(self, host: str, port: int):
        if self.epsv_all:
            self.reply(503, "Only EPSV is allowed after EPSV ALL.")
            return
        if not wire.same_host(host, self.peer_host) or port < 1024:
            log.warn("refused active data connection to {host}:{port} from {client}",
                     host=host, port=port, client=self.peer_host, protocol="ftp",
                     user=self.user, event="refused", reason="active_data_refused")
            self.reply(500, "Illegal PORT command: only to your own address, port >= 1024.")
            return
        self._close_channel()
        local = self.local_host
        host4, local4 = wire.ipv4_of(host), self.local_ipv4
        if host4 is not None and local4 is not None:
            bind, host = local4, host4
        else:
            bind = local
        self.channel = ActiveChannel(self.factory.reactor, host, port, bind,
                                     self._tls_options(), self.config.connect_timeout)
        self.reply(200, "PORT command successful. Consider using PASV.")

    def ftp_PORT(self, arg: str):
        host, port = wire.parse_port(arg)
        return self._active(host, port)

    def ftp_EPRT(self, arg: str):
        _family, host, port = wire.parse_eprt(arg)
        return self._active(host, port)

    def _take_channel(self) -> DataChannel:
        channel, self.channel = self.channel, None
        if channel is None:
            raise DataChannelError(425, "Use PORT, PASV or EPSV first.")
        return channel

    def ftp_ABOR(self, arg: str):
        if self.transfer is not None:
            t = self.transfer
            t.abort()
            t.when_finished(lambda: self.reply(226, "ABOR successful."))
            return None
        self._close_channel()
        self.reply(225, "No transfer to ABOR.")
        return None

    # -- transfers -------------------------------------------------------------------------

    def _connect_data(self, t: Transfer, message: str, then: Callable[[DataConnection], None],
                      failed: Callable[[Failure], None]) -> None:
        """
        The data connection for C{t}, with the 150 reply at the right moment:
        C{then(conn)} once it can carry data, or C{failed(failure)}.
        """
        passive = isinstance(t.channel, PassiveChannel)
        if passive:
            self.reply(150, message)

        def connected(conn: DataConnection) -> None:
            if t.aborted:
                conn.abort()
                failed(Failure(_Aborted()))
                return
            t.conn = conn
            if passive:
                then(conn)
            else:
                self.reply(150, message)
                conn.on_ready(lambda r: failed(r) if isinstance(r, Failure) else then(conn))

        t.channel.connect(self._make_data_connection).addCallbacks(connected, failed)

    def _open_data(self, t: Transfer, message: str):
        """L{_connect_data} for a coroutine: C{conn = yield from self._open_data(...)}."""
        d: defer.Deferred[DataConnection] = defer.Deferred()
        self._connect_data(t, message, d.callback, d.errback)
        conn = yield d
        return conn

    def _download(self, t: Transfer, message: str,
                  send: Callable[[DataConnection], defer.Deferred | None],
                  complete: Callable[[], None],
                  cleanup: Callable[[], None] | None = None) -> defer.Deferred:
        """
        The server-to-client side of a transfer (RETR, LIST, NLST, MLSD): the
        data connection and its 150, C{send(conn)} (a Deferred, or None when it
        wrote everything at once), the close, then C{complete()} (226 and the
        log line); on any failure C{cleanup()}, the connection cut and the
        error reply.  Returns what the command waits on: a Deferred that fires
        once the final reply went out.  Plain callbacks rather than a
        coroutine, as this runs for every download: for small files a
        coroutine's bookkeeping was the largest part of the server's time.
        """
        done: defer.Deferred[None] = defer.Deferred()

        def end() -> None:
            self._end(t)
            done.callback(None)

        def failed(failure: Failure) -> None:
            if done.called:
                return
            try:
                if cleanup is not None:
                    cleanup()
                if t.conn is not None:
                    t.conn.abort()
                self._transfer_failed(t, failure)
            finally:
                end()

        def guarded(step):
            def run(*args) -> None:
                try:
                    step(*args)
                except Exception:
                    failed(Failure())
            return run

        @guarded
        def closed() -> None:
            if t.aborted:
                raise _Aborted()
            complete()
            end()

        @guarded
        def sent(conn: DataConnection) -> None:
            conn.finish()
            conn.on_closed(closed)

        @guarded
        def opened(conn: DataConnection) -> None:
            d = send(conn)
            if d is None:
                sent(conn)
            else:
                d.addCallbacks(lambda _: sent(conn), failed)

        try:
            self._connect_data(t, message, opened, failed)
        except Exception:
            failed(Failure())
        return done

    def _start(self, verb: str, name: str, channel: DataChannel) -> Transfer:
        self.transfer = Transfer(verb, name, channel)
        self.timer.clear(IDLE)  # a transfer may take longer than the idle timeout
        return self.transfer

    def _end(self, t: Transfer) -> None:
        """After the final reply: let a waiting ABOR answer, restart the idle timer."""
        if self.transfer is t:
            self.transfer = None
        direction = _DIRECTIONS.get(t.verb)
        if direction is not None:  # a file, not a listing
            metrics.ftp_transfers.labels(direction, "complete" if t.complete else "failed").inc()
            metrics.ftp_bytes.labels(direction).inc(t.transferred())
        if not self._lost:
            self.timer.set(IDLE, self.config.idle_timeout, self.timeoutConnection)
        t.finished()
        self._stop_if_idle()

    def _transfer_failed(self, t: Transfer, failure: Failure) -> None:
        if t.aborted or failure.check(_Aborted):
            self.reply(426, "Connection closed; transfer aborted.")
        elif t.conn is not None and t.conn.timed_out:
            self.reply(426, "Data connection idle; transfer aborted.")
        elif failure.check(TransferStopped):
            self.reply(426, "Data connection closed; transfer aborted.")
        elif failure.check(FileShrank):
            log.warn("RETR cut short: {error}", error=failure.getErrorMessage(),
                     client=self.peer_host, user=self.user, event="transfer_failed")
            self.reply(451, "Requested action aborted: the file was cut short while it "
                            "was sent.")
        elif failure.check(DataChannelError):
            self.reply(failure.value.code, failure.value.text)
        elif failure.check(ftp.FTPCmdError):
            self._reply_error(failure.value)
        elif failure.check(_Cut):
            self.reply(426, failure.value.args[0])
        else:
            log.failure("FTP transfer failed", failure)
            self.reply(451, "Requested action aborted: local error in processing.")

    def _log_transfer(self, t: Transfer, path: str, nbytes: int) -> None:
        t.complete = True
        if not self.config.transfer_log:
            return
        log.info("{verb} {path} {bytes} bytes: user={user} address={client} tls={tls}",
                 verb=t.verb, path=path, bytes=nbytes,
                 user="anonymous" if self.anonymous else self.user, client=self.peer_host,
                 tls=self.prot_private, event="transfer", protocol="ftp")

    def _mode_name(self) -> str:
        return "BINARY" if self.binary else "ASCII"

    def ftp_RETR(self, arg: str):
        segments = self._path(arg)
        channel = self._take_channel()
        offset, self.rest = self.rest, 0
        d = self._shell().openForReading(segments, offset=offset)
        d.addErrback(self._discard_channel, channel)
        return d.addCallback(self._retrieve, channel, segments)

    def _discard_channel(self, failure: Failure, channel: DataChannel) -> Failure:
        channel.close()
        return failure

    def _retrieve(self, file, channel: DataChannel, segments: list[str]) -> defer.Deferred:
        name = segments[-1] if segments else "/"
        t = self._start("RETR", name, channel)
        t.size = getattr(file, "size", None)
        t.counter = lambda: getattr(file, "sent", 0)
        size = f" ({t.size} bytes)" if t.size is not None else ""

        def send(conn: DataConnection) -> defer.Deferred:
            return file.send(conn if self.binary else _ASCIIConsumer(conn))

        def complete() -> None:
            self.reply(226, "Transfer complete.")
            self._log_transfer(t, self._display(segments), file.sent)

        return self._download(
            t, f"Opening {self._mode_name()} mode data connection for {name}{size}.",
            send, complete, getattr(file, "close", None))

    def ftp_STOR(self, arg: str):
        return self._store(arg, append=False)

    def ftp_APPE(self, arg: str):
        return self._store(arg, append=True)

    def ftp_STOU(self, arg: str):
        return self._store(arg.strip() or "file", unique=True)

    def _store(self, arg: str, append: bool = False, unique: bool = False):
        segments = self._path(arg)
        channel = self._take_channel()
        offset, self.rest = self.rest, 0
        d = self._shell().openForWriting(segments, offset=offset, append=append, unique=unique)
        d.addErrback(self._discard_channel, channel)
        verb = "STOU" if unique else ("APPE" if append else "STOR")
        return d.addCallback(self._receive, channel, verb, unique, segments)

    @defer.inlineCallbacks
    def _receive(self, upload, channel: DataChannel, verb: str, unique: bool,
                 segments: list[str]):
        name = upload.name
        t = self._start(verb, name, channel)
        t.counter = lambda: upload.received
        done = False
        try:
            message = f"FILE: {name}" if unique else "Ok to send data."
            conn = yield from self._open_data(t, message)
            convert = None if self.binary else wire.FromNetASCII()
            if convert is None:
                conn.receive_into(upload.write)
            else:
                conn.receive_into(lambda data: upload.write(convert(data)))
            yield conn.when_closed()
            reason = conn.close_reason
            if conn.sink_error is not None:
                err = conn.sink_error
                if err.check(OSError) and err.value.errno in (28, 122):
                    raise _StorageFull()
                err.raiseException()
            if t.aborted:
                raise _Aborted()
            if conn.timed_out:
                raise _Cut("Data connection idle; transfer aborted.")
            if not reason.check(ConnectionDone):
                # A TLS data connection closed without close_notify, or a reset:
                # the upload may be cut short and must not be reported whole.
                raise _Cut("Connection closed before the transfer completed; "
                           "transfer aborted.")
            if convert is not None:
                upload.write(convert.flush())
            done = True
            yield upload.close()
            self.reply(226, "Transfer complete.")
            self._log_transfer(t, self._display(segments[:-1] + [name]), upload.received)
        except _StorageFull:
            upload.abort()
            self.reply(452, "Insufficient storage space; transfer aborted.")
        except Exception:
            if not done:
                upload.abort()
            if t.conn is not None:
                t.conn.abort()
            self._transfer_failed(t, Failure())
        finally:
            self._end(t)

    def _listing(self, verb: str, arg: str, render):
        _opts, target = wire.split_list_args(arg)
        pattern = None
        head, _, last = target.rpartition("/")
        if wire.is_glob(last):
            # LIST/NLST *.txt (mget): list the folder, keep the matching names.
            pattern, target = last, head + "/" if head or target.startswith("/") else ""
        segments = self._path(target)
        channel = self._take_channel()
        d = self._shell().entries(segments)
        if pattern is not None:
            d.addCallback(lambda entries: [e for e in entries if wire.glob_match(e.name, pattern)])
        d.addErrback(self._discard_channel, channel)
        return d.addCallback(lambda entries: self._send_listing(
            verb, channel, render(entries, segments)))

    def _send_listing(self, verb: str, channel: DataChannel, body: bytes) -> defer.Deferred:
        t = self._start(verb, verb, channel)
        t.size = len(body)

        def send(conn: DataConnection) -> None:
            conn.write(body)  # the whole listing at once
            t.bytes = len(body)

        return self._download(t, "Here comes the directory listing.", send,
                              lambda: self.reply(226, "Directory send OK."))

    @staticmethod
    def _lines(lines) -> bytes:
        return "".join(f"{line}\r\n" for line in lines).encode(wire.ENCODING, wire.ERRORS)

    def ftp_LIST(self, arg: str):
        return self._listing("LIST", arg, lambda entries, _s: self._lines(
            wire.format_list_line(e) for e in entries))

    def ftp_NLST(self, arg: str):
        def render(entries, segments):
            _opts, target = wire.split_list_args(arg)
            if len(entries) == 1 and not entries[0].directory and segments and \
                    entries[0].name == segments[-1] and target.strip():
                return self._lines([target])  # NLST of a file names that file
            return self._lines(wire.safe_name(e.name) for e in entries)
        return self._listing("NLST", arg, render)

    def ftp_MLSD(self, arg: str):
        segments = self._path(arg)

        def render(entries, _s):
            return self._lines(wire.format_facts(e, self.mlst_facts) for e in entries)

        def check(e):
            if not e.directory:
                raise ftp.IsNotADirectoryError(self._display(segments))
            channel = self._take_channel()
            d = self.shell.entries(segments)
            d.addErrback(self._discard_channel, channel)
            return d.addCallback(lambda entries: self._send_listing(
                "MLSD", channel, render(entries, segments)))

        if self.channel is None:
            raise DataChannelError(425, "Use PORT, PASV or EPSV first.")
        d = self._shell().entry(segments).addCallback(check)

        def failed(failure: Failure) -> Failure:
            self._close_channel()
            return failure

        return d.addErrback(failed)


class _Aborted(Exception):
    """ABOR cut the transfer."""


class _Cut(Exception):
    """The data connection ended before the transfer was complete."""


class _StorageFull(Exception):
    """The disk is full."""


class FTPFactory(protocol.ServerFactory):
    """Builds an L{FTPServer} per control connection of one listener."""

    noisy = False

    def __init__(self, ctx, implicit_tls: bool = False):
        self.ctx = ctx
        self.config = ctx.config.ftp
        self.reactor = ctx.reactor
        self.implicit_tls = implicit_tls
        require = self.config.require_tls
        if require is None:
            require = not plaintext_auth_allowed(ctx.config, "ftp")
        self.require_tls = require
        self.require_tls_data = self.config.require_tls_data
        self.require_reuse = self.config.require_tls_session_reuse
        self.anonymous_enabled = self.config.anonymous_root is not None

    def buildProtocol(self, addr):
        return FTPServer(self, self.implicit_tls)

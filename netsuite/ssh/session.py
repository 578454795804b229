"""
SSH shell and exec sessions: the user's terminal program, run as a TELNET
login runs it.

The program, its identity, home and base environment come from the realm's
terminal avatar (L{netsuite.telnet.session.terminal_for}), which refuses root
unless permitted.  With a pty (C{ssh} without C{-T}) the telnet package's
L{PTYSession} runs it: same pty set-up, window size, hang-up and utmp.  Without
one (C{ssh host command}) it runs on pipes, stderr as extended data.  The
client contributes only TERM, the window size and whitelisted variables.
"""

from __future__ import annotations

import os
import struct
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.conch.interfaces import EnvironmentVariableNotPermitted, ISession, ISessionSetEnv
from twisted.conch.ssh import session
from twisted.cred import error as cred_error
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netsuite.realm import ITerminalAvatar
from netsuite.telnet.session import PTYSession
from netsuite.telnet.wire import parse_ttype

if TYPE_CHECKING:
    from netsuite.ssh.server import SSHUser

log = Logger(namespace="netsuite.ssh")

MAX_ENV_VARS = 32
MAX_ENV_VALUE = 1024


class SessionChannel(session.SSHSession):
    """conch's session channel, telling its program when the client's window is full."""

    #: The pty master, or None: paused while the client cannot take more.
    output_producer: Any = None
    #: Serving a subsystem (sftp) rather than a program.
    serves_subsystem = False

    def request_subsystem(self, data: bytes) -> int:
        ok = super().request_subsystem(data)
        self.serves_subsystem = bool(ok)
        return ok

    def request_shell(self, data: bytes) -> int:
        return super().request_shell(data) if self._may_run() else 0

    def request_exec(self, data: bytes) -> int:
        return super().request_exec(data) if self._may_run() else 0

    def _may_run(self) -> bool:
        """A refused program (root, none installed) fails the request, without a traceback."""
        prepare = getattr(self._session, "prepare", None)  # another ISession: no check
        try:
            if prepare is not None:
                prepare()
        except (cred_error.UnauthorizedLogin, OSError) as e:
            log.info("ssh: session refused user={user}: {why}",
                     user=getattr(self.avatar, "username", "?"), why=e,
                     event="refused", reason="session_refused")
            return False
        return True

    def eofReceived(self) -> None:
        """
        A subsystem's client is done: end with exit-status 0 as sshd does
        (scp treats a missing status as failure), then close.
        """
        if self.serves_subsystem and self.conn is not None:
            self.conn.sendRequest(self, b"exit-status", struct.pack(">L", 0))
            self.conn.sendClose(self)
            return
        super().eofReceived()

    def stopWriting(self) -> None:
        if self.output_producer is not None:
            self.output_producer.pauseProducing()

    def startWriting(self) -> None:
        if self.output_producer is not None:
            self.output_producer.resumeProducing()


class _ChannelAsTransport:
    """What L{PTYSession} takes for its client's transport: the channel's flow control."""

    def __init__(self, channel: SessionChannel):
        self.channel = channel

    def registerProducer(self, producer, streaming: bool) -> None:
        self.channel.output_producer = producer

    def unregisterProducer(self) -> None:
        self.channel.output_producer = None

    # The pty registers us as its producer: SSH windows already bound the input.
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _PTYInput:
    """The channel's input side: conch writes client data here, into the pty."""

    def __init__(self, pty: PTYSession):
        self.pty = pty

    def write(self, data: bytes) -> None:
        self.pty.write(data)

    def loseConnection(self) -> None:
        self.pty.hangup()


@implementer(ISession, ISessionSetEnv)
class TerminalSession:
    """One session channel's program (conch makes one per channel)."""

    def __init__(self, user: "SSHUser"):
        self.user = user
        self.config = user.realm.config
        self.term: str | None = None
        self.size: tuple[int, int] | None = None
        self.client_env: dict[str, str] = {}
        self.pty: PTYSession | None = None
        self.process: Any = None
        self.proto: Any = None
        self.avatar: Any = None

    # -- requests before the program starts ---------------------------------------

    def getPty(self, term: bytes, windowSize, modes) -> None:
        rows, cols = windowSize[0], windowSize[1]
        name = parse_ttype(b"\0" + term[:64])
        self.term = name or self.config.telnet.default_term
        self.size = (cols, rows) if rows and cols else None

    def setEnv(self, name: bytes, value: bytes) -> None:
        key = name.decode("utf-8", "replace")
        val = value.decode("utf-8", "replace")
        if (not self.config.telnet.env_allowed(key) or "\0" in val or len(val) > MAX_ENV_VALUE
                or (key not in self.client_env and len(self.client_env) >= MAX_ENV_VARS)):
            raise EnvironmentVariableNotPermitted(name, value)
        self.client_env[key] = val

    def windowChanged(self, newWindowSize) -> None:
        rows, cols = newWindowSize[0], newWindowSize[1]
        if rows and cols:
            self.size = (cols, rows)
            if self.pty is not None:
                self.pty.resize(cols, rows)

    # -- starting ---------------------------------------------------------------------

    def openShell(self, proto) -> None:
        self._start(proto, None)

    def execCommand(self, proto, cmd: bytes) -> None:
        self._start(proto, cmd.decode("utf-8", "surrogateescape"))

    def prepare(self):
        """The realm's terminal avatar, once; raises if the user may not run a program."""
        if self.avatar is None:
            avatar = self.user.realm_avatar(ITerminalAvatar)
            if not (os.path.isfile(avatar.executable) and os.access(avatar.executable, os.X_OK)):
                raise FileNotFoundError(f"{avatar.executable}: not an executable file")
            self.avatar = avatar
        return self.avatar

    def _start(self, proto, command: str | None) -> None:
        avatar = self.prepare()
        executable, argv = avatar.executable, list(avatar.argv)
        extra: dict[str, str] = {}
        if command is not None:
            if argv and argv[0].startswith("-"):
                # The login shell: run the command the way sshd does.
                argv = [os.path.basename(executable), "-c", command]
            else:
                # A configured program is forced, as with sshd's ForceCommand.
                extra["SSH_ORIGINAL_COMMAND"] = command
        self.proto = proto
        channel = proto.session
        ssh = channel.conn.transport
        factory, host = ssh.factory, ssh.peer()
        if self.term is not None:
            telnet = self.config.telnet
            avatar = _with(avatar, executable, argv, extra)
            pty = PTYSession(_Owner(self, channel), avatar, self.term, self.size,
                             self.client_env, grace=telnet.hangup_grace, echo=True,
                             host=host, recorder=factory.recorder)
            pty.start(factory.reactor)
            self.pty = pty
            proto.makeConnection(_PTYInput(pty))
            log.info("ssh: session user={user} address={client} tty={tty} pid={pid} "
                     "term={term}", user=self.user.username, client=host, tty=pty.tty,
                     pid=pty.pid, term=self.term, event="session_start")
        else:
            env = {**self.client_env, **avatar.env, **extra}
            self.process = factory.reactor.spawnProcess(
                proto, executable, argv, env, path=avatar.cwd, uid=avatar.uid,
                gid=avatar.gid, usePTY=False)
            log.info("ssh: exec user={user} address={client} pid={pid}",
                     user=self.user.username, client=host, pid=self.process.pid,
                     event="session_start")

    # -- ending -------------------------------------------------------------------

    def eofReceived(self) -> None:
        if self.process is not None:
            self.process.closeStdin()

    def closed(self) -> None:
        if self.pty is not None:
            self.pty.hangup()
        elif self.process is not None and self.process.pid is not None:
            try:
                self.process.signalProcess("HUP")
            except Exception:
                pass


class _Owner:
    """The L{PTYSession} owner: output into the channel, the end as exit-status."""

    def __init__(self, session: TerminalSession, channel: SessionChannel):
        self.session = session
        self.transport = _ChannelAsTransport(channel)
        self.channel = channel

    def terminalOutput(self, data: bytes) -> None:
        self.channel.write(data)

    def terminalEnded(self, status: Failure) -> None:
        proto = self.session.proto
        if proto is not None:
            proto.processEnded(status)


def _with(avatar, executable: str, argv: list[str], extra: dict[str, str]):
    """The terminal avatar with the command's argv and extra variables."""
    try:
        return replace(avatar, executable=executable, argv=argv, env={**avatar.env, **extra})
    except TypeError:  # a custom realm's avatar that is not a dataclass
        avatar.executable, avatar.argv = executable, argv
        avatar.env = {**avatar.env, **extra}
        return avatar


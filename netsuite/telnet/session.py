"""
The terminal avatar (what a login runs, as whom, where) and the
pseudo-terminal session that runs it.

L{terminal_for} is what the realm calls after a successful login through the
portal: everything in the avatar comes from the account and the server's
configuration, never from the client.  The client contributes only the
terminal type, the window size and whitelisted environment variables, added
by L{PTYSession} when it starts the program.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
import signal
import struct
import sys
import termios
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from twisted.cred import error
from twisted.internet import error as ierror
from twisted.internet import protocol
from twisted.internet.process import PTYProcess
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netsuite import metrics
from netsuite.realm import ITerminalAvatar

if TYPE_CHECKING:
    from netsuite.telnet.service import TelnetConfig

log = Logger(namespace="netsuite.telnet")

IUTF8 = getattr(termios, "IUTF8", 0o40000 if sys.platform.startswith("linux") else 0)
ROOT_PATH_PREFIX = "/usr/local/sbin:/usr/sbin:/sbin"


@implementer(ITerminalAvatar)
@dataclass
class TerminalAvatar:
    """A login's program and the identity it runs under."""

    user: str
    #: The file to execute, and its argv (argv[0] of a login shell is C{-sh}).
    executable: str
    argv: list[str]
    #: HOME, USER, LOGNAME, SHELL, PATH: the session adds TERM and client variables.
    env: dict[str, str]
    #: Working directory: the user's home.
    cwd: str
    #: Switch to these when the server runs as root; None keeps the server's own.
    uid: int | None = None
    gid: int | None = None
    groups: list[int] = field(default_factory=list)

    def logout(self) -> None:
        """Nothing to release: the session owns the process."""


def _program_for(config: "TelnetConfig", user: str, group_names: list[str],
                 shell: str) -> tuple[str, list[str]]:
    """Per-user program, else the first matching group's, else C{program}, else the shell."""
    argv = config.user_programs.get(user)
    if argv is None:
        for name, candidate in config.group_programs.items():
            if name in group_names:
                argv = candidate
                break
    if argv is None and config.program:
        argv = config.program
    if argv is None:
        return shell, ["-" + os.path.basename(shell)]
    argv = [arg.replace("{user}", user) for arg in argv]
    return argv[0], argv


def terminal_for(realm: Any, user: str) -> TerminalAvatar:
    """
    The avatar for C{user}, who has just logged in.

    A system account runs its own shell in its home, as itself when the
    server is root.  A password-file user without a system account runs
    C{default_shell} (or the configured program) in C{DATA/home/USER}, as
    C{virtual_user} or else as the server's own user.
    """
    config: TelnetConfig = realm.config.telnet
    server_is_root = os.geteuid() == 0
    try:
        account = pwd.getpwnam(user)
        system = True
    except KeyError:
        account = None
        system = False
    if account is None and config.virtual_user:
        account = pwd.getpwnam(config.virtual_user)  # checked when the factory is built

    uid = gid = None
    groups: list[int] = []
    group_names: list[str] = []
    if account is not None:
        if server_is_root:
            uid, gid = account.pw_uid, account.pw_gid
        if system:
            groups = os.getgrouplist(account.pw_name, account.pw_gid)
            for g in groups:
                try:
                    group_names.append(grp.getgrgid(g).gr_name)
                except KeyError:
                    pass
    # Judge by the uid the program will really run as: a password-file user on a
    # root server with no virtual_user would otherwise get a root shell.
    effective_uid = uid if uid is not None else os.geteuid()
    if effective_uid == 0 and not config.permit_root_login:
        raise error.UnauthorizedLogin(
            "the program would run as root: set telnet.virtual_user, or "
            "telnet.permit_root_login = true to allow it")

    home = Path(realm.home(user))
    if system and account is not None:
        shell = account.pw_shell or "/bin/sh"
        cwd = str(home) if home.is_dir() else "/"
    else:
        shell = config.default_shell
        _make_home(home, uid, gid)
        cwd = str(home)

    runs_as_root = effective_uid == 0
    path = config.path
    if runs_as_root and "sbin" not in path:
        path = f"{ROOT_PATH_PREFIX}:{path}"
    executable, argv = _program_for(config, user, group_names, shell)
    env = {"HOME": str(home), "USER": user, "LOGNAME": user, "SHELL": shell, "PATH": path}
    return TerminalAvatar(user, executable, argv, env, cwd, uid, gid, groups)


def _make_home(home: Path, uid: int | None, gid: int | None) -> None:
    """A password-file user's home, created private on first login."""
    if home.is_dir():
        return
    home.mkdir(parents=True, mode=0o700, exist_ok=True)
    if uid is not None:
        os.chown(home, uid, gid if gid is not None else -1)


# -- the pseudo-terminal session --------------------------------------------------------


class SessionOwner(Protocol):
    """What L{PTYSession} needs from the connection (the TELNET protocol)."""

    transport: Any

    def terminalOutput(self, data: bytes) -> None: ...

    def terminalEnded(self, status: Failure) -> None: ...


def set_window_size(fd: int, columns: int, rows: int) -> None:
    """TIOCSWINSZ: on the master, the kernel sends SIGWINCH to the foreground job."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("4H", rows, columns, 0, 0))


def session_members(sid: int) -> list[int]:
    """Every process in session C{sid} (Linux /proc), the leader included."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [sid]
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) == sid:
                found.append(pid)
        except OSError:
            pass
    return found or [sid]


class PTYSession(protocol.ProcessProtocol):
    """
    One program on one pseudo-terminal, bridged to a TELNET connection.

    Backpressure runs both ways through Twisted's producer/consumer pairs:
    the pty master is registered as a streaming producer with the client's
    transport (a full socket buffer stops reading the pty, so the program
    blocks on write), and the client's transport with the pty (a program
    that does not read stops reading the socket).

    The program exiting closes the connection; the connection dropping hangs
    up the session (SIGHUP to every process in it, the master closed) and,
    after C{grace} seconds, SIGKILLs the program's process group if it is
    still there.  Twisted reaps the child.
    """

    #: Most output read from the pty after the program has exited.
    DRAIN_LIMIT = 1 << 20

    #: What C{spawnProcess(usePTY=...)} connects us to: a pty process with a
    #: C{fileno()} and reader/writer state, not just an C{IProcessTransport}.
    transport: PTYProcess

    def __init__(self, owner: SessionOwner, avatar: TerminalAvatar, term: str,
                 size: tuple[int, int] | None, client_env: dict[str, str],
                 grace: float = 5.0, echo: bool = True, host: str = "",
                 recorder: Any = None):
        self.owner = owner
        self.avatar = avatar
        self.term = term
        self.size = size
        self.env = {**client_env, **avatar.env, "TERM": term}
        self.grace = grace
        #: Whether the pty echoes: not when the client echoes locally itself.
        self.echo = echo
        #: The client's address and the utmp/wtmp L{Recorder}, if any.
        self.host = host
        self.recorder = recorder
        self.pid: int | None = None
        self.tty: str | None = None
        self.exited = False
        self.ended = False
        self._kill_call = None
        self._reactor = None
        #: Counted in C{netsuite_telnet_sessions_open} (its program was spawned).
        self._counted = False

    # -- starting -------------------------------------------------------------

    def start(self, reactor) -> None:
        """Open a pty pair, size it, and spawn the program on it."""
        self._reactor = reactor
        executable = self.avatar.executable
        if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
            raise FileNotFoundError(f"{executable}: not an executable file")
        master, slave = os.openpty()
        try:
            if self.size:
                set_window_size(master, *self.size)
            attrs = termios.tcgetattr(slave)
            attrs[0] |= IUTF8
            if not self.echo:
                attrs[3] &= ~(termios.ECHO | termios.ECHOE | termios.ECHOK | termios.ECHONL)
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            self.tty = os.ttyname(slave)
            if self.avatar.uid is not None:
                try:
                    tty_gid = grp.getgrnam("tty").gr_gid
                except KeyError:
                    tty_gid = self.avatar.gid if self.avatar.gid is not None else -1
                os.chown(self.tty, self.avatar.uid, tty_gid)
                os.chmod(self.tty, 0o620)
            process = reactor.spawnProcess(
                self, executable, self.avatar.argv, self.env,
                path=self.avatar.cwd, uid=self.avatar.uid, gid=self.avatar.gid,
                usePTY=(master, slave, self.tty))
        except BaseException:
            os.close(master)
            try:
                os.close(slave)
            except OSError:
                pass
            raise
        self.pid = process.pid
        self._counted = True
        metrics.telnet_sessions.inc()
        metrics.telnet_sessions_open.inc()
        if self.recorder is not None:
            self.recorder.login(self.pid, self.tty, self.avatar.user, self.host)

    def connectionMade(self) -> None:
        client = self.owner.transport
        client.registerProducer(self.transport, True)
        self.transport.registerProducer(client, True)

    # -- data ------------------------------------------------------------------

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.owner.terminalOutput(data)

    def write(self, data: bytes) -> None:
        if not self.exited and self._open():
            self.transport.write(data)

    def resize(self, columns: int, rows: int) -> None:
        self.size = (columns, rows)
        if self._open():
            try:
                set_window_size(self.transport.fileno(), columns, rows)
            except OSError:
                pass

    def send_control(self, index: int) -> None:
        """Type the terminal's own control character (VINTR, VQUIT, VERASE...)."""
        if not self._open():
            return
        try:
            cc = termios.tcgetattr(self.transport.fileno())[6][index]
        except (OSError, termios.error):
            return
        char = bytes((cc,)) if isinstance(cc, int) else cc
        if char and char != b"\0":
            self.write(char)

    def discard_output(self) -> None:
        """TELNET AO: drop what the program wrote and we have not read yet."""
        if self._open():
            try:
                termios.tcflush(self.transport.fileno(), termios.TCIFLUSH)
            except (OSError, termios.error):
                pass

    def _open(self) -> bool:
        t = self.transport
        return t is not None and bool(t.connected) and not t.disconnected

    # -- ending ------------------------------------------------------------------

    def processExited(self, reason: Failure) -> None:
        """The program is gone: send what it left in the pty, close it, hang up."""
        self.exited = True
        self._cancel_kill()
        if self._open():
            fd = self.transport.fileno()
            drained = 0
            while drained < self.DRAIN_LIMIT:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                drained += len(chunk)
                self.owner.terminalOutput(chunk)
            self._close_pty()
        self._finish(reason)

    def processEnded(self, reason: Failure) -> None:
        self.exited = True
        self._cancel_kill()
        self._finish(reason)

    def _finish(self, reason: Failure) -> None:
        if not self.ended:
            self.ended = True
            if self._counted:
                metrics.telnet_sessions_open.dec()
            if self.recorder is not None and self.pid is not None:
                self.recorder.logout(self.pid, self.tty)
            self.owner.terminalEnded(reason)

    def hangup(self) -> None:
        """The client is gone: SIGHUP the whole session, close the pty, then SIGKILL."""
        if self.exited or self.pid is None:
            return
        self._signal_session(signal.SIGHUP)
        self._signal_session(signal.SIGCONT)
        self._close_pty()
        if self._reactor is not None and self._kill_call is None:
            self._kill_call = self._reactor.callLater(self.grace, self._kill)

    def _kill(self) -> None:
        self._kill_call = None
        if not self.exited and self.pid is not None:
            log.warn("telnet session pid={pid} ignored SIGHUP; killing it", pid=self.pid)
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass

    def _cancel_kill(self) -> None:
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None

    def _signal_session(self, signum: int) -> None:
        if self.pid is None:
            return
        for pid in session_members(self.pid):
            try:
                os.kill(pid, signum)
            except OSError as e:
                if e.errno != errno.ESRCH:
                    log.warn("cannot signal pid={pid}: {e}", pid=pid, e=e)

    def _close_pty(self) -> None:
        """
        Close the master now, dropping input the program never read: a
        plain loseConnection would wait for that buffer to drain, forever if
        the program does not read.
        """
        process = self.transport
        if not self._open():
            return
        try:
            self.owner.transport.unregisterProducer()
        except Exception:  # already gone
            pass
        process.unregisterProducer()
        process.stopReading()
        process.stopWriting()
        process.connectionLost(Failure(ierror.ConnectionDone("pty closed")))

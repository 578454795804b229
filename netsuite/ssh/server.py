"""
The SSH server on twisted.conch: the transport with netsuite's algorithm set,
user authentication through the shared throttled portal, and the avatar whose
channels are terminal sessions (L{netsuite.ssh.session}) and SFTP
(L{netsuite.ssh.sftp}).
"""

from __future__ import annotations

import os
import struct
from typing import Any

from twisted.conch import avatar, error
from twisted.conch.interfaces import IConchUser, ISession, ISFTPServer
from twisted.conch.ssh import connection, factory, transport, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.cred import credentials
from twisted.cred import error as cred_error
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python import components
from zope.interface import implementer

from netsuite.shutdown import IGracefulStop
from netsuite.ssh import authorized
from netsuite.ssh.session import SessionChannel, TerminalSession
from netsuite.ssh.sftp import JailedSFTP, SFTPServer
from netsuite.telnet.utmp import Recorder

log = Logger(namespace="netsuite.ssh")

VERSION = b"SSH-2.0-netsuite"


@implementer(IGracefulStop)
class ServerTransport(transport.SSHServerTransport):
    """
    conch's server transport, stricter before the version exchange: the
    client's first line must be its version (RFC 4253 4.2), and a connection
    that is not authenticated within C{login_timeout} is closed.
    """

    ourVersionString = VERSION
    _deadline: Any = None
    #: The L{SSHFactory} and the TCP connection (conch types them loosely).
    factory: Any
    transport: Any

    def connectionMade(self) -> None:
        super().connectionMade()
        f = self.factory
        self._deadline = f.reactor.callLater(f.config.login_timeout, self._too_slow)

    def dataReceived(self, data: bytes) -> None:
        if not self.gotVersion:
            pending = self.buf + data
            if pending and not b"SSH-".startswith(pending[:4]):
                log.info("ssh: no version line from {address}; closing", address=self.peer())
                self.transport.loseConnection()
                return
            line_end = pending.find(b"\n")
            if line_end >= 0 and not pending.startswith(b"SSH-2.0-"):
                if not pending.startswith(b"SSH-1.99-"):
                    log.info("ssh: bad version line from {address}; closing",
                             address=self.peer())
                    self.transport.loseConnection()
                    return
        super().dataReceived(data)

    def peer(self) -> str:
        return getattr(self.transport.getPeer(), "host", "local")

    def _too_slow(self) -> None:
        self._deadline = None
        if not hasattr(self, "avatar"):
            log.info("ssh: login timeout address={client}", client=self.peer(),
                     event="timeout", reason="login_timeout")
            self.sendDisconnect(transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
                                b"login timed out")

    def shutdown(self) -> None:
        """SIGTERM (netsuite.shutdown): SSH_MSG_DISCONNECT, then close."""
        if self.transport is None or self.transport.disconnecting:
            return
        log.info("ssh: shutdown address={address}", address=self.peer())
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, b"Server shutting down")

    def connectionLost(self, reason=None) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        super().connectionLost(reason)


class UserAuth(userauth.SSHUserAuthServer):
    """
    Logins through the connection's own view of the shared portal, so SSH
    failures are counted with TELNET, FTP and mail failures for the same
    address and user.
    """

    #: Our L{ServerTransport}.
    transport: Any

    def serviceStarted(self) -> None:
        f = self.transport.factory
        self.loginTimeout = f.config.login_timeout
        self.passwordDelay = f.config.fail_delay
        # conch disconnects once loginAttempts exceeds this.
        self.attemptsBeforeDisconnect = f.config.max_auth_tries - 1
        self.clock = f.reactor
        super().serviceStarted()
        self.portal = f.ctx.portal.bind(self.transport.peer(), "ssh")
        self._answer: defer.Deferred | None = None
        if not f.config.password_auth:
            if b"password" in self.supportedAuthentications:
                self.supportedAuthentications.remove(b"password")
        elif b"password" in self.supportedAuthentications:
            self.supportedAuthentications.append(b"keyboard-interactive")

    def serviceStopped(self) -> None:
        super().serviceStopped()
        answer, self._answer = self._answer, None
        if answer is not None:
            answer.cancel()

    def auth_keyboard_interactive(self, packet: bytes):
        """
        RFC 4256 with one prompt, "Password:", checked through the portal as the
        password method is (many clients prefer this method for passwords).
        """
        if self._answer is not None:
            return defer.fail(cred_error.UnauthorizedLogin("a prompt is already open"))
        d: defer.Deferred = defer.Deferred()
        self._answer = d
        self.transport.sendPacket(
            userauth.MSG_USERAUTH_INFO_REQUEST,
            NS(b"") + NS(b"") + NS(b"") + struct.pack(">L", 1) + NS(b"Password: ") + b"\x00")
        return d

    def ssh_USERAUTH_INFO_RESPONSE(self, packet: bytes) -> None:
        d, self._answer = self._answer, None
        if d is None:
            self.transport.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR,
                                          b"unexpected info response")
            return
        try:
            (count,) = struct.unpack(">L", packet[:4])
            answers = getNS(packet[4:], count) if count == 1 else None
        except (struct.error, ValueError, IndexError):
            answers = None
        if not answers:
            d.errback(cred_error.UnauthorizedLogin("expected one answer"))
            return
        creds = credentials.UsernamePassword(self.user, answers[0])
        login = self.portal.login(creds, None, IConchUser).addErrback(self._ebPassword)
        login.chainDeferred(d)

    def auth_publickey(self, packet: bytes):
        """
        A key with a signature is a login through the portal; the unsigned
        query ("would this key do?") is answered from the key lists alone: it
        proves nothing, and passing it through the portal would count each
        key a client merely offers as a failed login.
        """
        if packet[0:1] != b"\x00":
            return super().auth_publickey(packet)
        _alg, blob, _rest = getNS(packet[1:], 2)
        user = self.user.decode("utf-8", "replace")
        d = threads.deferToThread(authorized.authorized, self.transport.factory.data_dir,
                                  user, blob)

        def answer(ok: bool):
            if not ok:
                raise cred_error.UnauthorizedLogin("key not authorized")
            self.transport.sendPacket(userauth.MSG_USERAUTH_PK_OK, packet[1:])
            raise error.IgnoreAuthentication()

        return d.addCallback(answer)


class SSHFactory(factory.SSHFactory):
    """One per listener: host keys, algorithm lists and the portal."""

    protocol = ServerTransport
    services = {
        b"ssh-userauth": UserAuth,
        b"ssh-connection": connection.SSHConnection,
    }

    def __init__(self, ctx, listener: str, host_keys: dict):
        self.ctx = ctx
        self.config = ctx.config.ssh
        self.reactor = ctx.reactor
        self.listener = listener
        self.data_dir = ctx.config.data_dir
        # conch reads the portal's credential interfaces from here.
        self.portal = ctx.portal
        self.privateKeys = host_keys
        self.publicKeys = {kind: key.public() for kind, key in host_keys.items()}
        self.primes = None  # no moduli file: fixed-group and ECDH exchanges only
        telnet = ctx.config.telnet
        self.recorder = Recorder(telnet.utmp_file, telnet.wtmp_file,
                                 enabled=telnet.utmp and os.geteuid() == 0)

    def buildProtocol(self, addr):
        t = super().buildProtocol(addr)
        c = self.config
        t.supportedKeyExchanges = [k.encode() for k in c.kex_algorithms]
        t.supportedCiphers = [k.encode() for k in c.ciphers]
        t.supportedMACs = [k.encode() for k in c.macs]
        offered = set(t.supportedPublicKeys)
        t.supportedPublicKeys = [k.encode() for k in c.host_key_algorithms
                                 if k.encode() in offered]
        return t


class SSHUser(avatar.ConchUser):
    """
    The avatar of one SSH login: sessions (shell, exec, sftp) open on it.
    The terminal avatar and the file root come from the realm when a channel
    asks for them, so a user refused a shell (root) may still use SFTP.
    """

    def __init__(self, realm, user: str, sftp: bool):
        super().__init__()
        self.realm = realm
        self.username = user
        self.channelLookup[b"session"] = SessionChannel
        if sftp:
            self.subsystemLookup[b"sftp"] = SFTPServer
        self._logouts: list = []

    def realm_avatar(self, iface):
        """The realm's avatar of C{iface} for this user (its logout runs at ours)."""
        _iface, found, logout = self.realm.requestAvatar(self.username, None, iface)
        self._logouts.append(logout)
        return found

    def logout(self) -> None:
        logouts, self._logouts = self._logouts, []
        for logout in logouts:
            try:
                logout()
            except Exception:
                log.failure("ssh: logout of {user}", user=self.username)


def make_user(realm, user) -> SSHUser:
    return SSHUser(realm, user, realm.config.ssh.sftp)


# One session object per channel, one SFTP server per subsystem.
components.registerAdapter(TerminalSession, SSHUser, ISession)
components.registerAdapter(JailedSFTP, SSHUser, ISFTPServer)


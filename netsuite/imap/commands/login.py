"""
Getting in: STARTTLS, LOGIN and AUTHENTICATE (SASL PLAIN, SASL-IR), through the Portal.
"""

from __future__ import annotations

from twisted.cred import credentials
from twisted.cred import error as cred_error
from twisted.internet import interfaces
from twisted.logger import Logger

from netsuite.auth import sasl
from netsuite.db.errors import DatabaseUnavailable
from netsuite.imap.account import IImapAccount
from netsuite.imap.commands import SessionBase

log = Logger(namespace="netsuite.imap")


class LoginCommands(SessionBase):
    """Mixin of L{netsuite.imap.server.IMAPServer}: self is the session."""

    def imap_STARTTLS(self, tag, cur):
        cur.end()
        if self.tls:
            self._tagged(tag, b"BAD", b"TLS already active")
            return
        if self.ctx.tls is None or interfaces.ITLSTransport(self.transport, None) is None:
            self._tagged(tag, b"NO", b"TLS not available")
            return
        self.send(tag + b" OK Begin TLS negotiation now")
        self.transport.startTLS(self.ctx.tls)
        self.tls = True
        # Commands pipelined in plain text after STARTTLS are never run (RFC 3501 6.2.1).
        self._framer.discard()

    def _privacy_required(self, tag) -> bool:
        if self.plaintext_allowed():
            return False
        self._tagged(tag, b"NO", b"[PRIVACYREQUIRED] Plaintext authentication disallowed "
                                 b"on non-secure connections; use STARTTLS")
        log.info("login refused without TLS: protocol=imap address={client}",
                 client=self.peer, protocol="imap", event="login_refused",
                 reason="plaintext_refused")
        return True

    def imap_LOGIN(self, tag, cur):
        user = cur.astring()
        cur.sp()
        password = cur.astring()
        cur.end()
        if self._privacy_required(tag):
            return None
        return self._login(tag, user, password)

    def imap_AUTHENTICATE(self, tag, cur):
        mech = cur.atom().upper()
        initial = None
        if cur.maybe(b" "):
            initial = cur.astring()
        cur.end()
        if mech != b"PLAIN":
            self._tagged(tag, b"NO", b"Unsupported authentication mechanism")
            return None
        if self._privacy_required(tag):
            return None
        if initial is None:
            self._mode = "sasl"
            self._sasl_tag = tag
            self.send(b"+ ")
            return None
        return self._sasl_plain(tag, b"" if initial == b"=" else initial)

    def _sasl_line(self, line: bytes) -> None:
        tag, self._sasl_tag = self._sasl_tag or b"*", None
        self._mode = "line"
        if line.strip() == b"*":
            self._tagged(tag, b"BAD", b"Authentication cancelled")
            return
        d = self._sasl_plain(tag, line)
        if d is not None:
            self._busy = True
            d.addBoth(self._unbusy)

    def _unbusy(self, _=None):
        self._busy = False
        if not self._lost:
            self._process()

    def _sasl_plain(self, tag, response):
        try:
            authz, user, password = sasl.decode_plain(response)
        except sasl.SASLError as e:
            self._tagged(tag, b"BAD", str(e).encode())
            return None
        if authz and authz != user:
            self._tagged(tag, b"NO", b"[AUTHORIZATIONFAILED] Proxy authorization not supported")
            return None
        return self._login(tag, user, password)

    def _login(self, tag, user: bytes, password: bytes):
        self.setTimeout(None)
        d = self.portal.login(credentials.UsernamePassword(user, password), None, IImapAccount)

        def ok(result):
            iface, avatar, logout = result
            if self._lost or self.transport.disconnecting:
                logout()  # gone while the password was checked
                return
            self.account = avatar
            self._onLogout = logout
            self.state = "auth"
            self.setTimeout(self.POSTAUTH_TIMEOUT)
            self._tagged(tag, b"OK", b"[CAPABILITY " + b" ".join(self.capability_list()) +
                         b"] Logged in")

        def failed(f):
            if self._lost:
                return None
            self.setTimeout(self.cfg.login_timeout)  # setTimeout(None) cleared timeOut
            if f.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
                self._tagged(tag, b"NO", b"[AUTHENTICATIONFAILED] Authentication failed")
            elif f.check(DatabaseUnavailable):  # logged by the portal
                self._tagged(tag, b"NO", b"[UNAVAILABLE] User database unavailable, "
                             b"try again later")
            else:
                log.failure("IMAP login", f)
                self._tagged(tag, b"NO", b"[UNAVAILABLE] Temporary server failure")

        return d.addCallbacks(ok, failed)

"""The IMAP command reader on a StringTransport: literals, limits, pipelining, STARTTLS."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import defer, task
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from netsuite.imap.account import IImapAccount
from netsuite.imap.server import IMAPServer
from netsuite.imap.service import IMAPConfig


class FakePortal:
    def __init__(self):
        self.logins = []
        self.pending: defer.Deferred | None = None

    def bind(self, peer, protocol):
        return self

    def login(self, creds, mind, *ifaces):
        self.logins.append((creds.username, creds.password))
        self.pending = defer.Deferred()
        return self.pending


@implementer(ITLSTransport)
class TLSTransport(StringTransport):
    """A transport that can start TLS, like a TCP transport."""

    tls_started = False

    def startTLS(self, ctx):
        self.tls_started = True


def make(plaintext=True, tls_ctx=None, transport=None, **cfg):
    portal = FakePortal()
    ctx = SimpleNamespace(portal=portal, tls=tls_ctx,
                          config=SimpleNamespace(server=SimpleNamespace(
                              allow_plaintext_auth=plaintext)))
    server = IMAPServer(ctx, IMAPConfig(**cfg))
    # Timeouts on a fake clock: nothing is left scheduled on the global reactor.
    server.callLater = task.Clock().callLater
    t = transport or StringTransport()
    server.makeConnection(t)
    greeting = t.value()
    t.clear()
    return server, t, portal, greeting


def test_greeting_lists_capabilities():
    _, _, _, greeting = make(plaintext=False)
    assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    assert b"LOGINDISABLED" in greeting and b"AUTH=PLAIN" not in greeting


def test_synchronizing_literal_gets_continuation_then_runs():
    server, t, portal, _ = make()
    server.dataReceived(b"a1 LOGIN {5}\r\n")
    assert t.value() == b"+ Ready for literal data\r\n"
    t.clear()
    server.dataReceived(b"alice {3}\r\n")
    assert t.value() == b"+ Ready for literal data\r\n"
    server.dataReceived(b"p w\r\n")
    assert portal.logins == [(b"alice", b"p w")]


def test_literal_plus_needs_no_continuation():
    server, t, portal, _ = make()
    server.dataReceived(b"a1 LOGIN {5+}\r\nalice \"pw\"\r\n")
    assert t.value() == b""
    assert portal.logins == [(b"alice", b"pw")]


def test_oversized_literal_refused_before_any_byte():
    server, t, _, _ = make(max_message_size=1000)
    server.dataReceived(b"a1 APPEND INBOX {1001}\r\n")
    assert t.value() == b"a1 NO [TOOBIG] Literal too large (limit 1000 octets)\r\n"
    assert server._mode == "line" and not server._framer.in_command
    assert server._framer.lines.buffered == 0
    t.clear()
    server.dataReceived(b"a2 NOOP\r\n")
    assert t.value() == b"a2 OK NOOP completed\r\n"


def test_oversized_nonsync_literal_is_refused_at_once_and_the_connection_closed():
    # RFC 7888 4: the client sends a LITERAL+ literal without waiting, so the
    # server answers TOOBIG before any of it and hangs up; nothing is buffered.
    server, t, _, _ = make(max_literal=100)
    server.dataReceived(b"a1 LOGIN {50000000+}\r\n" + b"x" * 65536)
    assert t.value() == b"a1 NO [TOOBIG] Literal too large (limit 100 octets)\r\n"
    assert t.disconnecting
    assert server._framer.lines.buffered == 0


def test_big_nonsync_literal_within_limit_streams_through():
    server, t, portal, _ = make(max_literal=60_000_000)
    server.dataReceived(b"a1 LOGIN {50000000+}\r\n")
    chunk = b"x" * 65536
    sent = 0
    while sent + len(chunk) <= 50_000_000:
        server.dataReceived(chunk)
        sent += len(chunk)
        assert server._framer.lines.buffered == 0
    server.dataReceived(b"x" * (50_000_000 - sent) + b" pw\r\n")
    assert portal.logins == [(b"x" * 50_000_000, b"pw")]


def test_commands_pipelined_during_login_wait_their_turn():
    server, t, portal, _ = make()
    server.dataReceived(b"a1 LOGIN alice pw\r\na2 CAPABILITY\r\n")
    assert t.value() == b""  # a2 waits for the login to finish
    account = SimpleNamespace()
    portal.pending.callback((IImapAccount, account, lambda: None))
    out = t.value().split(b"\r\n")
    assert out[0].startswith(b"a1 OK [CAPABILITY")
    assert out[1].startswith(b"* CAPABILITY") and out[2].startswith(b"a2 OK")
    assert server.state == "auth"


def test_starttls_discards_pipelined_plaintext():
    transport = TLSTransport()
    server, t, portal, _ = make(plaintext=False, tls_ctx=object(), transport=transport)
    server.dataReceived(b"a1 STARTTLS\r\na2 LOGIN alice pw\r\n")
    assert transport.tls_started
    assert t.value() == b"a1 OK Begin TLS negotiation now\r\n"
    assert portal.logins == []
    t.clear()
    server.dataReceived(b"a3 CAPABILITY\r\n")
    assert b"AUTH=PLAIN" in t.value() and b"STARTTLS" not in t.value()


def test_line_too_long_and_nul():
    server, t, _, _ = make(max_line_length=1000)
    server.dataReceived(b"a1 NOOP " + b"y" * 5000)
    server.dataReceived(b"y" * 5000 + b"\r\na2 NOOP\r\n")
    assert t.value() == b"a1 BAD Command line too long\r\na2 OK NOOP completed\r\n"
    t.clear()
    server.dataReceived(b"a3 NO\x00OP\r\n")
    assert t.value() == b"a3 BAD NUL byte in command\r\n"


def test_many_small_literals_cannot_grow_a_command_forever():
    server, t, _, _ = make(max_line_length=1000)
    server.dataReceived(b"a1 LOGIN" + b" {0+}\r\n" * 2000 + b" x\r\n")
    assert t.value().startswith(b"a1 BAD")


def test_overlong_sasl_response_is_refused_and_the_session_goes_on():
    server, t, portal, _ = make(max_line_length=1000)
    server.dataReceived(b"a1 AUTHENTICATE PLAIN\r\n")
    assert t.value() == b"+ \r\n"
    t.clear()
    server.dataReceived(b"A" * 3000 + b"\r\na2 NOOP\r\n")
    assert t.value() == (b"a1 BAD Authentication response too long\r\n"
                         b"a2 OK NOOP completed\r\n")
    assert portal.logins == []


def test_trickled_line_meets_the_deadline_on_the_session_clock():
    clock = task.Clock()
    portal = FakePortal()
    ctx = SimpleNamespace(portal=portal, tls=None, config=SimpleNamespace(
        server=SimpleNamespace(allow_plaintext_auth=True),
        limits=SimpleNamespace(command_timeout=10)))
    server = IMAPServer(ctx, IMAPConfig())
    server.callLater = clock.callLater
    t = StringTransport()
    server.makeConnection(t)
    t.clear()
    for _ in range(9):
        server.dataReceived(b"x")
        clock.advance(1)
    assert not t.disconnecting
    clock.advance(1)
    assert t.value() == b"* BYE Command took too long, closing connection\r\n"
    assert t.disconnecting


class FailingFolder:
    uidvalidity = 1

    def __init__(self, error):
        self.error = error

    def append(self, data, flags, date):
        raise self.error

    def append_many(self, items, notify=True):
        from twisted.internet import defer

        return defer.fail(self.error)


def test_append_disk_errors_are_answered_by_kind():
    import errno

    for err, code in ((errno.ENOSPC, b"OVERQUOTA"), (errno.EDQUOT, b"OVERQUOTA"),
                      (errno.EIO, b"SERVERBUG")):
        server, t, _, _ = make()
        server.state = "auth"
        folder = FailingFolder(OSError(err, "disk trouble"))
        server.account = SimpleNamespace(
            folder=lambda name, create=False, f=folder: f,
            # APPEND opens its folder as a Deferred (a cold folder is read off the reactor).
            folder_deferred=lambda name, f=folder: defer.succeed(f))
        server.dataReceived(b"a1 APPEND INBOX {5+}\r\nhello\r\n")
        assert t.value().startswith(b"a1 NO [" + code + b"]"), t.value()

"""The failed-login throttle, with a fake clock (the daemon tests cover the wiring)."""

from netsuite.auth.throttle import LoginThrottle
from netsuite.config import ThrottleConfig


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


def test_delay_grows_then_locks_and_expires():
    clock = Clock()
    t = LoginThrottle(ThrottleConfig(free_failures=1, base_delay=1, max_delay=4,
                                     lock_after=5, lock_seconds=60, window=600), clock)
    keys = ("addr:1.2.3.4", "user:alice")
    delays = [t.fail(*keys) for _ in range(4)]
    assert delays == [0.0, 1, 2, 4]
    assert not t.locked(*keys)
    t.fail(*keys)
    assert t.locked(*keys)
    assert t.locked("addr:1.2.3.4") and t.locked("user:alice")
    assert not t.locked("addr:5.6.7.8", "user:bob")
    clock.now += 61
    assert not t.locked(*keys)


def test_success_clears_and_window_forgets():
    clock = Clock()
    t = LoginThrottle(ThrottleConfig(free_failures=0, base_delay=1, lock_after=3, window=10),
                      clock)
    t.fail("user:a")
    t.succeed("user:a")
    assert t.fail("user:a") == 1
    clock.now += 11
    assert t.fail("user:a") == 1  # the old failure fell out of the window


def test_a_checker_that_breaks_still_counts_as_a_failed_login():
    """Every bad credential counts: an exception in a checker is no free retry."""
    from twisted.cred import credentials, portal
    from twisted.cred.checkers import ICredentialsChecker
    from twisted.internet import defer
    from twisted.internet.task import Clock as ReactorClock
    from zope.interface import implementer

    from netsuite.auth.throttle import ThrottledPortal

    @implementer(ICredentialsChecker)
    class Broken:
        credentialInterfaces = (credentials.IUsernamePassword,)

        def requestAvatarId(self, creds):
            return defer.fail(UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates"))

    @implementer(portal.IRealm)
    class Realm:
        def requestAvatar(self, avatar_id, mind, *interfaces):
            return interfaces[0], object(), lambda: None

    t = LoginThrottle(ThrottleConfig(free_failures=5, lock_after=2), Clock())
    p = ThrottledPortal(portal.Portal(Realm(), [Broken()]), t, ReactorClock())
    for _ in range(2):
        d = p.login(credentials.UsernamePassword(b"alice", b"\xff"), None, object,
                    peer="192.0.2.1", protocol="test")
        failure = []
        d.addErrback(failure.append)
        assert failure and failure[0].check(UnicodeEncodeError)
    assert t.locked("user:alice") and t.locked("addr:192.0.2.1")


def test_a_refused_login_counts():
    from twisted.internet.task import Clock as ReactorClock

    from netsuite.auth.throttle import ThrottledPortal

    t = LoginThrottle(ThrottleConfig(free_failures=5, lock_after=1), Clock())
    failure = []
    ThrottledPortal(None, t, ReactorClock()).bind("192.0.2.9", "telnet").refuse(
        "bad\ufffdname").addErrback(failure.append)
    assert failure and "malformed" in failure[0].getErrorMessage()
    assert t.locked("addr:192.0.2.9")

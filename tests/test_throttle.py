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

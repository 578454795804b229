"""L{netsuite.ftp.timer.SessionTimer} on a fake clock: one call, many deadlines."""

from __future__ import annotations

from twisted.internet.task import Clock

from netsuite.ftp.timer import SessionTimer


def test_deadlines_fire_in_order_on_one_call():
    clock = Clock()
    timer = SessionTimer(clock)
    fired: list[str] = []
    timer.set("idle", 300, lambda: fired.append("idle"))
    timer.set("accept", 60, lambda: fired.append("accept"))
    timer.set("data", 100, lambda: fired.append("data"))
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(59.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == ["accept"]
    clock.advance(40)
    assert fired == ["accept", "data"]
    clock.advance(200)
    assert fired == ["accept", "data", "idle"]
    assert clock.getDelayedCalls() == []


def test_touch_moves_a_deadline_and_clear_drops_it():
    clock = Clock()
    timer = SessionTimer(clock)
    fired: list[str] = []
    timer.set("idle", 10, lambda: fired.append("idle"))
    timer.set("data", 5, lambda: fired.append("data"))
    clock.advance(4)
    timer.touch("data", 5)  # activity at 4: due at 9 now
    timer.clear("idle")
    clock.advance(1)
    assert fired == [] and timer.pending("data") and not timer.pending("idle")
    clock.advance(4)
    assert fired == ["data"]
    timer.touch("data", 5)  # no longer set: stays unset
    clock.advance(100)
    assert fired == ["data"] and clock.getDelayedCalls() == []


def test_horizon_and_stop():
    clock = Clock()
    timer = SessionTimer(clock, horizon=60)
    fired: list[str] = []
    timer.set("idle", 300, lambda: fired.append("idle"))
    (call,) = clock.getDelayedCalls()
    assert call.getTime() == 60
    timer.set("accept", 60, lambda: fired.append("accept"))
    assert clock.getDelayedCalls() == [call]  # within the horizon: the call is not moved
    clock.advance(60)
    assert fired == ["accept"]
    clock.advance(239)
    assert fired == ["accept"]
    clock.advance(1)
    assert fired == ["accept", "idle"]
    timer.set("idle", 5, lambda: fired.append("again"))
    timer.stop()
    timer.set("late", 1, lambda: fired.append("late"))
    clock.advance(10)
    assert fired == ["accept", "idle"] and clock.getDelayedCalls() == []


def test_a_deadline_set_while_firing_is_kept():
    clock = Clock()
    timer = SessionTimer(clock)
    fired: list[float] = []

    def again():
        fired.append(clock.seconds())
        if len(fired) < 3:
            timer.set("tick", 2, again)

    timer.set("tick", 2, again)
    clock.advance(2)
    clock.advance(2)
    clock.advance(2)
    assert fired == [2, 4, 6] and clock.getDelayedCalls() == []

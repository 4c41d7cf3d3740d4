"""The client-side deadline for database work (storage/watchdog.py Watchdog), in real time with
deadlines of a few tens of milliseconds: a deadline that passes calls its cancel once, a disarmed
one never does, several fire in deadline order, and a cancel that raises is logged without
stopping the thread. Each test has its own Watchdog (not the process-wide WATCHDOG)."""

from __future__ import annotations

import logging
import threading
import time


from switchboard.storage.watchdog import Watchdog


class Recorder:
    """Cancel callables that record their name and the time they were called."""

    def __init__(self):
        self.calls: list[tuple[str, float]] = []
        self.lock = threading.Lock()
        self.event = threading.Event()

    def cancel(self, name: str, fail: bool = False):
        def call():
            with self.lock:
                self.calls.append((name, time.monotonic()))
            self.event.set()
            if fail:
                raise ConnectionError(f"{name}: could not reach the server")
        return call

    def names(self) -> list[str]:
        with self.lock:
            return [name for name, _ in self.calls]


def wait_for(condition, timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.002)
    return condition()


def test_a_deadline_that_passes_calls_its_cancel_once():
    watchdog = Watchdog()
    recorder = Recorder()
    armed_at = time.monotonic()
    watchdog.arm(armed_at + 0.03, recorder.cancel("query"))
    assert wait_for(lambda: recorder.names() == ["query"])
    (_, called_at) = recorder.calls[0]
    assert called_at >= armed_at + 0.03
    time.sleep(0.06)
    assert recorder.names() == ["query"]  # once only
    assert watchdog.fired == 1


def test_a_disarmed_deadline_never_fires():
    watchdog = Watchdog()
    recorder = Recorder()
    token = watchdog.arm(time.monotonic() + 0.03, recorder.cancel("finished in time"))
    watchdog.disarm(token)
    time.sleep(0.08)
    assert recorder.names() == [] and watchdog.fired == 0
    watchdog.disarm(token)  # disarming twice is harmless


def test_only_the_disarmed_one_of_several_is_spared():
    watchdog = Watchdog()
    recorder = Recorder()
    now = time.monotonic()
    watchdog.arm(now + 0.02, recorder.cancel("a"))
    spared = watchdog.arm(now + 0.03, recorder.cancel("b"))
    watchdog.arm(now + 0.04, recorder.cancel("c"))
    watchdog.disarm(spared)
    assert wait_for(lambda: len(recorder.names()) == 2)
    time.sleep(0.04)
    assert recorder.names() == ["a", "c"]


def test_several_deadlines_fire_in_deadline_order():
    watchdog = Watchdog()
    recorder = Recorder()
    now = time.monotonic()
    watchdog.arm(now + 0.03, recorder.cancel("first"))
    watchdog.arm(now + 0.06, recorder.cancel("second"))
    watchdog.arm(now + 0.09, recorder.cancel("third"))
    assert wait_for(lambda: len(recorder.names()) == 3)
    assert recorder.names() == ["first", "second", "third"]
    times = [at for _, at in recorder.calls]
    assert times[0] >= now + 0.03 and times[1] >= now + 0.06 and times[2] >= now + 0.09


def test_a_deadline_armed_while_the_thread_sleeps_on_a_later_one_is_not_late():
    watchdog = Watchdog()
    recorder = Recorder()
    now = time.monotonic()
    watchdog.arm(now + 5.0, recorder.cancel("later"))
    time.sleep(0.01)  # the thread now sleeps until the later deadline
    watchdog.arm(now + 0.03, recorder.cancel("sooner"))
    assert wait_for(lambda: recorder.names() == ["sooner"], timeout=0.5)


def test_a_cancel_that_raises_is_logged_and_the_thread_goes_on(caplog):
    watchdog = Watchdog()
    recorder = Recorder()
    now = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="switchboard.storage.watchdog"):
        watchdog.arm(now + 0.02, recorder.cancel("unreachable", fail=True))
        watchdog.arm(now + 0.04, recorder.cancel("fine"))
        assert wait_for(lambda: recorder.names() == ["unreachable", "fine"])
        watchdog.arm(time.monotonic() + 0.02, recorder.cancel("after"))
        assert wait_for(lambda: recorder.names() == ["unreachable", "fine", "after"])
    assert watchdog.fired == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "could not reach the server" in warnings[0].getMessage()


def test_a_deadline_already_past_when_armed_fires_at_once():
    watchdog = Watchdog()
    recorder = Recorder()
    watchdog.arm(time.monotonic() - 1.0, recorder.cancel("late"))
    assert recorder.event.wait(0.2)


class FakeClock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_deadlines_due_at_the_same_wake_up_fire_in_deadline_order():
    clock = FakeClock(0.0)
    watchdog = Watchdog(clock=clock)
    recorder = Recorder()
    watchdog.arm(102.0, recorder.cancel("third"))  # the thread sleeps ~100 s (real) on these
    watchdog.arm(100.0, recorder.cancel("first"))
    watchdog.arm(101.0, recorder.cancel("second"))
    clock.now = 200.0  # every deadline passes at once ...
    watchdog.arm(103.0, recorder.cancel("fourth"))  # ... and this arm wakes the thread to see it
    assert wait_for(lambda: len(recorder.names()) == 4)
    assert recorder.names() == ["first", "second", "third", "fourth"]

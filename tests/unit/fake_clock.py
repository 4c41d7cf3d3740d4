"""A clock the tests move by hand, for the classes that take `clock=` (time.monotonic by default)."""

from __future__ import annotations


class FakeClock:
    def __init__(self, now: float = 1024.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

"""Reconnect delays: exponential, capped, with jitter.

Jitter so that the thousands of clients a dead gateway replica drops at once do not all come back
in the same instant (a thundering herd on its replacement). "Equal jitter": the n-th retry waits
a uniformly random time in [d/2, d], d = min(max_s, initial_s * multiplier**n), so a retry never
comes sooner than half the nominal delay.
"""

from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.1
    max_s: float = 10.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s or self.multiplier < 1:
            raise ValueError("need 0 < initial_s <= max_s and multiplier >= 1")

    def nominal_s(self, attempt: int) -> float:
        """The upper bound of the delay before retry number `attempt` (0-based)."""
        return min(self.max_s, self.initial_s * self.multiplier ** min(attempt, 64))

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        nominal = self.nominal_s(attempt)
        return (rng or random).uniform(nominal / 2, nominal)

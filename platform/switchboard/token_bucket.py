"""A token bucket: `rate_per_s` tokens a second, holding at most `burst`. Used per user by the
shards (the one shared budget of sends and membership changes, actors/budgets.py) and per
connection and per replica by the gateway (gateway/rate_limit.py)."""

from __future__ import annotations


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: int, now: float):
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now

    def take(self, now: float) -> float:
        """Take one token; 0.0 when granted, else the seconds until one is available."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s

    def take_up_to(self, wanted: int, now: float) -> tuple[int, float]:
        """Take as many whole tokens as are there, up to `wanted`: (taken, seconds until the next
        token when none was taken, else 0.0)."""
        self._refill(now)
        taken = min(int(wanted), int(self.tokens))
        if taken > 0:
            self.tokens -= taken
            return taken, 0.0
        return 0, (1.0 - self.tokens) / self.rate_per_s


def retry_after_ms(wait_s: float) -> int:
    """A wait as the wire's retry_after_ms: at least 1, rounded up."""
    return max(1, int(wait_s * 1000 + 0.999))

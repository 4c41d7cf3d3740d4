"""Per-user token buckets: `rate_per_s` sends per second with bursts of `burst`."""

from __future__ import annotations

import time

from switchboard.errors import RateLimited

# Buckets of users idle this long are full again; forgetting them bounds the memory they take.
IDLE_FORGET_S = 300.0


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: int, now: float):
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> float:
        """Take one token; 0.0 when granted, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


class RateLimiter:
    """One bucket per user on this gateway replica, shared by the user's sockets and HTTP calls."""

    def __init__(self, rate_per_s: float, burst: int, clock=time.monotonic):
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._last_sweep = clock()

    def retry_after_ms(self, user_id: str) -> int:
        """0 if the user may send now (and a token is spent); else milliseconds to wait."""
        now = self.clock()
        self._sweep(now)
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = self._buckets[user_id] = TokenBucket(self.rate_per_s, self.burst, now)
        wait_s = bucket.take(now)
        return 0 if wait_s == 0.0 else max(1, int(wait_s * 1000 + 0.999))

    def check(self, user_id: str) -> None:
        """Spend a token of user_id's, or raise RateLimited saying when to retry."""
        retry_after_ms = self.retry_after_ms(user_id)
        if retry_after_ms:
            raise RateLimited("over the send rate; retry later", retry_after_ms=retry_after_ms)

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < IDLE_FORGET_S:
            return
        self._last_sweep = now
        for user_id in [u for u, b in self._buckets.items() if now - b.updated > IDLE_FORGET_S]:
            del self._buckets[user_id]

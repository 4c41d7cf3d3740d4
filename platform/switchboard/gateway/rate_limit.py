"""Rate limits at the gateway.

- `RateLimiter`: token buckets by key on this replica alone: a connection's frame budget, a user's
  HTTP-call budget, and the fallback of the shared budgets below.
- `SharedLimits`: a user's send and membership budgets, shared by every replica. The authority is
  the shard hosting the user's mailbox (actors/budgets.py); this replica takes tokens from it in
  small leases and spends them locally, asking for the next lease in the background when half of
  one is left. So a user gets the same rate on two replicas as on one, and a steady sender costs
  one call per lease (LEASE_SPAN_S of its rate), not one per send. If the shard cannot answer (it
  restarts), this replica's own bucket decides meanwhile: a send is never refused, nor held up,
  because the limiter itself is down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable

from switchboard.actors.ops import Outcome
from switchboard.errors import RateLimited
from switchboard.token_bucket import TokenBucket, retry_after_ms

log = logging.getLogger(__name__)

# Buckets of users idle this long are full again; forgetting them bounds the memory they take.
IDLE_FORGET_S = 300.0
# A lease is this much of the budget's rate (at least one token, at most its burst): 10 tokens at
# 50 sends/s. Larger leases mean fewer calls; tokens stranded on a replica the user left are at
# most one lease, which only ever lowers the user's rate.
LEASE_SPAN_S = 0.2
LEASE_TIMEOUT_S = 1.0


class RateLimiter:
    """One bucket per key on this replica."""

    def __init__(self, rate_per_s: float, burst: int, clock=time.monotonic):
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self._buckets: dict[object, TokenBucket] = {}
        self._last_sweep = clock()

    def retry_after_ms(self, key) -> int:
        """0 if `key` may go now (and a token is spent); else milliseconds to wait."""
        now = self.clock()
        self._sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate_per_s, self.burst, now)
        wait_s = bucket.take(now)
        return 0 if wait_s == 0.0 else retry_after_ms(wait_s)

    def check(self, key, what: str = "over the send rate") -> None:
        """Spend a token of key's, or raise RateLimited saying when to retry."""
        wait_ms = self.retry_after_ms(key)
        if wait_ms:
            raise RateLimited(f"{what}; retry later", retry_after_ms=wait_ms)

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < IDLE_FORGET_S:
            return
        self._last_sweep = now
        for key in [k for k, b in self._buckets.items() if now - b.updated > IDLE_FORGET_S]:
            del self._buckets[key]


@dataclasses.dataclass
class _Allowance:
    """What this replica holds of one user's budget."""

    tokens: int = 0
    refused_until: float = 0.0  # the shard said no: refuse locally until then
    refilling: asyncio.Future | None = None
    waiting: int = 0  # takes waiting for the lease in flight
    used: float = 0.0  # when last used, for forgetting idle users


# (user, kind, wanted) -> the shard's Outcome: {"granted": n, "retry_after_s": s}. A user is any
# hashable the lease understands: the gateway passes the Identity, whose region finds the shard.
Lease = Callable[[Hashable, str, int], Awaitable[Outcome]]


class SharedLimits:
    def __init__(self, budgets: dict[str, tuple[float, int]], lease: Lease, clock=time.monotonic):
        self.budgets = budgets
        self.lease = lease
        self.clock = clock
        self.chunks = {kind: max(1, min(burst, math.ceil(rate * LEASE_SPAN_S))) for kind, (rate, burst) in budgets.items()}
        self.fallback = {kind: RateLimiter(rate, burst, clock) for kind, (rate, burst) in budgets.items()}
        self._allowances: dict[tuple[str, str], _Allowance] = {}
        self._last_sweep = clock()
        self.leases = 0
        self.fallbacks = 0

    async def take(self, user: Hashable, kind: str, what: str = "over the send rate") -> None:
        """Spend one of user's `kind` tokens, or raise RateLimited with retry_after_ms.
        Takes that find none wait for one lease together (sized for all of them), and try again
        until a lease brings tokens or the shard says when to come back."""
        allowance = self._allowance(user, kind, self.clock())
        while allowance.tokens <= 0:
            now = self.clock()
            if now < allowance.refused_until:
                raise RateLimited(f"{what}; retry later", retry_after_ms=retry_after_ms(allowance.refused_until - now))
            allowance.waiting += 1
            try:
                await self._refilled(allowance, user, kind)
            finally:
                allowance.waiting -= 1
        allowance.tokens -= 1
        if allowance.tokens * 2 <= self.chunks[kind]:
            self._refill_soon(allowance, user, kind)

    def warm(self, user: Hashable, kind: str) -> None:
        """Lease ahead (a socket just opened): its first send then needs no call."""
        allowance = self._allowance(user, kind, self.clock())
        if allowance.tokens <= 0:
            self._refill_soon(allowance, user, kind)

    def _allowance(self, user: Hashable, kind: str, now: float) -> _Allowance:
        self._sweep(now)
        key = (user, kind)
        allowance = self._allowances.get(key)
        if allowance is None:
            allowance = self._allowances[key] = _Allowance()
        allowance.used = now
        return allowance

    def _refill_soon(self, allowance: _Allowance, user: Hashable, kind: str) -> asyncio.Future:
        if allowance.refilling is None:
            allowance.refilling = asyncio.ensure_future(self._refill(allowance, user, kind))
        return allowance.refilling

    async def _refilled(self, allowance: _Allowance, user: Hashable, kind: str) -> None:
        await asyncio.shield(self._refill_soon(allowance, user, kind))

    async def _refill(self, allowance: _Allowance, user: Hashable, kind: str) -> None:
        try:
            self.leases += 1
            wanted = min(self.budgets[kind][1], max(self.chunks[kind], allowance.waiting))
            try:
                outcome = await asyncio.wait_for(self.lease(user, kind, wanted), LEASE_TIMEOUT_S)
            except asyncio.TimeoutError:
                outcome = None
            if outcome is None or outcome.error is not None:
                self._fall_back(allowance, user, kind)
                return
            granted = int(outcome.value["granted"])
            allowance.tokens += granted
            if granted == 0:
                allowance.refused_until = self.clock() + float(outcome.value["retry_after_s"])
        finally:
            allowance.refilling = None

    def _fall_back(self, allowance: _Allowance, user: Hashable, kind: str) -> None:
        """The shard could not answer: this replica's own bucket decides one token."""
        self.fallbacks += 1
        wait_ms = self.fallback[kind].retry_after_ms(user)
        if wait_ms:
            allowance.refused_until = self.clock() + wait_ms / 1000
        else:
            allowance.tokens += 1

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < IDLE_FORGET_S:
            return
        self._last_sweep = now
        for key in [k for k, a in self._allowances.items() if now - a.used > IDLE_FORGET_S and a.refilling is None]:
            del self._allowances[key]

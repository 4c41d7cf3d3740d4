"""Per-user budgets, kept by the shard that hosts the user's mailbox: the one authority on how
fast a user may send (and change memberships), whichever gateway replicas its sockets are on.

Gateways do not ask per send: they take tokens in small leases (gateway/rate_limit.py) and spend
them locally, so a user on one replica costs one call per lease, and a user on two replicas gets
the same rate as on one (each lease comes out of the same bucket here). A lease never grants more
than the bucket holds, so the rate can only be undershot (tokens leased by a replica the user then
left), never exceeded. A restarted shard starts every bucket full: at most one burst more.
"""

from __future__ import annotations

import dataclasses

from switchboard.token_bucket import TokenBucket

# Buckets of users idle this long are full again; forgetting them bounds the memory they take.
IDLE_FORGET_S = 300.0
SWEEP_INTERVAL_S = 60.0


@dataclasses.dataclass(frozen=True)
class Budget:
    rate_per_s: float
    burst: int


@dataclasses.dataclass(frozen=True)
class Grant:
    granted: int
    retry_after_s: float  # when granted is 0: how long until a token comes


class UserBudgets:
    def __init__(self, budgets: dict[str, Budget]):
        self.budgets = budgets
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._last_sweep: float | None = None

    def take(self, user_id: str, kind: str, wanted: int, now: float) -> Grant:
        budget = self.budgets.get(kind)
        if budget is None:
            raise ValueError(f"no budget named {kind!r}")
        self._sweep(now)
        key = (user_id, kind)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(budget.rate_per_s, budget.burst, now)
        granted, wait_s = bucket.take_up_to(max(1, min(wanted, budget.burst)), now)
        return Grant(granted, wait_s)

    def __len__(self) -> int:
        return len(self._buckets)

    def _sweep(self, now: float) -> None:
        if self._last_sweep is None:
            self._last_sweep = now
        if now - self._last_sweep < SWEEP_INTERVAL_S:
            return
        self._last_sweep = now
        for key in [k for k, bucket in self._buckets.items() if now - bucket.updated > IDLE_FORGET_S]:
            del self._buckets[key]

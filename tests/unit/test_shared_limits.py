"""Per-user budgets shared by gateway replicas (gateway/rate_limit.py SharedLimits), with the shard's
UserBudgets (actors/budgets.py) as the one authority: each replica's `lease` takes tokens from the
same UserBudgets, and one fake clock drives them all. Covers the rate across two replicas, how few
lease calls a steady sender costs, refusals kept locally, the fallback to the replica's own bucket
when the lease fails or times out, one lease call shared by concurrent takes, and warm()."""

from __future__ import annotations

import asyncio

import pytest

from switchboard.actors.budgets import Budget, UserBudgets
from switchboard.actors.ops import Outcome
from switchboard.errors import Overloaded, RateLimited
from switchboard.gateway import rate_limit
from switchboard.gateway.rate_limit import SharedLimits
from fake_clock import FakeClock

RATE, BURST = 50.0, 20  # a lease (chunk) is then ceil(50 * 0.2) = 10 tokens
CHUNK = 10


class Shard:
    """The shard's side of a lease: UserBudgets.take, answered as the shard answers TakeTokens."""

    def __init__(self, clock: FakeClock, rate: float = RATE, burst: int = BURST):
        self.clock = clock
        self.budgets = UserBudgets({"send": Budget(rate, burst)})
        self.calls: list[tuple[str, str, int]] = []

    async def lease(self, user_id: str, kind: str, wanted: int) -> Outcome:
        self.calls.append((user_id, kind, wanted))
        grant = self.budgets.take(user_id, kind, wanted, self.clock())
        return Outcome(value={"granted": grant.granted, "retry_after_s": grant.retry_after_s})


def replica(lease, clock: FakeClock, rate: float = RATE, burst: int = BURST) -> SharedLimits:
    return SharedLimits({"send": (rate, burst)}, lease, clock=clock)


async def settle() -> None:
    """Let background leases (tasks, and wait_for's inner task) run to their end."""
    for _ in range(5):
        await asyncio.sleep(0)


async def accepted(limits: SharedLimits, user_id: str = "alice") -> bool:
    try:
        await limits.take(user_id, "send")
    except RateLimited:
        return False
    return True


async def send_flat_out(replicas: list[SharedLimits], clock: FakeClock, seconds: float, step: float) -> int:
    """A send every `step` of simulated time, round-robin over the replicas; how many got through."""
    count = 0
    for i in range(round(seconds / step)):
        count += await accepted(replicas[i % len(replicas)])
        await settle()
        clock.advance(step)
    return count


# ---- one budget, however many replicas -------------------------------------------------------

async def test_two_replicas_give_a_flat_out_sender_the_same_rate_as_one():
    seconds, step = 10.0, 0.002
    one_clock = FakeClock()
    one_shard = Shard(one_clock)
    through_one = await send_flat_out([replica(one_shard.lease, one_clock)], one_clock, seconds, step)

    two_clock = FakeClock()
    two_shard = Shard(two_clock)
    pair = [replica(two_shard.lease, two_clock), replica(two_shard.lease, two_clock)]
    through_two = await send_flat_out(pair, two_clock, seconds, step)

    ceiling = BURST + RATE * seconds + CHUNK * len(pair)
    assert through_one <= ceiling and through_two <= ceiling
    assert through_one >= 0.9 * (BURST + RATE * seconds)  # the sender did get its whole rate
    assert abs(through_two - through_one) <= 0.1 * through_one
    assert all(limits.fallbacks == 0 for limits in pair)


async def test_a_steady_sender_makes_far_fewer_lease_calls_than_sends():
    clock = FakeClock()
    shard = Shard(clock)
    limits = replica(shard.lease, clock)
    sends = 0
    for _ in range(250):  # 25 sends a second for 10 s: half the rate, never refused
        assert await accepted(limits)
        sends += 1
        await settle()
        clock.advance(0.04)
    assert limits.leases == len(shard.calls)
    assert len(shard.calls) <= sends / 5  # about one call per lease of 10 tokens
    assert {wanted for _, _, wanted in shard.calls} == {CHUNK}


async def test_a_refused_lease_refuses_the_following_sends_locally_until_the_retry_time():
    clock = FakeClock()
    shard = Shard(clock)
    shard.budgets.take("alice", "send", BURST, clock())  # another replica spent the whole bucket
    limits = replica(shard.lease, clock)

    with pytest.raises(RateLimited) as refused:
        await limits.take("alice", "send")
    assert refused.value.extra["retry_after_ms"] == 20  # one token every 1/50 s
    assert len(shard.calls) == 1

    clock.advance(0.01)
    for _ in range(5):
        with pytest.raises(RateLimited) as again:
            await limits.take("alice", "send")
        assert again.value.extra["retry_after_ms"] == 10  # the wait that is left
    await settle()
    assert len(shard.calls) == 1  # refused here: no call

    clock.advance(0.0101)  # past the retry time (a hair more: float refills land a sliver short)
    assert await accepted(limits)
    assert len(shard.calls) == 2


# ---- when the shard cannot answer ---------------------------------------------------------------

async def test_a_failed_lease_falls_back_to_the_replicas_own_bucket():
    clock = FakeClock()
    calls = []

    async def failing_lease(user_id, kind, wanted):
        calls.append(wanted)
        return Outcome.failed(Overloaded("the shard is restarting"))

    limits = replica(failing_lease, clock, rate=10.0, burst=3)
    results = []
    for _ in range(6):
        results.append(await accepted(limits))
        await settle()
    assert results == [True, True, True, False, False, False]  # the fallback's burst of 3, never refused
    assert limits.fallbacks >= 3 and calls

    clock.advance(0.101)  # one fallback token at 10/s
    assert await accepted(limits)


async def test_the_fallback_refusal_says_when_to_retry():
    clock = FakeClock()

    async def failing_lease(user_id, kind, wanted):
        return Outcome.failed(Overloaded("the shard is restarting"))

    limits = replica(failing_lease, clock, rate=10.0, burst=1)
    assert await accepted(limits)
    await settle()
    with pytest.raises(RateLimited) as refused:
        await limits.take("alice", "send")
    assert refused.value.extra["retry_after_ms"] > 0


async def test_a_lease_that_times_out_falls_back_to_the_replicas_own_bucket(monkeypatch):
    monkeypatch.setattr(rate_limit, "LEASE_TIMEOUT_S", 0.01)
    clock = FakeClock()
    never = asyncio.Event()

    async def hanging_lease(user_id, kind, wanted):
        await never.wait()

    limits = replica(hanging_lease, clock, rate=10.0, burst=2)
    await asyncio.wait_for(limits.take("alice", "send"), 1.0)  # not held up past the lease timeout
    assert limits.fallbacks == 1
    await asyncio.sleep(0.05)  # the background lease times out too: the fallback's second token
    assert await accepted(limits)
    await asyncio.sleep(0.05)
    assert not await accepted(limits)


# ---- calls shared and saved ---------------------------------------------------------------------

async def test_concurrent_takes_waiting_on_the_same_refill_share_one_lease_call():
    clock = FakeClock()
    release = asyncio.Event()
    calls = []

    async def slow_lease(user_id, kind, wanted):
        calls.append(wanted)
        await release.wait()
        return Outcome(value={"granted": wanted, "retry_after_s": 0.0})

    limits = replica(slow_lease, clock)
    takes = [asyncio.ensure_future(limits.take("alice", "send")) for _ in range(3)]
    await settle()
    assert len(calls) == 1 and not any(take.done() for take in takes)
    release.set()
    await asyncio.gather(*takes)  # all three granted out of the one lease
    assert limits._allowances[("alice", "send")].tokens == CHUNK - 3
    assert len(calls) == 1


async def test_warm_leases_ahead_so_the_first_take_needs_no_call():
    clock = FakeClock()
    shard = Shard(clock)
    limits = replica(shard.lease, clock)
    limits.warm("alice", "send")
    await settle()
    assert len(shard.calls) == 1

    async def no_call(user_id, kind, wanted):
        raise AssertionError("the first take after warm() made a lease call")

    limits.lease = no_call
    assert await accepted(limits)
    await settle()
    assert len(shard.calls) == 1


async def test_warm_does_nothing_while_tokens_are_held():
    clock = FakeClock()
    shard = Shard(clock)
    limits = replica(shard.lease, clock)
    limits.warm("alice", "send")
    await settle()
    limits.warm("alice", "send")
    await settle()
    assert len(shard.calls) == 1

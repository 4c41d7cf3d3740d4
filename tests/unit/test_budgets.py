"""Per-user budgets kept by a shard (actors/budgets.py): leases granted out of one token bucket per
(user, budget), never more than the bucket holds nor than the burst, refilled at the rate, a wait
when empty, and idle buckets forgotten by the sweep. Time is passed in as `now`."""

from __future__ import annotations

import pytest

from switchboard.actors.budgets import IDLE_FORGET_S, SWEEP_INTERVAL_S, Budget, Grant, UserBudgets

T0 = 1024.0  # times below are binary fractions: refills add up exactly


def budgets(rate_per_s: float = 10.0, burst: int = 5) -> UserBudgets:
    return UserBudgets({"send": Budget(rate_per_s, burst), "member": Budget(1.0, 2)})


def test_a_lease_is_granted_in_full_while_the_bucket_holds_it():
    user_budgets = budgets(burst=5)
    assert user_budgets.take("alice", "send", 3, T0) == Grant(3, 0.0)
    assert user_budgets.take("alice", "send", 2, T0) == Grant(2, 0.0)


def test_a_lease_gets_only_what_is_left_in_the_bucket():
    user_budgets = budgets(burst=5)
    user_budgets.take("alice", "send", 4, T0)
    assert user_budgets.take("alice", "send", 3, T0) == Grant(1, 0.0)


def test_a_lease_never_grants_more_than_the_burst():
    user_budgets = budgets(burst=5)
    assert user_budgets.take("alice", "send", 1000, T0).granted == 5
    assert user_budgets.take("alice", "send", 1000, T0 + 3600).granted == 5  # a long idle: still one burst


def test_a_lease_of_zero_still_asks_for_one_token():
    user_budgets = budgets(burst=5)
    assert user_budgets.take("alice", "send", 0, T0).granted == 1


def test_an_empty_bucket_grants_nothing_and_says_how_long_until_a_token():
    user_budgets = budgets(rate_per_s=10.0, burst=5)
    user_budgets.take("alice", "send", 5, T0)
    grant = user_budgets.take("alice", "send", 3, T0)
    assert grant.granted == 0
    assert grant.retry_after_s == pytest.approx(0.1)  # one token every 1/10 s
    half_way = user_budgets.take("alice", "send", 3, T0 + 0.05)
    assert (half_way.granted, half_way.retry_after_s) == (0, pytest.approx(0.05))


def test_the_bucket_refills_at_the_rate():
    user_budgets = budgets(rate_per_s=8.0, burst=5)
    user_budgets.take("alice", "send", 5, T0)
    assert user_budgets.take("alice", "send", 5, T0 + 0.375).granted == 3
    assert user_budgets.take("alice", "send", 5, T0 + 0.375).granted == 0
    assert user_budgets.take("alice", "send", 5, T0 + 10.0).granted == 5  # capped at the burst


def test_over_an_interval_the_grants_add_up_to_burst_plus_rate_times_time():
    user_budgets = budgets(rate_per_s=8.0, burst=5)
    granted = sum(user_budgets.take("alice", "send", 2, T0 + step / 64).granted for step in range(640))
    assert granted == 5 + 79  # the burst, then 8/s over 639/64 s: 79.875 tokens, 79 whole ones


def test_users_and_budgets_have_separate_buckets():
    user_budgets = budgets(burst=5)
    user_budgets.take("alice", "send", 5, T0)
    assert user_budgets.take("alice", "send", 1, T0).granted == 0
    assert user_budgets.take("bob", "send", 1, T0).granted == 1
    assert user_budgets.take("alice", "member", 5, T0).granted == 2  # its own burst
    assert len(user_budgets) == 3


def test_an_unknown_budget_name_raises_value_error():
    user_budgets = budgets()
    with pytest.raises(ValueError, match="nope"):
        user_budgets.take("alice", "nope", 1, T0)
    assert len(user_budgets) == 0


def test_idle_buckets_are_forgotten_by_the_sweep_and_come_back_full():
    user_budgets = budgets(rate_per_s=10.0, burst=5)
    user_budgets.take("alice", "send", 5, T0)
    user_budgets.take("bob", "send", 5, T0)
    later = T0 + IDLE_FORGET_S + SWEEP_INTERVAL_S + 1
    user_budgets.take("bob", "send", 1, later - 1)  # bob stays active
    user_budgets.take("carol", "send", 1, later)  # any take sweeps
    assert ("alice", "send") not in user_budgets._buckets
    assert ("bob", "send") in user_budgets._buckets
    assert len(user_budgets) == 2
    assert user_budgets.take("alice", "send", 5, later).granted == 5


def test_the_sweep_runs_at_most_once_per_interval():
    user_budgets = budgets()
    user_budgets.take("alice", "send", 1, T0)  # the first take starts the sweep clock
    user_budgets.take("bob", "send", 1, T0 + 59)
    swept_at = T0 + IDLE_FORGET_S + 1
    user_budgets.take("carol", "send", 1, swept_at)  # sweeps: alice idle 301 s, bob 242 s
    assert set(user_budgets._buckets) == {("bob", "send"), ("carol", "send")}
    # bob passes IDLE_FORGET_S idle before the next sweep is due: kept until it runs.
    user_budgets.take("carol", "send", 1, swept_at + SWEEP_INTERVAL_S - 1)
    assert ("bob", "send") in user_budgets._buckets
    user_budgets.take("carol", "send", 1, swept_at + SWEEP_INTERVAL_S)
    assert set(user_budgets._buckets) == {("carol", "send")}

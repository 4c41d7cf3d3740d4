"""Per-user token buckets (gateway/rate_limit.py), driven by a fake clock."""

from __future__ import annotations

from switchboard.gateway.rate_limit import IDLE_FORGET_S, RateLimiter
from fake_clock import FakeClock


def limiter(rate_per_s: float = 2.0, burst: int = 3) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock(1000.0)
    return RateLimiter(rate_per_s, burst, clock=clock), clock


def test_a_burst_is_granted_then_the_next_send_is_refused_with_retry_after():
    rates, _ = limiter(rate_per_s=2.0, burst=3)
    assert [rates.retry_after_ms("alice") for _ in range(3)] == [0, 0, 0]
    assert rates.retry_after_ms("alice") == 500  # one token every 1/2 s
    assert rates.retry_after_ms("alice") == 500  # a refusal spends nothing


def test_tokens_refill_over_time():
    rates, clock = limiter(rate_per_s=2.0, burst=3)
    for _ in range(3):
        rates.retry_after_ms("alice")
    clock.advance(0.25)
    assert rates.retry_after_ms("alice") == 250  # half a token so far
    clock.advance(0.25)
    assert rates.retry_after_ms("alice") == 0
    assert rates.retry_after_ms("alice") == 500


def test_refill_never_exceeds_the_burst():
    rates, clock = limiter(rate_per_s=10.0, burst=2)
    clock.advance(3600)
    assert [rates.retry_after_ms("alice") for _ in range(3)] == [0, 0, 100]


def test_users_have_separate_buckets():
    rates, _ = limiter(rate_per_s=1.0, burst=1)
    assert rates.retry_after_ms("alice") == 0
    assert rates.retry_after_ms("alice") == 1000
    assert rates.retry_after_ms("bob") == 0


def test_retry_after_is_rounded_up_to_at_least_one_millisecond():
    rates, clock = limiter(rate_per_s=3.0, burst=1)
    rates.retry_after_ms("alice")
    assert rates.retry_after_ms("alice") == 334  # 333.33 ms, rounded up
    clock.advance(0.3334)
    assert rates.retry_after_ms("alice") == 0
    clock.advance(0.3333)
    assert rates.retry_after_ms("alice") == 1  # a sliver short of a token: still a real wait


def test_idle_buckets_are_forgotten_and_come_back_full():
    rates, clock = limiter(rate_per_s=1.0, burst=2)
    rates.retry_after_ms("alice")
    rates.retry_after_ms("alice")
    clock.advance(IDLE_FORGET_S + 1)
    rates.retry_after_ms("bob")  # any call sweeps
    assert "alice" not in rates._buckets
    assert [rates.retry_after_ms("alice") for _ in range(3)] == [0, 0, 1000]

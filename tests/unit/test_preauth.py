"""Sockets waiting for their auth frame (gateway/preauth.py PreAuthGate): a cap per client address
and one in total, places freed when the `with` block ends (also on an exception), and other
addresses unaffected by one address at its cap."""

from __future__ import annotations

import contextlib

import pytest

from switchboard.gateway.preauth import PreAuthGate


def hold(stack: contextlib.ExitStack, gate: PreAuthGate, address: str) -> bool:
    return stack.enter_context(gate.holding(address))


def test_an_address_may_hold_up_to_its_cap():
    gate = PreAuthGate(per_address=2, total=10)
    with contextlib.ExitStack() as stack:
        assert [hold(stack, gate, "10.0.0.1") for _ in range(3)] == [True, True, False]
        assert len(gate) == 2
        assert gate.refused == 1


def test_other_addresses_are_unaffected_by_one_at_its_cap():
    gate = PreAuthGate(per_address=2, total=10)
    with contextlib.ExitStack() as stack:
        assert [hold(stack, gate, "10.0.0.1") for _ in range(4)] == [True, True, False, False]
        assert hold(stack, gate, "10.0.0.2") is True
        assert hold(stack, gate, "2001:db8::1") is True
        assert len(gate) == 4


def test_the_total_cap_holds_across_addresses():
    gate = PreAuthGate(per_address=5, total=3)
    with contextlib.ExitStack() as stack:
        assert [hold(stack, gate, f"10.0.0.{i}") for i in range(5)] == [True, True, True, False, False]
        assert len(gate) == 3
        assert gate.refused == 2


def test_a_place_is_freed_when_the_block_ends():
    gate = PreAuthGate(per_address=1, total=1)
    with gate.holding("10.0.0.1") as admitted:
        assert admitted
        with gate.holding("10.0.0.1") as second:
            assert not second
    assert len(gate) == 0
    with gate.holding("10.0.0.1") as again:
        assert again
    with gate.holding("10.0.0.2") as other:
        assert other  # the total place is free again too


def test_a_place_is_freed_when_the_block_raises():
    gate = PreAuthGate(per_address=1, total=5)
    with pytest.raises(RuntimeError):
        with gate.holding("10.0.0.1") as admitted:
            assert admitted
            raise RuntimeError("the socket went away")
    assert len(gate) == 0
    assert gate._by_address == {}  # no empty counters left behind per address
    with gate.holding("10.0.0.1") as again:
        assert again


def test_a_refused_socket_holds_no_place_and_frees_none():
    gate = PreAuthGate(per_address=1, total=5)
    with gate.holding("10.0.0.1") as admitted:
        assert admitted
        with pytest.raises(RuntimeError):
            with gate.holding("10.0.0.1") as refused:
                assert not refused
                raise RuntimeError("closed at once")
        assert len(gate) == 1  # the refusal's exit did not free the admitted socket's place
        with gate.holding("10.0.0.1") as still_full:
            assert not still_full
    assert len(gate) == 0

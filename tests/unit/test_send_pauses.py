"""The longest wait of a send during a hand back, and the 99th percentile of the waits
(chaos/timings.send_pauses, send_p99s)."""

from __future__ import annotations

import pytest

from switchboard.chaos.faults import FaultRecord
from switchboard.chaos.timings import percentile, send_p99s, send_pauses
from switchboard.chaos.traffic import Answer, Attempt, Timeline


def test_the_longest_wait_among_sends_first_tried_in_the_window():
    record = FaultRecord(kind="region_return", at=100.0, wall_ms=1_000_000, restarted_wall_ms=1_003_000)
    timeline = Timeline(
        attempts=[Attempt(99.0, "u", 0, "before"), Attempt(101.0, "u", 0, "slow"), Attempt(102.5, "u", 1, "slow"),
                  Attempt(103.5, "u", 1, "quick"), Attempt(110.0, "u", 1, "after")],
        answers=[Answer(104.0, "u", 1, "before", "sent", {}), Answer(103.9, "u", 1, "slow", "sent", {}),
                 Answer(103.6, "u", 1, "quick", "sent", {}), Answer(110.1, "u", 1, "after", "sent", {})])
    # "before" was first tried before the hand back; "after" past its window (restart + 1 s).
    assert send_pauses([record], timeline, "region_return") == [pytest.approx(2.9)]
    assert send_p99s([record], timeline, "region_return") == [pytest.approx(2.9)]  # two sends: the top one


def test_the_99th_percentile_leaves_out_the_slowest_one_in_a_hundred():
    waits = [0.1] * 98 + [1.5, 3.0]
    assert percentile(waits, 0.99) == 1.5
    assert percentile([0.4], 0.99) == 0.4


def test_other_kinds_and_unfinished_faults_have_none():
    timeline = Timeline(attempts=[Attempt(101.0, "u", 0, "a")], answers=[Answer(102.0, "u", 0, "a", "sent", {})])
    unfinished = FaultRecord(kind="region_return", at=100.0, wall_ms=0)
    other = FaultRecord(kind="shard_kill", at=100.0, wall_ms=0, restarted_wall_ms=5000)
    assert send_pauses([unfinished, other], timeline, "region_return") == []

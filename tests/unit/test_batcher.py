"""Batched calls from a gateway replica to one shard (gateway/batcher.py ShardBatcher), against a
fake actor handle whose `submit.remote(operations, time_left_s)` returns a future the test answers:
one call in flight with everything queued meanwhile in the next, deadlines sent as time left, the
queue bound, the sweeper answering a hung call's operations and moving on, and retries while the
shard restarts (ActorUnavailableError, real time with small deadlines)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from ray.exceptions import ActorUnavailableError

from switchboard.actors.ops import Outcome, SendMessage
from switchboard.errors import Code, Overloaded
from switchboard.gateway import batcher as batcher_module
from switchboard.gateway.batcher import DEADLINE_GRACE_S, QUEUE_FULL, TIMED_OUT, ShardBatcher
from fake_clock import FakeClock


@dataclasses.dataclass
class Call:
    operations: list
    time_left_s: list[float]
    answer: asyncio.Future

    def reply(self) -> None:
        """Answer every operation with its own client_msg_id (so answers can be told apart)."""
        self.answer.set_result([Outcome(value={"echo": op.client_msg_id}) for op in self.operations])


class FakeShard:
    """Stands in for an actor handle: `handle.submit.remote(...)` records the call."""

    def __init__(self):
        self.calls: list[Call] = []
        self.submit = self

    def remote(self, operations, time_left_s):
        answer = asyncio.get_running_loop().create_future()
        self.calls.append(Call(list(operations), list(time_left_s), answer))
        return answer


def send(key: str) -> SendMessage:
    return SendMessage("c_room", "alice", key, f"body {key}")


def keys(call: Call) -> list[str]:
    return [op.client_msg_id for op in call.operations]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
def make_batcher():
    made = []

    def make(handle, deadline_s: float = 5.0, queue_max: int = 10_000, clock=time.monotonic) -> ShardBatcher:
        batcher = ShardBatcher(handle, deadline_s, queue_max=queue_max, clock=clock)
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.stop()


# ---- batching -----------------------------------------------------------------------------------

async def test_one_call_in_flight_and_whatever_queued_meanwhile_goes_in_the_next(make_batcher):
    shard = FakeShard()
    batcher = make_batcher(shard, clock=FakeClock())
    first = batcher.enqueue(send("a"))
    await settle()
    assert [keys(call) for call in shard.calls] == [["a"]]

    waiting = [batcher.enqueue(send(key)) for key in "bcd"]
    await settle()
    assert len(shard.calls) == 1  # no second call while one is in flight
    assert len(batcher) == 3

    shard.calls[0].reply()
    assert (await first).value == {"echo": "a"}
    await settle()
    assert [keys(call) for call in shard.calls] == [["a"], ["b", "c", "d"]]
    shard.calls[1].reply()
    assert [(await future).value["echo"] for future in waiting] == ["b", "c", "d"]
    assert batcher.calls == 2 and len(batcher) == 0


async def test_time_left_travels_with_each_operation(make_batcher):
    clock = FakeClock()
    shard = FakeShard()
    batcher = make_batcher(shard, deadline_s=5.0, clock=clock)
    batcher.enqueue(send("a"))
    await settle()
    clock.advance(1.0)
    batcher.enqueue(send("b"), timeout_s=2.0)  # deadline at +3
    batcher.enqueue(send("c"))  # deadline at +6
    clock.advance(0.5)
    shard.calls[0].reply()
    await settle()
    assert shard.calls[0].time_left_s == [5.0]
    assert shard.calls[1].time_left_s == [pytest.approx(1.5), pytest.approx(4.5)]


async def test_past_queue_max_an_enqueue_is_answered_overloaded_at_once(make_batcher):
    shard = FakeShard()
    batcher = make_batcher(shard, queue_max=2, clock=FakeClock())
    batcher.enqueue(send("a"))  # in flight: not in the queue
    await settle()
    queued = [batcher.enqueue(send("b")), batcher.enqueue(send("c"))]
    refused = batcher.enqueue(send("d"))
    assert refused.done()
    outcome = refused.result()
    assert isinstance(outcome.error, Overloaded) and outcome.error.message == QUEUE_FULL
    assert outcome.created is False
    assert batcher.shed == 1 and len(batcher) == 2
    assert not any(future.done() for future in queued)


# ---- a call that hangs --------------------------------------------------------------------------

async def test_a_hung_call_is_answered_timed_out_after_the_grace_and_the_next_batch_goes(make_batcher, monkeypatch):
    monkeypatch.setattr(batcher_module, "SWEEP_INTERVAL_S", 0.002)
    clock = FakeClock()
    shard = FakeShard()
    batcher = make_batcher(shard, clock=clock)
    hung = batcher.enqueue(send("a"), timeout_s=1.0)
    await settle()
    behind = batcher.enqueue(send("b"), timeout_s=10.0)

    clock.advance(1.0 + DEADLINE_GRACE_S - 0.05)  # past its deadline, not yet past the grace
    await asyncio.sleep(0.02)
    assert not hung.done() and len(shard.calls) == 1

    clock.advance(0.1)
    await asyncio.sleep(0.02)
    assert hung.done()
    outcome = hung.result()
    assert isinstance(outcome.error, Overloaded) and outcome.error.message == TIMED_OUT
    assert batcher.timed_out == 1
    assert [keys(call) for call in shard.calls] == [["a"], ["b"]]  # the hung call was abandoned

    shard.calls[0].reply()  # the hung call's late answer finds nothing to settle
    await settle()
    assert hung.result().error.message == TIMED_OUT
    assert not behind.done() and len(shard.calls) == 2  # and it sends no extra call
    shard.calls[1].reply()
    assert (await behind).value == {"echo": "b"}


async def test_an_operation_queued_behind_a_hung_call_times_out_too(make_batcher, monkeypatch):
    monkeypatch.setattr(batcher_module, "SWEEP_INTERVAL_S", 0.002)
    clock = FakeClock()
    shard = FakeShard()
    batcher = make_batcher(shard, clock=clock)
    batcher.enqueue(send("a"), timeout_s=10.0)
    await settle()
    queued = batcher.enqueue(send("b"), timeout_s=1.0)
    clock.advance(1.0 + DEADLINE_GRACE_S + 0.05)
    await asyncio.sleep(0.02)
    assert queued.done() and queued.result().error.message == TIMED_OUT
    assert len(shard.calls) == 1  # a still waits for its own answer: the call is not abandoned


# ---- a shard that restarts ----------------------------------------------------------------------

class RestartingShard(FakeShard):
    """Fails its first `failures` calls as an actor that is restarting would, then answers."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures = failures

    def remote(self, operations, time_left_s):
        answer = super().remote(operations, time_left_s)
        if len(self.calls) <= self.failures:
            answer.set_exception(ActorUnavailableError("the actor is restarting", None))
        else:
            self.calls[-1].reply()
        return answer


async def test_a_call_to_a_restarting_shard_is_retried_until_it_answers(make_batcher):
    shard = RestartingShard(failures=2)
    batcher = make_batcher(shard, deadline_s=0.3)
    outcome = await asyncio.wait_for(batcher.enqueue(send("a")), 1.0)
    assert outcome.value == {"echo": "a"}
    assert [keys(call) for call in shard.calls] == [["a"], ["a"], ["a"]]
    assert shard.calls[2].time_left_s[0] < shard.calls[0].time_left_s[0] <= 0.3


async def test_a_shard_restarting_past_the_deadline_is_answered_overloaded_at_the_deadline(make_batcher):
    shard = RestartingShard(failures=10**6)
    batcher = make_batcher(shard, deadline_s=0.3)
    started = time.monotonic()
    outcome = await asyncio.wait_for(batcher.enqueue(send("a")), 2.0)
    elapsed = time.monotonic() - started
    assert outcome.error is not None and outcome.error.code is Code.OVERLOADED
    assert outcome.error.message != TIMED_OUT  # the retry loop answered, not the sweeper
    assert 0.3 <= elapsed < 0.3 + DEADLINE_GRACE_S
    assert len(shard.calls) >= 3  # retried meanwhile, every RETRY_BACKOFF_S
    await settle()
    calls = len(shard.calls)
    await asyncio.sleep(0.1)
    assert len(shard.calls) == calls  # and no more once it is answered


async def test_a_failing_call_answers_every_operation_and_the_batcher_keeps_serving(make_batcher):
    class BuggyShard(FakeShard):
        def remote(self, operations, time_left_s):
            answer = super().remote(operations, time_left_s)
            if len(self.calls) == 1:
                answer.set_exception(RuntimeError("a bug in the shard"))
            else:
                self.calls[-1].reply()
            return answer

    shard = BuggyShard()
    batcher = make_batcher(shard, clock=FakeClock())
    failed = await batcher.enqueue(send("a"))
    assert failed.error is not None and failed.error.code is Code.INTERNAL
    assert (await batcher.enqueue(send("b"))).value == {"echo": "b"}

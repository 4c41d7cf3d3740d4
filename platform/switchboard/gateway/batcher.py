"""Batched calls from one gateway replica to one shard, with deadlines and a bounded queue.

Ray actor calls cost per call, not per byte (DESIGN.md: ~1.5-2k calls/s from one caller whatever
the batch), so every operation bound for one shard waits for the call in flight to that shard and
leaves with everything that queued meanwhile: one call per batch, one call in flight per shard.

Every operation has a deadline (Settings.send_timeout_s for writes; shorter for token leases):
- it travels with the operation (as the time left), so the shard never starts committing what
  its sender has been told failed (actors/commit_queue.py);
- a sweeper answers `overloaded` to whatever is still unanswered DEADLINE_GRACE_S after its
  deadline, whatever the cause (a shard that hangs, a call lost with its node), so every send
  gets its answer within the timeout plus a second;
- a call in flight past every deadline in it is abandoned (its late answer is ignored), so one
  hung call cannot stop the next batches;
- the queue holds at most `queue_max` operations: past it, `overloaded` at once, before memory
  grows without bound.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from switchboard.actors.ops import Operation, Outcome
from switchboard.errors import Moved, Overloaded, SwitchboardError

from .shards import RETRY_BACKOFF_S, SHARD_GONE, unwrap

log = logging.getLogger(__name__)

BATCH_MAX = 512
# One: the shard commits one batch at a time anyway, so a second call in flight would only wait in
# its queue; holding the operations here instead sends them as one larger batch (measured: W1 p99
# 78 ms with one in flight against 84-239 ms with two, W2 throughput the same).
IN_FLIGHT_PER_SHARD = 1
# The shard answers an operation at its deadline itself; this is for when it cannot.
DEADLINE_GRACE_S = 0.5
SWEEP_INTERVAL_S = 0.1
TIMED_OUT = "no answer from the shard within the send timeout; retry"
QUEUE_FULL = "this gateway has too many operations waiting for the shard; retry"

_Entry = tuple[Operation, asyncio.Future, float]  # (operation, its answer, its deadline)


class ShardBatcher:
    """Queues operations for one shard and submits them in batches, retrying while it restarts."""

    def __init__(self, handle, deadline_s: float, queue_max: int = 10_000, clock=time.monotonic, on_moved=None):
        self.handle = handle
        # on_moved(entry, error): an operation the shard answered Moved (a reshard), or one whose
        # shard was removed (error None), for the caller to route again; without it, answered.
        self.on_moved = on_moved
        self.retired = False  # the shard left the placement: what fails on it is routed again
        self.deadline_s = deadline_s
        self.queue_max = queue_max
        self.clock = clock
        self._queue: collections.deque[_Entry] = collections.deque()
        self._calls: dict[int, list[_Entry]] = {}  # calls in flight (abandoned ones leave)
        self._call_ids = 0
        self._sweeper: asyncio.Task | None = None
        self.calls = 0
        self.shed = 0  # operations refused because the queue was full
        self.timed_out = 0  # answered by the sweeper

    def __len__(self) -> int:
        return len(self._queue)

    def enqueue(self, operation: Operation, timeout_s: float | None = None) -> asyncio.Future:
        """Queue the operation; the future resolves with its Outcome (never with an exception)."""
        future = asyncio.get_running_loop().create_future()
        if len(self._queue) >= self.queue_max:
            self.shed += 1
            future.set_result(Outcome.failed(Overloaded(QUEUE_FULL)))
            return future
        deadline = self.clock() + (self.deadline_s if timeout_s is None else timeout_s)
        self._queue.append((operation, future, deadline))
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        self._pump()
        return future

    def requeue(self, operation: Operation, future: asyncio.Future, deadline: float) -> None:
        """Queue an operation routed here again, keeping its answer's future and its deadline."""
        if future.done():
            return
        if len(self._queue) >= self.queue_max:
            self.shed += 1
            future.set_result(Outcome.failed(Overloaded(QUEUE_FULL)))
            return
        self._queue.append((operation, future, deadline))
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        self._pump()

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    def _pump(self) -> None:
        while self._queue and len(self._calls) < IN_FLIGHT_PER_SHARD:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), BATCH_MAX))]
            batch = [entry for entry in batch if not entry[1].done()]  # answered by the sweeper
            if not batch:
                continue
            self._call_ids += 1
            self._calls[self._call_ids] = batch
            asyncio.get_running_loop().create_task(self._call(self._call_ids, batch))

    async def _call(self, call_id: int, batch: list[_Entry]) -> None:
        try:
            self.calls += 1
            now = self.clock()
            outcomes = await self.handle.submit.remote([operation for operation, _, _ in batch],
                                                       [max(0.0, deadline - now) for _, _, deadline in batch])
            for entry, outcome in zip(batch, outcomes):
                if self.on_moved is not None and isinstance(outcome.error, Moved) and not entry[1].done():
                    self.on_moved(entry, outcome.error)
                else:
                    _settle(entry[1], outcome)
        except SHARD_GONE as error:
            if self.retired and self.on_moved is not None:  # removed by a reshard: not coming back
                for entry in batch:
                    if not entry[1].done():
                        self.on_moved(entry, None)
                return
            log.warning("shard unavailable (%s); retrying %d operations", type(error).__name__, len(batch))
            await asyncio.sleep(RETRY_BACKOFF_S)
            now = self.clock()
            retry = [item for item in batch if item[2] > now and not item[1].done()]
            for _, future, _ in (item for item in batch if item[2] <= now):
                _settle(future, Outcome.failed(Overloaded("the conversation's shard is restarting; retry")))
            if call_id in self._calls:  # not abandoned: its operations go first again
                self._queue.extendleft(reversed(retry))
        except Exception as error:  # a bug on the shard: answer every operation, keep serving
            cause = unwrap(error)
            log.exception("shard call failed")
            failure = cause if isinstance(cause, SwitchboardError) else SwitchboardError("internal error")
            for _, future, _ in batch:
                _settle(future, Outcome.failed(failure))
        finally:
            self._calls.pop(call_id, None)
            self._pump()

    async def _sweep(self) -> None:
        """Answer what outlived its deadline; abandon calls none of whose operations still wait."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            late = self.clock() - DEADLINE_GRACE_S
            for entry in self._queue:
                if entry[2] < late:
                    self._time_out(entry)
            for call_id, batch in list(self._calls.items()):
                for entry in batch:
                    if entry[2] < late:
                        self._time_out(entry)
                if all(future.done() for _, future, _ in batch):
                    del self._calls[call_id]  # its answer, if it ever comes, finds nothing to settle
            if self._queue and self._queue[0][1].done():
                while self._queue and self._queue[0][1].done():
                    self._queue.popleft()
            self._pump()

    def _time_out(self, entry: _Entry) -> None:
        if not entry[1].done():
            self.timed_out += 1
            entry[1].set_result(Outcome.failed(Overloaded(TIMED_OUT)))


def _settle(future: asyncio.Future, outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)

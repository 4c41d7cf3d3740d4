"""The queue in front of a shard's one writer thread: group commit with deadlines and bounds.

Operations queue; one writer thread commits whatever has queued as one transaction (the next batch
forms while the current one commits, so a lone send never waits for a timer and a burst forms
large batches by itself). Three bounds keep one client, or one huge conversation, from wedging the
shard:
- the queue holds at most `queue_max` operations; past it a submit is answered `overloaded`;
- every operation carries a deadline (the time its gateway gave it, Settings.send_timeout_s): one
  still queued at its deadline is answered `overloaded` without being committed, and a batch's
  transaction may run only until its earliest deadline (statement_timeout, see Sequencer.commit),
  so what is answered `overloaded` was never committed;
- a batch holds at most `batch_max` operations and about `events_max` mailbox events: a message
  to a 10,000-member group is 10,000 events, and 200 of them in one transaction took a minute.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Callable

from switchboard.errors import Overloaded, SwitchboardError
from switchboard.storage.models import MailboxEvent

from .ops import Operation, Outcome
from .sequencer import DEADLINE_MESSAGE, Sequencer

log = logging.getLogger(__name__)

# A batch whose earliest deadline is nearer than this is not started: it could not commit in time.
MIN_COMMIT_BUDGET_S = 0.02
# A commit running this much longer than the send timeout means the writer is stuck (health).
STUCK_COMMIT_GRACE_S = 2.0
# How long a failed commit keeps the shard unhealthy when nothing has committed since.
FAILURE_MEMORY_S = 10.0

_Entry = tuple[Operation, asyncio.Future, float]  # (operation, its answer, its deadline)


class CommitQueue:
    def __init__(self, sequencer: Sequencer, *, batch_max: int, events_max: int | None, queue_max: int,
                 on_committed: Callable[[list[MailboxEvent]], None], name: str = "shard",
                 clock: Callable[[], float] = time.monotonic):
        self.sequencer = sequencer
        self.batch_max = batch_max
        self.events_max = events_max
        self.queue_max = queue_max
        self.on_committed = on_committed
        self.name = name
        self.clock = clock
        # One writer thread: the sequencer's cache and the commit order need exactly one.
        self.writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._queue: collections.deque[_Entry] = collections.deque()
        self._wakeup = asyncio.Event()
        self.commits = 0
        self.committed_operations = 0
        self.commit_seconds = 0.0
        self.expired = 0  # operations answered `overloaded` at their deadline, never committed
        self.first_commit_at: float | None = None  # wall clock, for measuring recovery
        self.commit_started: float | None = None  # clock() while a commit runs
        self.last_failure: float | None = None  # clock() of the last batch the database failed
        self.last_success: float | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, operations: list[Operation], deadlines: list[float]) -> list[asyncio.Future]:
        """Queue the operations; each future resolves with its Outcome."""
        loop = asyncio.get_running_loop()
        if len(self._queue) + len(operations) > self.queue_max:
            error = Overloaded(f"{self.name} has {len(self._queue)} operations queued")
            return [_resolved(loop, Outcome.failed(error)) for _ in operations]
        futures = []
        for operation, deadline in zip(operations, deadlines, strict=True):
            future = loop.create_future()
            self._queue.append((operation, future, deadline))
            futures.append(future)
        self._wakeup.set()
        return futures

    def in_writer(self, function, *args):
        """Run function on the writer thread, between two commits (for checkpoints)."""
        return asyncio.get_running_loop().run_in_executor(self.writer, function, *args)

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = self._take_batch()
                if batch:
                    await self._commit(batch)

    def _take_batch(self) -> list[_Entry]:
        """Up to batch_max queued operations whose deadline leaves time to commit; the others
        are answered `overloaded` here, uncommitted."""
        now = self.clock()
        batch: list[_Entry] = []
        while self._queue and len(batch) < self.batch_max:
            entry = self._queue.popleft()
            if entry[2] - now < MIN_COMMIT_BUDGET_S:
                self.expired += 1
                _settle(entry[1], Outcome.failed(Overloaded(DEADLINE_MESSAGE)))
            else:
                batch.append(entry)
        return batch

    async def _commit(self, batch: list[_Entry]) -> None:
        operations = [operation for operation, _, _ in batch]
        deadline = min(entry[2] for entry in batch)
        started = time.perf_counter()
        self.commit_started = self.clock()
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self.writer, self.sequencer.commit, operations, deadline, self.events_max)
            outcomes, events, storage_failed = result.outcomes, result.events, result.storage_failed
        except Exception:  # a bug, not a refusal: fail the batch, keep serving
            log.exception("commit of %d operations failed", len(operations))
            outcomes, events = [Outcome.failed(SwitchboardError("internal error")) for _ in batch], []
            storage_failed = False
        finally:
            self.commit_started = None
        planned, rest = batch[:len(outcomes)], batch[len(outcomes):]
        self._queue.extendleft(reversed(rest))  # did not fit this transaction: first in the next
        for (_, future, _), outcome in zip(planned, outcomes):
            _settle(future, outcome)
        self._count(planned, storage_failed, time.perf_counter() - started)
        self.on_committed(events)

    def _count(self, planned: list[_Entry], storage_failed: bool, seconds: float) -> None:
        self.commits += 1
        self.committed_operations += len(planned)
        self.commit_seconds += seconds
        if self.first_commit_at is None:
            self.first_commit_at = time.time()
        if storage_failed:
            self.last_failure = self.clock()
        else:
            self.last_success = self.clock()

    def health(self, send_timeout_s: float) -> str | None:
        """None if the writer commits; else why not: a commit stuck, or the database failing the
        latest commits (for FAILURE_MEMORY_S: with no traffic after an outage nothing would ever
        show the database back, and the gateway's own probe reads it anyway)."""
        now = self.clock()
        started = self.commit_started
        if started is not None and now - started > send_timeout_s + STUCK_COMMIT_GRACE_S:
            return f"a commit has been running for {now - started:.1f} s"
        failed = self.last_failure
        if failed is not None and now - failed < FAILURE_MEMORY_S and (
                self.last_success is None or self.last_success < failed):
            return "the database failed the last commit"
        return None

    def shutdown(self) -> None:
        self.writer.shutdown(wait=True)


def _resolved(loop, outcome: Outcome) -> asyncio.Future:
    future = loop.create_future()
    future.set_result(outcome)
    return future


def _settle(future: asyncio.Future, outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)

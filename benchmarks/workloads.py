"""W1, W2 and W3: the three load shapes, each run against one target, and their results.

    W1  50 pairs, each its own 2-member conversation; each sender sends 100 messages at 10 msg/s.
    W2  100 pairs; each sender keeps 10 sends in flight (the next goes when one is answered) for 20 s.
    W3  one 50-member group, all connected; 5 members each send 50 messages at 5 msg/s.

`scale` multiplies the counts and durations (never the rates), so a test can run the same shapes
in a few seconds. A run is: create conversations, connect everyone, send, then drain: wait until
every send is answered and every acknowledged message reached every member, or DRAIN_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable

import httpx

from .client import HTTP_TIMEOUT_S, Connection, Ledger, Target, create_conversation

# How long after the last send we keep waiting for answers and deliveries; anything acknowledged
# but still missing after that counts as lost.
DRAIN_TIMEOUT_S = 10.0
# A closed-loop lane gives up on one answer after this long (it then counts as unanswered).
ANSWER_TIMEOUT_S = 10.0
# Back-off after `overloaded`, which carries no retry_after_ms: long enough not to hammer a
# shedding server, short enough not to hide its recovery.
OVERLOAD_BACKOFF_S = 0.05
# Setup is concurrent but bounded, so a 200-socket workload does not stampede the accept queue.
SETUP_CONCURRENCY = 32
PROGRESS_INTERVAL_S = 1.0
BODY = "benchmark payload " + "x" * 82  # 100 bytes, a typical chat line

Progress = Callable[[float, int], None]  # (elapsed seconds, deliveries so far)


@dataclasses.dataclass(frozen=True)
class Result:
    workload: str
    target: str
    delivered: int
    wall_s: float
    latencies_ms: tuple[float, ...]
    lost: int
    refused: int
    delivered_without_sent: int
    unanswered: int
    errors: int
    duplicates: int
    cursor_regressions: int
    closed_unexpectedly: int
    timed_out: bool

    @property
    def delivered_per_s(self) -> float:
        return self.delivered / self.wall_s if self.wall_s > 0 else 0.0

    def percentile_ms(self, pct: float) -> float | None:
        """Nearest-rank percentile; None when nothing was delivered."""
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        rank = math.ceil(pct / 100 * len(ordered))
        return ordered[min(len(ordered), max(1, rank)) - 1]

    def summary(self) -> dict:
        """The figures the runner's --json line carries, exactly these keys."""
        return {
            "delivered_per_s": round(self.delivered_per_s, 1),
            "p50_ms": _round(self.percentile_ms(50)),
            "p95_ms": _round(self.percentile_ms(95)),
            "p99_ms": _round(self.percentile_ms(99)),
            "lost": self.lost,
            "refused": self.refused,
        }

    def violations(self) -> list[str]:
        """Broken guarantees (PROTOCOL.md "Guarantees"); refusals and slowness are not among them."""
        checks = {"lost": self.lost, "delivered_without_sent": self.delivered_without_sent,
                  "duplicates": self.duplicates, "cursor_regressions": self.cursor_regressions}
        return [f"{name}={value}" for name, value in checks.items() if value]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def scaled(count: float, scale: float, minimum: int = 1) -> int:
    return max(minimum, round(count * scale))


class Run:
    """One workload against one target: its users, conversations, sockets and ledger."""

    def __init__(self, target: Target, workload: str, run_id: str | None):
        self.target = target
        self.workload = workload
        self.prefix = f"bench-{run_id or secrets.token_hex(3)}-{workload}"
        self.ledger = Ledger()
        self.connections: list[Connection] = []
        self.http = httpx.AsyncClient(timeout=HTTP_TIMEOUT_S)
        self._gate = asyncio.Semaphore(SETUP_CONCURRENCY)
        self._timed_out = False
        self._started_at = self._sends_done_at = 0.0

    async def __aenter__(self) -> Run:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await asyncio.gather(*(c.close() for c in self.connections), return_exceptions=True)
        await self.http.aclose()

    def users(self, role: str, count: int) -> list[str]:
        return [f"{self.prefix}-{role}{i}" for i in range(count)]

    async def conversation(self, creator: str, members: list[str]) -> str:
        async with self._gate:
            conversation = await create_conversation(self.http, self.target, creator, members)
        self.ledger.add_conversation(conversation)
        return conversation["conversation_id"]

    async def connect(self, user_ids: list[str]) -> dict[str, Connection]:
        async def one(user_id: str) -> Connection:
            async with self._gate:
                connection = await Connection.open(self.target, user_id, self.ledger)
            self.connections.append(connection)
            return connection

        connections = await asyncio.gather(*(one(u) for u in user_ids))
        return dict(zip(user_ids, connections))

    async def load(self, senders: list[Awaitable[None]], budget_s: float, progress: Progress | None) -> None:
        """Run the senders (cut off after budget_s), then drain; report progress all along."""
        self._started_at = time.monotonic()
        ticker = asyncio.create_task(self._tick(progress)) if progress else None
        try:
            try:
                await asyncio.wait_for(asyncio.gather(*senders), budget_s)
            except asyncio.TimeoutError:
                self._timed_out = True
            self._sends_done_at = time.monotonic()
            deadline = self._sends_done_at + DRAIN_TIMEOUT_S
            while not self.ledger.settled() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            if ticker:
                ticker.cancel()

    async def _tick(self, progress: Progress) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            progress(time.monotonic() - self._started_at, self.ledger.delivered)

    def result(self) -> Result:
        ledger = self.ledger
        ended_at = max(ledger.last_event_at, self._sends_done_at)
        return Result(
            workload=self.workload, target=self.target.name, delivered=ledger.delivered,
            wall_s=max(0.0, ended_at - self._started_at), latencies_ms=tuple(ledger.latencies_ms),
            lost=ledger.lost(), refused=ledger.refused,
            delivered_without_sent=ledger.delivered_without_sent(), unanswered=ledger.unanswered(),
            errors=ledger.errors, duplicates=ledger.duplicates,
            cursor_regressions=ledger.cursor_regressions,
            closed_unexpectedly=ledger.closed_unexpectedly, timed_out=self._timed_out,
        )


# ---- sender shapes -------------------------------------------------------------------------------

async def paced(connection: Connection, conversation_id: str, count: int, rate_per_s: float) -> None:
    """Open loop: `count` sends on a fixed schedule, never waiting for answers. A random phase
    keeps many paced senders from ticking in lockstep."""
    loop = asyncio.get_running_loop()
    start = loop.time() + random.uniform(0, 1 / rate_per_s)
    for n in range(count):
        await asyncio.sleep(max(0.0, start + n / rate_per_s - loop.time()))
        if not connection.is_open:
            return
        await connection.send(conversation_id, str(n), BODY)


async def closed_loop(connection: Connection, conversation_id: str, in_flight: int, duration_s: float) -> None:
    """`in_flight` lanes, each sending its next message when its previous one is answered, until
    duration_s has passed. Refusals are honoured: a lane sleeps retry_after_ms before going on."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s
    numbers = itertools.count()

    async def lane() -> None:
        while connection.is_open and loop.time() < deadline:
            pending = await connection.send(conversation_id, str(next(numbers)), BODY)
            try:
                answer = await asyncio.wait_for(pending, ANSWER_TIMEOUT_S)
            except asyncio.TimeoutError:
                return
            if answer.outcome == "refused":
                pause_s = answer.retry_after_ms / 1000 if answer.retry_after_ms else OVERLOAD_BACKOFF_S
                await asyncio.sleep(max(0.0, min(pause_s, deadline - loop.time())))

    await asyncio.gather(*(lane() for _ in range(in_flight)))


# ---- the workloads -------------------------------------------------------------------------------

async def w1(target: Target, scale: float = 1.0, run_id: str | None = None,
             progress: Progress | None = None) -> Result:
    pairs, count, rate_per_s = scaled(50, scale), scaled(100, scale), 10.0
    async with Run(target, "w1", run_id) as run:
        senders, receivers = run.users("s", pairs), run.users("r", pairs)
        cids = await asyncio.gather(*(run.conversation(s, [s, r]) for s, r in zip(senders, receivers)))
        sockets = await run.connect(senders + receivers)
        await run.load([paced(sockets[s], cid, count, rate_per_s) for s, cid in zip(senders, cids)],
                       budget_s=count / rate_per_s + ANSWER_TIMEOUT_S, progress=progress)
        return run.result()


async def w2(target: Target, scale: float = 1.0, run_id: str | None = None,
             progress: Progress | None = None) -> Result:
    pairs, in_flight, duration_s = scaled(100, scale), 10, 20.0 * scale
    async with Run(target, "w2", run_id) as run:
        senders, receivers = run.users("s", pairs), run.users("r", pairs)
        cids = await asyncio.gather(*(run.conversation(s, [s, r]) for s, r in zip(senders, receivers)))
        sockets = await run.connect(senders + receivers)
        await run.load([closed_loop(sockets[s], cid, in_flight, duration_s) for s, cid in zip(senders, cids)],
                       budget_s=duration_s + ANSWER_TIMEOUT_S + 1.0, progress=progress)
        return run.result()


async def w3(target: Target, scale: float = 1.0, run_id: str | None = None,
             progress: Progress | None = None) -> Result:
    size = scaled(50, scale, minimum=2)
    talkers, count, rate_per_s = min(size, scaled(5, scale)), scaled(50, scale), 5.0
    async with Run(target, "w3", run_id) as run:
        members = run.users("m", size)
        cid = await run.conversation(members[0], members)
        sockets = await run.connect(members)
        await run.load([paced(sockets[m], cid, count, rate_per_s) for m in members[:talkers]],
                       budget_s=count / rate_per_s + ANSWER_TIMEOUT_S, progress=progress)
        return run.result()


WORKLOADS: dict[str, Callable[..., Awaitable[Result]]] = {"w1": w1, "w2": w2, "w3": w3}

"""`switchboard demo`: simulated users chatting against a running platform, through the SDK.

Each user is one `Client`. Users pair up in direct conversations (a ring: everyone talks to both
neighbours) and in groups of `group_size`; each sends `rate` messages a second to one of its
conversations, picked at random, and waits for each `sent` before the next (so a slow platform
shows as a lower rate, not as a growing backlog in this process).

Latency is honest: every send is stamped on this process's monotonic clock before it goes out, and
every delivery to another member is measured against that stamp on the same clock (as
benchmarks/client.py does), so no clock is shared with the server. A live line on stderr shows the
last second; the summary on stdout covers the whole run. "lost" counts messages the platform
acknowledged that some member had not received when the drain ended.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import secrets
import sys
import time

from switchboard.auth import mint_token
from switchboard.client import ApiError, Client, ClientError, HttpApi, MessageEvent

# Connections opened at once at the start, so a large demo does not stampede the accept queue.
CONNECT_CONCURRENCY = 32
# After the sending stops, how long to wait for deliveries still on their way.
DRAIN_S = 5.0
TICK_S = 1.0
# A send with no answer after this long is counted as an error and the user goes on.
SEND_TIMEOUT_S = 10.0


class DemoError(RuntimeError):
    """The demo cannot run (platform unreachable, setup refused); the message says why."""


@dataclasses.dataclass
class _Send:
    started_at: float  # monotonic seconds, just before the send went out
    recipients: frozenset[str]  # the other members
    received_by: set[str] = dataclasses.field(default_factory=set)
    acked: bool = False


class Tally:
    """Every send of the run and every delivery, with latencies in ms (all and this tick's)."""

    def __init__(self) -> None:
        self.sends: dict[tuple[str, str], _Send] = {}
        self.latencies_ms: list[float] = []
        self.tick_latencies_ms: list[float] = []
        self.acked = self.refused = self.errors = self.delivered = self.duplicates = 0
        self.tick_acked = self.tick_delivered = 0

    def stamp(self, sender: str, client_msg_id: str, recipients: frozenset[str]) -> None:
        self.sends[(sender, client_msg_id)] = _Send(time.monotonic(), recipients)

    def acknowledge(self, sender: str, client_msg_id: str) -> None:
        self.sends[(sender, client_msg_id)].acked = True
        self.acked += 1
        self.tick_acked += 1

    def deliver(self, user_id: str, sender: str, client_msg_id: str) -> None:
        send = self.sends.get((sender, client_msg_id))
        if send is None or user_id == sender:
            return  # the sender's own copy, or a message from before this run
        if user_id in send.received_by:
            self.duplicates += 1
            return
        send.received_by.add(user_id)
        latency_ms = (time.monotonic() - send.started_at) * 1000.0
        self.latencies_ms.append(latency_ms)
        self.tick_latencies_ms.append(latency_ms)
        self.delivered += 1
        self.tick_delivered += 1

    def owed(self) -> int:
        return sum(len(s.recipients - s.received_by) for s in self.sends.values() if s.acked)

    def lost(self) -> int:
        return sum(1 for s in self.sends.values() if s.acked and s.received_by != s.recipients)

    def take_tick(self) -> tuple[int, int, list[float]]:
        tick = (self.tick_acked, self.tick_delivered, self.tick_latencies_ms)
        self.tick_acked = self.tick_delivered = 0
        self.tick_latencies_ms = []
        return tick


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(pct / 100 * len(ordered)))) - 1]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


@dataclasses.dataclass(frozen=True)
class Summary:
    users: int
    direct: int
    groups: int
    duration_s: float
    acked: int
    refused: int
    errors: int
    delivered: int
    lost: int
    duplicates: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    connected_at_end: int
    reconnects: int
    dropped_events: int

    def text(self) -> str:
        return "\n".join([
            f"demo: {self.users} users, {self.direct} direct and {self.groups} group conversations, "
            f"{self.duration_s:.1f} s of sending",
            f"  sent       {self.acked} messages acknowledged ({self.acked / self.duration_s:.1f} msgs/s), "
            f"{self.refused} refused, {self.errors} errors",
            f"  delivered  {self.delivered} to other members ({self.delivered / self.duration_s:.1f}/s); "
            f"lost {self.lost}, duplicates {self.duplicates}",
            f"  latency    p50 {_ms(self.p50_ms)}, p95 {_ms(self.p95_ms)}, p99 {_ms(self.p99_ms)} "
            f"(send -> receive on this machine's monotonic clock)",
            f"  sessions   {self.connected_at_end}/{self.users} connected at the end, "
            f"{self.reconnects} reconnects, {self.dropped_events} events dropped by the SDK",
        ])


def plan_conversations(user_ids: list[str], group_size: int) -> tuple[list[list[str]], list[list[str]]]:
    """Direct pairs (a ring of neighbours) and groups of group_size (a last group under 3 is dropped)."""
    n = len(user_ids)
    pairs = [[user_ids[0], user_ids[1]]] if n == 2 else [[user_ids[i], user_ids[(i + 1) % n]] for i in range(n)]
    groups = [user_ids[i:i + group_size] for i in range(0, n, group_size)]
    return pairs, [g for g in groups if len(g) >= 3]


class Demo:
    def __init__(self, url: str, secret: str, users: int, rate_per_s: float, group_size: int,
                 region: str | None):
        self.url = url
        self.rate_per_s = rate_per_s
        self.group_size = group_size
        prefix = f"demo-{secrets.token_hex(3)}"
        self.user_ids = [f"{prefix}-u{i}" for i in range(users)]
        self.clients = {u: Client(url, self._token(secret, u, region)) for u in self.user_ids}
        self.tally = Tally()
        self.conversations: dict[str, list[tuple[str, frozenset[str]]]] = {u: [] for u in self.user_ids}
        self.direct = self.groups = 0
        self.live_line = sys.stderr.isatty()

    @staticmethod
    def _token(secret: str, user_id: str, region: str | None):
        return lambda: mint_token(secret, user_id, region=region)

    async def setup(self) -> None:
        async with HttpApi(self.url, None) as probe:
            if not await probe.health():
                raise DemoError(f"the platform at {probe.base_url} is not answering /v1/health "
                                "(start it with `switchboard up`)")
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def connect(client: Client) -> None:
            async with gate:
                await client.connect()

        try:
            await asyncio.gather(*(connect(c) for c in self.clients.values()))
            pairs, groups = plan_conversations(self.user_ids, self.group_size)
            await asyncio.gather(*(self._create(members) for members in pairs + groups))
        except ClientError as error:
            raise DemoError(f"setup failed: {error}") from None
        self.direct, self.groups = len(pairs), len(groups)

    async def _create(self, members: list[str]) -> None:
        creator = self.clients[members[0]]
        title = "demo group" if len(members) > 2 else "demo direct"
        conversation = await creator.api.create_conversation(members[1:], title=title)
        for user_id in members:
            others = frozenset(members) - {user_id}
            self.conversations[user_id].append((conversation.conversation_id, others))

    async def receive(self, user_id: str) -> None:
        async for event in self.clients[user_id].events():
            if isinstance(event, MessageEvent):
                self.tally.deliver(user_id, event.message.sender, event.message.client_msg_id)

    async def talk(self, user_id: str, deadline: float) -> None:
        client, loop = self.clients[user_id], asyncio.get_running_loop()
        conversations = self.conversations[user_id]
        interval = 1.0 / self.rate_per_s
        next_at = loop.time() + random.uniform(0, interval)  # a random phase: no lockstep
        number = 0
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if loop.time() >= deadline:
                return
            next_at += interval
            cid, others = random.choice(conversations)
            number += 1
            client_msg_id = f"{user_id}-{number}"
            self.tally.stamp(user_id, client_msg_id, others)
            try:
                await asyncio.wait_for(client.send(cid, f"hello #{number} from {user_id}", client_msg_id),
                                       SEND_TIMEOUT_S)
                self.tally.acknowledge(user_id, client_msg_id)
            except ApiError as error:
                if error.retryable:
                    self.tally.refused += 1
                    next_at = max(next_at, loop.time() + (error.retry_after_ms or 0) / 1000)
                else:
                    self.tally.errors += 1
            except (TimeoutError, ClientError):
                self.tally.errors += 1

    async def tick(self, started_at: float) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            acked, delivered, latencies = self.tally.take_tick()
            connected = sum(c.connected for c in self.clients.values())
            line = (f"{time.monotonic() - started_at:6.1f} s  sent {acked / TICK_S:7.1f} msgs/s  "
                    f"delivered {delivered / TICK_S:7.1f}/s  p50 {_ms(percentile(latencies, 50)):>9}  "
                    f"p99 {_ms(percentile(latencies, 99)):>9}  connections {connected}/{len(self.clients)}")
            if self.live_line:
                print(f"\r{line}", end="", file=sys.stderr, flush=True)
            else:
                print(line, file=sys.stderr, flush=True)

    async def run(self, duration_s: float) -> Summary:
        receivers = [asyncio.create_task(self.receive(u)) for u in self.user_ids]
        started_at = time.monotonic()
        ticker = asyncio.create_task(self.tick(started_at))
        try:
            deadline = asyncio.get_running_loop().time() + duration_s
            await asyncio.gather(*(self.talk(u, deadline) for u in self.user_ids))
            sent_for_s = time.monotonic() - started_at
            drain_until = time.monotonic() + DRAIN_S
            while self.tally.owed() and time.monotonic() < drain_until:
                await asyncio.sleep(0.05)
        finally:
            ticker.cancel()
            if self.live_line:
                print(file=sys.stderr)
        summary = self.summary(sent_for_s)
        await self.close()
        await asyncio.gather(*receivers, return_exceptions=True)
        return summary

    def summary(self, duration_s: float) -> Summary:
        tally, clients = self.tally, self.clients.values()
        return Summary(
            users=len(self.user_ids), direct=self.direct, groups=self.groups, duration_s=duration_s,
            acked=tally.acked, refused=tally.refused, errors=tally.errors, delivered=tally.delivered,
            lost=tally.lost(), duplicates=tally.duplicates,
            p50_ms=percentile(tally.latencies_ms, 50), p95_ms=percentile(tally.latencies_ms, 95),
            p99_ms=percentile(tally.latencies_ms, 99),
            connected_at_end=sum(c.connected for c in clients),
            reconnects=sum(max(0, c.stats.sessions - 1) for c in clients),
            dropped_events=sum(c.stats.dropped_events for c in clients),
        )

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)


async def run_demo(url: str, secret: str, users: int, duration_s: float, rate_per_s: float,
                   group_size: int, region: str | None = None) -> Summary:
    demo = Demo(url, secret, users, rate_per_s, group_size, region)
    try:
        print(f"demo: connecting {users} users to {url} ...", file=sys.stderr, flush=True)
        await demo.setup()
        print(f"demo: {demo.direct} direct and {demo.groups} group conversations; sending for "
              f"{duration_s:g} s at {rate_per_s:g} msgs/s per user", file=sys.stderr, flush=True)
        summary = await demo.run(duration_s)
    finally:
        await demo.close()
    print(summary.text(), flush=True)
    return summary

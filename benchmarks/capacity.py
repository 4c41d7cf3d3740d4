"""The capacity workload (`scripts/bench --only capacity`): how many idle authenticated sockets a
target holds, what each costs in memory, and whether they all still hear a message.

It opens SOCKETS sockets (10,000 at --scale 1) BATCH at a time, as a crowd of new users would;
a socket refused (a 1013 close: every gateway replica full, or a handshake that times out) is
tried again after a pause until the time budget runs out. Memory is the growth of the target's
processes' resident sets (the platform: every Ray worker and raylet, HAProxy and PostgreSQL; the
relay: its one process) from before the first socket to after the last, divided by the sockets
held. The platform's gateway replicas are counted by their process names, over time, so the
figures show when capacity was added. Then a message to a sample of the idle users must reach
every sampled socket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

from .client import BenchError, Connection, Target
from .workloads import Run, scaled

SOCKETS = 10_000
BATCH = 100
OPEN_BUDGET_S = 600.0
# No socket more held for this long: the target holds what it can (reported as held < wanted).
STALL_S = 60.0
RETRY_PAUSE_S = 1.0
SETTLE_S = 5.0
# Members of the delivery check's conversation (under the default member cap).
SAMPLE = 40
DELIVERY_TIMEOUT_S = 15.0
# The platform's processes, by the start of their command line (see module docstring).
PLATFORM_PROCESSES = ("ray::", "raylet", "gcs_server", "haproxy", "postgres", "/usr/lib/postgresql")
REPLICA_PROCESS = "ray::ServeReplica"


def process_rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def processes_named(prefixes: tuple[str, ...]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if any(command.startswith(prefix) or f"/{prefix}" in command.split(" ")[0] for prefix in prefixes):
            found.append(int(entry.name))
    return found


def platform_memory() -> int:
    return process_rss_bytes(processes_named(PLATFORM_PROCESSES))


def gateway_replicas() -> int:
    return len(processes_named((REPLICA_PROCESS,)))


@dataclasses.dataclass
class CapacityResult:
    wanted: int
    held: int = 0
    refused: int = 0  # attempts refused or timed out, each tried again
    open_s: float = 0.0
    memory_growth_bytes: int = 0
    sampled: int = 0
    sample_received: int = 0
    replicas: list[tuple[float, int]] = dataclasses.field(default_factory=list)  # (s, replicas)
    closed_while_idle: int = 0
    replica_rss_bytes: int = 0  # one gateway replica's resident set before the first socket
    replicas_added: int = 0

    def summary(self) -> dict:
        return {
            "wanted": self.wanted, "held": self.held, "refused_then_retried": self.refused,
            "open_s": round(self.open_s, 1),
            "kb_per_socket": round(self.memory_growth_bytes / max(1, self.held) / 1024, 1),
            "memory_growth_mb": round(self.memory_growth_bytes / 2**20, 1),
            # The growth less the replicas the autoscaler started (each costs its empty size
            # whatever it holds): what one more socket costs where a replica has room.
            "kb_per_socket_beyond_replicas": round(
                (self.memory_growth_bytes - self.replicas_added * self.replica_rss_bytes) / max(1, self.held) / 1024, 1),
            "empty_replica_mb": round(self.replica_rss_bytes / 2**20, 1),
            "sample_received": f"{self.sample_received}/{self.sampled}",
            "closed_while_idle": self.closed_while_idle,
            "replicas": self.replicas[-1][1] if self.replicas else None,
            "replicas_over_time": self.replicas,
        }


async def capacity(target: Target, scale: float = 1.0, run_id: str | None = None,
                   measure: Callable[[], int] = platform_memory,
                   replicas: Callable[[], int] | None = gateway_replicas, progress=None) -> CapacityResult:
    wanted = scaled(SOCKETS, scale, minimum=BATCH)
    result = CapacityResult(wanted=wanted)
    async with Run(target, "capacity", run_id) as run:
        users = run.users("idle", wanted)
        started = time.monotonic()
        before = measure()

        def note_replicas() -> None:
            if replicas is not None:
                count = replicas()
                if not result.replicas or result.replicas[-1][1] != count:
                    result.replicas.append((round(time.monotonic() - started, 1), count))

        note_replicas()
        if replicas is not None:
            pids = processes_named((REPLICA_PROCESS,))
            result.replica_rss_bytes = process_rss_bytes(pids) // max(1, len(pids))
        waiting = list(users)
        last_progress = started
        while waiting and time.monotonic() - started < OPEN_BUDGET_S and time.monotonic() - last_progress < STALL_S:
            batch, waiting = waiting[:BATCH], waiting[BATCH:]
            opened = await asyncio.gather(*(Connection.open(target, user, run.ledger) for user in batch),
                                          return_exceptions=True)
            for user, connection in zip(batch, opened):
                if isinstance(connection, BaseException):
                    if not isinstance(connection, BenchError):
                        raise connection
                    result.refused += 1
                    waiting.append(user)
                else:
                    run.connections.append(connection)
                    last_progress = time.monotonic()
            note_replicas()
            if progress is not None:
                progress(time.monotonic() - started, len(run.connections))
            if any(isinstance(c, BaseException) for c in opened):
                await asyncio.sleep(RETRY_PAUSE_S)
        result.open_s = time.monotonic() - started
        result.held = len(run.connections)
        await asyncio.sleep(SETTLE_S)
        note_replicas()
        result.memory_growth_bytes = measure() - before
        if result.replicas:
            result.replicas_added = max(0, result.replicas[-1][1] - result.replicas[0][1])
        await check_delivery(run, result)
        result.closed_while_idle = sum(not c.is_open for c in run.connections)
    return result


async def check_delivery(run: Run, result: CapacityResult) -> None:
    """One message to a conversation of idle users spread over the whole crowd."""
    connections = run.connections
    if len(connections) < 2:
        return
    step = max(1, len(connections) // SAMPLE)
    sample = connections[::step][:SAMPLE]
    conversation_id = await run.conversation(sample[0].user_id, [c.user_id for c in sample[1:]])
    answer = await (await sample[0].send(conversation_id, "capacity-check", "is anyone there?"))
    if answer.outcome != "sent":
        raise BenchError(f"the delivery check's send was answered {answer.outcome}")
    result.sampled = len(sample)
    send = run.ledger.sends[(sample[0].user_id, "capacity-check")]
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        result.sample_received = len(send.received_by)  # the sender's own echo included
        if result.sample_received == len(sample):
            return
        await asyncio.sleep(0.2)

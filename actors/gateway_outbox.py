"""Deliveries waiting for one gateway replica's stream, bounded.

A replica that stops taking its stream (overloaded, or stalled) must not grow the shard's memory
without bound: past OUTBOX_MAX_DELIVERIES or OUTBOX_MAX_BYTES waiting, the outbox drops what it
holds and says so. The shard then ends that replica's stream and forgets its sockets; the replica
opens a new stream and re-attaches every socket with its last cursor, and each socket is replayed
from PostgreSQL what it missed (the events are durable: dropping deliveries loses nothing).
"""

from __future__ import annotations

import asyncio

# A delivery as it travels to a gateway: (user_id, cursor, frame text); cursor None for typing.
Delivery = tuple[str, int | None, str]

# A healthy replica takes its stream within milliseconds; these allow seconds of a busy one.
OUTBOX_MAX_DELIVERIES = 100_000
OUTBOX_MAX_BYTES = 64 * 1024 * 1024


class GatewayOutbox:
    def __init__(self, max_deliveries: int = OUTBOX_MAX_DELIVERIES, max_bytes: int = OUTBOX_MAX_BYTES):
        self.items: list[Delivery] = []
        self.ready = asyncio.Event()
        self.max_deliveries = max_deliveries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.overflowed = False  # set once: this outbox dropped deliveries and must be replaced

    def put(self, user_id: str, cursor: int | None, text: str) -> None:
        if self.overflowed:
            return
        self.items.append((user_id, cursor, text))
        self.bytes += len(text)
        if len(self.items) > self.max_deliveries or self.bytes > self.max_bytes:
            self.overflowed = True
            self.items, self.bytes = [], 0
        self.ready.set()

    async def take(self) -> list[Delivery]:
        await self.ready.wait()
        self.ready.clear()
        items, self.items, self.bytes = self.items, [], 0
        return items

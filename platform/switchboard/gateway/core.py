"""What one gateway replica holds: its id, the shard directory and batchers, the delivery hub,
the rate limiter and a read-only store. HTTP routes and WebSocket sessions go through it."""

from __future__ import annotations

import asyncio
import time
import uuid

from switchboard.actors.ops import Operation, Outcome
from switchboard.errors import Forbidden, NotFound, Overloaded, SwitchboardError
from switchboard.settings import Settings
from switchboard.storage.database import make_engine
from switchboard.storage.models import Conversation
from switchboard.storage.sql_store import SqlStore
from switchboard.storage.store import StorageUnavailable

from .delivery import DeliveryHub
from .rate_limit import RateLimiter
from .shards import SHARD_GONE, ShardBatcher, ShardDirectory, unwrap
from .wire_errors import CLOSE_GOING_AWAY

HEALTH_CACHE_S = 1.0


class GatewayCore:
    def __init__(self, settings: Settings, database_url: str):
        self.settings = settings
        self.gateway_id = f"gw-{uuid.uuid4().hex[:12]}"
        self.store = SqlStore(make_engine(database_url, pool_size=8))
        self.limiter = RateLimiter(settings.send_rate_per_s, settings.send_burst)
        self.directory: ShardDirectory | None = None
        self.batchers: list[ShardBatcher] = []
        self.hub: DeliveryHub | None = None
        self._health = (0.0, False)
        self.sessions: set = set()  # live WebSocket sessions, for drain
        self.draining = False  # set once: new sockets are turned away, open ones closed 1001

    async def start(self) -> None:
        self.directory = await ShardDirectory.from_router(self.settings)
        self.batchers = [ShardBatcher(h, self.settings.send_timeout_s) for h in self.directory.handles]
        self.hub = DeliveryHub(self.gateway_id, self.directory, attach_deadline_s=self.settings.send_timeout_s)
        await self.hub.start()

    async def drain(self) -> None:
        """This replica is going away: every socket answers its accepted sends, then closes with
        1001 so its client resumes with `since` on another replica; new sockets are turned away."""
        self.draining = True
        for session in list(self.sessions):
            await session.close(CLOSE_GOING_AWAY, "server draining; reconnect with since")

    async def stop(self) -> None:
        if self.hub is not None:
            await self.hub.stop()

    # ---- writes go to the conversation's sequencer ------------------------------------------

    async def submit(self, operation: Operation) -> Outcome:
        return await self.enqueue(operation)

    def enqueue(self, operation: Operation) -> asyncio.Future:
        """submit without a coroutine: a future of the Outcome (the WebSocket hot path)."""
        index, _ = self.directory.for_conversation(operation.conversation_id)
        return self.batchers[index].enqueue(operation)

    async def run(self, operation: Operation) -> Outcome:
        """submit, raising the refusal as an exception (for HTTP handlers)."""
        outcome = await self.submit(operation)
        if outcome.error is not None:
            raise outcome.error
        return outcome

    async def typing(self, conversation_id: str, user_id: str) -> Outcome:
        _, handle = self.directory.for_conversation(conversation_id)
        try:
            return await handle.typing.remote(conversation_id, user_id)
        except SHARD_GONE:
            return Outcome.failed(Overloaded("the conversation's shard is restarting; retry"))
        except Exception as error:
            cause = unwrap(error)
            return Outcome.failed(cause if isinstance(cause, SwitchboardError) else SwitchboardError())

    # ---- reads go straight to PostgreSQL ----------------------------------------------------

    async def read(self, query, *args):
        try:
            return await asyncio.to_thread(query, *args)
        except StorageUnavailable as error:
            raise Overloaded(str(error)) from None

    async def member_conversation(self, conversation_id: str, user_id: str) -> Conversation:
        conversation = await self.read(self.store.load_conversation, conversation_id)
        if conversation is None:
            raise NotFound("no such conversation")
        if user_id not in conversation.members:
            raise Forbidden("not a member of this conversation")
        return conversation

    async def healthy(self) -> bool:
        """Ready for traffic: shards reachable through our streams and PostgreSQL answering."""
        if self.draining:
            return False
        checked_at, ok = self._health
        if time.monotonic() - checked_at < HEALTH_CACHE_S:
            return ok
        ok = self.hub is not None
        if ok:
            try:
                await asyncio.wait_for(asyncio.to_thread(self.store.mailbox_head, "health-probe"), 3)
            except Exception:
                ok = False
        self._health = (time.monotonic(), ok)
        return ok

"""What one gateway replica holds: its id, the shard directory and batchers, the delivery hub,
the rate limits, the gate for unauthenticated sockets and a read-only store. HTTP routes and
WebSocket sessions go through it."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from switchboard.actors.ops import SEQUENCED, Operation, Outcome, TakeTokens
from switchboard.auth import Identity
from switchboard.errors import Forbidden, NotFound, Overloaded
from switchboard.settings import Settings
from switchboard.storage.database import make_engine
from switchboard.storage.models import Conversation
from switchboard.storage.sql_store import SqlStore
from switchboard.storage.store import StorageUnavailable

from .batcher import ShardBatcher
from .delivery import DeliveryHub
from .placement_follower import PlacementFollower
from .preauth import PreAuthGate
from .rate_limit import LEASE_TIMEOUT_S, RateLimiter, SharedLimits
from .shards import SHARD_GONE, ShardDirectory
from .wire_errors import CLOSE_GOING_AWAY

log = logging.getLogger(__name__)

HEALTH_CACHE_S = 1.0
HEALTH_TIMEOUT_S = 2.0
DATABASE_UNAVAILABLE = "the database is unavailable; retry later"
# Leases, typing and acks are answered by the shard at once: a signal unanswered this long is moot.
SIGNAL_TIMEOUT_S = 2.0


class GatewayCore:
    def __init__(self, settings: Settings, database_url: str, home_region: str | None = None):
        self.settings = settings
        # The region whose entry point this replica is: its shards are the ones its health asks
        # and its streams open at start. It serves users homed anywhere.
        self.home_region = home_region or settings.region
        self.gateway_id = f"gw-{uuid.uuid4().hex[:12]}"
        self.store = SqlStore(make_engine(database_url, pool_size=8, statement_timeout_s=settings.db_statement_timeout_s))
        self.limits = SharedLimits(
            {"send": (settings.send_rate_per_s, settings.send_burst),
             "membership": (settings.membership_rate_per_s, settings.membership_burst)},
            lease=self._lease)
        self.http_limiter = RateLimiter(settings.http_rate_per_s, settings.http_burst)
        self.preauth = PreAuthGate(settings.preauth_sockets_per_address, settings.preauth_sockets_max)
        self.directory: ShardDirectory | None = None
        # Two batchers per shard (by flat index, made on first use): writes (the sequencer's
        # operations, whose calls last as long as a commit) and signals (token leases, typing,
        # acks: answered at once by the shard), so a lease or a typing frame never waits behind
        # a slow or stuck commit.
        self.batchers: dict[int, ShardBatcher] = {}
        self.signal_batchers: dict[int, ShardBatcher] = {}
        self.placements = PlacementFollower(self)  # reshards, learned while serving
        self.clock = time.monotonic
        self.hub: DeliveryHub | None = None
        self._health: tuple[float, str | None] = (0.0, "starting")
        self.sessions: set = set()  # live WebSocket sessions, for drain
        self.draining = False  # set once: new sockets are turned away, open ones closed 1001
        self.sockets_refused_full = 0  # sockets closed 1013 because sockets_per_replica were open

    async def start(self) -> None:
        self.directory = await ShardDirectory.from_routers(self.settings, self.home_region)
        self.hub = DeliveryHub(self.gateway_id, self.directory, attach_deadline_s=self.settings.send_timeout_s,
                               enqueue_at=self.enqueue_at, placements=self.placements)
        await self.hub.start()

    def write_batcher(self, index: int) -> ShardBatcher:
        batcher = self.batchers.get(index)
        if batcher is None:
            batcher = self.batchers[index] = self._batcher(index, self.settings.send_timeout_s)
        return batcher

    def signal_batcher(self, index: int) -> ShardBatcher:
        batcher = self.signal_batchers.get(index)
        if batcher is None:
            batcher = self.signal_batchers[index] = self._batcher(index, SIGNAL_TIMEOUT_S)
        return batcher

    def _batcher(self, index: int, deadline_s: float) -> ShardBatcher:
        return ShardBatcher(self.directory.handles[index], deadline_s, self.settings.gateway_queue_max,
                            on_moved=self.placements.moved_callback(self.directory.region_of(index)))

    async def drain(self) -> None:
        """This replica is going away: every socket answers its accepted sends, then closes with
        1001 so its client resumes with `since` on another replica; new sockets are turned away."""
        self.draining = True
        for session in list(self.sessions):
            await session.close(CLOSE_GOING_AWAY, "server draining; reconnect with since")

    async def stop(self) -> None:
        for batcher in (*self.batchers.values(), *self.signal_batchers.values()):
            batcher.stop()
        if self.hub is not None:
            self.hub.flush_acks()
            await self.hub.stop()

    # ---- writes go to the conversation's sequencer ------------------------------------------

    async def submit(self, operation: Operation, started: float | None = None) -> Outcome:
        return await self.enqueue(operation, started)

    def enqueue(self, operation: Operation, started: float | None = None) -> asyncio.Future:
        """submit without a coroutine: a future of the Outcome (the WebSocket hot path). The
        send timeout runs from `started` (when the frame or request came in), if given."""
        index = self.directory.conversation_index(operation.conversation_id)
        if isinstance(operation, SEQUENCED):
            timeout_s = None if started is None else self.settings.send_timeout_s - (time.monotonic() - started)
            return self.write_batcher(index).enqueue(operation, timeout_s)
        return self.signal_batcher(index).enqueue(operation)

    def enqueue_at(self, index: int, operation: Operation, timeout_s: float | None = None) -> asyncio.Future:
        """A signal for shard `index` itself (token leases and acks: the user's shard)."""
        return self.signal_batcher(index).enqueue(operation, timeout_s)

    async def run(self, operation: Operation, started: float | None = None) -> Outcome:
        """submit, raising the refusal as an exception (for HTTP handlers)."""
        outcome = await self.submit(operation, started)
        if outcome.error is not None:
            raise outcome.error
        return outcome

    def _lease(self, user: Identity, kind: str, wanted: int):
        index = self.directory.user_index(user.user_id, user.region)
        return self.enqueue_at(index, TakeTokens(user.user_id, kind, wanted), LEASE_TIMEOUT_S)

    def cross_region_calls(self) -> dict[str, int]:
        """Ray calls this replica made to another region's actors, by kind: batches of
        sequenced operations (`submit`), of signals (`signal`: leases, typing, acks), and the
        delivery hub's (attach, replay, stream, heartbeat...). Zero while its users are at home."""
        calls = dict(self.hub.calls_abroad) if self.hub is not None else {}
        for kind, batchers in (("submit", self.batchers), ("signal", self.signal_batchers)):
            abroad = sum(b.calls for index, b in batchers.items() if self.directory.is_abroad(index))
            if abroad:
                calls[kind] = abroad
        return calls

    # ---- reads go straight to PostgreSQL ----------------------------------------------------

    async def read(self, query, *args):
        try:
            return await asyncio.to_thread(query, *args)
        except StorageUnavailable as error:
            log.warning("read failed: %s", error)
            raise Overloaded(DATABASE_UNAVAILABLE) from None

    async def member_conversation(self, conversation_id: str, user_id: str) -> Conversation:
        conversation = await self.read(self.store.load_conversation, conversation_id)
        if conversation is None:
            raise NotFound("no such conversation")
        if user_id not in conversation.members:
            raise Forbidden("not a member of this conversation")
        return conversation

    # ---- health -----------------------------------------------------------------------------

    async def health_problem(self) -> str | None:
        """None when this replica can take traffic: not draining, every shard of its own region
        answering and able to commit, PostgreSQL answering. Cached for HEALTH_CACHE_S. (Another
        region's shards are that region's gateways' to report: asking them here would make every
        health check a call abroad.)"""
        if self.draining:
            return "draining"
        checked_at, problem = self._health
        if time.monotonic() - checked_at < HEALTH_CACHE_S:
            return problem
        problem = await self._check()
        self._health = (time.monotonic(), problem)
        return problem

    async def _check(self) -> str | None:
        if self.hub is None or self.directory is None:
            return "starting"
        try:
            home = [self.directory.handles[index] for index in self.directory.home_indexes()]
            answers = await asyncio.wait_for(
                asyncio.gather(*(handle.health.remote() for handle in home)), HEALTH_TIMEOUT_S)
        except (asyncio.TimeoutError, *SHARD_GONE) as error:
            return f"a shard cannot be reached ({type(error).__name__})"
        for index, answer in enumerate(answers):
            if not answer.get("ok"):
                return f"shard {index}: {answer.get('problem')}"
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.mailbox_head, "health-probe"), HEALTH_TIMEOUT_S)
        except Exception as error:
            return f"the database does not answer ({type(error).__name__})"
        return None

    def sockets_full(self) -> bool:
        """Every socket place of this replica is taken, by open sessions and by sockets still
        waiting to authenticate; the next socket is refused at once (websocket.py), so it never
        takes a request slot HTTP calls need."""
        full = len(self.sessions) + len(self.preauth) >= self.settings.sockets_per_replica
        if full:
            self.sockets_refused_full += 1
        return full

    def machinery_problem(self) -> str | None:
        """What Serve's check_health asks: is this replica itself working (not its dependencies;
        restarting a replica because the database is down would only add churn)?"""
        if self.hub is None:
            return "not started"
        if not self.hub.running():
            return "a delivery stream pump or the heartbeat stopped"
        return None

"""The chaos traffic: users in direct and group conversations, each sending continuously over the
SDK's Client (which resumes with `since` whenever dropped and re-sends unanswered sends with their
client_msg_id), while a WireRecorder logs everything the history checker and the timing figures need.

A send refused `overloaded` or `rate_limited` is retried by the user with the same client_msg_id, so
every send ends `sent`; the run's quiescence waits for that, and for every client to catch up with
its mailbox head in the database.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import random
import time

from switchboard.actors.ring import Ring
from switchboard.auth import mint_token
from switchboard.client import ApiError, Backoff, Client, ClientClosed, ClientError, HttpApi, Recorder

from .history import ClientLog, SendLog, SessionLog

log = logging.getLogger(__name__)

GROUP_SIZE = 5
RETRY_PAUSE_S = 0.3
# Reconnect backoff for the chaos clients: fast first retries (a fault is usually short), capped
# low so a recovered platform is found again within a couple of seconds.
CLIENT_BACKOFF = Backoff(initial_s=0.1, max_s=2.0, multiplier=2.0)


# ---- what the clients saw, with times -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Answer:
    at: float  # monotonic time it arrived
    user_id: str
    session: int  # index into the user's ClientLog.sessions
    client_msg_id: str
    kind: str  # "sent" or the error code
    message: dict | None


@dataclasses.dataclass(frozen=True)
class Attempt:
    at: float
    user_id: str
    session: int
    client_msg_id: str


@dataclasses.dataclass(frozen=True)
class Delivery:
    at: float
    user_id: str
    conversation_id: str
    ts_ms: int  # the message's commit time (server clock, same machine)


@dataclasses.dataclass(frozen=True)
class Close:
    at: float
    user_id: str
    session: int
    code: int | None
    reason: str


@dataclasses.dataclass
class Timeline:
    """Every answer, attempt, live delivery and connection close, in monotonic time."""

    answers: list[Answer] = dataclasses.field(default_factory=list)
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    deliveries: list[Delivery] = dataclasses.field(default_factory=list)
    closes: list[Close] = dataclasses.field(default_factory=list)


class WireRecorder(Recorder):
    """Builds one user's ClientLog from the SDK's raw per-session hooks, and feeds the Timeline."""

    def __init__(self, user_id: str, timeline: Timeline):
        self.user_id = user_id
        self.timeline = timeline
        self.log = ClientLog(user_id)
        self.sends: dict[str, SendLog] = {}
        self._index: dict[int, int] = {}  # the SDK's session number -> index in log.sessions
        self.highest_cursor = 0
        self.stopping = False  # set before the run closes the client: that close is no drop

    def register_send(self, client_msg_id: str, conversation_id: str, body: str) -> None:
        if client_msg_id not in self.sends:
            send = self.sends[client_msg_id] = SendLog(client_msg_id, conversation_id, body)
            self.log.sends.append(send)

    def session_opening(self, session: int, since: int | None) -> None:
        self._index[session] = len(self.log.sessions)
        self.log.sessions.append(SessionLog(since=since))

    def frame_received(self, session: int, frame: dict) -> None:
        index = self._index[session]
        self.log.sessions[index].frames.append(frame)
        kind = frame.get("type")
        if kind == "message":
            self.highest_cursor = max(self.highest_cursor, frame["cursor"])
            message = frame["message"]
            self.timeline.deliveries.append(
                Delivery(time.monotonic(), self.user_id, message["conversation_id"], message["ts"]))
        elif kind in ("receipt", "member"):
            self.highest_cursor = max(self.highest_cursor, frame["cursor"])
        elif kind == "sent":
            self.timeline.answers.append(Answer(time.monotonic(), self.user_id, index, frame["client_msg_id"],
                                                "sent", frame["message"]))
        elif kind == "error" and frame.get("ref") is not None:
            self.timeline.answers.append(Answer(time.monotonic(), self.user_id, index, frame["ref"],
                                                str(frame.get("code")), None))
        elif kind == "resync_required":
            self.highest_cursor = max(self.highest_cursor, frame["cursor"])

    def send_attempt(self, session: int, client_msg_id: str) -> None:
        index = self._index[session]
        self.sends[client_msg_id].attempts.append(index)
        self.timeline.attempts.append(Attempt(time.monotonic(), self.user_id, index, client_msg_id))

    def session_closed(self, session: int, code: int | None, reason: str) -> None:
        index = self._index[session]
        record = self.log.sessions[index]
        record.close_code = code
        record.dropped = not self.stopping
        if not self.stopping:
            self.timeline.closes.append(Close(time.monotonic(), self.user_id, index, code, reason))


# ---- who talks to whom ----------------------------------------------------------------------------

def balanced_user_ids(run_id: str, count: int, shard_count: int) -> list[str]:
    """User ids spread evenly over the shards, so every shard hosts some chaos users' mailboxes."""
    ring = Ring(shard_count)
    buckets: dict[int, list[str]] = {index: [] for index in range(shard_count)}
    quota = -(-count // shard_count)
    for n in itertools.count():
        user_id = f"chaos-{run_id}-u{n}"
        bucket = buckets[ring.user_shard(user_id)]
        if len(bucket) < quota:
            bucket.append(user_id)
        if sum(len(b) for b in buckets.values()) >= count:
            break
    users = [u for index in range(shard_count) for u in buckets[index]]
    return users[:count]


def plan_conversations(user_ids: list[str], seed: int) -> list[list[str]]:
    """Direct pairs and groups of GROUP_SIZE: every user is in one of each."""
    order = list(user_ids)
    random.Random(seed).shuffle(order)
    directs = [order[i:i + 2] for i in range(0, len(order) - 1, 2)]
    random.Random(seed + 1).shuffle(order)
    groups = [order[i:i + GROUP_SIZE] for i in range(0, len(order), GROUP_SIZE)]
    groups = [g for g in groups if len(g) >= 3]
    return directs + groups


# ---- one user ---------------------------------------------------------------------------------

class ChaosUser:
    def __init__(self, user_id: str, urls: list[str], secret: str, timeline: Timeline, rate_per_s: float, seed: int,
                 region: str | None = None, gateway: str | None = None):
        """urls: the gateways the user's client uses, the first first (it moves on to the next
        when a session cannot be opened there); region: the token's claim, the user's home;
        gateway: the region whose entry point urls[0] is (None: the root URL)."""
        self.user_id = user_id
        self.url = urls[0]
        self.region = region
        self.gateway = gateway
        self.recorder = WireRecorder(user_id, timeline)
        self.token = mint_token(secret, user_id, region=region, ttl_s=24 * 3600)
        self.client = Client(urls, self.token, recorder=self.recorder, backoff=CLIENT_BACKOFF)
        self.conversations: list[str] = []
        self.rate_per_s = rate_per_s
        self.random = random.Random(seed)
        self.sending = True
        self.failures: list[str] = []  # refusals that are not retryable: a bug or a bad plan
        self._tasks: list[asyncio.Task] = []
        self._numbers = itertools.count(1)

    async def start(self) -> None:
        await self.client.connect()
        self._tasks = [asyncio.create_task(self._consume()), asyncio.create_task(self._send_loop())]

    async def _consume(self) -> None:
        """The application side: take every event (the recorder has already logged the raw frame)."""
        try:
            async for _ in self.client.events():
                pass
        except ClientClosed:
            pass
        except ClientError as error:  # the client stopped by itself (a refused token): on record
            log.warning("%s: client stopped: %s", self.user_id, error)

    async def _send_loop(self) -> None:
        while self.sending:
            conversation_id = self.random.choice(self.conversations)
            key = f"{self.user_id}-{next(self._numbers)}"
            await self.send_until_committed(conversation_id, f"chaos {key}", key)
            await asyncio.sleep(self.random.uniform(0.5, 1.5) / self.rate_per_s)

    async def send_until_committed(self, conversation_id: str, body: str, key: str) -> None:
        self.recorder.register_send(key, conversation_id, body)
        while True:
            try:
                await self.client.send(conversation_id, body, client_msg_id=key)
                return
            except ApiError as error:
                if not error.retryable:
                    self.failures.append(f"{key}: {error.code} {error}")
                    return
                pause = (error.retry_after_ms or 0) / 1000 if error.code == "rate_limited" else RETRY_PAUSE_S
                await asyncio.sleep(max(pause, RETRY_PAUSE_S))
            except ClientClosed:
                if not self.recorder.stopping and self.sending:
                    # The SDK gave up on this user (e.g. its token refused on reconnect): a client
                    # that cannot carry on is a finding, not something to paper over.
                    self.failures.append(f"{key}: the client stopped for good: {self.client.failure!r}")
                    self.sending = False
                return

    async def stop_sending(self) -> None:
        self.sending = False
        await asyncio.gather(self._tasks[1], return_exceptions=True)

    async def close(self) -> None:
        self.recorder.stopping = True
        await self.client.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# ---- all of them -----------------------------------------------------------------------------------

def user_placements(count: int, regions: list[str]) -> list[tuple[str | None, str | None]]:
    """For the n-th user: (home region, region of the gateway it connects to first). Homes go
    round the regions, and every other user of a region starts on the next region's gateway, so
    each region has users at home and abroad. One region: no claim, the root URL."""
    if len(regions) < 2:
        return [(None, None)] * count
    placements = []
    for n in range(count):
        home = regions[n % len(regions)]
        abroad = (n // len(regions)) % 2 == 1
        placements.append((home, regions[(regions.index(home) + 1) % len(regions)] if abroad else home))
    return placements


def gateway_urls(base_url: str, regions: list[str], first: str | None) -> list[str]:
    """Every region's entry point (`/regions/<region>`), `first` first, then the rest in order."""
    if first is None:
        return [base_url]
    ordered = [first] + [region for region in regions if region != first]
    return [f"{base_url}/regions/{region}" for region in ordered]


class Traffic:
    def __init__(self, url: str, secret: str, run_id: str, users: int, shard_count: int,
                 rate_per_s: float, seed: int, regions: list[str] | None = None):
        self.url = url
        self.secret = secret
        self.timeline = Timeline()
        ids = balanced_user_ids(run_id, users, shard_count)
        regions = list(regions or [])
        self.users = [ChaosUser(u, gateway_urls(url, regions, first), secret, self.timeline, rate_per_s, seed + n,
                                home, first)
                      for n, (u, (home, first)) in enumerate(zip(ids, user_placements(len(ids), regions), strict=True))]
        self.plan = plan_conversations(ids, seed)
        self.conversations: dict[str, list[str]] = {}  # conversation id -> members

    async def setup(self) -> None:
        """Create the conversations over HTTP, then connect every user."""
        by_id = {user.user_id: user for user in self.users}
        for members in self.plan:
            creator = by_id[members[0]]
            async with HttpApi(creator.url, creator.token) as api:
                conversation = await api.create_conversation(members[1:], title=f"chaos {len(members)}")
            self.conversations[conversation.conversation_id] = sorted(conversation.members)
            for user_id in members:
                by_id[user_id].conversations.append(conversation.conversation_id)
        await asyncio.gather(*(user.start() for user in self.users))

    async def stop_sending(self, timeout_s: float) -> bool:
        """Let every user finish the send in hand (answered `sent` in the end); True if all did."""
        try:
            await asyncio.wait_for(asyncio.gather(*(user.stop_sending() for user in self.users)), timeout_s)
            return True
        except TimeoutError:
            return False

    async def catch_up(self, heads: dict[str, int], timeout_s: float) -> bool:
        """Wait until every client has received events up to its mailbox head; True if all did."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(user.recorder.highest_cursor >= heads.get(user.user_id, 0) for user in self.users):
                return True
            await asyncio.sleep(0.2)
        return False

    def behind(self, heads: dict[str, int]) -> dict[str, tuple[int, int]]:
        return {u.user_id: (u.recorder.highest_cursor, heads.get(u.user_id, 0)) for u in self.users
                if u.recorder.highest_cursor < heads.get(u.user_id, 0)}

    async def close(self) -> None:
        await asyncio.gather(*(user.close() for user in self.users), return_exceptions=True)

    def logs(self) -> list[ClientLog]:
        return [user.recorder.log for user in self.users]

    def layout(self) -> dict:
        """Where the users live and connect: users per home region, how many connect first to
        another region's gateway, and how many conversations have members homed in several regions."""
        homes = self.homes()
        return {
            "homes": dict(collections.Counter(region or "default" for region in homes.values())),
            "on_foreign_gateway": sum(1 for user in self.users if user.gateway != user.region),
            "cross_region_conversations": sum(1 for members in self.conversations.values()
                                              if len({homes.get(member) for member in members}) > 1),
        }

    def homes(self) -> dict[str, str | None]:
        """Each user's home region (None: no claim, the default region)."""
        return {user.user_id: user.region for user in self.users}

    def failures(self) -> list[str]:
        return [f"{user.user_id}: {failure}" for user in self.users for failure in user.failures]

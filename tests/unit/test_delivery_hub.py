"""The gateway's delivery hub (gateway/delivery.py) re-attaching the sockets of a restarted shard:
one attach_many call with every session's cursor, retried while the shard is gone, and one attach
per session if the batch fails otherwise. Fake shards and sockets; real Sessions and Ring."""

from __future__ import annotations

import asyncio

from ray.exceptions import ActorUnavailableError
from recording_socket import RecordingSocket

from switchboard.actors.mailbox import AttachResult
from switchboard.actors.ring import Ring
from switchboard.auth import Identity
from switchboard.gateway.delivery import DeliveryHub
from switchboard.gateway.session import Session
from switchboard.gateway.shards import ShardDirectory
from switchboard.actors.router import Placement
from switchboard.gateway.wire_errors import CLOSE_GOING_AWAY
from switchboard.settings import Settings
from switchboard.storage.models import MESSAGE, MailboxEvent

SHARDS = 2
HEAD = 3


class Remote:
    """An actor method as the hub calls it: `.remote(...)` returns something to await."""

    def __init__(self, function):
        self.function = function

    def remote(self, *args):
        result = self.function(*args)
        return asyncio.ensure_future(result) if asyncio.iscoroutine(result) else result


class FakeShard:
    """Answers attach and attach_many at HEAD, replaying `missed[user]` events after the cursor;
    `failures` are raised by the next attach_many calls, in order."""

    def __init__(self):
        self.attach_calls: list[tuple[str, int | None]] = []
        self.attach_many_calls: list[list[tuple[str, int | None]]] = []
        self.failures: list[Exception] = []
        self.missed: dict[str, list[int]] = {}
        self.attach = Remote(self._attach)
        self.attach_many = Remote(self._attach_many)
        self.detach = Remote(lambda gateway_id, user_id, socket_id=None: None)

    async def _attach(self, gateway_id, user_id, since, socket_id=None, fresh=False):
        self.attach_calls.append((user_id, since))
        return self._answer(user_id, since)

    async def _attach_many(self, gateway_id, sockets):
        self.attach_many_calls.append([(user_id, since) for user_id, since, _ in sockets])
        if self.failures:
            raise self.failures.pop(0)
        return [self._answer(user_id, since) for user_id, since, _ in sockets]

    def _answer(self, user_id, since) -> AttachResult:
        cursors = [c for c in self.missed.get(user_id, []) if since is not None and c > since]
        head = max([HEAD, *cursors])
        return AttachResult(head=head, events=[event(user_id, c) for c in cursors])


def event(user_id: str, cursor: int) -> MailboxEvent:
    message = {"conversation_id": "c", "seq": cursor, "message_id": f"m{cursor}", "sender": "x",
               "client_msg_id": f"k{cursor}", "body": "hi", "ts": 1}
    return MailboxEvent(user_id, MESSAGE, "c", {"message": message}, seq=cursor, cursor=cursor)


def FakeDirectory() -> ShardDirectory:
    """The real directory of one region's SHARDS shards, on fake shards."""
    placement = Placement(region="local", namespace="test", shard_names=tuple(f"s{i}" for i in range(SHARDS)))
    directory = ShardDirectory(Settings(), [placement], get_handle=lambda name, namespace: FakeShard())
    directory.ring = directory.rings["local"]
    return directory


class Limits:
    async def take(self, user_id, kind, what=""):
        pass

    def warm(self, user_id, kind):
        pass


class Core:
    def __init__(self, hub: DeliveryHub):
        self.settings = Settings()
        self.limits = Limits()
        self.hub = hub


def users_on(ring: Ring, shard: int, count: int) -> list[str]:
    return [u for u in (f"user{i}" for i in range(200)) if ring.user_shard(u) == shard][:count]


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def open_sessions(hub: DeliveryHub, user_ids: list[str]) -> dict[str, tuple[Session, RecordingSocket]]:
    opened = {}
    for user_id in user_ids:
        socket = RecordingSocket()
        session = Session(Core(hub), Identity(user_id, "local"), socket.send_text, socket.close)
        await session.open(None)
        opened[user_id] = (session, socket)
    await settle()
    return opened


async def sessions_on_shard_0(count: int, attach_deadline_s: float = 5.0):
    """A hub with `count` open sessions, all of users on shard 0: (hub, shard 0, users, opened)."""
    directory = FakeDirectory()
    hub = DeliveryHub("gw", directory, attach_deadline_s=attach_deadline_s)
    users = users_on(directory.ring, 0, count)
    return hub, directory.handles[0], users, await open_sessions(hub, users)


async def test_a_restarted_shard_gets_every_local_socket_back_in_one_call_with_its_cursor():
    directory = FakeDirectory()
    hub = DeliveryHub("gw", directory, attach_deadline_s=5.0)
    on_0, on_1 = users_on(directory.ring, 0, 3), users_on(directory.ring, 1, 2)
    opened = await open_sessions(hub, on_0 + on_1)
    directory.handles[0].missed = {on_0[0]: [4, 5]}  # committed while the shard was down

    hub._resume_shard(0)
    await settle()

    shard_0, shard_1 = directory.handles[0], directory.handles[1]
    assert [sorted(call) for call in shard_0.attach_many_calls] == [sorted((u, HEAD) for u in on_0)]
    assert shard_1.attach_many_calls == []
    assert opened[on_0[0]][1].cursors() == [4, 5]  # the replay reached the socket
    assert all(opened[u][1].cursors() == [] for u in on_0[1:] + on_1)
    await hub.stop()


async def test_the_batch_is_retried_while_the_shard_is_gone():
    hub, shard, users, opened = await sessions_on_shard_0(2)
    shard.failures = [ActorUnavailableError("restarting", None)]
    shard.missed = {users[1]: [4]}

    hub._resume_shard(0)
    await asyncio.sleep(0.5)  # past the retry pause

    assert len(shard.attach_many_calls) == 2
    assert opened[users[1]][1].cursors() == [4]
    assert all(socket.closed_with is None for _, socket in opened.values())
    await hub.stop()


async def test_a_batch_that_fails_otherwise_falls_back_to_one_attach_per_session():
    hub, shard, users, opened = await sessions_on_shard_0(3)
    opened_attaches = len(shard.attach_calls)
    shard.failures = [RuntimeError("a replay query failed")]
    shard.missed = {users[2]: [4, 5, 6]}

    hub._resume_shard(0)
    await settle()

    assert sorted(shard.attach_calls[opened_attaches:]) == sorted((u, HEAD) for u in users)
    assert opened[users[2]][1].cursors() == [4, 5, 6]
    assert all(socket.closed_with is None for _, socket in opened.values())
    await hub.stop()


async def test_sessions_are_closed_going_away_when_the_shard_stays_gone_past_the_deadline():
    hub, shard, _, opened = await sessions_on_shard_0(2, attach_deadline_s=0.0)
    shard.failures = [ActorUnavailableError("gone", None)]

    hub._resume_shard(0)
    await asyncio.sleep(0.1)

    assert [session.closed for session, _ in opened.values()] == [True, True]
    assert all(socket.closed_with is None or socket.closed_with[0] == CLOSE_GOING_AWAY
               for _, socket in opened.values())
    for session, _ in opened.values():
        session.shutdown()
    await hub.stop()

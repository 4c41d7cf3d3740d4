"""Actors die, the platform goes on (guarantees 1-4): mailbox shards and the region router are killed
with ray.kill(..., no_restart=False) and Ray restarts them; the Serve replica is killed (Serve replaces
it) or rolled over by a new deployment. Nothing committed is lost, `seq` stays gap-free, connected
clients get every event once, in cursor order, or resume with `since`."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx
import pytest
import ray
from helpers import ACTOR_RESTART_TIMEOUT_S, WsClient, platform_actor, restarted_stats, unique_id
from switchboard.actors import registry
from switchboard.actors.ring import Ring

pytestmark = pytest.mark.integration

REGION = "local"
# A client retries a send refused `overloaded` (a shard restarting) with the same client_msg_id.
SEND_RETRY_TIMEOUT_S = 45.0
CLOSE_GOING_AWAY = 1001


def actor(sb, name: str):
    return platform_actor(sb, name)


async def shard_started_at(sb, index: int) -> float:
    return (await actor(sb, registry.shard_name(REGION, index)).stats.remote())["started_at"]


async def wait_restarted(sb, index: int, started_before: float) -> float:
    return (await restarted_stats(sb, registry.shard_name(REGION, index), started_before))["started_at"]


async def kill_shard(sb, index: int) -> float:
    """Kill a shard the way a crash would (Ray restarts it); returns its old start time."""
    before = await shard_started_at(sb, index)
    ray.kill(actor(sb, registry.shard_name(REGION, index)), no_restart=False)
    return before


class Device:
    """A client that behaves as PROTOCOL.md asks: on 1001 it reconnects with `since` = the last
    cursor it processed. Records every event it processes, across its connections."""

    def __init__(self, user):
        self.user = user
        self.ws: WsClient | None = None
        self.processed: list[dict] = []
        self.reconnects = 0
        self.resyncs = 0

    @property
    def last_cursor(self) -> int:
        return self.processed[-1]["cursor"] if self.processed else self.start_cursor

    async def connect(self) -> None:
        self.ws = await self.user.ws()
        self.start_cursor = self.ws.ready["cursor"]

    async def _reconnect(self) -> None:
        self.reconnects += 1
        self.ws = await self.user.ws(since=self.last_cursor, wait_ready=False)
        ready = await self.ws.next_of_type("ready", timeout=30)
        self.resyncs += len(self.ws.pending(lambda f: f["type"] == "resync_required"))
        assert ready["cursor"] >= self.last_cursor

    async def take_messages(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        taken = 0
        while taken < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{self.user.user_id}: {taken}/{count} messages after {timeout}s"
            try:
                frame = await self.ws.next(lambda f: "cursor" in f and f["type"] not in ("ready",),
                                           min(remaining, 5.0))
            except AssertionError:
                if self.ws.closed:
                    assert self.ws.close_code == CLOSE_GOING_AWAY, (self.ws.close_code, self.ws.close_reason)
                    await self._reconnect()
                continue
            assert frame["type"] != "resync_required", frame
            self.processed.append(frame)
            if frame["type"] == "message":
                taken += 1


async def send_until_committed(device: Device, cid: str, body: str) -> dict:
    """Send over the device's socket; on `overloaded` (or a lost socket) retry with the same key."""
    key = unique_id()
    deadline = time.monotonic() + SEND_RETRY_TIMEOUT_S
    while True:
        try:
            answer = await device.ws.send_and_wait(cid, body, key, timeout=15)
        except Exception as error:
            answer = {"type": "lost", "error": repr(error)}
        if answer["type"] == "sent":
            return answer["message"]
        assert answer.get("code", "overloaded") == "overloaded", answer
        assert time.monotonic() < deadline, f"send {key} never committed: {answer}"
        if device.ws.closed:
            await device._reconnect()
        await asyncio.sleep(0.2)


async def test_killed_shards_restart_and_lose_nothing(sb, new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    ring = Ring(sb.settings.shards_per_region)
    sequencer = ring.conversation_shard(cid)
    # First the conversation's sequencer, then the other shard: between them every role is hit
    # (the sequencer, alice's and bob's mailboxes, the delivery streams to the gateway).
    victims = [sequencer, 1 - sequencer]
    sender, receiver = Device(alice), Device(bob)
    await sender.connect()
    await receiver.connect()

    committed: list[dict] = []
    per_round = 3
    for round_index in range(len(victims) + 1):
        for i in range(per_round):
            committed.append(await send_until_committed(sender, cid, f"round {round_index} msg {i}"))
        if round_index < len(victims):
            started_before = await kill_shard(sb, victims[round_index])
            await wait_restarted(sb, victims[round_index], started_before)

    total = per_round * (len(victims) + 1)
    # seq continues gap-free across the restarts: exactly 1..n, each committed message once.
    assert [m["seq"] for m in committed] == list(range(1, total + 1))
    history = await bob.api.history_ok(cid, limit=200)
    assert history == committed
    assert len({m["message_id"] for m in history}) == total

    # Both users' devices got every message exactly once, in seq order, cursors gap-free.
    for device in (receiver, sender):
        await device.take_messages(total, timeout=60)
        messages = [f["message"] for f in device.processed if f["type"] == "message"]
        assert messages == committed, device.user.user_id
        cursors = [f["cursor"] for f in device.processed]
        assert cursors == list(range(device.start_cursor + 1, device.start_cursor + total + 1))
        assert device.resyncs == 0
        assert await device.ws.quiet(lambda f: f["type"] == "message", seconds=0.3) == []


async def test_shard_killed_during_a_burst(sb, new_user):
    """Sends in flight when the sequencer dies: each gets one answer; `overloaded` ones retried with
    the same client_msg_id commit once; the log stays gap-free and every member sees it once."""
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    sequencer = Ring(sb.settings.shards_per_region).conversation_shard(cid)
    sender, receiver = Device(alice), Device(bob)
    await sender.connect()
    await receiver.connect()

    keys = [unique_id() for _ in range(20)]
    started_before = await shard_started_at(sb, sequencer)
    shard = actor(sb, registry.shard_name(REGION, sequencer))
    for i, key in enumerate(keys[:10]):
        await sender.ws.send(cid, f"burst {i}", key)
    ray.kill(shard, no_restart=False)  # while the first ten are being committed
    for i, key in enumerate(keys[10:], start=10):
        await sender.ws.send(cid, f"burst {i}", key)

    answers = {}
    for key in keys:
        try:
            answers[key] = await sender.ws.answer_for(key, timeout=20)
        except AssertionError:
            answers[key] = None  # the socket went away (1001) before answering
    for key, answer in answers.items():
        if answer is not None:
            assert answer["type"] == "sent" or answer["code"] == "overloaded", answer
    await wait_restarted(sb, sequencer, started_before)
    if sender.ws.closed:
        assert sender.ws.close_code == CLOSE_GOING_AWAY
        await sender._reconnect()
    for i, key in enumerate(keys):
        if answers[key] is None or answers[key]["type"] != "sent":
            deadline = time.monotonic() + SEND_RETRY_TIMEOUT_S
            while True:
                answer = await sender.ws.send_and_wait(cid, f"burst {i}", key, timeout=15)
                if answer["type"] == "sent":
                    answers[key] = answer
                    break
                assert answer["code"] == "overloaded" and time.monotonic() < deadline, answer
                await asyncio.sleep(0.2)

    history = await bob.api.history_ok(cid, limit=200)
    assert [m["seq"] for m in history] == list(range(1, len(keys) + 1))
    assert sorted(m["client_msg_id"] for m in history) == sorted(keys)
    by_key = {m["client_msg_id"]: m for m in history}
    for key in keys:
        assert answers[key]["message"] == by_key[key]

    await receiver.take_messages(len(keys), timeout=60)
    assert [f["message"] for f in receiver.processed if f["type"] == "message"] == history
    cursors = [f["cursor"] for f in receiver.processed]
    assert cursors == list(range(receiver.start_cursor + 1, receiver.start_cursor + len(keys) + 1))
    assert await receiver.ws.quiet(lambda f: f["type"] == "message", seconds=0.3) == []


async def test_killed_router_comes_back_and_serving_goes_on(sb, new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    b = await bob.ws()
    router_name = registry.router_name(REGION)
    ray.kill(actor(sb, router_name), no_restart=False)

    # The router is off the data path: sends, deliveries and new sockets go on meanwhile.
    first = await alice.api.post_ok(cid, "while the router restarts")
    assert first["seq"] == 1
    assert (await b.next_of_type("message"))["message"] == first
    a = await alice.ws()
    answer = await a.send_and_wait(cid, "over the socket too")
    assert answer["type"] == "sent" and answer["message"]["seq"] == 2
    assert (await b.next_of_type("message"))["message"] == answer["message"]

    # And it comes back, with the same placement.
    deadline = time.monotonic() + ACTOR_RESTART_TIMEOUT_S
    while True:
        try:
            router = actor(sb, router_name)
            placement = await asyncio.wait_for(router.placement.remote(), 10)
            ready = await asyncio.wait_for(router.ready.remote(), 10)
            break
        except Exception as error:
            assert time.monotonic() < deadline, f"router not back: {error!r}"
            await asyncio.sleep(0.2)
    assert ready is True
    assert placement.region == REGION
    assert placement.namespace == sb.settings.namespace
    assert placement.shard_names == tuple(registry.shard_name(REGION, i) for i in range(sb.settings.shards_per_region))
    stats = await router.stats.remote()
    assert [s["index"] for s in stats] == list(range(sb.settings.shards_per_region))

    third = await alice.api.post_ok(cid, "after the router is back")
    assert third["seq"] == 3
    assert [m["seq"] for m in await bob.api.history_ok(cid)] == [1, 2, 3]


# ---- the Serve replica --------------------------------------------------------------------------

SERVE_NAMESPACE = "serve"
GATEWAY_REPLICA_PREFIX = "SERVE_REPLICA::switchboard#Gateway#"


def gateway_replicas() -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == SERVE_NAMESPACE and a["name"].startswith(GATEWAY_REPLICA_PREFIX))


async def wait_new_gateway(sb, old: list[str]) -> None:
    """Serve replaced the replica and the platform answers health again."""
    deadline = time.monotonic() + ACTOR_RESTART_TIMEOUT_S
    async with httpx.AsyncClient(base_url=sb.http_url, timeout=5) as http:
        while True:
            current = gateway_replicas()
            if current and not set(current) & set(old):
                try:
                    if (await http.get("/v1/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            assert time.monotonic() < deadline, f"no healthy new gateway replica: {current}"
            await asyncio.sleep(0.3)


async def online_users(sb) -> int:
    router = actor(sb, registry.router_name(REGION))
    return sum(s["online_users"] for s in await router.stats.remote())


async def pair_with_one_message(new_user, text: str):
    """alice and bob in a conversation; bob's device online and holding alice's first message."""
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    receiver = Device(bob)
    await receiver.connect()
    before = await alice.api.post_ok(cid, text)
    await receiver.take_messages(1, timeout=10)
    return alice, bob, cid, receiver, before


async def test_killed_gateway_replica_is_replaced_and_clients_resume(sb, new_user):
    alice, bob, cid, receiver, before = await pair_with_one_message(new_user, "before the replica dies")
    last = receiver.last_cursor

    old = gateway_replicas()
    assert len(old) == 1, old
    ray.kill(ray.get_actor(old[0], namespace=SERVE_NAMESPACE), no_restart=True)
    await receiver.ws.wait_closed(timeout=30)  # its sockets go with it
    await wait_new_gateway(sb, old)

    after = await alice.api.post_ok(cid, "after the replica was replaced")
    assert after["seq"] == 2
    back = await bob.ws(since=last)
    assert back.replayed == [{"type": "message", "cursor": last + 1, "message": after}]
    assert back.ready["cursor"] == last + 1
    assert await bob.api.history_ok(cid) == [before, after]
    live = await alice.ws()
    answer = await live.send_and_wait(cid, "live again")
    assert answer["type"] == "sent" and answer["message"]["seq"] == 3
    assert (await back.next_of_type("message"))["message"] == answer["message"]



async def test_dead_gateway_replica_sockets_are_forgotten(sb, new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    a = await alice.ws()
    assert await online_users(sb) >= 1
    old = gateway_replicas()
    ray.kill(ray.get_actor(old[0], namespace=SERVE_NAMESPACE), no_restart=True)
    await a.wait_closed(timeout=30)
    await wait_new_gateway(sb, old)
    await bob.api.post_ok(cid, "an event for the socket that is gone")
    # No socket is open anywhere now: no mailbox should stay online.
    deadline = time.monotonic() + 10
    while (online := await online_users(sb)) != 0:
        assert time.monotonic() < deadline, f"{online} mailboxes still online with no socket open"
        await asyncio.sleep(0.2)


# ---- a rolling update (drain) -------------------------------------------------------------------

_rollouts = itertools.count(1)


async def roll_out_new_gateway(sb) -> None:
    """Deploy a new version of the gateway (Serve replaces the replica gracefully, as on a code
    update or a downscale). The changed field, retention_events, is read by no gateway code; it
    alternates so each call is a new version, and after an even number of calls it is back."""
    from switchboard.gateway.app import deploy

    retention_events = sb.settings.retention_events + next(_rollouts) % 2
    await asyncio.to_thread(deploy, sb.settings.replace(retention_events=retention_events), sb.database_url)


async def test_rolling_update_keeps_every_message(sb, new_user):
    alice, bob, cid, receiver, before = await pair_with_one_message(new_user, "before the rollout")
    last = receiver.last_cursor

    old = gateway_replicas()
    rollout = asyncio.create_task(roll_out_new_gateway(sb))
    await receiver.ws.wait_closed(timeout=60)  # the old replica's sockets end, one way or another
    await rollout
    await wait_new_gateway(sb, old)

    after = await alice.api.post_ok(cid, "after the rollout")
    back = await bob.ws(since=last)
    assert back.replayed == [{"type": "message", "cursor": last + 1, "message": after}]
    assert await bob.api.history_ok(cid) == [before, after]


async def test_rolling_update_closes_sockets_1001_and_clients_resume(sb, new_user):
    """PROTOCOL.md: 1001 means drain; reconnect with `since`. The replica being replaced closes its
    sockets with 1001 as its drain begins (not 1006 when Serve finally kills it), and a client that
    resumes from its last cursor gets every message sent meanwhile, once, in order."""
    alice, bob, cid, receiver, before = await pair_with_one_message(new_user, "before the rollout")
    old = gateway_replicas()
    rollout = asyncio.create_task(roll_out_new_gateway(sb))
    sent_meanwhile = []
    try:
        while not receiver.ws.closed:
            try:
                sent_meanwhile.append(await alice.api.post_ok(cid, f"during the rollout {len(sent_meanwhile)}"))
            except (httpx.TransportError, AssertionError):
                pass  # the HTTP side may refuse while replicas change; only committed posts count
            await asyncio.sleep(0.05)
        code = await receiver.ws.wait_closed(timeout=60)
    finally:
        await rollout
        await wait_new_gateway(sb, old)
    assert code == CLOSE_GOING_AWAY, (code, receiver.ws.close_reason)

    after = await alice.api.post_ok(cid, "after the rollout")
    last_processed = receiver.ws.events()[-1]["cursor"]
    back = await bob.ws(since=last_processed)
    seen = receiver.ws.messages(cid)[1:] + [event["message"] for event in back.replayed]
    assert seen == sent_meanwhile + [after]
    cursors = [event["cursor"] for event in receiver.ws.events() + back.replayed]
    assert cursors == list(range(cursors[0], back.ready["cursor"] + 1))
    assert await bob.api.history_ok(cid, limit=200) == [before, *sent_meanwhile, after]

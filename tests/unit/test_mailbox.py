"""Virtual mailboxes (actors/mailbox.py) on the in-memory store: attach and replay, strict cursor
order on the live path, gap repair from storage, and the gateway outboxes."""

from __future__ import annotations

import asyncio
import json

import pytest

from switchboard.actors.mailbox import MailboxHost
from switchboard.errors import TooManySockets
from switchboard.storage.memory_store import MemoryStore
from switchboard.storage.models import RECEIPT, MailboxEvent, WriteBatch
from switchboard.storage.store import StorageUnavailable

CID = "c_room"
FAR_FUTURE_MS = 10**15


async def run_now(function, *args):
    return function(*args)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def host(store) -> MailboxHost:
    return MailboxHost(store, run_blocking=run_now, gap_repair_delay_s=0.01)


def commit(store: MemoryStore, user_id: str, count: int) -> list[MailboxEvent]:
    """`count` committed events for user_id, with their cursors (receipts: no message rows needed)."""
    events = [
        MailboxEvent(user_id, RECEIPT, CID, {"conversation_id": CID, "user_id": "bob", "seq": i})
        for i in range(count)
    ]
    store.apply(WriteBatch(events=events))
    return events


def cursors(host: MailboxHost, gateway_id: str = "gw1", user_id: str | None = None) -> list[int]:
    items = host.outbox(gateway_id).items
    return [cursor for user, cursor, _ in items if user_id in (None, user)]


async def eventually(predicate, timeout_s: float = 1.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# ---- attach ------------------------------------------------------------------------------------

async def test_attach_without_since_returns_the_head_and_no_events(host, store):
    commit(store, "alice", 3)
    result = await host.attach("gw1", "alice", since=None)
    assert (result.head, result.events, result.resync_required) == (3, [], False)
    assert host.online_users() == 1


async def test_attach_of_a_new_user_starts_at_zero(host):
    result = await host.attach("gw1", "newcomer", since=0)
    assert (result.head, result.events, result.resync_required) == (0, [], False)


async def test_attach_with_since_replays_exactly_the_later_events_in_cursor_order(host, store):
    committed = commit(store, "alice", 5)
    commit(store, "bob", 2)
    result = await host.attach("gw1", "alice", since=2)
    assert (result.head, result.resync_required) == (5, False)
    assert [e.cursor for e in result.events] == [3, 4, 5]
    assert [e.to_frame() for e in result.events] == [e.to_frame() for e in committed[2:]]


@pytest.mark.parametrize("since, expected", [(0, [1, 2, 3]), (3, [])])
async def test_attach_with_since_at_the_edges(host, store, since, expected):
    commit(store, "alice", 3)
    result = await host.attach("gw1", "alice", since=since)
    assert [e.cursor for e in result.events] == expected
    assert not result.resync_required


async def test_a_resume_is_answered_one_page_at_a_time(host, store, monkeypatch):
    monkeypatch.setattr("switchboard.actors.mailbox.REPLAY_PAGE", 2)
    commit(store, "alice", 5)
    result = await host.attach("gw1", "alice", since=0)
    assert ([e.cursor for e in result.events], result.more, result.head) == ([1, 2], True, 5)
    pages = []
    while result.more:
        result = await host.replay("alice", result.events[-1].cursor)
        pages.append([e.cursor for e in result.events])
    assert pages == [[3, 4], [5]]
    assert (await host.replay("alice", 5)).events == []


async def test_a_replay_reads_up_to_what_is_committed_and_past_a_pruned_cursor_resyncs(host, store):
    commit(store, "alice", 3)
    await host.attach("gw1", "alice", since=None)
    commit(store, "alice", 2)  # committed after the attach: a replay reads them too
    assert [e.cursor for e in (await host.replay("alice", 3)).events] == [4, 5]
    store.prune_mailboxes(keep_days=0, keep_events=1, now_ms=FAR_FUTURE_MS)
    assert (await host.replay("alice", 1)).resync_required


async def test_attach_many_shares_one_budget_of_events(host, store, monkeypatch):
    monkeypatch.setattr("switchboard.actors.mailbox.ATTACH_MANY_EVENTS_MAX", 3)
    for user in ("alice", "bob", "carol"):
        commit(store, user, 2)
    results = await host.attach_many("gw1", [("alice", 0, 1), ("bob", 0, 2), ("carol", 0, 3)])
    assert [([e.cursor for e in r.events], r.more) for r in results] == [([1, 2], False), ([1], True), ([], True)]


async def test_a_socket_over_the_users_cap_is_refused_but_a_known_one_reattaches(host):
    await host.attach("gw1", "alice", since=None, socket_id=1, max_sockets=2)
    await host.attach("gw2", "alice", since=None, socket_id=1, max_sockets=2)
    with pytest.raises(TooManySockets):
        await host.attach("gw1", "alice", since=None, socket_id=2, max_sockets=2)
    await host.attach("gw1", "alice", since=None, socket_id=1, max_sockets=2)  # already counted
    host.detach("gw2", "alice", socket_id=1)
    await host.attach("gw1", "alice", since=None, socket_id=2, max_sockets=2)
    assert host.online_users() == 1


async def test_since_below_what_was_pruned_requires_a_resync(host, store):
    commit(store, "alice", 5)
    assert store.prune_mailboxes(keep_days=0, keep_events=2, now_ms=FAR_FUTURE_MS) == 3  # cursors 1-3 gone
    stale = await host.attach("gw1", "alice", since=2)
    assert (stale.head, stale.events, stale.resync_required) == (5, [], True)
    fresh = await host.attach("gw1", "alice", since=3)
    assert ([e.cursor for e in fresh.events], fresh.resync_required) == ([4, 5], False)


async def test_since_above_the_head_requires_a_resync(host, store):
    commit(store, "alice", 2)
    result = await host.attach("gw1", "alice", since=3)
    assert (result.head, result.events, result.resync_required) == (2, [], True)


async def test_a_failed_attach_leaves_no_mailbox(host, store):
    store.fail_with = StorageUnavailable("database went away")
    with pytest.raises(StorageUnavailable):
        await host.attach("gw1", "alice", since=None)
    assert host.online_users() == 0


# ---- live delivery -----------------------------------------------------------------------------

async def test_live_events_reach_the_gateway_outbox_in_cursor_order(host, store):
    await host.attach("gw1", "alice", since=None)
    events = commit(store, "alice", 3)
    host.deliver(events)
    assert decoded(host.outbox("gw1").items) == [("alice", e.cursor, e.to_frame()) for e in events]
    assert host.outbox("gw1").ready.is_set()


async def test_an_event_ahead_of_a_missing_one_waits_for_it(host, store):
    commit(store, "alice", 1)
    await host.attach("gw1", "alice", since=None)
    second, third = commit(store, "alice", 2)
    host.deliver([third])
    assert cursors(host) == []
    host.deliver([second])
    assert cursors(host) == [2, 3]


async def test_a_gap_no_delivery_fills_is_repaired_from_the_store(host, store):
    commit(store, "alice", 1)
    await host.attach("gw1", "alice", since=None)
    _, _, fourth = commit(store, "alice", 3)
    host.deliver([fourth])  # 2 and 3 were committed, but their deliveries were lost
    assert cursors(host) == []
    await eventually(lambda: cursors(host) == [2, 3, 4])


async def test_gap_repair_retries_while_the_store_is_down(host, store):
    await host.attach("gw1", "alice", since=None)
    _, second = commit(store, "alice", 2)
    store.fail_with = StorageUnavailable("database went away")
    host.deliver([second])
    await asyncio.sleep(0.05)  # a few repair rounds fail
    assert cursors(host) == []
    store.fail_with = None
    await eventually(lambda: cursors(host) == [1, 2])


async def test_duplicate_deliveries_are_dropped(host, store):
    await host.attach("gw1", "alice", since=None)
    first, second = commit(store, "alice", 2)
    host.deliver([first, second])
    host.deliver([second, first])
    host.deliver([first])
    assert cursors(host) == [1, 2]


async def test_events_already_replayed_at_attach_are_not_pushed_again(host, store):
    events = commit(store, "alice", 2)
    await host.attach("gw1", "alice", since=0)
    host.deliver(events)
    assert cursors(host) == []


async def test_offline_users_events_are_ignored(host, store):
    await host.attach("gw1", "alice", since=None)
    host.deliver(commit(store, "bob", 2))
    assert cursors(host) == []
    assert host.online_users() == 1


async def test_deliveries_during_the_head_load_are_ordered_after_it(store):
    """A delivery may land while the mailbox reads its head: those the head covers are dropped,
    the later ones are pushed once the head is known."""
    head_read, release = asyncio.Event(), asyncio.Event()

    async def slow_answer(function, *args):
        value = function(*args)
        head_read.set()
        await release.wait()
        return value

    host = MailboxHost(store, run_blocking=slow_answer, gap_repair_delay_s=0.01)
    first, second = commit(store, "alice", 2)
    attach = asyncio.create_task(host.attach("gw1", "alice", since=None))
    await head_read.wait()  # the head read saw cursor 2
    (third,) = commit(store, "alice", 1)
    host.deliver([third, second, first])
    assert cursors(host) == []  # nothing can be ordered before the head is known
    release.set()
    result = await attach
    assert cursors(host) == [3]
    assert result.head == 3  # the head after the pushed event: the session will not expect it twice


async def test_every_gateway_of_the_user_gets_the_event(host, store):
    await host.attach("gw1", "alice", since=None)
    await host.attach("gw2", "alice", since=None)
    host.deliver(commit(store, "alice", 1))
    assert (cursors(host, "gw1"), cursors(host, "gw2")) == ([1], [1])


# ---- detach, ephemeral frames, outboxes ------------------------------------------------------

async def test_the_mailbox_goes_when_the_last_socket_detaches(host, store):
    await host.attach("gw1", "alice", since=None)
    await host.attach("gw1", "alice", since=None)  # a second socket on the same gateway
    host.detach("gw1", "alice")
    host.deliver(commit(store, "alice", 1))
    assert (host.online_users(), cursors(host)) == (1, [1])
    host.detach("gw1", "alice")
    host.deliver(commit(store, "alice", 1))
    assert (host.online_users(), cursors(host)) == (0, [1])


async def test_detach_of_an_unknown_user_is_harmless(host):
    host.detach("gw1", "nobody")
    assert host.online_users() == 0


async def test_dropping_a_gateway_detaches_all_its_sockets(host):
    await host.attach("gw1", "alice", since=None)
    await host.attach("gw1", "alice", since=None)
    await host.attach("gw2", "bob", since=None)
    host.drop_gateway("gw1")
    assert host.online_users() == 1
    assert host.current_outbox("gw1") is None


async def test_ephemeral_frames_reach_only_live_sockets(host):
    await host.attach("gw1", "alice", since=None)
    await host.attach("gw2", "alice", since=None)
    await host.attach("gw2", "carol", since=None)
    frame = {"type": "typing", "conversation_id": CID, "user_id": "bob"}
    host.deliver_ephemeral(["alice", "dave"], frame)
    assert decoded(host.outbox("gw1").items) == [("alice", None, frame)]
    assert decoded(host.outbox("gw2").items) == [("alice", None, frame)]


async def test_a_new_stream_takes_over_the_queued_items(host, store):
    await host.attach("gw1", "alice", since=None)
    old = host.outbox("gw1")
    host.deliver(commit(store, "alice", 2))
    new = host.open_outbox("gw1")
    assert new is not old and host.current_outbox("gw1") is new
    assert [cursor for _, cursor, _ in new.items] == [1, 2]
    assert new.ready.is_set()
    assert old.items == [] and old.ready.is_set()  # the old stream wakes, finds nothing, and ends
    assert await old.take() == []
    host.deliver(commit(store, "alice", 1))
    assert [cursor for _, cursor, _ in await new.take()] == [1, 2, 3]


async def test_acks_keep_the_highest_cursor_until_taken(host):
    host.ack("alice", 5)
    host.ack("alice", 3)
    host.ack("bob", 1)
    assert host.take_acks() == {"alice": 5, "bob": 1}
    assert host.take_acks() == {}


# ---- gateway leases ----------------------------------------------------------------------------

async def test_a_gateway_silent_past_its_lease_loses_its_sockets(host):
    await host.attach("gw-dead", "alice", since=None)
    await host.attach("gw-live", "bob", since=None)
    host.touch("gw-dead", now=100.0)
    host.touch("gw-live", now=100.0)
    assert host.expire_gateways(now=105.0, lease_s=6.0) == []
    host.touch("gw-live", now=104.0)
    assert host.expire_gateways(now=107.0, lease_s=6.0) == ["gw-dead"]
    assert host.online_users() == 1
    assert host.current_outbox("gw-dead") is None
    assert host.current_outbox("gw-live") is not None


def decoded(items) -> list[tuple[str, int | None, dict]]:
    """Outbox deliveries with their rendered text parsed back, to compare with frames."""
    return [(user, cursor, json.loads(text)) for user, cursor, text in items]

"""What one connection may hold (gateway/session.py, catch_up.py, outbox.py) against the fake core
of test_session.py: replay in pages, a bounded attach buffer, a frame budget for every frame
type, a bound on reads and typing in flight, coalesced typing, the token's expiry."""

from __future__ import annotations

import asyncio
import json
import time

from recording_socket import RecordingSocket
from test_session import CID, FakeCore, FakeHub, attached, event, frame, live, settle

from switchboard.actors.mailbox import AttachResult
from switchboard.auth import Identity
from switchboard.gateway.catch_up import ATTACH_BUFFER_MAX
from switchboard.gateway.session import Session
from switchboard.gateway.wire_errors import CLOSE_POLICY, CLOSE_UNAUTHORIZED


def page(head: int, *cursors: int, more: bool = False) -> AttachResult:
    return AttachResult(head=head, events=[event(c) for c in cursors], more=more)


async def opened(hub: FakeHub, since=None, identity=None, **core_options) -> tuple[Session, RecordingSocket]:
    client = RecordingSocket()
    session = Session(FakeCore(hub, **core_options), identity or Identity("alice", "local"), client.send_text, client.close)
    await session.open(since)
    await settle()
    return session, client


async def test_a_resume_is_replayed_page_by_page_before_ready():
    hub = FakeHub(page(6, 1, 2, more=True), page(6, 3, 4, more=True), page(6, 5, 6))
    session, client = await opened(hub, since=0)
    assert hub.calls == [("attach", "alice", 0), ("replay", "alice", 2), ("replay", "alice", 4)]
    assert client.types()[-1] == "ready" and client.cursors() == [1, 2, 3, 4, 5, 6]
    assert client.frames[-1]["cursor"] == 6
    session.shutdown()


async def test_a_page_that_skips_cursors_means_they_were_pruned_meanwhile_so_resync():
    hub = FakeHub(page(9, 1, 2, more=True), page(9, 7, 8, 9))
    session, client = await opened(hub, since=0)
    assert client.frames[2] == {"type": "resync_required", "cursor": 9}
    assert client.frames[-1] == {"type": "ready", "user_id": "alice", "cursor": 9}
    session.shutdown()


async def test_an_overflowing_attach_buffer_is_dropped_and_caught_up_from_storage():
    gate_result = attached(0)
    hub = FakeHub(gate_result, page(ATTACH_BUFFER_MAX + 10, *range(1, ATTACH_BUFFER_MAX + 11)))
    gate = hub.hold(0)
    client = RecordingSocket()
    session = Session(FakeCore(hub), Identity("alice", "local"), client.send_text, client.close)
    opening = asyncio.create_task(session.open(None))
    await settle()
    for cursor in range(1, ATTACH_BUFFER_MAX + 11):  # more live events than the buffer holds
        session.push_live(*live(cursor))
    gate.set()
    await opening
    await settle()
    assert hub.calls[-1] == ("replay", "alice", 0)  # the catch-up read them from storage instead
    assert client.cursors() == list(range(1, ATTACH_BUFFER_MAX + 11))
    session.shutdown()


async def test_every_frame_type_counts_against_the_frame_budget_and_a_flood_is_closed_4008():
    session, client = await opened(FakeHub(attached(0)), frame_rate_per_s=1.0, frame_burst=5, flood_strikes=10)
    for kind in ("ping", "ack", "typing", "read", "ping", "ping"):  # the sixth is over the burst
        body = {"type": kind, "nonce": "n", "cursor": 0, "conversation_id": CID, "seq": 0}
        await session.handle_text(json.dumps(body))
    await settle()
    refusals = [f for f in client.frames if f["type"] == "error" and f["code"] == "rate_limited"]
    assert len(refusals) == 1 and refusals[0]["retry_after_ms"] > 0
    for _ in range(20):
        await session.handle_text(json.dumps({"type": "ping", "nonce": "n"}))
    await settle()
    assert client.closed_with == (CLOSE_POLICY, "flooding past the rate limit")


async def test_reads_and_typing_in_flight_are_bounded_per_connection():
    session, client = await opened(FakeHub(attached(0)), session_tasks_max=3)
    session.core.pending = asyncio.get_running_loop().create_future()  # the shard does not answer yet
    for index in range(6):
        await session.handle_text(json.dumps({"type": "typing", "conversation_id": f"c_room{index}"}))
    await settle()
    assert len(session._tasks) == 3
    assert [f["code"] for f in client.frames if f["type"] == "error"] == ["rate_limited"] * 3
    session.core.pending.set_result(None)
    await settle()
    assert not session._tasks
    session.shutdown()


async def test_typing_for_one_conversation_is_coalesced_to_one_a_second():
    session, _ = await opened(FakeHub(attached(0)))
    for _ in range(10):
        await session.handle_text(json.dumps({"type": "typing", "conversation_id": CID}))
    await settle()
    assert session.core.typed == [(CID, "alice")]
    session.shutdown()


async def test_a_socket_is_closed_4001_when_its_token_expires():
    identity = Identity("alice", "local", expires_at=time.time() + 0.2)
    session, client = await opened(FakeHub(attached(0)), identity=identity)
    assert client.closed_with is None
    await asyncio.sleep(0.4)
    await settle()
    assert client.closed_with[0] == CLOSE_UNAUTHORIZED and session.closed


async def test_a_slow_reader_is_closed_4009_and_its_queue_is_freed():
    class StuckSocket(RecordingSocket):
        async def send_text(self, text):
            await asyncio.Event().wait()  # the client never reads: every write blocks

    client = StuckSocket()
    aborted = []
    session = Session(FakeCore(FakeHub(attached(0)), socket_outbox_bytes=512 * 1024), Identity("alice", "local"),
                      client.send_text, client.close, abort=lambda: aborted.append(True))
    await session.open(None)
    for cursor in range(1, 1_000):
        session.push_live(cursor, json.dumps(frame(cursor)) + " " * 600)
    await settle()
    assert session.out.too_slow and session.out.bytes == 0
    assert client.closed_with == (4009, "too slow to read; reconnect with since")
    session.shutdown()

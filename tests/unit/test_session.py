"""One WebSocket session (gateway/session.py) against a fake core: replay then ready, the cursor
rule on live events, resume on a gap, client frames, rate limiting and flooding."""

from __future__ import annotations

import asyncio
import json

import pytest

from recording_socket import RecordingSocket

from switchboard.actors.mailbox import AttachResult
from switchboard.actors.ops import MarkRead, Outcome, SendMessage, Typing
from switchboard.auth import Identity
from switchboard.errors import Forbidden
from switchboard.gateway.rate_limit import RateLimiter
from switchboard.gateway.session import Session
from switchboard.gateway.wire_errors import CLOSE_GOING_AWAY, CLOSE_POLICY
from switchboard.settings import Settings
from switchboard.storage.models import MESSAGE, MailboxEvent

CID = "c_room"


def event(cursor: int) -> MailboxEvent:
    message = {"conversation_id": CID, "seq": cursor, "message_id": f"m_{cursor}", "sender": "bob",
               "client_msg_id": f"k{cursor}", "body": "hi", "ts": 1}
    return MailboxEvent("alice", MESSAGE, CID, {"message": message}, seq=cursor, cursor=cursor)


def frame(cursor: int) -> dict:
    return event(cursor).to_frame()


def live(cursor: int) -> tuple[int, str]:
    """A live delivery as the shard's stream carries it: (cursor, frame text)."""
    return cursor, json.dumps(frame(cursor))


class FakeHub:
    """Answers attach and replay calls from `results`, in call order; hold(n) keeps the n-th call
    (0-based) waiting until the returned event is set."""

    def __init__(self, *results: AttachResult):
        self.results = list(results)
        self.gates: dict[int, asyncio.Event] = {}
        self.calls: list[tuple[str, str, int | None]] = []  # ("attach" or "replay", user_id, since)
        self.registered: list[Session] = []
        self.unregistered: list[Session] = []
        self.acks: list[tuple[str, int]] = []

    @property
    def attach_calls(self) -> list[tuple[str, int | None]]:
        """(user_id, cursor asked from) of every attach and replay call."""
        return [(user_id, since) for _, user_id, since in self.calls]

    def new_socket_id(self) -> int:
        return 1

    def register(self, session):
        self.registered.append(session)

    def unregister(self, session):
        self.unregistered.append(session)

    def hold(self, call_index: int) -> asyncio.Event:
        gate = self.gates[call_index] = asyncio.Event()
        return gate

    async def attach(self, session, since, fresh=False):
        return await self._answer(("attach", session.user_id, since))

    async def replay(self, session, after, limit):
        return await self._answer(("replay", session.user_id, after))

    async def _answer(self, call):
        call_index = len(self.calls)
        self.calls.append(call)
        result = self.results[call_index]
        if call_index in self.gates:
            await self.gates[call_index].wait()
        if isinstance(result, Exception):
            raise result
        return result

    def ack(self, session, cursor):
        self.acks.append((session.user_id, cursor))


class FakeLimits:
    """SharedLimits' interface over one local bucket (the sharing is tested in test_rate_limit)."""

    def __init__(self, limiter: RateLimiter):
        self.limiter = limiter

    async def take(self, user_id, kind, what="over the send rate"):
        self.limiter.check(user_id, what)

    def warm(self, user_id, kind):
        pass


class FakeClock:
    now = 0.0

    def __call__(self):
        return self.now


class FakeCore:
    def __init__(self, hub: FakeHub, burst: int = 100, flood_strikes: int = 200, **settings):
        self.settings = Settings(max_body_bytes=50, send_rate_per_s=10.0, send_burst=burst,
                                 flood_strikes=flood_strikes, **settings)
        self.clock = FakeClock()
        self.limits = FakeLimits(RateLimiter(self.settings.send_rate_per_s, burst, clock=self.clock))
        self.hub = hub
        self.submitted: list = []
        self.typed: list[tuple[str, str]] = []
        self.outcome: Outcome | None = None  # what submit answers; default: echo a message
        self.pending: asyncio.Future | None = None  # set: reads and typing wait for it

    async def submit(self, operation, started=None):
        if isinstance(operation, Typing):
            if self.pending is not None:
                await self.pending
            self.typed.append((operation.conversation_id, operation.user_id))
            return Outcome(value={}) if operation.conversation_id == CID else Outcome.failed(Forbidden("not a member"))
        return await self.enqueue(operation)

    def enqueue(self, operation, started=None) -> asyncio.Future:
        self.submitted.append(operation)
        answer = asyncio.get_running_loop().create_future()
        answer.set_result(self.outcome if self.outcome is not None else
                          Outcome(value={"conversation_id": operation.conversation_id, "seq": len(self.submitted)}))
        return answer


@pytest.fixture
async def make_session():
    sessions = []

    async def make(*results: AttachResult, since: int | None = None, **core_options):
        hub = FakeHub(*results)
        client = RecordingSocket()
        session = Session(FakeCore(hub, **core_options), Identity("alice", "local"), client.send_text, client.close)
        sessions.append(session)
        await session.open(since)
        await settle()
        return session, client

    yield make
    for session in sessions:
        session.shutdown()
    await settle()


async def settle() -> None:
    """Let the session's writer task and spawned tasks run."""
    for _ in range(10):
        await asyncio.sleep(0)


def attached(head: int, *cursors: int, resync: bool = False) -> AttachResult:
    return AttachResult(head=head, events=[event(c) for c in cursors], resync_required=resync)


# ---- opening -----------------------------------------------------------------------------------

async def test_open_with_since_replays_then_says_ready(make_session):
    session, client = await make_session(attached(4, 3, 4), since=2)
    assert session.core.hub.attach_calls == [("alice", 2)]
    assert session.core.hub.registered == [session]
    assert client.frames == [frame(3), frame(4), {"type": "ready", "user_id": "alice", "cursor": 4}]


async def test_open_without_since_replays_nothing(make_session):
    _, client = await make_session(attached(7))
    assert client.frames == [{"type": "ready", "user_id": "alice", "cursor": 7}]


async def test_open_past_the_retention_says_resync_required_then_ready(make_session):
    _, client = await make_session(attached(9, resync=True), since=1)
    assert client.frames == [{"type": "resync_required", "cursor": 9},
                             {"type": "ready", "user_id": "alice", "cursor": 9}]


async def test_live_events_during_open_follow_the_replay_without_duplicates(make_session):
    hub = FakeHub(attached(3, 2, 3))
    gate = hub.hold(0)
    client = RecordingSocket()
    session = Session(FakeCore(hub), Identity("alice", "local"), client.send_text, client.close)
    opening = asyncio.create_task(session.open(1))
    await settle()
    for cursor in (3, 4, 5):  # pushed by the mailbox while the attach was in flight
        session.push_live(*live(cursor))
    gate.set()
    await opening
    await settle()
    assert client.types() == [MESSAGE, MESSAGE, "ready", MESSAGE, MESSAGE]
    assert client.cursors() == [2, 3, 4, 5]
    session.shutdown()


# ---- live events -------------------------------------------------------------------------------

async def test_live_events_are_written_once_each_in_cursor_order(make_session):
    session, client = await make_session(attached(0))
    for cursor in (1, 2, 2, 1, 3):
        session.push_live(*live(cursor))
    await settle()
    assert client.cursors() == [1, 2, 3]
    assert session.last_cursor == 3
    assert session.core.hub.attach_calls == [("alice", None)]  # duplicates are no reason to resume


async def test_a_gap_resumes_from_the_last_cursor_and_everything_comes_out_once_in_order(make_session):
    session, client = await make_session(attached(2), attached(5, 3, 4, 5))
    gate = session.core.hub.hold(1)
    session.push_live(*live(5))  # 3 and 4 never arrived
    await settle()
    assert session.core.hub.attach_calls[-1] == ("alice", 2)
    for cursor in (6, 3, 7):  # live frames keep coming while the session re-attaches
        session.push_live(*live(cursor))
    await settle()
    assert client.cursors() == []
    gate.set()
    await settle()
    assert client.cursors() == [3, 4, 5, 6, 7]
    assert len(session.core.hub.attach_calls) == 2
    session.push_live(*live(8))
    await settle()
    assert client.cursors() == [3, 4, 5, 6, 7, 8]


async def test_a_gap_seen_while_finishing_a_resume_is_resumed_again(make_session):
    session, client = await make_session(attached(2), attached(5, 3, 4, 5), attached(8, 6, 7, 8))
    gate = session.core.hub.hold(1)
    session.push_live(*live(5))  # 3 and 4 lost: resume from 2
    await settle()
    session.push_live(*live(8))  # 6 and 7 lost too, while that resume is in flight
    gate.set()
    await settle()
    # The first resume only reaches 5; 8 shows the next gap, which needs a second resume now,
    # not whenever the next live event happens to arrive.
    assert session.core.hub.attach_calls[1:] == [("alice", 2), ("alice", 5)]
    assert client.cursors() == [3, 4, 5, 6, 7, 8]


async def test_a_resume_during_open_does_not_replay_history_before_ready(make_session):
    hub = FakeHub(attached(5), attached(5, 1, 2, 3, 4, 5))
    opening_gate = hub.hold(0)
    client = RecordingSocket()
    session = Session(FakeCore(hub), Identity("alice", "local"), client.send_text, client.close)
    opening = asyncio.create_task(session.open(None))  # the client asked for no replay
    await settle()
    assert not session.begin_reattach()  # the shard restarted meanwhile: registered again after the open
    await settle()
    opening_gate.set()
    await opening
    await settle()
    session.shutdown()
    assert client.frames[0] == {"type": "ready", "user_id": "alice", "cursor": 5}
    assert client.cursors() == []


async def test_a_resume_that_needs_a_resync_says_so_and_continues_from_the_head(make_session):
    session, client = await make_session(attached(2), attached(10, resync=True))
    session.push_live(*live(4))
    session.push_live(*live(11))
    await settle()
    assert client.frames[1:] == [{"type": "resync_required", "cursor": 10}, frame(11)]


async def test_a_failed_resume_closes_the_socket_going_away(make_session):
    session, client = await make_session(attached(2), RuntimeError("shard unavailable"))
    session.push_live(*live(4))
    await settle()
    assert client.closed_with[0] == CLOSE_GOING_AWAY
    assert session.closed


async def test_typing_frames_pass_through_without_a_cursor(make_session):
    session, client = await make_session(attached(1))
    typing = {"type": "typing", "conversation_id": CID, "user_id": "bob"}
    session.push_live(None, json.dumps(typing))
    session.push_live(*live(2))
    await settle()
    assert client.frames[1:] == [typing, frame(2)]
    assert session.last_cursor == 2


# ---- client frames -----------------------------------------------------------------------------

def send_text(key: str, body: str = "hello") -> str:
    return json.dumps({"type": "send", "conversation_id": CID, "client_msg_id": key, "body": body})


async def test_a_send_is_submitted_and_answered_sent(make_session):
    session, client = await make_session(attached(0))
    await session.handle_text(send_text("k1"))
    await settle()
    assert session.core.submitted == [SendMessage(CID, "alice", "k1", "hello")]
    assert client.frames[-1] == {"type": "sent", "client_msg_id": "k1", "message": {"conversation_id": CID, "seq": 1}}


async def test_a_refused_send_is_answered_with_an_error_frame_carrying_its_ref(make_session):
    session, client = await make_session(attached(0))
    session.core.outcome = Outcome.failed(Forbidden("not a member of this conversation"))
    await session.handle_text(send_text("k1"))
    await settle()
    assert client.frames[-1] == {"type": "error", "code": "forbidden",
                                 "message": "not a member of this conversation", "ref": "k1"}


async def test_over_the_rate_a_send_is_refused_rate_limited_with_retry_after_and_ref(make_session):
    session, client = await make_session(attached(0), burst=2)
    for key in ("k1", "k2", "k3"):
        await session.handle_text(send_text(key))
    await settle()
    assert [op.client_msg_id for op in session.core.submitted] == ["k1", "k2"]
    (refusal,) = [f for f in client.frames if f["type"] == "error"]
    assert refusal == {"type": "error", "code": "rate_limited", "message": "over the send rate; retry later",
                       "ref": "k3", "retry_after_ms": 100}
    assert not session.closed


async def test_the_bucket_refills_and_sends_are_accepted_again(make_session):
    session, client = await make_session(attached(0), burst=1)
    await session.handle_text(send_text("k1"))
    await session.handle_text(send_text("k2"))
    session.core.clock.now += 0.1
    await session.handle_text(send_text("k3"))
    await settle()
    assert [op.client_msg_id for op in session.core.submitted] == ["k1", "k3"]


async def test_flooding_past_flood_strikes_closes_with_4008(make_session):
    session, client = await make_session(attached(0), burst=1, flood_strikes=3)
    for i in range(5):
        await session.handle_text(send_text(f"k{i}"))
    await settle()
    assert [f["code"] for f in client.frames if f["type"] == "error"] == ["rate_limited"] * 3
    assert client.closed_with == (CLOSE_POLICY, "flooding past the rate limit")
    assert session.closed
    # The send accepted before the flood is answered before the close (guarantee 7) ...
    assert [f["client_msg_id"] for f in client.frames if f["type"] == "sent"] == ["k0"]
    frames_at_close = len(client.frames)
    # ... and nothing is taken or written after it.
    await session.handle_text(json.dumps({"type": "ping", "nonce": "late"}))
    await settle()
    assert len(client.frames) == frames_at_close


async def test_an_accepted_send_resets_the_strikes(make_session):
    session, client = await make_session(attached(0), burst=1, flood_strikes=2)
    await session.handle_text(send_text("first"))  # spends the only token
    for _ in range(3):  # 6 refusals in all, but never more than 2 in a row
        await session.handle_text(send_text("refused"))
        await session.handle_text(send_text("refused"))
        session.core.clock.now += 0.1  # one token: the next send is accepted
        await session.handle_text(send_text("accepted"))
    await settle()
    assert client.closed_with is None
    assert [op.client_msg_id for op in session.core.submitted] == ["first"] + ["accepted"] * 3


@pytest.mark.parametrize(
    "text, ref",
    [("{not json", None), ("[]", None), ('{"type": "dance"}', None),
     (json.dumps({"type": "send", "conversation_id": "bad", "client_msg_id": "k1", "body": "x"}), "k1")],
)
async def test_a_malformed_frame_gets_an_error_frame_and_the_session_stays_open(make_session, text, ref):
    session, client = await make_session(attached(0))
    await session.handle_text(text)
    await session.handle_text(json.dumps({"type": "ping", "nonce": "still here"}))
    await settle()
    error, pong = client.frames[-2:]
    assert (error["type"], error["code"], error["ref"]) == ("error", "invalid", ref)
    assert pong == {"type": "pong", "nonce": "still here"}
    assert not session.closed and client.closed_with is None


async def test_a_body_over_the_limit_is_too_large(make_session):
    session, client = await make_session(attached(0))
    await session.handle_text(send_text("k1", body="x" * 51))
    await settle()
    assert (client.frames[-1]["code"], client.frames[-1]["ref"]) == ("too_large", "k1")
    assert session.core.submitted == []


async def test_ping_gets_pong_with_the_same_nonce(make_session):
    session, client = await make_session(attached(0))
    await session.handle_text(json.dumps({"type": "ping", "nonce": "n-42"}))
    await settle()
    assert client.frames[-1] == {"type": "pong", "nonce": "n-42"}


async def test_ack_is_capped_at_the_last_cursor_written(make_session):
    session, client = await make_session(attached(5))
    await session.handle_text(json.dumps({"type": "ack", "cursor": 3}))
    await session.handle_text(json.dumps({"type": "ack", "cursor": 99}))
    assert session.core.hub.acks == [("alice", 3), ("alice", 5)]


async def test_read_and_typing_go_to_the_core_and_refusals_come_back(make_session):
    session, client = await make_session(attached(0))
    await session.handle_text(json.dumps({"type": "read", "conversation_id": CID, "seq": 4}))
    await session.handle_text(json.dumps({"type": "typing", "conversation_id": CID}))
    await session.handle_text(json.dumps({"type": "typing", "conversation_id": "c_other"}))
    await settle()
    assert session.core.submitted == [MarkRead(CID, "alice", 4)]
    assert session.core.typed == [(CID, "alice"), ("c_other", "alice")]
    assert [f["code"] for f in client.frames if f["type"] == "error"] == ["forbidden"]


async def test_a_second_auth_frame_is_invalid(make_session):
    session, client = await make_session(attached(0))
    await session.handle_text(json.dumps({"type": "auth", "token": "t"}))
    await settle()
    assert (client.frames[-1]["type"], client.frames[-1]["code"]) == ("error", "invalid")


async def test_shutdown_unregisters_and_stops_writing(make_session):
    session, client = await make_session(attached(0))
    session.shutdown()
    session.push_live(*live(1))
    await settle()
    assert session.core.hub.unregistered == [session]
    assert client.cursors() == []


async def test_shutting_down_twice_leaves_the_mailbox_once(make_session):
    session, client = await make_session(attached(0))
    session.shutdown()
    session.shutdown()
    assert session.core.hub.unregistered == [session]

"""The SDK (switchboard.client) against the real platform: typed HTTP calls, a Client sending and
receiving, surviving the loss of its gateway replica (resuming with `since`: no gap, no duplicate),
and a send whose answer was lost, retried with its client_msg_id into exactly one message."""

from __future__ import annotations

import asyncio

import pytest
import ray
from helpers import unique_id
from switchboard.auth import mint_token
from switchboard.client import (
    ApiError,
    Backoff,
    Client,
    Connected,
    Connection,
    Disconnected,
    HttpApi,
    MemberEvent,
    MessageEvent,
    ReceiptEvent,
    Recorder,
)
from test_fault_tolerance import SERVE_NAMESPACE, gateway_replicas, wait_new_gateway

pytestmark = pytest.mark.integration

WAIT_S = 30.0  # bounds waits that normally take milliseconds (a replica replacement takes seconds)
QUICK = Backoff(initial_s=0.1, max_s=1.0)


def token_for(sb, user_id: str) -> str:
    return mint_token(sb.settings.jwt_secret, user_id)


class Events:
    """One events() iterator and everything it yielded."""

    def __init__(self, client: Client):
        self.iterator = client.events().__aiter__()
        self.seen: list = []

    async def next(self, kind, timeout: float = WAIT_S):
        async with asyncio.timeout(timeout):
            while True:
                event = await self.iterator.__anext__()
                self.seen.append(event)
                if isinstance(event, kind):
                    return event

    async def messages(self, count: int) -> list[MessageEvent]:
        return [await self.next(MessageEvent) for _ in range(count)]


class FramesBySession(Recorder):
    def __init__(self) -> None:
        self.frames: dict[int, list[dict]] = {}
        self.since: dict[int, int | None] = {}
        self.sends: list[tuple[int, str]] = []

    def session_opening(self, session, since):
        self.since[session] = since
        self.frames[session] = []

    def frame_received(self, session, frame):
        self.frames[session].append(frame)

    def send_attempt(self, session, client_msg_id):
        self.sends.append((session, client_msg_id))


async def test_http_api_typed_calls(sb, new_user):
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    async with HttpApi(sb.http_url, token_for(sb, alice.user_id)) as api, \
            HttpApi(sb.http_url, lambda: token_for(sb, bob.user_id)) as bob_api:
        assert await api.health() is True
        conversation = await api.create_conversation([bob.user_id], title="sdk")
        cid = conversation.conversation_id
        assert conversation.members == (alice.user_id, bob.user_id) and conversation.title == "sdk"
        first, created = await api.send_message(cid, "one", client_msg_id="k-1")
        again, created_again = await api.send_message(cid, "one", client_msg_id="k-1")
        assert (created, created_again) == (True, False) and again == first and first.seq == 1
        for body in ("two", "three"):
            await bob_api.send_message(cid, body)
        assert [m.body for m in await bob_api.history(cid)] == ["one", "two", "three"]
        assert [m.seq for m in await api.history(cid, after=1, limit=1)] == [2]
        assert [m.seq for m in await api.history(cid, before=3)] == [1, 2]
        assert (await api.add_member(cid, carol.user_id)).members[-1] == carol.user_id
        await api.mark_read(cid, 3)
        assert [c.last_seq for c in await bob_api.list_conversations() if c.conversation_id == cid] == [3]
        await bob_api.leave(cid, bob.user_id)
        with pytest.raises(ApiError) as forbidden:
            await bob_api.get_conversation(cid)
        assert (forbidden.value.code, forbidden.value.status) == ("forbidden", 403)
        with pytest.raises(ApiError) as missing:
            await api.get_conversation("c_" + "n" * 16)
        assert (missing.value.code, missing.value.status) == ("not_found", 404)


async def test_a_client_sends_receives_and_gets_receipts_and_member_events(sb, new_user):
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    async with Client(sb.http_url, token_for(sb, alice.user_id)) as a, \
            Client(sb.http_url, token_for(sb, bob.user_id)) as b:
        bob_events = Events(b)
        cid = (await a.api.create_conversation([bob.user_id])).conversation_id
        joined = await bob_events.next(MemberEvent)
        assert (joined.conversation_id, joined.user_id, joined.action) == (cid, bob.user_id, "joined")

        message = await a.send(cid, "hello bob", client_msg_id=unique_id())
        assert message.seq == 1 and message.sender == alice.user_id
        received = await bob_events.next(MessageEvent)
        assert received.message == message and received.cursor == joined.cursor + 1
        assert b.cursor == received.cursor

        await b.read(cid, message.seq)
        alice_events = Events(a)
        receipt = await alice_events.next(ReceiptEvent)
        assert (receipt.user_id, receipt.seq) == (bob.user_id, 1)
        await a.api.add_member(cid, carol.user_id)
        assert (await bob_events.next(MemberEvent)).user_id == carol.user_id
        assert await a.ping() >= 0
        assert a.stats.dropped_events == b.stats.dropped_events == 0


async def test_a_client_survives_the_loss_of_its_gateway_and_resumes_without_gap_or_duplicate(sb, new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    # bob's token source is gated: while it is closed, bob cannot reconnect, so the messages posted
    # meanwhile can only reach him through the replay of his resumed session.
    gate = asyncio.Event()
    gate.set()

    async def bob_token() -> str:
        await gate.wait()
        return token_for(sb, bob.user_id)

    recorder = FramesBySession()
    async with Client(sb.http_url, token_for(sb, alice.user_id), backoff=QUICK) as a, \
            Client(sb.http_url, bob_token, backoff=QUICK, recorder=recorder) as b:
        bob_events = Events(b)
        before = await a.send(cid, "before the replica dies")
        assert (await bob_events.next(MessageEvent)).message == before
        last = b.cursor

        gate.clear()
        old = gateway_replicas()
        assert len(old) == 1, old
        ray.kill(ray.get_actor(old[0], namespace=SERVE_NAMESPACE), no_restart=True)
        gone = await bob_events.next(Disconnected)
        assert gone.session == 1
        # alice's sends while her socket is down wait in the client and go out after its reconnect.
        sending = [asyncio.create_task(a.send(cid, f"while away {i}")) for i in range(3)]
        await wait_new_gateway(sb, old)
        committed = sorted([await asyncio.wait_for(task, WAIT_S) for task in sending], key=lambda m: m.seq)
        assert [m.seq for m in committed] == [2, 3, 4]

        gate.set()
        replayed = await bob_events.messages(3)
        back = await bob_events.next(Connected)
        assert (back.resumed, back.since, back.cursor) == (True, last, last + 3)
        after = await a.send(cid, "live again")
        live = await bob_events.next(MessageEvent)

        got = replayed + [live]
        assert [e.message for e in got] == committed + [after]
        assert [e.cursor for e in got] == list(range(last + 1, last + 5))
        assert b.stats.dropped_events == 0
        # On the wire: the new session asked for `since` and got exactly the missed events, then ready.
        session = back.session
        assert recorder.since[session] == last
        wire = recorder.frames[session]
        assert [f["type"] for f in wire[:4]] == ["message", "message", "message", "ready"]
        assert [f["cursor"] for f in wire[:3]] == [last + 1, last + 2, last + 3]
        history = await alice.api.history_ok(cid)
        assert [m["message_id"] for m in history] == [before.message_id] + [m.message_id for m in committed] \
            + [after.message_id]


class LosesOneAnswer(Connection):
    """A connection that loses the `sent` answer for one client_msg_id, once: it drops the frame
    and the socket (as a network failure between the server's answer and the client would)."""

    lose: set[str] = set()

    async def __aiter__(self):
        async for frame in super().__aiter__():
            if frame.get("type") == "sent" and frame["client_msg_id"] in self.lose:
                self.lose.discard(frame["client_msg_id"])
                await self.close()
                return
            yield frame


async def test_a_send_whose_answer_was_lost_is_retried_and_yields_one_message(sb, new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    key = unique_id()
    LosesOneAnswer.lose = {key}
    recorder = FramesBySession()
    async with Client(sb.http_url, token_for(sb, alice.user_id), backoff=QUICK, recorder=recorder,
                      opener=LosesOneAnswer.open) as a, \
            Client(sb.http_url, token_for(sb, bob.user_id)) as b:
        bob_events = Events(b)
        message = await asyncio.wait_for(a.send(cid, "did you get this?", client_msg_id=key), WAIT_S)

        assert [k for _, k in recorder.sends] == [key, key]  # sent, answer lost, re-sent
        first_session, second_session = (s for s, _ in recorder.sends)
        assert second_session > first_session and a.stats.resent == 1
        # The server did answer the first attempt (the loss was on the way), with the same message
        # it gave the retry: one commit.
        answers = [f["message"] for s in (first_session, second_session)
                   for f in recorder.frames[s] if f["type"] == "sent"]
        assert answers == [answers[1], answers[1]] and answers[1]["message_id"] == message.message_id
        history = await alice.api.history_ok(cid)
        assert [(m["seq"], m["client_msg_id"]) for m in history] == [(1, key)]
        assert (await bob_events.next(MessageEvent)).message == message
        await b.ping()
        assert [e for e in bob_events.seen if isinstance(e, MessageEvent)] == [bob_events.seen[-1]]

"""The SDK Client's session logic against a tiny in-process server (fake_platform.py): reconnect
with `since`, re-sending unanswered sends with their client_msg_id, the cursor, acks, refusals,
and the recorder's raw view. No Ray, no database."""

from __future__ import annotations

import asyncio

import pytest
from fake_platform import FakePlatform
from switchboard.client import (
    ApiError,
    Backoff,
    Client,
    ClientClosed,
    Connected,
    Disconnected,
    MessageEvent,
    ReceiptEvent,
    Recorder,
    ResyncRequired,
    ServerError,
    TypingEvent,
)

FAST = Backoff(initial_s=0.01, max_s=0.05)
WAIT_S = 5.0  # bounds a wait for something that normally takes milliseconds
CID = "c_room"


@pytest.fixture
async def fake():
    platform = await FakePlatform().start()
    platform.conversation(CID, ["alice", "bob"])
    yield platform
    await platform.stop()


@pytest.fixture
async def clients(fake):
    made: list[Client] = []

    async def make(user_id: str, **options) -> Client:
        options.setdefault("backoff", FAST)
        client = Client(fake.url, options.pop("token", f"tok-{user_id}"), **options)
        made.append(client)
        await client.connect()
        return client

    yield make
    for client in made:
        await client.close()


class Events:
    """One events() iterator and everything it yielded."""

    def __init__(self, client: Client):
        self.iterator = client.events().__aiter__()
        self.seen: list = []

    async def next(self, kind: type | tuple[type, ...], timeout: float = WAIT_S):
        """The next event of `kind`, skipping (but recording) the others."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.iterator.__anext__()
                self.seen.append(event)
                if isinstance(event, kind):
                    return event

    async def take(self, kind: type, count: int) -> list:
        return [await self.next(kind) for _ in range(count)]


async def eventually(condition, timeout: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


class ListRecorder(Recorder):
    def __init__(self) -> None:
        self.log: list[tuple] = []

    def session_opening(self, session, since):
        self.log.append(("opening", session, since))

    def frame_received(self, session, frame):
        self.log.append(("frame", session, frame))

    def send_attempt(self, session, client_msg_id):
        self.log.append(("send", session, client_msg_id))

    def session_closed(self, session, code, reason):
        self.log.append(("closed", session, code))

    def frames(self, session: int, kind: str) -> list[dict]:
        return [e[2] for e in self.log if e[0] == "frame" and e[1] == session and e[2]["type"] == kind]


# ---- the happy path ------------------------------------------------------------------------------

async def test_send_resolves_with_the_message_and_members_receive_it(fake, clients):
    alice, bob = await clients("alice"), await clients("bob")
    bob_events = Events(bob)
    connected = await bob_events.next(Connected)
    assert (connected.cursor, connected.resumed, connected.session) == (0, False, 1)

    message = await alice.send(CID, "hello", client_msg_id="k1")
    assert (message.seq, message.sender, message.client_msg_id, message.body) == (1, "alice", "k1", "hello")
    event = await bob_events.next(MessageEvent)
    assert event.cursor == 1 and event.message == message
    assert bob.cursor == 1 and bob.user_id == "bob"
    assert fake.frames_from("alice", "send") == [{"type": "send", "conversation_id": CID,
                                                 "client_msg_id": "k1", "body": "hello"}]


async def test_read_typing_and_ping(fake, clients):
    alice, bob = await clients("alice"), await clients("bob")
    alice_events, bob_events = Events(alice), Events(bob)
    await alice.typing(CID)
    assert await bob_events.next(TypingEvent) == TypingEvent(CID, "alice")
    await bob.read(CID, 3)
    receipt = await alice_events.next(ReceiptEvent)
    assert (receipt.conversation_id, receipt.user_id, receipt.seq) == (CID, "bob", 3)
    assert await alice.ping() >= 0
    # An error that answers no send (here: a read where bob is no member) comes as an event.
    fake.conversation("c_other", ["alice"])
    await bob.read("c_other", 1)
    error = await bob_events.next(ServerError)
    assert (error.code, error.ref) == ("forbidden", None)


async def test_an_error_answer_raises_api_error_with_its_fields(fake, clients):
    alice = await clients("alice")
    fake.refuse_sends["k-slow"] = {"code": "rate_limited", "message": "slow down", "retry_after_ms": 250}
    with pytest.raises(ApiError) as refused:
        await alice.send(CID, "too fast", client_msg_id="k-slow")
    assert refused.value.code == "rate_limited" and refused.value.retryable
    assert (refused.value.retry_after_ms, refused.value.ref, refused.value.status) == (250, "k-slow", None)
    # Retrying with the same client_msg_id is an ordinary send again.
    assert (await alice.send(CID, "too fast", client_msg_id="k-slow")).seq == 1


async def test_a_frame_over_the_limit_is_refused_before_it_is_sent(fake, clients):
    alice = await clients("alice", max_frame_bytes=200)
    with pytest.raises(ApiError) as refused:
        await alice.send(CID, "x" * 300, client_msg_id="big")
    assert refused.value.code == "too_large"
    assert fake.frames_from("alice", "send") == []


# ---- drops and reconnects ------------------------------------------------------------------------

async def test_reconnects_with_since_and_gets_every_missed_event_once(fake, clients):
    bob = await clients("bob")
    events = Events(bob)
    for i in range(2):
        fake.commit(CID, "alice", f"before-{i}", "x")
    assert [e.cursor for e in await events.take(MessageEvent, 2)] == [1, 2]

    await fake.drop("bob", 1001, "draining")
    gone = await events.next(Disconnected)
    assert (gone.code, gone.reason, gone.session) == (1001, "draining", 1)
    for i in range(3):  # while bob is away: no await, so before any reconnect
        fake.commit(CID, "alice", f"missed-{i}", "x")
    replayed = await events.take(MessageEvent, 3)
    back = await events.next(Connected)  # the replay comes first, then `ready`
    assert (back.resumed, back.since, back.session, back.cursor) == (True, 2, 2, 5)
    fake.commit(CID, "alice", "live", "x")
    got = replayed + [await events.next(MessageEvent)]
    assert [e.cursor for e in got] == [3, 4, 5, 6]
    assert [e.message.client_msg_id for e in got] == ["missed-0", "missed-1", "missed-2", "live"]
    assert fake.auths == [("bob", None), ("bob", 2)]
    assert bob.stats.dropped_events == 0 and bob.stats.sessions == 2 and bob.cursor == 6


async def test_an_abrupt_drop_is_a_1006_and_the_client_comes_back(fake, clients):
    bob = await clients("bob")
    events = Events(bob)
    fake.commit(CID, "alice", "one", "x")
    await events.next(MessageEvent)
    fake.abort("bob")
    assert (await events.next(Disconnected)).code == 1006
    fake.commit(CID, "alice", "two", "x")
    assert (await events.next(MessageEvent)).cursor == 2
    assert fake.auths[-1] == ("bob", 1)


async def test_resumes_from_the_newest_event_taken_in_even_if_not_yet_consumed(fake, clients):
    recorder = ListRecorder()
    bob = await clients("bob", recorder=recorder)
    for i in range(3):
        fake.commit(CID, "alice", f"m{i}", "x")
    await eventually(lambda: len(recorder.frames(1, "message")) == 3)
    assert bob.cursor == 0  # queued, nothing consumed yet
    await fake.drop("bob")
    await eventually(lambda: len(fake.auths) == 2)
    assert fake.auths[-1] == ("bob", 3)  # the queue survives a reconnect: no replay needed
    events = Events(bob)
    assert [e.cursor for e in await events.take(MessageEvent, 3)] == [1, 2, 3]
    fake.commit(CID, "alice", "m3", "x")
    assert (await events.next(MessageEvent)).cursor == 4
    assert bob.stats.dropped_events == 0


async def test_a_send_whose_answer_was_lost_is_resent_with_its_client_msg_id_and_commits_once(fake, clients):
    alice, bob = await clients("alice"), await clients("bob")
    fake.lose_answers = 1
    sending = asyncio.create_task(alice.send(CID, "are you there?", client_msg_id="k-lost"))
    await eventually(lambda: fake.messages_of(CID))  # committed, answer withheld
    await fake.drop("alice")
    message = await asyncio.wait_for(sending, WAIT_S)
    assert (message.seq, message.client_msg_id) == (1, "k-lost")
    assert [f["client_msg_id"] for f in fake.frames_from("alice", "send")] == ["k-lost", "k-lost"]
    assert [m["message_id"] for m in fake.messages_of(CID)] == [message.message_id]
    assert alice.stats.resent == 1
    events = Events(bob)
    assert (await events.next(MessageEvent)).message == message
    await bob.ping()  # everything sent before the pong has arrived
    assert [e for e in events.seen if isinstance(e, MessageEvent)] == [events.seen[-1]]


async def test_a_send_made_while_disconnected_goes_out_after_the_reconnect(fake, clients):
    alice = await clients("alice", backoff=Backoff(initial_s=0.3, max_s=0.3))
    events = Events(alice)
    await fake.drop("alice")
    await events.next(Disconnected)
    assert not alice.connected
    message = await asyncio.wait_for(alice.send(CID, "queued", client_msg_id="k-queued"), WAIT_S)
    assert message.client_msg_id == "k-queued"
    assert len(fake.frames_from("alice", "send")) == 1
    assert alice.stats.resent == 0  # it went out once, on the new session


async def test_a_cancelled_send_is_not_resent(fake, clients):
    alice = await clients("alice")
    events = Events(alice)
    fake.lose_answers = 1
    sending = asyncio.create_task(alice.send(CID, "never mind", client_msg_id="k-cancel"))
    await eventually(lambda: fake.messages_of(CID))
    sending.cancel()
    await fake.drop("alice")
    await events.next(Connected)
    await events.next(Connected)  # the second session
    await alice.ping()  # a re-send would have reached the server before the pong
    assert len(fake.frames_from("alice", "send")) == 1


async def test_close_1009_fails_the_refused_send_and_the_client_goes_on(fake, clients):
    alice = await clients("alice")
    fake.close_on_send["k-big"] = (1009, "frame too large")
    with pytest.raises(ApiError) as refused:
        await alice.send(CID, "pretend this is big", client_msg_id="k-big")
    assert refused.value.code == "too_large"
    assert (await asyncio.wait_for(alice.send(CID, "small"), WAIT_S)).seq == 1
    assert [f["client_msg_id"] for f in fake.frames_from("alice", "send")][0] == "k-big"
    assert len([f for f in fake.frames_from("alice", "send") if f["client_msg_id"] == "k-big"]) == 1


# ---- cursors -------------------------------------------------------------------------------------

async def test_a_repeated_cursor_is_dropped_counted_and_still_recorded(fake, clients):
    recorder = ListRecorder()
    bob = await clients("bob", recorder=recorder)
    events = Events(bob)
    fake.commit(CID, "alice", "one", "x")
    first = await events.next(MessageEvent)
    fake.send_raw("bob", fake.mailboxes["bob"][0])  # the same cursor again: a server bug
    fake.commit(CID, "alice", "two", "x")
    second = await events.next(MessageEvent)
    assert (first.cursor, second.cursor) == (1, 2)
    assert bob.stats.dropped_events == 1
    assert [f["cursor"] for f in recorder.frames(1, "message")] == [1, 1, 2]


async def test_resync_required_is_an_event_and_moves_the_cursor(fake, clients):
    bob = await clients("bob", backoff=Backoff(initial_s=0.2, max_s=0.2))
    events = Events(bob)
    fake.commit(CID, "alice", "one", "x")
    await events.next(MessageEvent)
    await fake.drop("bob")
    await events.next(Disconnected)
    for i in range(4):
        fake.commit(CID, "alice", f"pruned-{i}", "x")
    fake.pruned_through["bob"] = 4
    resync = await events.next(ResyncRequired)
    assert resync.cursor == 5 and bob.cursor == 5 and bob.stats.resyncs == 1
    fake.commit(CID, "alice", "after", "x")
    assert (await events.next(MessageEvent)).cursor == 6


async def test_a_mailbox_behind_the_cursor_held_starts_over_from_its_head(fake, clients):
    fake.commit(CID, "alice", "one", "x")
    bob = await clients("bob", since=50)  # e.g. a saved cursor from a platform since wiped
    events = Events(bob)
    assert (await events.next(ResyncRequired)).cursor == 1
    fake.commit(CID, "alice", "two", "x")
    assert (await events.next(MessageEvent)).cursor == 2
    assert bob.stats.dropped_events == 0


async def test_consumed_events_are_acked_every_n_and_on_close(fake, clients):
    bob = await clients("bob", ack_every=2)
    events = Events(bob)
    for i in range(3):
        fake.commit(CID, "alice", f"m{i}", "x")
    await events.take(MessageEvent, 3)
    await eventually(lambda: fake.frames_from("bob", "ack"))
    assert fake.frames_from("bob", "ack") == [{"type": "ack", "cursor": 2}]
    await bob.close()
    await eventually(lambda: len(fake.frames_from("bob", "ack")) == 2)
    assert fake.frames_from("bob", "ack")[-1] == {"type": "ack", "cursor": 3}


# ---- tokens and stopping -------------------------------------------------------------------------

async def test_a_refused_token_fails_the_first_connect(fake):
    client = Client(fake.url, "not-a-token", backoff=FAST)
    with pytest.raises(ApiError) as refused:
        await client.connect()
    assert refused.value.code == "unauthorized"
    await client.close()


async def test_a_token_callable_is_asked_for_every_session(fake, clients):
    calls = []

    async def token() -> str:
        calls.append(1)
        return "tok-bob"

    bob = await clients("bob", token=token)
    events = Events(bob)
    await fake.drop("bob")
    await events.next(Disconnected)
    await events.next(Connected)
    assert len(calls) == 2


async def test_a_fixed_token_refused_on_reconnect_stops_the_client(fake, clients):
    alice = await clients("alice")
    events = Events(alice)
    await events.next(Connected)
    fake.reject_tokens = True
    fake.lose_answers = 1
    sending = asyncio.create_task(alice.send(CID, "in flight", client_msg_id="k-stuck"))
    await eventually(lambda: fake.messages_of(CID))
    await fake.drop("alice")
    with pytest.raises(ApiError) as stopped:
        await events.next(Connected)
    assert stopped.value.code == "unauthorized" and alice.failure is stopped.value
    with pytest.raises(ClientClosed):
        await sending
    with pytest.raises(ClientClosed):
        await alice.send(CID, "after")


async def test_a_token_callable_gets_a_few_tries_before_the_client_stops(fake, clients):
    calls = []
    bob = await clients("bob", token=lambda: calls.append(1) or "tok-bob")
    events = Events(bob)
    await events.next(Connected)
    fake.reject_tokens = True
    await fake.drop("bob")
    with pytest.raises(ApiError):
        await events.next(Connected)
    assert len(calls) == 1 + 3 and bob.stats.failed_attempts == 3


async def test_close_ends_events_and_fails_unanswered_sends(fake, clients):
    alice = await clients("alice")
    events = Events(alice)
    await events.next(Connected)
    fake.lose_answers = 1
    sending = asyncio.create_task(alice.send(CID, "unanswered", client_msg_id="k-open"))
    await eventually(lambda: fake.messages_of(CID))
    await alice.close()
    with pytest.raises(ClientClosed):
        await sending
    assert isinstance(await events.next(Disconnected), Disconnected)
    with pytest.raises(StopAsyncIteration):
        await events.next(Connected)
    assert alice.failure is None


# ---- the recorder --------------------------------------------------------------------------------

async def test_the_recorder_sees_each_session_its_since_frames_and_send_attempts(fake, clients):
    recorder = ListRecorder()
    alice = await clients("alice", recorder=recorder)
    fake.lose_answers = 1
    sending = asyncio.create_task(alice.send(CID, "hi", client_msg_id="k-rec"))
    await eventually(lambda: fake.messages_of(CID))
    await fake.drop("alice", 1001, "bye")
    await asyncio.wait_for(sending, WAIT_S)
    kinds = [(e[0], e[1]) if e[0] != "frame" else ("frame", e[1], e[2]["type"]) for e in recorder.log]
    assert kinds == [
        ("opening", 1), ("frame", 1, "ready"), ("send", 1), ("frame", 1, "message"), ("closed", 1),
        ("opening", 2), ("frame", 2, "ready"), ("send", 2), ("frame", 2, "sent"),
    ]
    assert recorder.log[0] == ("opening", 1, None)
    assert recorder.log[4] == ("closed", 1, 1001)
    assert recorder.log[5] == ("opening", 2, 1)  # since = the message event taken in

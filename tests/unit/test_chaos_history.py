"""The chaos history checker against hand-made histories: a clean one passes, and each planted fault
(a dropped delivery, two reordered, a duplicate, a delivery never sent, a `sent` message missing from
the database, a send answered twice, a send never answered) is caught under the right guarantee."""

from __future__ import annotations

import copy

import pytest
from switchboard.chaos.history import (
    ClientLog,
    DatabaseState,
    SendLog,
    SessionLog,
    StoredEvent,
    StoredMessage,
    check_history,
)

DIRECT, GROUP = "c_direct", "c_group"
MEMBERS = {DIRECT: {"alice", "bob"}, GROUP: {"alice", "bob", "carol"}}


class World:
    """Commits sends the way the platform does (seq per conversation, one mailbox event per member
    with the member's next cursor) and records what each user's connections received."""

    def __init__(self):
        self.messages: list[StoredMessage] = []
        self.events: list[StoredEvent] = []
        self.heads = {user: 0 for user in ("alice", "bob", "carol")}
        self.last_seq = {DIRECT: 0, GROUP: 0}
        self.clients = {user: ClientLog(user, sessions=[SessionLog(since=None, frames=[_ready(user, 0)])])
                        for user in self.heads}

    def session(self, user: str) -> SessionLog:
        return self.clients[user].sessions[-1]

    def reconnect(self, user: str) -> None:
        """The user's connection drops; it resumes with `since` = the last cursor it processed."""
        previous = self.session(user)
        previous.dropped, previous.close_code = True, 1006
        cursors = [f["cursor"] for s in self.clients[user].sessions for f in s.frames if f["type"] == "message"]
        since = max(cursors, default=0)
        self.clients[user].sessions.append(SessionLog(since=since, frames=[]))
        # The mailbox replays what the user missed while away, then says ready.
        for event in self.events:
            if event.user_id == user and event.cursor > since:
                self.session(user).frames.append(self._frame(event))
        self.session(user).frames.append(_ready(user, self.heads[user]))

    def send(self, sender: str, conversation: str, key: str, body: str, online: set[str] | None = None) -> None:
        client = self.clients[sender]
        client.sends.append(SendLog(key, conversation, body, attempts=[len(client.sessions) - 1]))
        self.last_seq[conversation] += 1
        seq = self.last_seq[conversation]
        message = StoredMessage(conversation, seq, f"m_{conversation}_{seq}", sender, key, body)
        self.messages.append(message)
        for member in sorted(MEMBERS[conversation]):
            self.heads[member] += 1
            event = StoredEvent(member, self.heads[member], "message", conversation, seq)
            self.events.append(event)
            if online is None or member in online:
                self.session(member).frames.append(self._frame(event))
        self.session(sender).frames.append({"type": "sent", "client_msg_id": key, "message": _wire(message)})

    def _frame(self, event: StoredEvent) -> dict:
        message = next(m for m in self.messages if (m.conversation_id, m.seq) == (event.conversation_id, event.seq))
        return {"type": "message", "cursor": event.cursor, "message": _wire(message)}

    def database(self) -> DatabaseState:
        return DatabaseState(messages=list(self.messages), members=copy.deepcopy(MEMBERS), events=list(self.events))

    def logs(self) -> list[ClientLog]:
        return list(self.clients.values())


def _ready(user: str, cursor: int) -> dict:
    return {"type": "ready", "user_id": user, "cursor": cursor}


def _wire(message: StoredMessage) -> dict:
    return {"conversation_id": message.conversation_id, "seq": message.seq, "message_id": message.message_id,
            "sender": message.sender, "client_msg_id": message.client_msg_id, "body": message.body, "ts": 1}


@pytest.fixture
def world() -> World:
    world = World()
    world.send("alice", DIRECT, "a1", "hi bob")
    world.send("bob", GROUP, "b1", "hello all")
    # carol is away for two messages and resumes with `since`: they are replayed to her.
    world.send("alice", GROUP, "a2", "carol?", online={"alice", "bob"})
    world.send("bob", GROUP, "b2", "she left", online={"alice", "bob"})
    world.reconnect("carol")
    world.send("carol", GROUP, "c1", "back")
    world.send("bob", DIRECT, "b3", "bye")
    return world


def message_frames(session: SessionLog) -> list[dict]:
    return [f for f in session.frames if f["type"] == "message"]


def assert_caught(report, guarantee: int, kind: str) -> None:
    assert not report.ok
    assert (guarantee, kind) in report.kinds(), [str(v) for v in report.violations]


def test_a_clean_history_passes(world):
    report = check_history(world.logs(), world.database())
    assert report.ok, [str(v) for v in report.violations]
    assert (report.sends, report.acked, report.unanswered, report.lost, report.duplicates) == (6, 6, 0, 0, 0)
    # alice 6 deliveries, bob 6, carol 4 (two of them replayed on her second connection)
    assert report.delivered == 16


def test_one_dropped_delivery_is_a_loss(world):
    session = world.clients["bob"].sessions[0]
    session.frames.remove(message_frames(session)[1])
    report = check_history(world.logs(), world.database())
    assert_caught(report, 2, "gap_on_connection")
    assert_caught(report, 2, "not_delivered")
    assert report.lost == 1


def test_a_delivery_missing_from_the_last_connection_is_a_loss(world):
    session = world.clients["bob"].sessions[0]
    session.frames.remove(message_frames(session)[-1])  # the newest: no later cursor shows the gap
    report = check_history(world.logs(), world.database())
    assert_caught(report, 2, "not_delivered")


def test_a_message_missing_from_a_members_mailbox_is_a_loss(world):
    world.events = [e for e in world.events if not (e.user_id == "carol" and e.seq == 2)]
    report = check_history(world.logs(), world.database())
    assert_caught(report, 2, "not_in_mailbox")


def test_two_reordered_deliveries_break_the_order(world):
    frames = world.clients["alice"].sessions[0].frames
    first, second = [frames.index(f) for f in message_frames(world.clients["alice"].sessions[0])[1:3]]
    frames[first], frames[second] = frames[second], frames[first]
    report = check_history(world.logs(), world.database())
    assert_caught(report, 3, "out_of_order")
    assert report.lost == 0 and report.duplicates == 0


def test_a_mailbox_holding_a_conversation_out_of_seq_order_breaks_the_order(world):
    carol = [e for e in world.events if e.user_id == "carol"]
    a, b = carol[1], carol[2]
    world.events[world.events.index(a)] = StoredEvent("carol", a.cursor, a.kind, a.conversation_id, b.seq)
    world.events[world.events.index(b)] = StoredEvent("carol", b.cursor, b.kind, b.conversation_id, a.seq)
    report = check_history(world.logs(), world.database())
    assert_caught(report, 3, "mailbox_out_of_order")


def test_a_duplicate_on_one_connection(world):
    session = world.clients["bob"].sessions[0]
    frame = message_frames(session)[0]
    session.frames.insert(session.frames.index(frame) + 1, dict(frame))
    report = check_history(world.logs(), world.database())
    assert_caught(report, 4, "duplicate_on_connection")
    assert report.duplicates == 1


def test_the_same_message_under_two_cursors_is_a_duplicate(world):
    session = world.clients["bob"].sessions[0]
    frame = message_frames(session)[-1]
    session.frames.append({**frame, "cursor": frame["cursor"] + 1})
    report = check_history(world.logs(), world.database())
    assert_caught(report, 4, "duplicate_message")


def test_a_delivery_never_sent(world):
    session = world.clients["carol"].sessions[-1]
    last = message_frames(session)[-1]
    ghost = {**last["message"], "seq": 99, "message_id": "m_ghost", "client_msg_id": "ghost", "body": "boo"}
    session.frames.append({"type": "message", "cursor": last["cursor"] + 1, "message": ghost})
    report = check_history(world.logs(), world.database())
    assert_caught(report, 1, "phantom_delivery")


def test_a_sent_message_missing_from_the_database(world):
    missing = world.messages[-1]
    world.messages.remove(missing)
    world.events = [e for e in world.events if (e.conversation_id, e.seq) != (missing.conversation_id, missing.seq)]
    report = check_history(world.logs(), world.database())
    assert_caught(report, 1, "sent_not_stored")
    assert report.lost >= 1


def test_a_send_answered_twice(world):
    session = world.clients["alice"].sessions[0]
    answer = next(f for f in session.frames if f["type"] == "sent")
    session.frames.append(dict(answer))
    report = check_history(world.logs(), world.database())
    assert_caught(report, 7, "answered_twice")


def test_a_send_never_answered(world):
    session = world.clients["bob"].sessions[-1]
    session.frames = [f for f in session.frames if not (f["type"] == "sent" and f["client_msg_id"] == "b3")]
    report = check_history(world.logs(), world.database())
    assert_caught(report, 7, "never_answered")
    assert report.unanswered == 1


def test_an_attempt_lost_with_its_dropped_connection_is_excused_once_a_retry_is_answered(world):
    # bob's send went out on a connection that dropped unanswered; the retry on the next one got `sent`.
    client = world.clients["bob"]
    key = "b4"
    client.sends.append(SendLog(key, DIRECT, "retried", attempts=[0]))
    world.reconnect("bob")
    client.sends[-1].attempts.append(1)
    world.last_seq[DIRECT] += 1
    message = StoredMessage(DIRECT, world.last_seq[DIRECT], "m_retried", "bob", key, "retried")
    world.messages.append(message)
    for member in sorted(MEMBERS[DIRECT]):
        world.heads[member] += 1
        event = StoredEvent(member, world.heads[member], "message", DIRECT, message.seq)
        world.events.append(event)
        world.session(member).frames.append(world._frame(event))
    world.session("bob").frames.append({"type": "sent", "client_msg_id": key, "message": _wire(message)})
    report = check_history(world.logs(), world.database())
    assert report.ok, [str(v) for v in report.violations]


def test_an_unanswered_attempt_on_a_connection_still_open_is_caught(world):
    world.clients["alice"].sends[0].attempts.append(0)  # a second attempt on the same open connection
    report = check_history(world.logs(), world.database())
    assert_caught(report, 7, "never_answered")


def test_a_refused_send_that_was_committed_after_all(world):
    session = world.clients["alice"].sessions[0]
    index = next(i for i, f in enumerate(session.frames) if f["type"] == "sent" and f["client_msg_id"] == "a1")
    session.frames[index] = {"type": "error", "code": "overloaded", "message": "busy", "ref": "a1"}
    report = check_history(world.logs(), world.database())
    assert_caught(report, 7, "refused_but_committed")


def test_an_answer_to_a_send_never_made(world):
    world.clients["carol"].sessions[-1].frames.append(
        {"type": "error", "code": "overloaded", "message": "busy", "ref": "never-sent"})
    report = check_history(world.logs(), world.database())
    assert_caught(report, 7, "unsolicited_answer")


def test_a_retry_that_made_a_second_message(world):
    session = world.clients["alice"].sessions[0]
    answer = next(f for f in session.frames if f["type"] == "sent" and f["client_msg_id"] == "a1")
    world.clients["alice"].sends[0].attempts.append(0)
    session.frames.append({**answer, "message": {**answer["message"], "message_id": "m_other"}})
    report = check_history(world.logs(), world.database())
    assert_caught(report, 4, "retry_duplicated")


def test_resync_required_excuses_the_skipped_range(world):
    carol = world.clients["carol"].sessions[-1]
    replayed = [f for f in carol.frames if f["type"] == "message" and f["cursor"] <= 3]
    assert replayed, "carol's second connection replays what she missed"
    carol.frames = [{"type": "resync_required", "cursor": 3}] + [f for f in carol.frames if f not in replayed]
    report = check_history(world.logs(), world.database())
    assert report.ok, [str(v) for v in report.violations]
    assert report.resyncs == 1

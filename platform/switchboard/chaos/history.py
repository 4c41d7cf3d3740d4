"""The history checker: proves PROTOCOL.md guarantees 1-4 and 7 from what the clients saw and what
the database holds, and names every violation by its guarantee number.

Input is plain records, no Ray and no sockets, so the checker can be tested against hand-made
histories (tests/unit/test_chaos_history.py plants each kind of fault and expects it caught):

- per user, a ClientLog: its connections in order (SessionLog: the `since` it resumed from and every
  server frame in arrival order, as the wire carried them, before any client-side filtering), and its
  sends (SendLog: the key, and on which connection each attempt went out);
- a DatabaseState: the stored messages, each conversation's members, and the mailbox events of the
  users checked (the membership is taken as fixed: the chaos traffic never changes it).

What each guarantee means here:
1 Durability    every `sent` answer names a stored message, identical; nothing delivered that was
                never stored (a delivered message or mailbox event missing from the database).
2 No loss       every stored message is in the mailbox of every member; on one connection the
                cursors after `since` arrive without a gap; over a user's connections every stored
                event after the first `since` arrives (or was explicitly skipped by resync_required).
3 Order         on one connection cursors never go backwards and each conversation's seq increases;
                a mailbox holds a conversation's messages in seq order; a cursor carries the event
                the mailbox stored at it, so all members see the one stored order.
4 No duplicates no cursor or message twice on one connection; no message twice in a mailbox; a
                retried send yields one message (one message_id for every `sent` of one key).
7 Explicit      every send attempt gets exactly one answer (an attempt on a connection that dropped
                may get none, and the client retries); every send ends answered; an answer never
                comes for a send that was not made; a refused send was not committed after all.
"""

from __future__ import annotations

import collections
import dataclasses

EVENT_TYPES = frozenset({"message", "receipt", "member"})

DURABILITY, NO_LOSS, ORDER, NO_DUPLICATES, EXPLICIT = 1, 2, 3, 4, 7


# ---- the records ------------------------------------------------------------------------------

@dataclasses.dataclass
class SessionLog:
    """One WebSocket connection: the `since` its auth frame carried and every frame it received.
    `dropped` is True when it ended before the run did (the server or the network closed it)."""

    since: int | None
    frames: list[dict] = dataclasses.field(default_factory=list)
    dropped: bool = False
    close_code: int | None = None


@dataclasses.dataclass
class SendLog:
    """One logical send (one client_msg_id) and the connection index of each attempt at it."""

    client_msg_id: str
    conversation_id: str
    body: str
    attempts: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ClientLog:
    user_id: str
    sessions: list[SessionLog] = dataclasses.field(default_factory=list)
    sends: list[SendLog] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class StoredMessage:
    conversation_id: str
    seq: int
    message_id: str
    sender: str
    client_msg_id: str
    body: str


@dataclasses.dataclass(frozen=True)
class StoredEvent:
    user_id: str
    cursor: int
    kind: str
    conversation_id: str
    seq: int | None = None


@dataclasses.dataclass
class DatabaseState:
    messages: list[StoredMessage]
    members: dict[str, set[str]]
    events: list[StoredEvent]


@dataclasses.dataclass(frozen=True)
class Violation:
    guarantee: int
    kind: str
    user_id: str | None
    detail: str

    def __str__(self) -> str:
        who = f" [{self.user_id}]" if self.user_id else ""
        return f"guarantee {self.guarantee} {self.kind}{who}: {self.detail}"


@dataclasses.dataclass
class Report:
    violations: list[Violation]
    sends: int  # logical sends the clients made
    acked: int  # of them, answered `sent`
    delivered: int  # message events received, over every connection
    lost: int  # (member, message) deliveries owed and never made, plus `sent` messages not stored
    duplicates: int
    unanswered: int  # sends that never got an answer
    resyncs: int

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_guarantee(self) -> dict[int, list[Violation]]:
        grouped: dict[int, list[Violation]] = collections.defaultdict(list)
        for violation in self.violations:
            grouped[violation.guarantee].append(violation)
        return dict(sorted(grouped.items()))

    def kinds(self) -> set[tuple[int, str]]:
        return {(v.guarantee, v.kind) for v in self.violations}


# ---- the checker ------------------------------------------------------------------------------

class HistoryChecker:
    def __init__(self, clients: list[ClientLog], database: DatabaseState):
        self.clients = clients
        self.database = database
        self.messages = {(m.conversation_id, m.seq): m for m in database.messages}
        self.events = {(e.user_id, e.cursor): e for e in database.events}
        self.events_by_user: dict[str, list[StoredEvent]] = collections.defaultdict(list)
        for event in sorted(database.events, key=lambda e: (e.user_id, e.cursor)):
            self.events_by_user[event.user_id].append(event)
        self.violations: list[Violation] = []
        self.lost = self.duplicates = self.unanswered = self.delivered = self.resyncs = 0

    def check(self) -> Report:
        self._check_database()
        acked = 0
        for client in self.clients:
            self._check_deliveries(client)
            acked += self._check_sends(client)
        return Report(
            violations=self.violations, sends=sum(len(c.sends) for c in self.clients), acked=acked,
            delivered=self.delivered, lost=self.lost, duplicates=self.duplicates,
            unanswered=self.unanswered, resyncs=self.resyncs,
        )

    def _flag(self, guarantee: int, kind: str, user_id: str | None, detail: str) -> None:
        self.violations.append(Violation(guarantee, kind, user_id, detail))

    # ---- the database on its own ---------------------------------------------------------------

    def _check_database(self) -> None:
        keys = collections.Counter((m.conversation_id, m.sender, m.client_msg_id) for m in self.database.messages)
        for key, count in keys.items():
            if count > 1:
                self.duplicates += count - 1
                self._flag(NO_DUPLICATES, "retry_duplicated", key[1], f"{count} stored messages for send {key}")
        copies = collections.Counter(
            (e.user_id, e.conversation_id, e.seq) for e in self.database.events if e.kind == "message"
        )
        # Members neither logged nor with events given are outside this check (not chaos users).
        checked_users = set(self.events_by_user) | {client.user_id for client in self.clients}
        for message in self.database.messages:
            for user_id in sorted(self.database.members.get(message.conversation_id, ())):
                if user_id not in checked_users:
                    continue
                count = copies[(user_id, message.conversation_id, message.seq)]
                if count == 0:
                    self.lost += 1
                    self._flag(NO_LOSS, "not_in_mailbox", user_id,
                               f"message {message.conversation_id}#{message.seq} is in no mailbox event of this member")
                elif count > 1:
                    self.duplicates += count - 1
                    self._flag(NO_DUPLICATES, "duplicate_in_mailbox", user_id,
                               f"message {message.conversation_id}#{message.seq} is {count} times in the mailbox")
        for user_id, events in self.events_by_user.items():
            last_seq: dict[str, int] = {}
            for event in events:
                if event.kind != "message":
                    continue
                if event.seq <= last_seq.get(event.conversation_id, 0):
                    self._flag(ORDER, "mailbox_out_of_order", user_id,
                               f"cursor {event.cursor} holds {event.conversation_id}#{event.seq} after "
                               f"#{last_seq[event.conversation_id]}")
                last_seq[event.conversation_id] = max(event.seq, last_seq.get(event.conversation_id, 0))

    # ---- what each user received -----------------------------------------------------------------

    def _check_deliveries(self, client: ClientLog) -> None:
        user = client.user_id
        covered: set[int] = set()
        chain_start: int | None = None
        for number, session in enumerate(client.sessions):
            start, seen, skipped = self._check_session(user, number, session)
            if chain_start is None:
                chain_start = start
            covered |= seen | skipped
        if chain_start is None:
            return
        for event in self.events_by_user.get(user, ()):
            if event.cursor > chain_start and event.cursor not in covered:
                self.lost += 1
                what = f"{event.conversation_id}#{event.seq}" if event.kind == "message" else event.kind
                self._flag(NO_LOSS, "not_delivered", user,
                           f"cursor {event.cursor} ({what}) reached none of the user's connections")

    def _check_session(self, user: str, number: int, session: SessionLog) -> tuple[int | None, set[int], set[int]]:
        """Checks one connection; returns where it started, the cursors it delivered and the
        cursors a resync_required explicitly skipped."""
        start = session.since
        if start is None:
            ready = next((f for f in session.frames if f.get("type") == "ready"), None)
            start = ready["cursor"] if ready is not None else None
        seen: set[int] = set()
        skipped: set[int] = set()
        base = start  # the cursor the contiguity of this connection is counted from
        highest = start or 0
        last_seq: dict[str, int] = {}
        delivered_messages: set[tuple[str, int]] = set()
        where = f"connection {number}"
        for frame in session.frames:
            kind = frame.get("type")
            if kind == "resync_required":
                self.resyncs += 1
                head = frame["cursor"]
                skipped |= set(range((base or 0) + 1, head + 1))
                base = highest = max(highest, head)
                continue
            if kind not in EVENT_TYPES or "cursor" not in frame:
                continue
            cursor = frame["cursor"]
            if cursor in seen:
                self.duplicates += 1
                self._flag(NO_DUPLICATES, "duplicate_on_connection", user, f"{where}: cursor {cursor} twice")
                continue
            if cursor < highest or (base is not None and cursor <= base):
                self._flag(ORDER, "out_of_order", user, f"{where}: cursor {cursor} after cursor {highest}")
            seen.add(cursor)
            highest = max(highest, cursor)
            self._check_event_matches(user, where, frame)
            if kind == "message":
                self.delivered += 1
                message = frame.get("message") or {}
                key = (message.get("conversation_id"), message.get("seq"))
                if key in delivered_messages:
                    self.duplicates += 1
                    self._flag(NO_DUPLICATES, "duplicate_message", user, f"{where}: message {key} twice")
                delivered_messages.add(key)
                conversation, seq = key
                if isinstance(seq, int):
                    if seq <= last_seq.get(conversation, 0):
                        self._flag(ORDER, "seq_out_of_order", user,
                                   f"{where}: {conversation}#{seq} after #{last_seq[conversation]}")
                    last_seq[conversation] = max(seq, last_seq.get(conversation, 0))
        if base is None and seen:
            base = min(seen) - 1
        if base is not None:
            for cursor in range(base + 1, highest + 1):
                if cursor not in seen and cursor not in skipped:
                    self._flag(NO_LOSS, "gap_on_connection", user, f"{where}: cursor {cursor} skipped")
        return start, seen, skipped

    def _check_event_matches(self, user: str, where: str, frame: dict) -> None:
        cursor = frame["cursor"]
        stored = self.events.get((user, cursor))
        if frame["type"] == "message":
            message = frame.get("message") or {}
            key = (message.get("conversation_id"), message.get("seq"))
            original = self.messages.get(key)
            if original is None or not _same_message(original, message):
                self._flag(DURABILITY, "phantom_delivery", user,
                           f"{where}: cursor {cursor} delivered {key} which is not the stored message "
                           f"({'none stored' if original is None else original.message_id})")
                return
        if stored is None:
            self._flag(DURABILITY, "event_not_stored", user, f"{where}: cursor {cursor} is in no stored event")
            return
        conversation = frame.get("conversation_id") or (frame.get("message") or {}).get("conversation_id")
        seq = (frame.get("message") or {}).get("seq") if frame["type"] == "message" else stored.seq
        if (stored.kind, stored.conversation_id, stored.seq) != (frame["type"], conversation, seq):
            self._flag(ORDER, "out_of_place", user,
                       f"{where}: cursor {cursor} carried {frame['type']} {conversation}#{seq}, the mailbox "
                       f"holds {stored.kind} {stored.conversation_id}#{stored.seq} there")

    # ---- every send answered exactly once ----------------------------------------------------------

    def _check_sends(self, client: ClientLog) -> int:
        """Returns how many of the client's sends were answered `sent`."""
        user = client.user_id
        answers = [_answers(session) for session in client.sessions]
        by_key = {send.client_msg_id: send for send in client.sends}
        for number, session_answers in enumerate(answers):
            for key in session_answers:
                send = by_key.get(key)
                if send is None or number not in send.attempts:
                    self._flag(EXPLICIT, "unsolicited_answer", user,
                               f"connection {number}: an answer for {key!r}, never sent on it")
        stored_by_key = {
            (m.conversation_id, m.client_msg_id): m for m in self.database.messages if m.sender == user
        }
        acked = 0
        for send in client.sends:
            all_answers: list[dict] = []
            unanswered_attempt = False
            for number, attempts in sorted(collections.Counter(send.attempts).items()):
                got = answers[number].get(send.client_msg_id, []) if number < len(answers) else []
                all_answers += got
                if len(got) > attempts:
                    self._flag(EXPLICIT, "answered_twice", user,
                               f"connection {number}: {len(got)} answers to {attempts} attempt(s) "
                               f"of {send.client_msg_id!r}")
                dropped = number >= len(client.sessions) or client.sessions[number].dropped
                if len(got) < attempts and not dropped:
                    unanswered_attempt = True
            if not all_answers or unanswered_attempt:
                self.unanswered += 1
                self._flag(EXPLICIT, "never_answered", user,
                           f"send {send.client_msg_id!r} to {send.conversation_id}: {len(send.attempts)} attempt(s), "
                           f"{len(all_answers)} answer(s)")
            sent = [answer for answer in all_answers if answer.get("type") == "sent"]
            stored = stored_by_key.get((send.conversation_id, send.client_msg_id))
            if sent:
                acked += 1
                self._check_sent_stored(user, send, sent)
            elif all_answers and stored is not None:
                codes = sorted({answer.get("code", "?") for answer in all_answers})
                self._flag(EXPLICIT, "refused_but_committed", user,
                           f"send {send.client_msg_id!r} was refused {codes} yet stored as #{stored.seq}")
        return acked

    def _check_sent_stored(self, user: str, send: SendLog, sent: list[dict]) -> None:
        message_ids = {answer.get("message", {}).get("message_id") for answer in sent}
        if len(message_ids) > 1:
            self.duplicates += len(message_ids) - 1
            self._flag(NO_DUPLICATES, "retry_duplicated", user,
                       f"send {send.client_msg_id!r} answered with {len(message_ids)} different messages")
        for answer in sent:
            message = answer.get("message") or {}
            original = self.messages.get((message.get("conversation_id"), message.get("seq")))
            expected = {"conversation_id": send.conversation_id, "sender": user,
                        "client_msg_id": send.client_msg_id, "body": send.body}
            if (original is None or not _same_message(original, message)
                    or any(message.get(field) != value for field, value in expected.items())):
                self.lost += 1
                self._flag(DURABILITY, "sent_not_stored", user,
                           f"send {send.client_msg_id!r} answered `sent` as "
                           f"{message.get('conversation_id')}#{message.get('seq')}, which is not stored as such")
                return


def _answers(session: SessionLog) -> dict[str, list[dict]]:
    """A connection's answers to sends, by client_msg_id (`sent`, or `error` with that ref)."""
    found: dict[str, list[dict]] = collections.defaultdict(list)
    for frame in session.frames:
        kind = frame.get("type")
        if kind == "sent":
            found[frame.get("client_msg_id")].append(frame)
        elif kind == "error" and frame.get("ref") is not None:
            found[frame["ref"]].append(frame)
    return found


def _same_message(stored: StoredMessage, wire: dict) -> bool:
    return (wire.get("message_id") == stored.message_id and wire.get("sender") == stored.sender
            and wire.get("client_msg_id") == stored.client_msg_id and wire.get("body") == stored.body)


def check_history(clients: list[ClientLog], database: DatabaseState) -> Report:
    return HistoryChecker(clients, database).check()

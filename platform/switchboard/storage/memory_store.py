"""The in-memory Store: SqlStore's semantics without a database, for fast tests of the logic classes.

It mirrors sql_store.py method by method, including what the database would refuse:
  * apply() is all-or-nothing: every check runs before anything changes, in the order SqlStore's
    transaction meets them (see _check), so a refused batch leaves the store exactly as it was;
  * a fence mismatch raises StaleSequencer; what PostgreSQL would reject (a duplicate key, a member
    of a missing conversation, text it cannot store) raises StorageUnavailable, as SqlStore does;
  * no caller shares mutable state with it: conversations and payloads are copied in and out
    (messages are frozen, so they are shared as they are).

Checked against SqlStore on a real PostgreSQL with the same calls and the same answers, the
refusals included. One difference remains: list_conversations breaks created_at ties by Python's
code-point order of conversation_id, SqlStore by the database's collation.

`fail_with` simulates an outage: set it to an exception (normally StorageUnavailable) and every
method raises it, as SqlStore does when the database went away.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import threading

from ..protocol import now_ms
from .models import MESSAGE, Conversation, MailboxEvent, MailboxHead, Message, StoredCheckpoint, WriteBatch
from .placements import MemoryPlacements
from .store import StalePlacement, StaleSequencer, StorageUnavailable

MS_PER_DAY = 86_400_000

# Column widths of schema.py: PostgreSQL refuses a longer value instead of truncating it.
ID_WIDTH = {"conversation_id": 80, "user_id": 64, "message_id": 40, "region": 64, "kind": 16}


@dataclasses.dataclass
class _Mailbox:
    head: int = 0
    pruned_through: int = 0
    acked: int = 0
    region: str | None = None


@dataclasses.dataclass(frozen=True)
class _StoredEvent:
    """A mailbox_events row: a message event stores no payload, it points at its message."""

    cursor: int
    kind: str
    conversation_id: str
    seq: int | None
    payload: dict | None
    created_at: int


class MemoryStore:
    def __init__(self):
        self.fail_with: Exception | None = None
        self._lock = threading.Lock()
        self._conversations: dict[str, Conversation] = {}  # the row; members live in _members
        self._members: dict[str, dict[str, int]] = {}  # conversation_id -> user_id -> joined_at
        self._messages: dict[str, dict[int, Message]] = {}  # conversation_id -> seq -> message
        self._sent: dict[tuple[str, str, str], Message] = {}  # (conversation, sender, client_msg_id)
        self._message_ids: set[str] = set()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._events: dict[str, dict[int, _StoredEvent]] = {}  # user_id -> cursor -> row
        self._read_marks: dict[tuple[str, str], int] = {}
        self._checkpoints: dict[str, StoredCheckpoint] = {}
        self.placements = MemoryPlacements()

    # ---- conversations ---------------------------------------------------------------------

    def load_conversation(self, conversation_id: str) -> Conversation | None:
        with self._guard():
            if conversation_id not in self._conversations:
                return None
            return self._conversation_copy(conversation_id)

    def list_conversations(self, user_id: str, limit: int | None = None,
                           after: tuple[int, str] | None = None) -> list[Conversation]:
        with self._guard():
            mine = [cid for cid, members in self._members.items() if user_id in members]
            result = [self._conversation_copy(cid) for cid in mine]
        ordered = sorted(result, key=lambda c: (c.created_at, c.conversation_id))
        if after is not None:
            ordered = [c for c in ordered if (c.created_at, c.conversation_id) > after]
        return ordered if limit is None else ordered[:limit]

    # ---- messages ---------------------------------------------------------------------------

    def find_sent(self, keys: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], Message]:
        with self._guard():
            return {key: self._sent[key] for key in keys if key in self._sent}

    def messages_page(self, conversation_id: str, after: int | None, before: int | None, limit: int) -> list[Message]:
        with self._guard():
            _check_limit(limit)
            stored = sorted(self._messages.get(conversation_id, {}).items())
            if after is not None:  # like SqlStore, `after` wins when both are given
                return [m for seq, m in stored if seq > after][:limit]
            if before is not None:
                stored = [(seq, m) for seq, m in stored if seq < before]
            return [m for _, m in stored[max(0, len(stored) - limit):]] if limit else []

    # ---- the group commit -------------------------------------------------------------------

    def apply(self, batch: WriteBatch, timeout_s: float | None = None) -> None:
        with self._guard():
            self._check(batch)  # raises before anything changes: the rollback of SqlStore
            self._insert_conversations(batch)
            self._change_members(batch)
            for conversation_id, (_, new_seq) in batch.seq_fences.items():
                self._conversations[conversation_id].last_seq = new_seq
                self._conversations[conversation_id].version += 1
            self._insert_messages(batch)
            for conversation_id, user_id, seq in batch.read_marks:
                key = (conversation_id, user_id)
                self._read_marks[key] = max(seq, self._read_marks.get(key, seq))
            self._append_events(batch)

    def _check(self, batch: WriteBatch) -> None:
        """Everything the transaction could trip over, in the order SqlStore meets it: its
        statements run first (conversations, members, read marks, then fences, messages and events
        in one pipeline) and the fences' answers are checked last. A message colliding with a
        stored one is StaleSequencer there too (another writer moved the conversation)."""
        self._check_placement(batch)
        self._check_new_conversations(batch)
        known = set(self._conversations) | {c.conversation_id for c in batch.new_conversations}
        for conversation_id, user_id, _ in batch.added_members:
            _check_ids(user_id=user_id)
            if conversation_id not in known:
                raise _refused(f"foreign key: no conversation {conversation_id!r} for member {user_id!r}")
        self._check_messages(batch.messages)
        for event in batch.events:
            _check_ids(user_id=event.user_id, kind=event.kind, conversation_id=event.conversation_id)
        self._check_fences(batch)

    def _check_placement(self, batch: WriteBatch) -> None:
        if batch.placement_fence is None:
            return
        region, index, epoch = batch.placement_fence
        stored = self.placements.fences.get((region, index))
        if stored is not None and stored != epoch:
            raise StalePlacement(f"shard {index} of {region}: epoch {epoch} is no longer current ({stored})")

    def _check_new_conversations(self, batch: WriteBatch) -> None:
        new_ids = [c.conversation_id for c in batch.new_conversations]
        for conversation in batch.new_conversations:
            _check_text(conversation.title)
            _check_ids(conversation_id=conversation.conversation_id, region=conversation.region,
                       user_id=conversation.created_by)
            for user_id in conversation.members:
                _check_ids(user_id=user_id)
        duplicates = {cid for cid in new_ids if cid in self._conversations or new_ids.count(cid) > 1}
        if duplicates:
            raise _refused(f"duplicate key: conversations {sorted(duplicates)}")

    def _check_fences(self, batch: WriteBatch) -> None:
        # New conversations are inserted earlier in the same transaction, so fences see them.
        last_seq = {cid: c.last_seq for cid, c in self._conversations.items()}
        last_seq.update({c.conversation_id: c.last_seq for c in batch.new_conversations})
        stale = sorted(cid for cid, (old, _) in batch.seq_fences.items() if last_seq.get(cid) != old)
        if stale:
            raise StaleSequencer(f"last_seq moved under the sequencer for {stale}")

    def _check_messages(self, messages: list[Message]) -> None:
        positions, ids, keys = set(), set(), set()
        for m in messages:
            _check_text(m.client_msg_id, m.body)
            _check_ids(conversation_id=m.conversation_id, message_id=m.message_id, user_id=m.sender)
            position, key = (m.conversation_id, m.seq), (m.conversation_id, m.sender, m.client_msg_id)
            if position in positions or m.seq in self._messages.get(m.conversation_id, {}):
                raise StaleSequencer(f"duplicate key: message seq {position}")
            if m.message_id in ids or m.message_id in self._message_ids:
                raise _refused(f"duplicate key: message_id {m.message_id!r}")
            if key in keys or key in self._sent:
                raise StaleSequencer(f"duplicate key: messages_idempotency {key}")
            positions.add(position)
            ids.add(m.message_id)
            keys.add(key)

    def _insert_conversations(self, batch: WriteBatch) -> None:
        for c in batch.new_conversations:
            self._conversations[c.conversation_id] = dataclasses.replace(c, members=set())
            self._members[c.conversation_id] = {user_id: c.created_at for user_id in sorted(c.members)}

    def _change_members(self, batch: WriteBatch) -> None:
        for conversation_id, user_id, joined_at in batch.added_members:
            self._members[conversation_id].setdefault(user_id, joined_at)  # ON CONFLICT DO NOTHING
        for conversation_id, user_id in batch.removed_members:
            self._members.get(conversation_id, {}).pop(user_id, None)

    def _insert_messages(self, batch: WriteBatch) -> None:
        for message in batch.messages:
            self._messages.setdefault(message.conversation_id, {})[message.seq] = message
            self._sent[(message.conversation_id, message.sender, message.client_msg_id)] = message
            self._message_ids.add(message.message_id)

    def _append_events(self, batch: WriteBatch) -> None:
        """Cursors continue from each mailbox's head, in batch order; set on the batch's events
        too, as SqlStore does, because the committer fans those very objects out."""
        if not batch.events:
            return
        counts = collections.Counter(event.user_id for event in batch.events)
        next_cursor = {}
        for user_id, count in counts.items():
            mailbox = self._mailboxes.setdefault(user_id, _Mailbox())
            next_cursor[user_id] = mailbox.head + 1
            mailbox.head += count
        created_at = batch.messages[0].ts if batch.messages else now_ms()
        for event in batch.events:
            event.cursor = next_cursor[event.user_id]
            event.region = self._mailboxes[event.user_id].region
            next_cursor[event.user_id] += 1
            payload = None if event.kind == MESSAGE else copy.deepcopy(event.payload)
            row = _StoredEvent(event.cursor, event.kind, event.conversation_id, event.seq, payload, created_at)
            self._events.setdefault(event.user_id, {})[event.cursor] = row

    # ---- mailboxes --------------------------------------------------------------------------

    def mailbox_head(self, user_id: str, home_region: str | None = None) -> MailboxHead:
        with self._guard():
            if home_region is not None:
                self._mailboxes.setdefault(user_id, _Mailbox()).region = home_region
            mailbox = self._mailboxes.get(user_id)
            return MailboxHead(mailbox.head, mailbox.pruned_through) if mailbox else MailboxHead(0, 0)

    def mailbox_regions(self, user_ids: list[str]) -> dict[str, str | None]:
        with self._guard():
            return {u: self._mailboxes[u].region for u in user_ids if u in self._mailboxes}

    def events_after(self, user_id: str, after: int, through: int, limit: int) -> list[MailboxEvent]:
        with self._guard():
            _check_limit(limit)
            rows = sorted(
                (row for cursor, row in self._events.get(user_id, {}).items() if after < cursor <= through),
                key=lambda row: row.cursor,
            )[:limit]
            return [self._event_from_row(user_id, row) for row in rows]

    def record_acks(self, acks: dict[str, int]) -> None:
        with self._guard():
            for user_id, cursor in acks.items():
                mailbox = self._mailboxes.get(user_id)  # an UPDATE: users without a mailbox stay so
                if mailbox is not None:
                    mailbox.acked = max(mailbox.acked, cursor)

    def prune_mailboxes(self, keep_days: int, keep_events: int, now_ms: int) -> int:
        """Delete events both older than keep_days and more than keep_events behind the head."""
        older_than = now_ms - keep_days * MS_PER_DAY
        deleted = 0
        with self._guard():
            for user_id, events in self._events.items():
                mailbox = self._mailboxes[user_id]
                doomed = [
                    cursor for cursor, row in events.items()
                    if cursor <= mailbox.head - keep_events and row.created_at < older_than
                ]
                for cursor in doomed:
                    del events[cursor]
                if doomed:
                    mailbox.pruned_through = max(mailbox.pruned_through, max(doomed))
                deleted += len(doomed)
        return deleted

    # ---- checkpoints and the replay after them ---------------------------------------------

    def save_checkpoint(self, owner: str, taken_at: int, state: bytes) -> None:
        with self._guard():
            stored = self._checkpoints.get(owner)
            if stored is None or stored.taken_at <= taken_at:
                self._checkpoints[owner] = StoredCheckpoint(owner, taken_at, bytes(state))

    def load_checkpoint(self, owner: str) -> StoredCheckpoint | None:
        with self._guard():
            return self._checkpoints.get(owner)

    def conversation_versions(self, conversation_ids: list[str]) -> dict[str, int]:
        with self._guard():
            return {cid: self._conversations[cid].version for cid in conversation_ids if cid in self._conversations}

    def load_conversations(self, conversation_ids: list[str]) -> list[Conversation]:
        with self._guard():
            return [self._conversation_copy(cid) for cid in dict.fromkeys(conversation_ids)
                    if cid in self._conversations]

    def messages_after(self, after: dict[str, int], limit: int) -> list[Message]:
        with self._guard():
            found = [m for cid, seq in after.items() for s, m in self._messages.get(cid, {}).items() if s > seq]
        # SqlStore's order: newest first by (ts, conversation_id, seq) for the limit, then oldest first.
        found.sort(key=lambda m: (-m.ts, m.conversation_id, -m.seq))
        return list(reversed(found[:max(limit, 0)]))

    def mailbox_heads(self, user_ids: list[str]) -> dict[str, MailboxHead]:
        with self._guard():
            return {u: MailboxHead(self._mailboxes[u].head, self._mailboxes[u].pruned_through)
                    for u in user_ids if u in self._mailboxes}

    # ---- for tests: state the Store protocol has no reader for -------------------------------

    def read_mark(self, conversation_id: str, user_id: str) -> int | None:
        with self._lock:
            return self._read_marks.get((conversation_id, user_id))

    def acked(self, user_id: str) -> int | None:
        with self._lock:
            mailbox = self._mailboxes.get(user_id)
            return mailbox.acked if mailbox else None

    # ---- internals --------------------------------------------------------------------------

    def _guard(self):
        """The lock, after the outage switch: a method of a store that is 'down' does nothing."""
        if self.fail_with is not None:
            raise self.fail_with
        return self._lock

    def _conversation_copy(self, conversation_id: str) -> Conversation:
        stored = self._conversations[conversation_id]
        marks = {u: seq for (cid, u), seq in self._read_marks.items() if cid == conversation_id}
        return dataclasses.replace(stored, members=set(self._members[conversation_id]), read_marks=marks)

    def _event_from_row(self, user_id: str, row: _StoredEvent) -> MailboxEvent:
        if row.kind == MESSAGE:
            message = self._messages.get(row.conversation_id, {}).get(row.seq)
            if message is None:  # SqlStore's LEFT JOIN finds nothing: the columns come back NULL
                message = Message(row.conversation_id, row.seq, None, None, None, None, None)
            payload = {"message": message.to_wire()}
        else:
            payload = copy.deepcopy(row.payload)
        return MailboxEvent(user_id, row.kind, row.conversation_id, payload, seq=row.seq, cursor=row.cursor)


def _refused(reason: str) -> StorageUnavailable:
    """What SqlStore raises when PostgreSQL refuses the transaction (an IntegrityError or a
    DataError is a DBAPIError, which it reports as StorageUnavailable)."""
    return StorageUnavailable(f"database refused the batch: {reason}")


def _check_text(*values: str) -> None:
    """PostgreSQL text cannot hold NUL (psycopg raises DataError), and a lone surrogate cannot be
    encoded to UTF-8 at all (psycopg lets the UnicodeEncodeError through, and so does SqlStore)."""
    for value in values:
        if "\x00" in value:
            raise _refused("text fields cannot contain NUL (0x00) bytes")
        value.encode("utf-8")


def _check_ids(**columns: str) -> None:
    for column, value in columns.items():
        if len(value) > ID_WIDTH[column]:
            raise _refused(f"value too long for {column} (at most {ID_WIDTH[column]} characters)")


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise _refused("LIMIT must not be negative")

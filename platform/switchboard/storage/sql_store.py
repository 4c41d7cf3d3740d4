"""The PostgreSQL Store: every transaction the platform runs, each a named method."""

from __future__ import annotations

import json
from collections import Counter

import psycopg
import psycopg.errors
from sqlalchemy import Engine, bindparam, exc, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ..protocol import now_ms
from . import schema
from .models import MESSAGE, Conversation, MailboxEvent, MailboxHead, Message, WriteBatch
from .store import StaleSequencer, StorageUnavailable


def _unavailable(error: Exception) -> StorageUnavailable:
    return StorageUnavailable(f"database unavailable: {type(error).__name__}: {str(error).splitlines()[0]}")


class SqlStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    # ---- conversations ---------------------------------------------------------------------

    def load_conversation(self, conversation_id: str) -> Conversation | None:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(schema.conversations).where(schema.conversations.c.conversation_id == conversation_id)
                ).mappings().first()
                if row is None:
                    return None
                member_ids = conn.execute(
                    select(schema.members.c.user_id).where(schema.members.c.conversation_id == conversation_id)
                ).scalars().all()
                marks = conn.execute(
                    select(schema.read_marks.c.user_id, schema.read_marks.c.seq).where(
                        schema.read_marks.c.conversation_id == conversation_id
                    )
                ).all()
        except exc.DBAPIError as error:
            raise _unavailable(error) from error
        return Conversation(members=set(member_ids), read_marks=dict(marks), **row)

    def list_conversations(self, user_id: str) -> list[Conversation]:
        query = text(
            """
            SELECT c.conversation_id, c.title, c.region, c.created_by, c.created_at, c.last_seq,
                   array_agg(everyone.user_id) AS member_ids
            FROM members mine
            JOIN conversations c ON c.conversation_id = mine.conversation_id
            JOIN members everyone ON everyone.conversation_id = c.conversation_id
            WHERE mine.user_id = :user_id
            GROUP BY c.conversation_id
            ORDER BY c.created_at, c.conversation_id
            """
        )
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query, {"user_id": user_id}).mappings().all()
        except exc.DBAPIError as error:
            raise _unavailable(error) from error
        result = []
        for row in rows:
            fields = dict(row)
            member_ids = fields.pop("member_ids")
            result.append(Conversation(members=set(member_ids), **fields))
        return result

    # ---- messages ---------------------------------------------------------------------------

    def find_sent(self, keys: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], Message]:
        if not keys:
            return {}
        query = text(
            """
            SELECT m.* FROM messages m
            JOIN unnest(CAST(:conversation_ids AS text[]), CAST(:senders AS text[]),
                        CAST(:client_ids AS text[])) AS k(conversation_id, sender, client_msg_id)
              ON m.conversation_id = k.conversation_id AND m.sender = k.sender
             AND m.client_msg_id = k.client_msg_id
            """
        )
        params = {
            "conversation_ids": [key[0] for key in keys],
            "senders": [key[1] for key in keys],
            "client_ids": [key[2] for key in keys],
        }
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query, params).mappings().all()
        except exc.DBAPIError as error:
            raise _unavailable(error) from error
        return {(row["conversation_id"], row["sender"], row["client_msg_id"]): Message(**row) for row in rows}

    def messages_page(self, conversation_id: str, after: int | None, before: int | None, limit: int) -> list[Message]:
        table = schema.messages
        query = select(table).where(table.c.conversation_id == conversation_id)
        if after is not None:
            query = query.where(table.c.seq > after).order_by(table.c.seq.asc())
        else:
            if before is not None:
                query = query.where(table.c.seq < before)
            query = query.order_by(table.c.seq.desc())
        query = query.limit(limit)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).mappings().all()
        except exc.DBAPIError as error:
            raise _unavailable(error) from error
        page = [Message(**row) for row in rows]
        return sorted(page, key=lambda message: message.seq)

    # ---- the group commit -------------------------------------------------------------------

    def apply(self, batch: WriteBatch) -> None:
        """One transaction. The rare parts (new conversations, membership, read marks) go through
        SQLAlchemy Core; the hot parts (sequence fences, messages, mailbox events) are one
        statement each over unnest()ed arrays, sent together in a psycopg pipeline: two round
        trips and almost no per-row Python, whatever the batch size."""
        try:
            with self.engine.begin() as conn:
                self._insert_conversations(conn, batch)
                self._change_members(conn, batch)
                self._upsert_read_marks(conn, batch)
                self._write_hot_path(conn.connection.driver_connection, batch)
        except StaleSequencer:
            raise
        except psycopg.errors.UniqueViolation as error:
            # The hot path is pipelined, so a message colliding with one already stored can fail
            # before the fence check runs: either way another writer moved this conversation.
            raise StaleSequencer(f"a message collided with a stored one: {error}") from error
        except exc.DBAPIError as error:
            if isinstance(error.orig, psycopg.errors.UniqueViolation):
                raise StaleSequencer(f"a row collided with a stored one: {error.orig}") from error
            raise _unavailable(error) from error
        except psycopg.Error as error:
            raise _unavailable(error) from error

    def _write_hot_path(self, driver, batch: WriteBatch) -> None:
        fence_ids = sorted(batch.seq_fences)
        with driver.cursor() as fences, driver.cursor() as inserts, driver.cursor() as events:
            with driver.pipeline():
                if fence_ids:
                    fences.execute(_ADVANCE_SEQUENCES, {
                        "ids": fence_ids,
                        "olds": [batch.seq_fences[i][0] for i in fence_ids],
                        "news": [batch.seq_fences[i][1] for i in fence_ids],
                    })
                if batch.messages:
                    inserts.execute(_INSERT_MESSAGES, _message_columns(batch.messages))
                if batch.events:
                    created_at = batch.messages[0].ts if batch.messages else now_ms()
                    events.execute(_APPEND_EVENTS, _event_columns(batch.events, created_at))
            if fence_ids:
                # A fence that did not move means another sequencer wrote (or a commit we
                # believed failed had landed): raising here rolls the whole batch back.
                moved = {row[0] for row in fences.fetchall()}
                if moved != set(fence_ids):
                    raise StaleSequencer(f"last_seq moved under the sequencer for {sorted(set(fence_ids) - moved)}")
            if batch.events:
                _assign_cursors(batch.events, events.fetchall())

    def _insert_conversations(self, conn, batch: WriteBatch) -> None:
        if not batch.new_conversations:
            return
        conn.execute(
            insert(schema.conversations),
            [
                {
                    "conversation_id": c.conversation_id, "title": c.title, "region": c.region,
                    "created_by": c.created_by, "created_at": c.created_at, "last_seq": c.last_seq,
                }
                for c in batch.new_conversations
            ],
        )
        conn.execute(
            insert(schema.members),
            [
                {"conversation_id": c.conversation_id, "user_id": user_id, "joined_at": c.created_at}
                for c in batch.new_conversations
                for user_id in sorted(c.members)
            ],
        )

    def _change_members(self, conn, batch: WriteBatch) -> None:
        if batch.added_members:
            conn.execute(
                pg_insert(schema.members).on_conflict_do_nothing(),
                [{"conversation_id": c, "user_id": u, "joined_at": ts} for c, u, ts in batch.added_members],
            )
        if batch.removed_members:
            table = schema.members
            conn.execute(
                table.delete().where(
                    table.c.conversation_id == bindparam("cid"), table.c.user_id == bindparam("uid")
                ),
                [{"cid": c, "uid": u} for c, u in batch.removed_members],
            )

    def _upsert_read_marks(self, conn, batch: WriteBatch) -> None:
        if not batch.read_marks:
            return
        statement = pg_insert(schema.read_marks)
        statement = statement.on_conflict_do_update(
            index_elements=["conversation_id", "user_id"],
            set_={"seq": text("GREATEST(read_marks.seq, excluded.seq)")},
        )
        conn.execute(statement, [{"conversation_id": c, "user_id": u, "seq": s} for c, u, s in batch.read_marks])

    # ---- mailboxes --------------------------------------------------------------------------

    def mailbox_head(self, user_id: str) -> MailboxHead:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(schema.mailboxes.c.head, schema.mailboxes.c.pruned_through).where(
                        schema.mailboxes.c.user_id == user_id
                    )
                ).first()
        except exc.DBAPIError as error:
            raise _unavailable(error) from error
        return MailboxHead(head=row[0], pruned_through=row[1]) if row else MailboxHead(0, 0)

    def events_after(self, user_id: str, after: int, through: int, limit: int) -> list[MailboxEvent]:
        query = text(
            """
            SELECT e.cursor, e.kind, e.conversation_id, e.seq, e.payload,
                   m.message_id, m.sender, m.client_msg_id, m.body, m.ts
            FROM mailbox_events e
            LEFT JOIN messages m
              ON e.kind = 'message' AND m.conversation_id = e.conversation_id AND m.seq = e.seq
            WHERE e.user_id = :user_id AND e.cursor > :after AND e.cursor <= :through
            ORDER BY e.cursor
            LIMIT :limit
            """
        )
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    query, {"user_id": user_id, "after": after, "through": through, "limit": limit}
                ).mappings().all()
        except exc.DBAPIError as error:
            raise _unavailable(error) from error
        return [_event_from_row(user_id, row) for row in rows]

    def record_acks(self, acks: dict[str, int]) -> None:
        if not acks:
            return
        table = schema.mailboxes
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    table.update()
                    .where(table.c.user_id == bindparam("uid"))
                    .values(acked=text("GREATEST(acked, :cursor)")),
                    [{"uid": u, "cursor": c} for u, c in sorted(acks.items())],
                )
        except exc.DBAPIError as error:
            raise _unavailable(error) from error

    def prune_mailboxes(self, keep_days: int, keep_events: int, now_ms: int) -> int:
        """Delete events that are both older than keep_days and more than keep_events behind
        their mailbox's head (PROTOCOL.md: whichever keeps more), and record what went."""
        query = text(
            """
            WITH doomed AS (
                DELETE FROM mailbox_events e USING mailboxes b
                WHERE e.user_id = b.user_id
                  AND e.cursor <= b.head - :keep_events
                  AND e.created_at < :older_than
                RETURNING e.user_id, e.cursor
            ), gone AS (
                SELECT user_id, max(cursor) AS through, count(*) AS n FROM doomed GROUP BY user_id
            ), marked AS (
                UPDATE mailboxes b SET pruned_through = GREATEST(b.pruned_through, gone.through)
                FROM gone WHERE b.user_id = gone.user_id
                RETURNING gone.n
            )
            SELECT COALESCE(sum(n), 0) FROM marked
            """
        )
        older_than = now_ms - keep_days * 86_400_000
        try:
            with self.engine.begin() as conn:
                return int(conn.execute(query, {"keep_events": keep_events, "older_than": older_than}).scalar())
        except exc.DBAPIError as error:
            raise _unavailable(error) from error


def _event_from_row(user_id: str, row) -> MailboxEvent:
    if row["kind"] == MESSAGE:
        message = Message(
            conversation_id=row["conversation_id"], seq=row["seq"], message_id=row["message_id"],
            sender=row["sender"], client_msg_id=row["client_msg_id"], body=row["body"], ts=row["ts"],
        )
        payload = {"message": message.to_wire()}
    else:
        payload = dict(row["payload"])
    return MailboxEvent(
        user_id=user_id, kind=row["kind"], conversation_id=row["conversation_id"],
        payload=payload, seq=row["seq"], cursor=row["cursor"],
    )



# ---- the hot-path statements ---------------------------------------------------------------------

_ADVANCE_SEQUENCES = """
    UPDATE conversations c SET last_seq = f.new_seq
    FROM unnest(%(ids)s::text[], %(olds)s::bigint[], %(news)s::bigint[]) AS f(conversation_id, old_seq, new_seq)
    WHERE c.conversation_id = f.conversation_id AND c.last_seq = f.old_seq
    RETURNING c.conversation_id
"""

_INSERT_MESSAGES = """
    INSERT INTO messages (conversation_id, seq, message_id, sender, client_msg_id, body, ts)
    SELECT * FROM unnest(%(conversation_ids)s::text[], %(seqs)s::bigint[], %(message_ids)s::text[],
                         %(senders)s::text[], %(client_ids)s::text[], %(bodies)s::text[], %(ts)s::bigint[])
"""

# Hands out cursors and writes the events in one statement. Mailbox rows are locked in user_id
# order, so two batches touching the same mailboxes never deadlock; the locks are held to commit,
# so each user's cursors are in commit order too: a committed cursor N means all below N are.
_APPEND_EVENTS = """
    WITH incoming AS (
        SELECT e.*, row_number() OVER (PARTITION BY e.user_id ORDER BY e.ord) AS nth
        FROM unnest(%(users)s::text[], %(kinds)s::text[], %(conversation_ids)s::text[],
                    %(seqs)s::bigint[], %(payloads)s::text[], %(ords)s::int[])
             AS e(user_id, kind, conversation_id, seq, payload, ord)
    ), counts AS (
        SELECT user_id, count(*) AS n FROM incoming GROUP BY user_id
    ), heads AS (
        INSERT INTO mailboxes (user_id, head)
        SELECT user_id, n FROM counts ORDER BY user_id
        ON CONFLICT (user_id) DO UPDATE SET head = mailboxes.head + excluded.head
        RETURNING user_id, head
    )
    INSERT INTO mailbox_events (user_id, cursor, kind, conversation_id, seq, payload, created_at)
    SELECT i.user_id, h.head - c.n + i.nth, i.kind, i.conversation_id, i.seq, i.payload::jsonb, %(created_at)s
    FROM incoming i JOIN heads h USING (user_id) JOIN counts c USING (user_id)
    RETURNING user_id, cursor
"""


def _message_columns(messages: list[Message]) -> dict:
    return {
        "conversation_ids": [m.conversation_id for m in messages],
        "seqs": [m.seq for m in messages],
        "message_ids": [m.message_id for m in messages],
        "senders": [m.sender for m in messages],
        "client_ids": [m.client_msg_id for m in messages],
        "bodies": [m.body for m in messages],
        "ts": [m.ts for m in messages],
    }


def _event_columns(events: list[MailboxEvent], created_at: int) -> dict:
    return {
        "users": [e.user_id for e in events],
        "kinds": [e.kind for e in events],
        "conversation_ids": [e.conversation_id for e in events],
        "seqs": [e.seq for e in events],
        # A message event points at its row in messages; storing the body once per member
        # would multiply a group's storage by its size.
        "payloads": [None if e.kind == MESSAGE else json.dumps(e.payload) for e in events],
        "ords": list(range(len(events))),
        "created_at": created_at,
    }


def _assign_cursors(events: list[MailboxEvent], returned: list[tuple[str, int]]) -> None:
    """Each user's cursors in this batch are consecutive and follow the batch order."""
    first: dict[str, int] = {}
    for user_id, cursor in returned:
        if user_id not in first or cursor < first[user_id]:
            first[user_id] = cursor
    taken: Counter = Counter()
    for event in events:
        event.cursor = first[event.user_id] + taken[event.user_id]
        taken[event.user_id] += 1

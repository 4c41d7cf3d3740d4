"""The PostgreSQL Store: every transaction the platform runs, each a named method."""

from __future__ import annotations

import psycopg
import psycopg.errors
from sqlalchemy import Engine, bindparam, exc, select, text

from . import schema
from .group_commit import write_batch
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
        """The group commit (group_commit.py), on a pooled connection used raw: the pipeline
        needs psycopg itself, and SQLAlchemy's per-statement work is exactly what it avoids."""
        connection = self.engine.raw_connection()
        try:
            write_batch(connection.driver_connection, batch)
        except (psycopg.errors.DivisionByZero, psycopg.errors.UniqueViolation) as error:
            # A fence that did not move, or a message colliding with a stored one: another
            # writer moved this conversation (or a retried send this process did not remember).
            _roll_back(connection)
            what = "a sequence fence did not move" if isinstance(error, psycopg.errors.DivisionByZero) else "a row collided"
            raise StaleSequencer(f"{what}: {str(error).splitlines()[0]}") from error
        except psycopg.Error as error:
            if connection.driver_connection.closed or isinstance(error, psycopg.OperationalError):
                connection.invalidate()  # the database went away: never hand this one out again
            else:
                _roll_back(connection)
            raise _unavailable(error) from error
        finally:
            connection.close()  # back to the pool

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




def _roll_back(connection) -> None:
    try:
        connection.rollback()
    except psycopg.Error:
        connection.invalidate()

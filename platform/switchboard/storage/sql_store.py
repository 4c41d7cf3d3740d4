"""The PostgreSQL Store: every transaction the platform runs, each a named method."""

from __future__ import annotations

import contextlib
import time

import psycopg
import psycopg.errors
from psycopg.pq import TransactionStatus
from sqlalchemy import Engine, bindparam, exc, select, text

from . import schema
from .group_commit import STALE_PLACEMENT_MARK, write_batch
from .models import MESSAGE, Conversation, MailboxEvent, MailboxHead, Message, StoredCheckpoint, WriteBatch
from .placements import PlacementStore
from .store import StalePlacement, StaleSequencer, StorageUnavailable
from .watchdog import WATCHDOG

# The watchdog cancels a transaction this long after its statement_timeout should have ended it
# (the server's own timeout comes first; this is for a server that does not keep to it).
CANCEL_GRACE_S = 0.5
CANCEL_TIMEOUT_S = 2.0


# What a database that cannot be reached raises through SQLAlchemy: a driver error, or no pooled
# connection freed in time (every one stuck on the dead server).
DATABASE_ERRORS = (exc.DBAPIError, exc.TimeoutError)


def _unavailable(error: Exception) -> StorageUnavailable:
    first_line = (str(error).splitlines() or [""])[0]
    return StorageUnavailable(f"database unavailable: {type(error).__name__}: {first_line}")


# A mailbox's home region, recorded when a socket attaches there. The row is locked even when the
# region is already right (ON CONFLICT locks the row it found), which orders the claim against
# the commits allocating the user's cursors.
CLAIM_MAILBOX = text(
    "INSERT INTO mailboxes (user_id, region) VALUES (:user_id, :region)"
    " ON CONFLICT (user_id) DO UPDATE SET region = excluded.region"
    " WHERE mailboxes.region IS DISTINCT FROM excluded.region"
)


class SqlStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.placements = PlacementStore(engine)

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
        except DATABASE_ERRORS as error:
            raise _unavailable(error) from error
        return Conversation(members=set(member_ids), read_marks=dict(marks), **row)

    def list_conversations(self, user_id: str, limit: int | None = None,
                           after: tuple[int, str] | None = None) -> list[Conversation]:
        """The user's conversations in (created_at, conversation_id) order: at most `limit` of
        them, those after the key `after` (a page's last one): keyset pages, so page N costs as
        little as page 1."""
        query = text(
            """
            WITH page AS (
                SELECT c.conversation_id, c.created_at
                FROM members mine JOIN conversations c ON c.conversation_id = mine.conversation_id
                WHERE mine.user_id = :user_id
                  AND (c.created_at, c.conversation_id) > (:after_ts, :after_id)
                ORDER BY c.created_at, c.conversation_id
                LIMIT :limit
            )
            SELECT c.conversation_id, c.title, c.region, c.created_by, c.created_at, c.last_seq,
                   array_agg(everyone.user_id) AS member_ids
            FROM page
            JOIN conversations c ON c.conversation_id = page.conversation_id
            JOIN members everyone ON everyone.conversation_id = c.conversation_id
            GROUP BY c.conversation_id
            ORDER BY c.created_at, c.conversation_id
            """
        )
        after_ts, after_id = after if after is not None else (-1, "")
        params = {"user_id": user_id, "after_ts": after_ts, "after_id": after_id,
                  "limit": limit if limit is not None else None}
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query, params).mappings().all()
        except DATABASE_ERRORS as error:
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
        except DATABASE_ERRORS as error:
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
        except DATABASE_ERRORS as error:
            raise _unavailable(error) from error
        page = [Message(**row) for row in rows]
        return sorted(page, key=lambda message: message.seq)

    # ---- the group commit -------------------------------------------------------------------

    def apply(self, batch: WriteBatch, timeout_s: float | None = None) -> None:
        """The group commit (group_commit.py), on a pooled connection used raw: the pipeline
        needs psycopg itself, and SQLAlchemy's per-statement work is exactly what it avoids.
        With `timeout_s`, the transaction fails (nothing committed) rather than run longer:
        statement_timeout on the server, and the watchdog's cancel a little later if the
        server does not keep to it."""
        timeout_ms = None if timeout_s is None else max(1, int(timeout_s * 1000))
        with self._raw_connection() as connection:
            driver = connection.driver_connection
            token = None
            if timeout_s is not None:
                token = WATCHDOG.arm(time.monotonic() + timeout_s + CANCEL_GRACE_S, _canceller(driver))
            try:
                write_batch(driver, batch, timeout_ms)
            except psycopg.errors.InvalidTextRepresentation as error:
                _roll_back(connection)
                if STALE_PLACEMENT_MARK in str(error):
                    raise StalePlacement(f"shard {batch.placement_fence[1]} of {batch.placement_fence[0]}: "
                                         f"epoch {batch.placement_fence[2]} is no longer current") from error
                raise _unavailable(error) from error
            except (psycopg.errors.DivisionByZero, psycopg.errors.UniqueViolation) as error:
                # A fence that did not move, or a message colliding with a stored one: another
                # writer moved this conversation (or a retried send this process did not remember).
                _roll_back(connection)
                what = "a sequence fence did not move" if isinstance(error, psycopg.errors.DivisionByZero) else "a row collided"
                raise StaleSequencer(f"{what}: {str(error).splitlines()[0]}") from error
            finally:
                if token is not None:
                    WATCHDOG.disarm(token)

    # ---- mailboxes --------------------------------------------------------------------------

    def mailbox_head(self, user_id: str, home_region: str | None = None) -> MailboxHead:
        """The mailbox's head; with home_region, first record that the user's mailbox now lives
        there (under the row's lock: a commit holding it finishes first, and its events are
        then below the head read here, so the attach replays them; later commits see the region)."""
        try:
            with self.engine.begin() as conn:
                if home_region is not None:
                    conn.execute(CLAIM_MAILBOX, {"user_id": user_id, "region": home_region})
                row = conn.execute(
                    select(schema.mailboxes.c.head, schema.mailboxes.c.pruned_through).where(
                        schema.mailboxes.c.user_id == user_id
                    )
                ).first()
        except DATABASE_ERRORS as error:
            raise _unavailable(error) from error
        return MailboxHead(head=row[0], pruned_through=row[1]) if row else MailboxHead(0, 0)

    def mailbox_regions(self, user_ids: list[str]) -> dict[str, str | None]:
        if not user_ids:
            return {}
        rows = self._fetch_many(
            "SELECT m.user_id, m.region FROM unnest(%s::text[]) AS k(user_id) JOIN mailboxes m USING (user_id)",
            user_ids,
        )
        return dict(rows)

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
        except DATABASE_ERRORS as error:
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
        except DATABASE_ERRORS as error:
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
        except DATABASE_ERRORS as error:
            raise _unavailable(error) from error

    # ---- checkpoints and the replay after them ---------------------------------------------

    def save_checkpoint(self, owner: str, taken_at: int, state: bytes) -> None:
        # The WHERE keeps a newer checkpoint from being replaced by an older one (a stale instance
        # of the actor still finishing a checkpoint while its replacement already wrote one).
        query = text(
            """
            INSERT INTO checkpoints (owner, taken_at, state) VALUES (:owner, :taken_at, :state)
            ON CONFLICT (owner) DO UPDATE SET taken_at = excluded.taken_at, state = excluded.state
            WHERE checkpoints.taken_at <= excluded.taken_at
            """
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(query, {"owner": owner, "taken_at": taken_at, "state": state})
        except DATABASE_ERRORS as error:
            raise _unavailable(error) from error

    def load_checkpoint(self, owner: str) -> StoredCheckpoint | None:
        table = schema.checkpoints
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(table.c.taken_at, table.c.state).where(table.c.owner == owner)
                ).first()
        except DATABASE_ERRORS as error:
            raise _unavailable(error) from error
        return StoredCheckpoint(owner=owner, taken_at=row[0], state=bytes(row[1])) if row else None

    def conversation_versions(self, conversation_ids: list[str]) -> dict[str, int]:
        if not conversation_ids:
            return {}
        rows = self._fetch_many(
            "SELECT c.conversation_id, c.version FROM unnest(%s::text[]) AS k(conversation_id)"
            " JOIN conversations c USING (conversation_id)", conversation_ids,
        )
        return dict(rows)

    def load_conversations(self, conversation_ids: list[str]) -> list[Conversation]:
        if not conversation_ids:
            return []
        params = {"ids": conversation_ids}
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT * FROM conversations WHERE conversation_id = ANY(CAST(:ids AS text[]))"), params
                ).mappings().all()
                members = conn.execute(
                    text("SELECT conversation_id, user_id FROM members"
                         " WHERE conversation_id = ANY(CAST(:ids AS text[]))"), params
                ).all()
                marks = conn.execute(
                    text("SELECT conversation_id, user_id, seq FROM read_marks"
                         " WHERE conversation_id = ANY(CAST(:ids AS text[]))"), params
                ).all()
        except DATABASE_ERRORS as error:
            raise _unavailable(error) from error
        conversations = {row["conversation_id"]: Conversation(members=set(), **row) for row in rows}
        for conversation_id, user_id in members:
            conversations[conversation_id].members.add(user_id)
        for conversation_id, user_id, seq in marks:
            if conversation_id in conversations:
                conversations[conversation_id].read_marks[user_id] = seq
        return list(conversations.values())

    def messages_after(self, after: dict[str, int], limit: int) -> list[Message]:
        if not after or limit <= 0:
            return []
        query = text(
            """
            SELECT m.* FROM messages m
            JOIN unnest(CAST(:ids AS text[]), CAST(:afters AS bigint[])) AS k(conversation_id, after_seq)
              ON m.conversation_id = k.conversation_id AND m.seq > k.after_seq
            ORDER BY m.ts DESC, m.conversation_id, m.seq DESC
            LIMIT :limit
            """
        )
        ids = sorted(after)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    query, {"ids": ids, "afters": [after[i] for i in ids], "limit": limit}
                ).mappings().all()
        except DATABASE_ERRORS as error:
            raise _unavailable(error) from error
        return [Message(**row) for row in reversed(rows)]

    def mailbox_heads(self, user_ids: list[str]) -> dict[str, MailboxHead]:
        if not user_ids:
            return {}
        rows = self._fetch_many(
            "SELECT m.user_id, m.head, m.pruned_through FROM unnest(%s::text[]) AS k(user_id)"
            " JOIN mailboxes m USING (user_id)", user_ids,
        )
        return {user_id: MailboxHead(head=head, pruned_through=pruned) for user_id, head, pruned in rows}

    def _fetch_many(self, query: str, keys: list[str]) -> list[tuple]:
        """One read of many rows by key on a raw psycopg cursor: for the 10,000-key reads of a
        restart, SQLAlchemy's per-row result processing took half the time."""
        with self._raw_connection() as connection:
            with connection.driver_connection.cursor() as cursor:
                cursor.execute(query, (keys,))
                rows = cursor.fetchall()
            connection.driver_connection.rollback()  # end the read's transaction
            return rows

    @contextlib.contextmanager
    def _raw_connection(self):
        """A pooled connection used as psycopg itself. Any database error on it (getting one
        included) leaves as StorageUnavailable, and a connection that may be out of step with
        its server is never handed out again."""
        try:
            connection = self.engine.raw_connection()
        except (psycopg.Error, *DATABASE_ERRORS) as error:  # no connection to be had
            raise _unavailable(error) from error
        try:
            yield connection
        except psycopg.Error as error:
            if _out_of_step(connection.driver_connection, error):
                connection.invalidate()  # the database went away, or a message was cut short
            else:
                _roll_back(connection)
            raise _unavailable(error) from error
        finally:
            connection.close()  # back to the pool


def _out_of_step(driver, error: psycopg.Error) -> bool:
    """True when the connection cannot be trusted for another transaction: closed, broken, or
    still busy with a command (a pipeline cut short would otherwise hang the next ROLLBACK)."""
    if driver.closed or isinstance(error, psycopg.OperationalError):
        return True
    return driver.info.transaction_status in (TransactionStatus.ACTIVE, TransactionStatus.UNKNOWN)


def _canceller(driver):
    def cancel() -> None:
        driver.cancel_safe(timeout=CANCEL_TIMEOUT_S)
    return cancel


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

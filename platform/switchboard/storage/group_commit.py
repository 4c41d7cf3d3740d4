"""The group commit: one batch of operations written as one transaction in ONE round trip.

Every statement takes whole columns at once (arrays through unnest, or one JSON document of rows),
so a batch of 500 sends costs the same number of statements as a batch of one; the statements and the
COMMIT go out together in a psycopg pipeline and come back with a single sync. DESIGN.md measured
commits 30x faster batched than per row: durable-before-ack needs this.

The checks that must veto the commit are made by the statements themselves, so the COMMIT can be
pipelined behind them: a sequence fence that does not move divides by zero, a retried message hits
the unique index, a shard whose placement epoch is no longer current fails a cast; any of these
aborts the transaction and the COMMIT that follows becomes a no-op.

Why the COMMIT is a statement in the pipeline and not `connection.commit()`: inside a pipeline,
psycopg's commit() syncs and then waits only for the server's answer, after a single flush of its
output buffer. When the batch's statements are larger than the socket can take at once (a
10,000-member conversation is ~1.2 MB of rows), the rest of the last statement stays in libpq's
buffer, the server waits for it (`ClientRead`), psycopg waits for the server: a shard's writer
stuck for good (found by a hostile-client review; tests/integration/test_hostile_sizes.py).
Leaving the pipeline flushes everything before it waits, so the COMMIT goes in as a statement
and the pipeline's exit sends it.

Every transaction first sets its own statement_timeout (the time its operations have left before
their sends must be answered): a database that hangs makes the batch fail in time, and what
failed was not committed.
"""

from __future__ import annotations

import json
from collections import Counter

from ..protocol import now_ms
from .models import MESSAGE, MailboxEvent, Message, WriteBatch


def write_batch(driver, batch: WriteBatch, statement_timeout_ms: int | None = None) -> None:
    """Run the batch's transaction on a psycopg connection (not in a transaction yet) and
    commit it; assigns each event its cursor. Raises psycopg errors untranslated."""
    with driver.cursor() as cursor, driver.cursor() as events:
        with driver.pipeline():  # its exit flushes every byte, then reads every answer
            if statement_timeout_ms is not None:
                cursor.execute(SET_STATEMENT_TIMEOUT, {"ms": str(max(1, int(statement_timeout_ms)))})
            if batch.placement_fence is not None:
                region, index, epoch = batch.placement_fence
                cursor.execute(PLACEMENT_FENCE, {"region": region, "index": index, "epoch": epoch})
            for statement, params in _statements(batch):
                cursor.execute(statement, params)
            if batch.events:
                created_at = batch.messages[0].ts if batch.messages else now_ms()
                events.execute(APPEND_EVENTS, _event_columns(batch.events, created_at))
            cursor.execute("COMMIT")
        if batch.events:
            _assign_cursors(batch.events, events.fetchall())


def _statements(batch: WriteBatch):
    if batch.new_conversations:
        yield INSERT_CONVERSATIONS, {
            "ids": [c.conversation_id for c in batch.new_conversations],
            "titles": [c.title for c in batch.new_conversations],
            "regions": [c.region for c in batch.new_conversations],
            "creators": [c.created_by for c in batch.new_conversations],
            "created": [c.created_at for c in batch.new_conversations],
        }
    joins = [(c.conversation_id, u, c.created_at) for c in batch.new_conversations for u in sorted(c.members)]
    joins += batch.added_members
    if joins:
        yield ADD_MEMBERS, {
            "ids": [j[0] for j in joins], "users": [j[1] for j in joins], "joined": [j[2] for j in joins],
        }
    if batch.removed_members:
        yield REMOVE_MEMBERS, {
            "ids": [r[0] for r in batch.removed_members], "users": [r[1] for r in batch.removed_members],
        }
    if batch.seq_fences:
        ids = sorted(batch.seq_fences)
        yield ADVANCE_SEQUENCES, {
            "ids": ids,
            "olds": [batch.seq_fences[i][0] for i in ids],
            "news": [batch.seq_fences[i][1] for i in ids],
            "expected": len(ids),
        }
    if batch.messages:
        yield INSERT_MESSAGES, _message_columns(batch.messages)
    if batch.read_marks:
        yield UPSERT_READ_MARKS, {
            "ids": [r[0] for r in batch.read_marks],
            "users": [r[1] for r in batch.read_marks],
            "seqs": [r[2] for r in batch.read_marks],
        }


# Local to the transaction: the connection's own default applies again after it.
SET_STATEMENT_TIMEOUT = "SELECT set_config('statement_timeout', %(ms)s, true)"

# First, so nothing else is locked while a reshard holds the row: the shard's row of
# placement_fences, held shared to COMMIT (a reshard's update of it waits for this commit, and a
# commit after the update sees the new epoch). A stale epoch fails the cast with our marker in the
# message: SqlStore turns that into StalePlacement. No row (a region older than placements): no check.
STALE_PLACEMENT_MARK = "stale placement epoch"
PLACEMENT_FENCE = f"""
    SELECT (CASE WHEN epoch = %(epoch)s THEN '1' ELSE '{STALE_PLACEMENT_MARK}' END)::int
    FROM placement_fences WHERE region = %(region)s AND shard_index = %(index)s FOR SHARE
"""

INSERT_CONVERSATIONS = """
    INSERT INTO conversations (conversation_id, title, region, created_by, created_at, last_seq)
    SELECT id, title, region, creator, created, 0
    FROM unnest(%(ids)s::text[], %(titles)s::text[], %(regions)s::text[], %(creators)s::text[],
                %(created)s::bigint[]) AS c(id, title, region, creator, created)
"""

ADD_MEMBERS = """
    INSERT INTO members (conversation_id, user_id, joined_at)
    SELECT * FROM unnest(%(ids)s::text[], %(users)s::text[], %(joined)s::bigint[])
    ON CONFLICT DO NOTHING
"""

REMOVE_MEMBERS = """
    DELETE FROM members m USING unnest(%(ids)s::text[], %(users)s::text[]) AS r(conversation_id, user_id)
    WHERE m.conversation_id = r.conversation_id AND m.user_id = r.user_id
"""

# Moves each conversation's last_seq, but only from the value its sequencer expects. If any fence
# does not move (another sequencer wrote, or a commit believed failed had landed) the division by
# zero aborts the whole transaction; SqlStore turns that error into StaleSequencer. The version moves
# with it: a checkpoint recorded the version, so a restart can tell which conversations changed.
ADVANCE_SEQUENCES = """
    WITH moved AS (
        UPDATE conversations c SET last_seq = f.new_seq, version = c.version + 1
        FROM unnest(%(ids)s::text[], %(olds)s::bigint[], %(news)s::bigint[]) AS f(conversation_id, old_seq, new_seq)
        WHERE c.conversation_id = f.conversation_id AND c.last_seq = f.old_seq
        RETURNING 1
    )
    SELECT 1 / (count(*) = %(expected)s)::int FROM moved
"""

# The two statements that carry a row per message and per recipient take their rows as one JSON
# document: the stdlib's C encoder builds it far faster than psycopg dumps Python lists element by
# element, which was the largest cost of a big batch on the writer thread.
INSERT_MESSAGES = """
    INSERT INTO messages (conversation_id, seq, message_id, sender, client_msg_id, body, ts)
    SELECT conversation_id, seq, message_id, sender, client_msg_id, body, ts
    FROM json_to_recordset(%(rows)s::json) AS m(conversation_id text, seq bigint, message_id text,
                                                sender text, client_msg_id text, body text, ts bigint)
"""

UPSERT_READ_MARKS = """
    INSERT INTO read_marks (conversation_id, user_id, seq)
    SELECT * FROM unnest(%(ids)s::text[], %(users)s::text[], %(seqs)s::bigint[])
    ON CONFLICT (conversation_id, user_id) DO UPDATE SET seq = GREATEST(read_marks.seq, excluded.seq)
"""

# Hands out cursors and writes the events in one statement. Mailbox rows are locked in user_id
# order, so two batches touching the same mailboxes never deadlock; the locks are held to commit,
# so each user's cursors are in commit order too: a committed cursor N means all below N are.
APPEND_EVENTS = """
    WITH incoming AS (
        SELECT e.*, row_number() OVER (PARTITION BY e.user_id ORDER BY e.ord) AS nth
        FROM json_to_recordset(%(rows)s::json)
             AS e(user_id text, kind text, conversation_id text, seq bigint, payload jsonb, ord int)
    ), counts AS (
        SELECT user_id, count(*) AS n FROM incoming GROUP BY user_id
    ), heads AS (
        INSERT INTO mailboxes (user_id, head)
        SELECT user_id, n FROM counts ORDER BY user_id
        ON CONFLICT (user_id) DO UPDATE SET head = mailboxes.head + excluded.head
        RETURNING user_id, head, region
    ), appended AS (
        INSERT INTO mailbox_events (user_id, cursor, kind, conversation_id, seq, payload, created_at)
        SELECT i.user_id, h.head - c.n + i.nth, i.kind, i.conversation_id, i.seq, i.payload, %(created_at)s
        FROM incoming i JOIN heads h USING (user_id) JOIN counts c USING (user_id)
    )
    SELECT h.user_id, h.head - c.n + 1, h.region FROM heads h JOIN counts c USING (user_id)
"""


def _message_columns(messages: list[Message]) -> dict:
    return {"rows": json.dumps([m.to_wire() for m in messages])}


def _event_columns(events: list[MailboxEvent], created_at: int) -> dict:
    rows = [
        {
            "user_id": e.user_id, "kind": e.kind, "conversation_id": e.conversation_id, "seq": e.seq,
            # A message event points at its row in messages; storing the body once per member
            # would multiply a group's storage by its size.
            "payload": None if e.kind == MESSAGE else e.payload,
            "ord": ordinal,
        }
        for ordinal, e in enumerate(events)
    ]
    return {"rows": json.dumps(rows), "created_at": created_at}


def _assign_cursors(events: list[MailboxEvent], returned: list[tuple[str, int, str | None]]) -> None:
    """Each user's cursors in this batch are consecutive from the first one returned and follow
    the batch order; each event also learns its recipient's home region (the row's, under the lock
    this transaction held, so a socket that attached elsewhere since is found by its replay)."""
    first = {user_id: (cursor, region) for user_id, cursor, region in returned}
    taken: Counter = Counter()
    for event in events:
        cursor, event.region = first[event.user_id]
        event.cursor = cursor + taken[event.user_id]
        taken[event.user_id] += 1

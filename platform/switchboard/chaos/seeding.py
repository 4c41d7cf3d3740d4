"""Seed each shard with mailboxes that have history, as the platform itself would have written them.

PROTOCOL.md's recovery goal is stated for a shard holding 10,000 mailboxes with history, so before
the chaos run each shard gets that many users (ids chosen to hash onto it), paired into direct
conversations with a few messages each. Everything goes straight into the storage tables in one
COPY per table, consistent with what a group commit writes: the conversation with its last_seq
fence, its members, the messages, one mailbox event per member (a `member joined` event, then one
per message) with gap-free cursors, and each mailbox's head. Nothing here depends on the shards'
own state (checkpoints included): a shard must cope with whatever the tables hold.
"""

from __future__ import annotations

import dataclasses
import itertools
import json

from sqlalchemy import Engine

from switchboard.actors.ring import Ring
from switchboard.protocol import new_message_id, now_ms

SEED_PREFIX = "seed"
MESSAGES_PER_CONVERSATION = 3


@dataclasses.dataclass
class SeedSummary:
    mailboxes_per_shard: dict[int, int]
    conversations: int
    messages: int
    events: int


def seed_user_ids(run_id: str, shard_count: int, per_shard: int) -> dict[int, list[str]]:
    ring = Ring(shard_count)
    buckets: dict[int, list[str]] = {index: [] for index in range(shard_count)}
    for n in itertools.count():
        if all(len(bucket) >= per_shard for bucket in buckets.values()):
            return buckets
        user_id = f"{SEED_PREFIX}-{run_id}-{n}"
        bucket = buckets[ring.user_shard(user_id)]
        if len(bucket) < per_shard:
            bucket.append(user_id)


def seed_mailboxes(engine: Engine, run_id: str, shard_count: int, per_shard: int, region: str = "local") -> SeedSummary:
    buckets = seed_user_ids(run_id, shard_count, per_shard)
    created = now_ms()
    conversations, members, messages, events, heads = [], [], [], [], {}
    for shard_index, users in buckets.items():
        for pair_number, pair in enumerate(zip(users[0::2], users[1::2])):
            conversation_id = f"c_{SEED_PREFIX}_{run_id}_{shard_index}_{pair_number}"
            conversations.append(
                (conversation_id, "seeded history", region, pair[0], created, MESSAGES_PER_CONVERSATION))
            for user_id in pair:
                members.append((conversation_id, user_id, created))
                heads[user_id] = 1
                payload = {"conversation_id": conversation_id, "user_id": user_id, "action": "joined"}
                events.append((user_id, 1, "member", conversation_id, None, json.dumps(payload), created))
            for seq in range(1, MESSAGES_PER_CONVERSATION + 1):
                sender = pair[seq % 2]
                messages.append((conversation_id, seq, new_message_id(), sender, f"seed-{seq}",
                                 f"seeded message {seq}", created))
                for user_id in pair:
                    heads[user_id] += 1
                    events.append((user_id, heads[user_id], "message", conversation_id, seq, None, created))
    connection = engine.raw_connection()
    try:
        driver = connection.driver_connection
        with driver.cursor() as cursor:
            _copy(cursor, "conversations (conversation_id, title, region, created_by, created_at, last_seq)",
                  conversations)
            _copy(cursor, "members (conversation_id, user_id, joined_at)", members)
            _copy(cursor, "messages (conversation_id, seq, message_id, sender, client_msg_id, body, ts)", messages)
            _copy(cursor, "mailbox_events (user_id, cursor, kind, conversation_id, seq, payload, created_at)", events)
            _copy(cursor, "mailboxes (user_id, head)", sorted(heads.items()))
        driver.commit()
    finally:
        connection.close()
    return SeedSummary(
        mailboxes_per_shard={index: len(users) for index, users in buckets.items()},
        conversations=len(conversations), messages=len(messages), events=len(events),
    )


def _copy(cursor, target: str, rows: list[tuple]) -> None:
    with cursor.copy(f"COPY {target} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)

"""What the database holds about the chaos traffic: its conversations' messages and members, and its
users' mailbox events and heads, read into the checker's plain records."""

from __future__ import annotations

from sqlalchemy import Engine, text

from .history import DatabaseState, StoredEvent, StoredMessage

MESSAGES = text("""
    SELECT conversation_id, seq, message_id, sender, client_msg_id, body
    FROM messages WHERE conversation_id = ANY(:conversations) ORDER BY conversation_id, seq
""")
MEMBERS = text("SELECT conversation_id, user_id FROM members WHERE conversation_id = ANY(:conversations)")
EVENTS = text("""
    SELECT user_id, cursor, kind, conversation_id, seq
    FROM mailbox_events WHERE user_id = ANY(:users) ORDER BY user_id, cursor
""")
HEADS = text("SELECT user_id, head FROM mailboxes WHERE user_id = ANY(:users)")


def mailbox_heads(engine: Engine, user_ids: list[str]) -> dict[str, int]:
    with engine.connect() as connection:
        return {row.user_id: row.head for row in connection.execute(HEADS, {"users": user_ids})}


def database_state(engine: Engine, conversation_ids: list[str], user_ids: list[str]) -> DatabaseState:
    with engine.connect() as connection:
        messages = [StoredMessage(**row._mapping) for row in
                    connection.execute(MESSAGES, {"conversations": conversation_ids})]
        members: dict[str, set[str]] = {}
        for row in connection.execute(MEMBERS, {"conversations": conversation_ids}):
            members.setdefault(row.conversation_id, set()).add(row.user_id)
        events = [StoredEvent(**row._mapping) for row in connection.execute(EVENTS, {"users": user_ids})]
    return DatabaseState(messages=messages, members=members, events=events)

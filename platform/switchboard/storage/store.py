"""The storage interface the actors and the gateway program against.

SqlStore (sql_store.py) is the real one; MemoryStore (memory_store.py) serves fast unit tests of
the plain logic classes. Every method is synchronous: async callers run it in a worker thread.
"""

from __future__ import annotations

from typing import Protocol

from .models import Conversation, MailboxEvent, MailboxHead, Message, StoredCheckpoint, WriteBatch


class StaleSequencer(Exception):
    """The conversation's last_seq in the database is not what its sequencer believed: another
    sequencer wrote it (or a commit's outcome was lost). The batch was rolled back."""


class StalePlacement(Exception):
    """The committing shard's placement epoch is no longer its region's: a reshard moved it on
    (storage/placements.py). The batch was rolled back; the shard must adopt the new placement."""


class StorageUnavailable(Exception):
    """The database could not be reached or the transaction failed; nothing was committed."""


class Store(Protocol):
    def load_conversation(self, conversation_id: str) -> Conversation | None: ...

    def find_sent(self, keys: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], Message]:
        """Messages already stored under these (conversation_id, sender, client_msg_id) keys."""

    def apply(self, batch: WriteBatch, timeout_s: float | None = None) -> None:
        """Commit the batch in one transaction, assigning each event its cursor. With timeout_s,
        a transaction that would take longer fails instead (StorageUnavailable, nothing written)."""

    def mailbox_head(self, user_id: str, home_region: str | None = None) -> MailboxHead:
        """The mailbox's head; with home_region, first record that its user's mailbox lives in
        that region now (a commit's events then carry it: MailboxEvent.region)."""

    def mailbox_regions(self, user_ids: list[str]) -> dict[str, str | None]:
        """The recorded home region of each of these users that has a mailbox row."""

    def events_after(self, user_id: str, after: int, through: int, limit: int) -> list[MailboxEvent]: ...

    def list_conversations(self, user_id: str, limit: int | None = None,
                           after: tuple[int, str] | None = None) -> list[Conversation]:
        """The user's conversations in (created_at, conversation_id) order, `limit` of them
        after the key `after` (None: from the first)."""

    def messages_page(self, conversation_id: str, after: int | None, before: int | None, limit: int) -> list[Message]: ...

    def record_acks(self, acks: dict[str, int]) -> None: ...

    def prune_mailboxes(self, keep_days: int, keep_events: int, now_ms: int) -> int: ...

    # ---- checkpoints and the replay after them (actors/checkpoint.py) ----------------------

    def save_checkpoint(self, owner: str, taken_at: int, state: bytes) -> None:
        """Replace owner's checkpoint, unless the stored one was taken later."""

    def load_checkpoint(self, owner: str) -> StoredCheckpoint | None: ...

    def conversation_versions(self, conversation_ids: list[str]) -> dict[str, int]:
        """The stored version of each of these conversations that exists."""

    def load_conversations(self, conversation_ids: list[str]) -> list[Conversation]:
        """load_conversation for many at once (those that exist)."""

    def messages_after(self, after: dict[str, int], limit: int) -> list[Message]:
        """The newest `limit` messages with seq > after[conversation_id], oldest first."""

    def mailbox_heads(self, user_ids: list[str]) -> dict[str, MailboxHead]:
        """mailbox_head for many at once (users without a mailbox row are absent)."""

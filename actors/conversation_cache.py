"""The sequencer's memory of the conversations it owns, and of ids that do not exist.

An LRU of Conversation objects (never changed in place: a batch works on copies and replaces the
cached ones on commit, so another thread may read them while commits go on) and an LRU of
conversation ids looked up and not found, so that a flood of sends or typing to made-up ids costs
no query each. Only the owning sequencer creates a conversation, and remembering it clears its
miss; the miss's expiry is a second line of defence.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable

from switchboard.storage.models import Conversation

# Conversations kept in memory per shard; a colder one is reloaded from PostgreSQL on next use.
CONVERSATION_CACHE_SIZE = 50_000
MISSES_MAX = 10_000
MISS_TTL_S = 60.0

# What peek() answers when the cache cannot say.
UNKNOWN = object()


class ConversationCache:
    def __init__(self, size: int = CONVERSATION_CACHE_SIZE, clock: Callable[[], float] = time.monotonic):
        self.size = size
        self.clock = clock
        self._conversations: collections.OrderedDict[str, Conversation] = collections.OrderedDict()
        self._misses: collections.OrderedDict[str, float] = collections.OrderedDict()  # id -> expiry

    def __contains__(self, conversation_id: str) -> bool:
        return conversation_id in self._conversations

    def __len__(self) -> int:
        return len(self._conversations)

    def get(self, conversation_id: str) -> Conversation | None:
        """The cached conversation (now the most recently used), or None."""
        cached = self._conversations.get(conversation_id)
        if cached is not None:
            self._conversations.move_to_end(conversation_id)
        return cached

    def peek(self, conversation_id: str):
        """The conversation, None if it is known not to exist, or UNKNOWN; changes nothing, so it
        is safe from another thread than the writer (each lookup is one atomic dict operation)."""
        cached = self._conversations.get(conversation_id)
        if cached is not None:
            return cached
        expiry = self._misses.get(conversation_id)
        return None if expiry is not None and expiry > self.clock() else UNKNOWN

    def values(self) -> list[Conversation]:
        return list(self._conversations.values())

    def remember(self, conversation: Conversation) -> None:
        self._misses.pop(conversation.conversation_id, None)
        self._conversations[conversation.conversation_id] = conversation
        self._conversations.move_to_end(conversation.conversation_id)
        while len(self._conversations) > self.size:
            self._conversations.popitem(last=False)

    def forget(self, conversation_ids: Iterable[str]) -> None:
        for conversation_id in conversation_ids:
            self._conversations.pop(conversation_id, None)

    def let_go(self, owns: Callable[[str], bool]) -> int:
        """After a reshard: drop the conversations another shard owns now, and every miss (a
        conversation created by its old owner meanwhile must not be taken for one that does not
        exist). Returns how many conversations were dropped."""
        moved = [cid for cid in self._conversations if not owns(cid)]
        self.forget(moved)
        self._misses.clear()
        return len(moved)

    def clear(self) -> None:
        self._conversations.clear()
        self._misses.clear()

    def known_missing(self, conversation_id: str) -> bool:
        expiry = self._misses.get(conversation_id)
        if expiry is None:
            return False
        if expiry > self.clock():
            return True
        del self._misses[conversation_id]
        return False

    def remember_miss(self, conversation_id: str) -> None:
        self._misses[conversation_id] = self.clock() + MISS_TTL_S
        self._misses.move_to_end(conversation_id)
        while len(self._misses) > MISSES_MAX:
            self._misses.popitem(last=False)

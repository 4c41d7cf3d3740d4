"""Who hears a typing indicator, found without the shard's writer thread.

Typing is ephemeral (PROTOCOL.md: no cursor, not stored), so it must never queue behind a group
commit nor make the writer read the database. The relay reads the sequencer's cache without
touching it (ConversationCache.peek); a conversation the cache does not know is read on a reader
thread and kept here briefly, one read at a time per id, so a burst of typing costs one query.
A conversation known not to exist is answered from the miss cache.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable

from switchboard.errors import Forbidden, NotFound
from switchboard.storage.models import Conversation
from switchboard.storage.store import Store

from .conversation_cache import UNKNOWN, ConversationCache

# How long a conversation read here (not owned by the sequencer's cache yet) answers typing.
# Membership changes go through the sequencer, which caches the conversation: a stale copy here
# can only outlive a change to a cold conversation by this long.
LOADED_TTL_S = 5.0
LOADED_MAX = 10_000


class TypingRelay:
    def __init__(self, cache: ConversationCache, store: Store, run_blocking: Callable[..., Awaitable],
                 clock: Callable[[], float] = time.monotonic):
        self.cache = cache
        self.store = store
        self.run_blocking = run_blocking
        self.clock = clock
        self._loaded: collections.OrderedDict[str, tuple[float, Conversation | None]] = collections.OrderedDict()
        self._loading: dict[str, asyncio.Future] = {}
        self.loads = 0

    async def recipients(self, conversation_id: str, user_id: str) -> list[str]:
        """The other members, or NotFound / Forbidden as for any other call on the conversation."""
        conversation = self.cache.peek(conversation_id)
        if conversation is UNKNOWN:
            conversation = await self._read(conversation_id)
        if conversation is None:
            raise NotFound("no such conversation")
        if user_id not in conversation.members:
            raise Forbidden("not a member of this conversation")
        return sorted(conversation.members - {user_id})

    async def _read(self, conversation_id: str) -> Conversation | None:
        kept = self._loaded.get(conversation_id)
        if kept is not None and kept[0] > self.clock():
            return kept[1]
        loading = self._loading.get(conversation_id)
        if loading is None:
            loading = self._loading[conversation_id] = asyncio.ensure_future(self._load(conversation_id))
            loading.add_done_callback(lambda _: self._loading.pop(conversation_id, None))
        return await asyncio.shield(loading)

    async def _load(self, conversation_id: str) -> Conversation | None:
        self.loads += 1
        conversation = await self.run_blocking(self.store.load_conversation, conversation_id)
        self._loaded[conversation_id] = (self.clock() + LOADED_TTL_S, conversation)
        self._loaded.move_to_end(conversation_id)
        while len(self._loaded) > LOADED_MAX:
            self._loaded.popitem(last=False)
        return conversation

"""Consistent hashing: which shard owns a user's mailbox or a conversation's sequencer.

Every process must agree on the owner, so the hash is a stable digest, never Python's hash().
Virtual nodes spread keys evenly and make a change of shard count move only ~1/N of the keys.
"""

from __future__ import annotations

import bisect
import hashlib

VIRTUAL_NODES_PER_SHARD = 64


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Ring:
    def __init__(self, shard_count: int, virtual_nodes: int = VIRTUAL_NODES_PER_SHARD):
        if shard_count < 1:
            raise ValueError("a ring needs at least one shard")
        self.shard_count = shard_count
        points = sorted(
            (_point(f"shard-{index}-vnode-{vnode}"), index)
            for index in range(shard_count)
            for vnode in range(virtual_nodes)
        )
        self._points = [point for point, _ in points]
        self._owners = [index for _, index in points]

    def _owner(self, key: str) -> int:
        position = bisect.bisect(self._points, _point(key)) % len(self._points)
        return self._owners[position]

    def user_shard(self, user_id: str) -> int:
        return self._owner("user:" + user_id)

    def conversation_shard(self, conversation_id: str) -> int:
        return self._owner("conversation:" + conversation_id)

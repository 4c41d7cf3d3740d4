"""Sockets that have not authenticated yet, counted per client address and in total.

A socket holds memory and a Serve request slot from its handshake on, but proves nothing until
its `auth` frame (up to auth_timeout_s later). Without a cap, one address could open thousands
of silent sockets and leave no room for anyone else. Past either cap a new socket is closed at
once (1013, try again later). Counted per gateway replica: the caps are a replica's memory.
"""

from __future__ import annotations

import collections
import contextlib


class PreAuthGate:
    def __init__(self, per_address: int, total: int):
        self.per_address = per_address
        self.total = total
        self._by_address: collections.Counter[str] = collections.Counter()
        self._count = 0
        self.refused = 0

    def __len__(self) -> int:
        return self._count

    @contextlib.contextmanager
    def holding(self, address: str):
        """Yields True if the socket from `address` may wait for its auth frame (and holds its
        place until the block ends), False if it must be closed at once."""
        if self._count >= self.total or self._by_address[address] >= self.per_address:
            self.refused += 1
            yield False
            return
        self._count += 1
        self._by_address[address] += 1
        try:
            yield True
        finally:
            self._count -= 1
            self._by_address[address] -= 1
            if self._by_address[address] <= 0:
                del self._by_address[address]

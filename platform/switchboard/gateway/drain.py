"""Noticing that Serve has begun to stop this replica, so its sockets close with 1001 at once.

Why not __del__: Serve runs a replica's destructor only after its ongoing requests have finished,
and an open WebSocket is an ongoing request for its whole life. Waiting for __del__ left every
client hanging until graceful_shutdown_timeout_s and then cut (1006). The first thing Serve's
graceful shutdown does is mark the replica as shutting down (the same flag its health check
reports as DRAINING to HAProxy); a small task watches that flag.

The flag lives on Serve's private Replica object, found once by type. If a Ray upgrade renames
it, the watcher says so in the log and the gateway falls back to closing sockets in __del__.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

# How often the flag is looked at: a draining replica closes its sockets within this.
POLL_INTERVAL_S = 0.1


def find_serve_replica() -> object | None:
    """The Serve Replica object hosting this process's deployment, or None outside Serve.
    Call it before gc.freeze() (switchboard.tuning): frozen objects are invisible to the scan."""
    try:
        from ray.serve._private.replica import Replica
    except ImportError:
        return None
    for candidate in gc.get_objects():
        try:
            if isinstance(candidate, Replica):
                return candidate
        except ReferenceError:  # a weak proxy whose referent is gone
            continue
    return None


class DrainWatch:
    """Calls `on_drain` once, as soon as the replica it watches starts shutting down."""

    def __init__(self, is_draining: Callable[[], bool], on_drain: Callable[[], Awaitable[None]]):
        self._is_draining = is_draining
        self._on_drain = on_drain
        self._task: asyncio.Task | None = None

    @classmethod
    def for_replica(cls, replica: object | None, on_drain: Callable[[], Awaitable[None]]) -> DrainWatch | None:
        """A watch on `replica` (from find_serve_replica), or None when there is none to watch."""
        if replica is None or not hasattr(replica, "_shutting_down"):
            log.warning("Serve replica not found: sockets will close only when Serve runs __del__")
            return None
        return cls(lambda: bool(replica._shutting_down), on_drain)

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _watch(self) -> None:
        while not self._is_draining():
            await asyncio.sleep(POLL_INTERVAL_S)
        log.info("replica draining: closing sockets with 1001")
        await self._on_drain()

"""The checkpoint loop shards and routers share: write the actor's state every interval, but only
when it changed since the last write that succeeded."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)


async def checkpoint_periodically(interval_s: float, state: Callable[[], Hashable],
                                  checkpoint: Callable[[], Awaitable[object]], owner: str) -> None:
    """Every interval_s, call `checkpoint` if `state()` (a cheap summary of what a checkpoint
    would hold) differs from what the last successful one saw. A failure is logged and tried
    again next round; a restart meanwhile only replays more."""
    written = None
    while True:
        await asyncio.sleep(interval_s)
        current = state()
        if current == written:
            continue  # the stored checkpoint is current
        try:
            await checkpoint()
            written = current
        except Exception as error:
            log.warning("checkpoint of %s failed: %s", owner, error)

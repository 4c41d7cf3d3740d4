"""A shard's checkpoints (actors/checkpoint.py): taking one while commits go on, and restoring
from one before the shard serves."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from switchboard.protocol import now_ms

from .checkpoint import ShardCheckpoint, collector_paused, decode_shard, encode_shard
from .periodic import checkpoint_periodically
from .placement import PlacementView

if TYPE_CHECKING:
    from .shard import MailboxShard

log = logging.getLogger(__name__)

# Sends a checkpoint keeps for answering retries from memory after a restart (the sequencer keeps
# more; the sends committed after the checkpoint are replayed from PostgreSQL anyway).
CHECKPOINT_RECENT_SENDS = 10_000
# Pause between chunks of 500 rows while encoding a checkpoint, leaving the cores to the commits:
# about halves the encoding's CPU share; 10,000 mailboxes take ~0.1 s longer to checkpoint.
CHECKPOINT_ENCODE_PAUSE_S = 0.002


class ShardCheckpointing:
    def __init__(self, shard: MailboxShard, interval_s: float):
        self.shard = shard
        self.interval_s = interval_s
        self._lock = asyncio.Lock()
        self.last: dict = {}
        self.restored: dict = {}

    def loop(self):
        """The periodic checkpoint coroutine, or None when they are off (interval 0)."""
        if self.interval_s <= 0:
            return None
        shard = self.shard
        # Nothing committed and nobody came or went: the stored checkpoint is current.
        return checkpoint_periodically(self.interval_s, lambda: (shard.queue.commits, shard.mailboxes.online_users()),
                                       self.take, shard.owner)

    async def take(self) -> dict:
        """Write the shard's state to PostgreSQL (periodically, and on drain); returns figures.

        Commits go on meanwhile: the sequencer's part is captured on the writer thread between
        two commits (references only, ~1 ms), the mailboxes' on the event loop; encoding and the
        write run on another thread, in chunks that never hold the GIL for long."""
        shard = self.shard
        async with self._lock:
            started = time.perf_counter()
            # The capture and the encoding make ~80,000 short-lived objects; with the cyclic
            # collector running they triggered full collections (~0.23 s, every thread stopped).
            with collector_paused():
                conversations, sends = await shard.queue.in_writer(shard.sequencer.snapshot, CHECKPOINT_RECENT_SENDS)
                mailboxes, gateways = shard.mailboxes.snapshot()
                checkpoint = ShardCheckpoint(
                    owner=shard.owner, shard_count=shard.ring.shard_count, taken_at=now_ms(),
                    commits=shard.queue.commits, conversations=conversations, recent_sends=sends,
                    mailboxes=mailboxes, gateways=gateways,
                )
                state = await asyncio.to_thread(encode_shard, checkpoint, CHECKPOINT_ENCODE_PAUSE_S)
            await asyncio.to_thread(shard.store.save_checkpoint, shard.owner, checkpoint.taken_at, state)
            self.last = {
                "taken_at": checkpoint.taken_at, "bytes": len(state), "conversations": len(conversations),
                "recent_sends": len(sends), "mailboxes": len(mailboxes), "gateways": len(gateways),
                "seconds": round(time.perf_counter() - started, 4),
            }
            return self.last

    def restore(self) -> dict:
        """Load the last checkpoint and replay what came after it; call before serving (blocking).
        Without a usable checkpoint the shard starts empty and loads lazily, as it always could."""
        with collector_paused():
            return self._restore()

    def _restore(self) -> dict:
        shard = self.shard
        started = time.perf_counter()
        stored = shard.store.load_checkpoint(shard.owner)
        checkpoint = decode_shard(stored.state) if stored is not None else None
        if checkpoint is None:
            self.restored = {"loaded": False}
            return self.restored
        loaded = time.perf_counter()
        moved = 0
        if checkpoint.shard_count != shard.ring.shard_count:
            checkpoint, moved = owned_part(checkpoint, shard.ownership.view)
            log.warning("checkpoint of %s was taken with another shard count: %d items moved away, the rest restore",
                        shard.owner, moved)
        sequencer = shard.sequencer.restore(checkpoint.conversations, checkpoint.recent_sends)
        heads = shard.store.mailbox_heads([record.user_id for record in checkpoint.mailboxes])
        mailboxes = shard.mailboxes.restore(checkpoint.mailboxes, checkpoint.gateways, heads, time.monotonic())
        self.restored = {
            "loaded": True, "taken_at": checkpoint.taken_at, "bytes": len(stored.state),
            "load_seconds": round(loaded - started, 4), "moved_away": moved,
            "replay_seconds": round(time.perf_counter() - loaded, 4),
            **sequencer, **{f"mailbox_{key}": value for key, value in mailboxes.items()},
        }
        return self.restored


def owned_part(checkpoint: ShardCheckpoint, view: PlacementView) -> tuple[ShardCheckpoint, int]:
    """The part of a checkpoint taken under another shard count that this shard still owns, and
    how many items it leaves out: those moved to another shard, which loads them lazily as any
    item not in its checkpoint. Every kept item is still checked against the tables on restore."""
    conversations = [c for c in checkpoint.conversations if view.owns_conversation(c.conversation_id)]
    sends = [m for m in checkpoint.recent_sends if view.owns_conversation(m.conversation_id)]
    mailboxes = [m for m in checkpoint.mailboxes if view.owns_user(m.user_id)]
    moved = len(checkpoint.conversations) - len(conversations) + len(checkpoint.mailboxes) - len(mailboxes)
    return dataclasses.replace(checkpoint, conversations=conversations, recent_sends=sends, mailboxes=mailboxes,
                               shard_count=view.ring.shard_count), moved

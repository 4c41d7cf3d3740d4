"""A region's placement (its shards, by name, and the epoch of their count) and what one shard owns
under it. Plain classes.

Resharding keeps the consistent-hash ring (actors/ring.py) and changes its shard count: going
from N to M shards moves only the keys whose owner on the new ring differs, about |M - N| / max(M, N)
of them (`ideal_moved_fraction`; `moved_fraction` measures the ring's). Fixed virtual slots would
need a slot map stored and shipped to every gateway; the ring needs only the count, and the epoch
says which count is current.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from switchboard.errors import Moved

from .ring import Ring

# A delivery-stream item (user_id, cursor, text) that is no delivery: "this region's placement is
# now epoch <cursor>" (text: the region). A shard puts it on every gateway stream after a reshard,
# so each replica re-routes and re-attaches its moved sockets without waiting for a refusal.
PLACEMENT_MARK = "\x00placement"


@dataclasses.dataclass(frozen=True)
class Placement:
    region: str
    namespace: str
    shard_names: tuple[str, ...]
    # Moves with every change of the region's shard count (storage/placements.py).
    epoch: int = 1

    @property
    def shard_count(self) -> int:
        return len(self.shard_names)


@dataclasses.dataclass(frozen=True)
class PlacementView:
    """One shard's placement as one immutable value: the writer thread takes it once per batch,
    so the ownership it checks and the epoch its commit is fenced with always belong together."""

    region: str
    index: int
    ring: Ring
    epoch: int

    def owns_conversation(self, conversation_id: str) -> bool:
        return self.ring.conversation_shard(conversation_id) == self.index

    def owns_user(self, user_id: str) -> bool:
        return self.ring.user_shard(user_id) == self.index

    def fence(self) -> tuple[str, int, int]:
        return (self.region, self.index, self.epoch)

    def moved(self) -> Moved:
        return Moved(self.region, self.epoch)


class Ownership:
    """The shard's current PlacementView, replaced whole by `adopt`; `on_stale` is called (from the
    writer thread) when the database refused a commit's epoch."""

    def __init__(self, region: str, index: int, shard_count: int, epoch: int = 1,
                 on_stale: Callable[[], None] | None = None):
        self.view = PlacementView(region, index, Ring(shard_count), epoch)
        self.on_stale = on_stale or (lambda: None)

    def adopt(self, shard_count: int, epoch: int) -> bool:
        """Take a newer placement; False (nothing changes) for one not newer than the current."""
        if epoch <= self.view.epoch:
            return False
        self.view = dataclasses.replace(self.view, ring=Ring(shard_count), epoch=epoch)
        return True


def moved_fraction(old_count: int, new_count: int, keys: Iterable[str]) -> float:
    """The fraction of these user ids whose mailbox changes shard from old_count to new_count."""
    old, new = Ring(old_count), Ring(new_count)
    keys = list(keys)
    return sum(old.user_shard(key) != new.user_shard(key) for key in keys) / max(1, len(keys))


def ideal_moved_fraction(old_count: int, new_count: int) -> float:
    """The least any scheme must move: the share of the keys that the added shards take, or
    that the removed shards held."""
    return abs(new_count - old_count) / max(old_count, new_count)

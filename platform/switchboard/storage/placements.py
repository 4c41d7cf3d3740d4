"""Each region's placement as stored: its shard count and the epoch that every reshard moves.

PostgreSQL is the one source of a region's shard count (the setting only seeds a new region): a
router, a shard restarted by Ray with the constructor arguments of its first start, and a
gateway asking a router all end up with this row. The epoch is the fencing token of a reshard
(Kleppmann): each shard's group commit checks its own row of `placement_fences` under a shared
lock (group_commit.py PLACEMENT_FENCE), and `advance` rewrites those rows in the same transaction
as the placement, after the commits in flight finish. From then on a shard that has not adopted
the new placement has every commit refused, so two owners of one conversation can never both
write (the conversation's last_seq fence would catch most of it; this catches all of it, and
first).
"""

from __future__ import annotations

import dataclasses
import threading

from sqlalchemy import Engine, text

from ..protocol import now_ms
from .store import StorageUnavailable


@dataclasses.dataclass(frozen=True)
class StoredPlacement:
    region: str
    shard_count: int
    epoch: int


LOAD = text("SELECT shard_count, epoch FROM placements WHERE region = :region")
INSERT = text(
    "INSERT INTO placements (region, shard_count, epoch, changed_at) VALUES (:region, :count, 1, :now)"
    " ON CONFLICT (region) DO NOTHING")
ADVANCE = text(
    "UPDATE placements SET shard_count = :count, epoch = epoch + 1, changed_at = :now"
    " WHERE region = :region RETURNING epoch")
# Every shard of the old and the new placement gets a row (a shard being removed must be fenced
# too); the update waits for each shard's commit in flight, which holds its row shared.
WRITE_FENCES = text(
    "INSERT INTO placement_fences (region, shard_index, epoch)"
    " SELECT :region, index, :epoch FROM generate_series(0, :indexes - 1) AS index"
    " ON CONFLICT (region, shard_index) DO UPDATE SET epoch = excluded.epoch")
# A reshard waits at most this long for the commits in flight (each is bounded by its own
# statement timeout, the send timeout); past it the reshard fails and nothing changed.
ADVANCE_LOCK_TIMEOUT = "10s"


def once_more_on_a_new_connection(method):
    """These calls are rare and the pool is not pre-pinged (the group commit's hot path shares
    it): a pooled connection the server dropped (a restart) fails the first try and is discarded,
    so one more try runs on a fresh one. Safe for advance too: epochs need only to increase."""
    def retrying(self, *args):
        try:
            return method(self, *args)
        except StorageUnavailable:
            return method(self, *args)
    retrying.__doc__ = method.__doc__
    return retrying


class PlacementStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    @once_more_on_a_new_connection
    def load(self, region: str) -> StoredPlacement | None:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(LOAD, {"region": region}).first()
        except Exception as error:
            raise StorageUnavailable(f"placement of {region}: {error}") from error
        return StoredPlacement(region, row[0], row[1]) if row else None

    @once_more_on_a_new_connection
    def ensure(self, region: str, shard_count: int) -> StoredPlacement:
        """The region's placement, created with shard_count at epoch 1 if it has none yet."""
        try:
            with self.engine.begin() as conn:
                if conn.execute(INSERT, {"region": region, "count": shard_count, "now": now_ms()}).rowcount:
                    conn.execute(WRITE_FENCES, {"region": region, "epoch": 1, "indexes": shard_count})
                row = conn.execute(LOAD, {"region": region}).first()
        except Exception as error:
            raise StorageUnavailable(f"placement of {region}: {error}") from error
        return StoredPlacement(region, row[0], row[1])

    @once_more_on_a_new_connection
    def advance(self, region: str, shard_count: int, previous_count: int) -> StoredPlacement:
        """Store the new shard count under the next epoch and fence every shard with it."""
        try:
            with self.engine.begin() as conn:
                conn.execute(text(f"SET LOCAL lock_timeout = '{ADVANCE_LOCK_TIMEOUT}'"))
                epoch = conn.execute(ADVANCE, {"region": region, "count": shard_count, "now": now_ms()}).scalar_one()
                conn.execute(WRITE_FENCES, {"region": region, "epoch": epoch,
                                            "indexes": max(shard_count, previous_count)})
        except Exception as error:
            raise StorageUnavailable(f"reshard of {region}: {error}") from error
        return StoredPlacement(region, shard_count, epoch)


class MemoryPlacements:
    """The same for unit tests (MemoryStore checks a batch's fence against it)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._rows: dict[str, StoredPlacement] = {}
        self.fences: dict[tuple[str, int], int] = {}

    def load(self, region: str) -> StoredPlacement | None:
        return self._rows.get(region)

    def ensure(self, region: str, shard_count: int) -> StoredPlacement:
        with self._lock:
            if region not in self._rows:
                self._rows[region] = StoredPlacement(region, shard_count, 1)
                self.fences.update({(region, index): 1 for index in range(shard_count)})
            return self._rows[region]

    def advance(self, region: str, shard_count: int, previous_count: int) -> StoredPlacement:
        with self._lock:
            row = StoredPlacement(region, shard_count, self._rows[region].epoch + 1)
            self._rows[region] = row
            self.fences.update({(region, index): row.epoch for index in range(max(shard_count, previous_count))})
            return row

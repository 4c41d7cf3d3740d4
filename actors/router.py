"""The region router: the authority on which shards serve a region and how keys map onto them.

Gateways ask it once for the placement and then talk to shards directly, batch by batch: a router
on the data path would add one actor hop per batch for no decision it could make better than the
ring. It also runs the region's housekeeping (mailbox retention).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Placement:
    region: str
    namespace: str
    shard_names: tuple[str, ...]

    @property
    def shard_count(self) -> int:
        return len(self.shard_names)


class RegionRouter:
    def __init__(self, region: str, namespace: str, shard_names: list[str]):
        self.placement = Placement(region=region, namespace=namespace, shard_names=tuple(shard_names))

"""Which region each user's mailbox lives in, as a shard needs it to push to the right region.

A commit learns each recipient's home region with its cursor (the mailbox row's `region`, set when
a socket attaches there: storage/group_commit.py), so the commit path needs nothing from here but
the fallback for users with none recorded. Typing is not committed: its recipients' regions come
from what commits taught this shard, else from one read of the mailbox rows (at most one read at a
time per shard, off the writer thread). A region no longer configured counts as the default one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from switchboard.storage.store import Store

# Users whose region is remembered; past this the memory starts over (one read per user again).
REMEMBERED_MAX = 100_000


class HomeRegions:
    def __init__(self, regions: Iterable[str], default: str, store: Store | None = None,
                 run_blocking: Callable[..., Awaitable] | None = None):
        self.regions = frozenset(regions) | {default}
        self.default = default
        self.store = store
        self.run_blocking = run_blocking
        self._known: dict[str, str | None] = {}  # None: read, and none recorded
        self.reads = 0

    @property
    def single(self) -> bool:
        """One region only: every user is at home here, and nothing needs looking up."""
        return len(self.regions) == 1

    def home(self, user_id: str, recorded: str | None, unrecorded: str | None = None) -> str:
        """The region to push to, from the region a commit returned (remembered for typing). None
        recorded (the user never attached a socket): what this shard learned otherwise, else
        `unrecorded` (the committing shard's own region: a conversation's members are most often
        its creator's neighbours, and a user with no socket anywhere loses nothing by a guess,
        since replay on attach reads PostgreSQL), else the default. A guess is not remembered."""
        if recorded is None:
            known = self._known.get(user_id)
            if known is not None:
                return known
            return unrecorded if unrecorded in self.regions else self.default
        region = recorded if recorded in self.regions else self.default
        self.learn(user_id, region)
        return region

    def learn(self, user_id: str, region: str) -> None:
        if region in self.regions:
            self._remember(user_id, region)

    def _remember(self, user_id: str, region: str | None) -> None:
        if self.single:
            return
        if len(self._known) >= REMEMBERED_MAX:
            self._known.clear()
        self._known[user_id] = region

    async def homes(self, user_ids: list[str]) -> dict[str, str]:
        """user_id -> home region for each of user_ids (one read for those not remembered)."""
        if self.single:
            return dict.fromkeys(user_ids, self.default)
        unknown = [user_id for user_id in user_ids if user_id not in self._known]
        if unknown and self.store is not None:
            self.reads += 1
            recorded = await self.run_blocking(self.store.mailbox_regions, unknown)
            for user_id in unknown:
                region = recorded.get(user_id)
                # No record (never attached): remembered as such, so typing reads it once only.
                self._remember(user_id, region if region is None or region in self.regions else self.default)
        return {user_id: self._known.get(user_id) or self.default for user_id in user_ids}

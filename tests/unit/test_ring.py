"""The consistent-hash ring (actors/ring.py) that places mailboxes and sequencers on shards."""

from __future__ import annotations

import collections

import pytest

from switchboard.actors.ring import Ring

KEYS = [f"user-{i}" for i in range(10_000)]
PINNED_USERS = {"alice": 2, "bob": 0, "carol": 2, "dave": 0, "erin": 0, "frank": 1, "grace": 0, "heidi": 2}


def owners(ring: Ring, keys=KEYS) -> list[int]:
    return [ring.user_shard(key) for key in keys]


def test_two_instances_agree_on_every_owner():
    assert owners(Ring(4)) == owners(Ring(4))
    first, second = Ring(3), Ring(3)
    conversations = [f"c_{i}" for i in range(500)]
    assert [first.conversation_shard(c) for c in conversations] == [
        second.conversation_shard(c) for c in conversations]


def test_owners_do_not_depend_on_the_process_hash_seed():
    # Pinned values: a change here means every deployed shard would disagree with the new code.
    ring = Ring(4)
    assert {user: ring.user_shard(user) for user in PINNED_USERS} == PINNED_USERS
    assert ring.conversation_shard("c_general") == 0


@pytest.mark.parametrize("shard_count", [1, 2, 3, 4, 8])
def test_every_shard_is_used_and_load_is_roughly_balanced(shard_count):
    counts = collections.Counter(owners(Ring(shard_count)))
    assert set(counts) == set(range(shard_count))
    mean = len(KEYS) / shard_count
    assert all(0.75 * mean <= n <= 1.25 * mean for n in counts.values()), counts


def test_users_and_conversations_hash_in_separate_spaces():
    ring = Ring(8)
    same = sum(ring.user_shard(k) == ring.conversation_shard(k) for k in KEYS[:2000])
    assert same < 2000 * 0.3  # independent placements agree about 1/8 of the time


@pytest.mark.parametrize("shard_count", [2, 4, 7])
def test_adding_a_shard_moves_only_a_minority_of_keys_and_only_to_the_new_shard(shard_count):
    before, after = owners(Ring(shard_count)), owners(Ring(shard_count + 1))
    moved = [new for old, new in zip(before, after) if old != new]
    assert 0 < len(moved) < len(KEYS) / shard_count  # about 1/(N+1) of them
    assert set(moved) == {shard_count}


def test_a_ring_needs_a_shard():
    with pytest.raises(ValueError):
        Ring(0)

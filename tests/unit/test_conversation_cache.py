"""The sequencer's conversation cache (actors/conversation_cache.py ConversationCache): an LRU bound
on conversations, peek() that never reorders and answers UNKNOWN / None / the conversation, misses
that expire after MISS_TTL_S (fake clock) and are bounded, and remember() clearing a miss."""

from __future__ import annotations

from switchboard.actors import conversation_cache as cache_module
from switchboard.actors.conversation_cache import MISS_TTL_S, UNKNOWN, ConversationCache
from switchboard.storage.models import Conversation
from fake_clock import FakeClock


def conversation(cid: str) -> Conversation:
    return Conversation(conversation_id=cid, title="", region="local", created_by="alice", created_at=0,
                        last_seq=0, members={"alice"})


def cached_ids(cache: ConversationCache) -> list[str]:
    return [c.conversation_id for c in cache.values()]


def test_the_least_recently_used_conversation_goes_past_the_size():
    cache = ConversationCache(size=2, clock=FakeClock())
    for cid in ("a", "b", "c"):
        cache.remember(conversation(cid))
    assert cached_ids(cache) == ["b", "c"] and len(cache) == 2
    assert "a" not in cache and cache.get("a") is None


def test_get_makes_a_conversation_the_most_recently_used():
    cache = ConversationCache(size=2, clock=FakeClock())
    cache.remember(conversation("a"))
    cache.remember(conversation("b"))
    assert cache.get("a").conversation_id == "a"
    cache.remember(conversation("c"))
    assert cached_ids(cache) == ["a", "c"]  # b was the least recently used


def test_peek_never_reorders():
    cache = ConversationCache(size=2, clock=FakeClock())
    first = conversation("a")
    cache.remember(first)
    cache.remember(conversation("b"))
    assert cache.peek("a") is first
    cache.remember(conversation("c"))
    assert cached_ids(cache) == ["b", "c"]  # a went: peeking it did not make it recent


def test_peek_answers_unknown_none_or_the_conversation():
    cache = ConversationCache(clock=FakeClock())
    known = conversation("a")
    cache.remember(known)
    cache.remember_miss("gone")
    assert cache.peek("a") is known
    assert cache.peek("gone") is None
    assert cache.peek("never_seen") is UNKNOWN


def test_peek_changes_nothing_about_misses():
    clock = FakeClock()
    cache = ConversationCache(clock=clock)
    cache.remember_miss("gone")
    clock.advance(MISS_TTL_S + 1)
    assert cache.peek("gone") is UNKNOWN  # expired
    assert "gone" in cache._misses  # but peek left it for known_missing to drop


def test_misses_expire_after_their_ttl():
    clock = FakeClock()
    cache = ConversationCache(clock=clock)
    cache.remember_miss("gone")
    clock.advance(MISS_TTL_S - 1)
    assert cache.known_missing("gone")
    assert cache.peek("gone") is None
    clock.advance(2)
    assert not cache.known_missing("gone")
    assert cache.peek("gone") is UNKNOWN
    assert "gone" not in cache._misses  # dropped on the lookup that found it expired


def test_remembering_a_miss_again_extends_it():
    clock = FakeClock()
    cache = ConversationCache(clock=clock)
    cache.remember_miss("gone")
    clock.advance(MISS_TTL_S - 1)
    cache.remember_miss("gone")
    clock.advance(MISS_TTL_S - 1)
    assert cache.known_missing("gone")


def test_remember_clears_a_miss():
    cache = ConversationCache(clock=FakeClock())
    cache.remember_miss("a")
    assert cache.known_missing("a")
    created = conversation("a")
    cache.remember(created)
    assert not cache.known_missing("a")
    assert cache.peek("a") is created
    cache.forget(["a"])
    assert cache.peek("a") is UNKNOWN  # forgotten is not missing: the next use reads it


def test_misses_are_bounded(monkeypatch):
    monkeypatch.setattr(cache_module, "MISSES_MAX", 3)
    cache = ConversationCache(clock=FakeClock())
    for cid in ("m1", "m2", "m3", "m4"):
        cache.remember_miss(cid)
    assert not cache.known_missing("m1")  # the oldest went
    assert all(cache.known_missing(cid) for cid in ("m2", "m3", "m4"))


def test_clear_forgets_conversations_and_misses():
    cache = ConversationCache(clock=FakeClock())
    cache.remember(conversation("a"))
    cache.remember_miss("gone")
    cache.clear()
    assert len(cache) == 0
    assert cache.peek("a") is UNKNOWN and cache.peek("gone") is UNKNOWN

"""What /v1/health and Serve's check_health see (issue #9 point 6): a shard that cannot be reached
or cannot commit, or a database that does not answer, makes health report a problem; a replica's
own machinery (its delivery pumps) is all check_health looks at. Shard handles are fakes here; the
integration tests hang the real database and kill real shards."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorUnavailableError

from switchboard.actors.router import Placement
from switchboard.gateway.core import GatewayCore
from switchboard.gateway.shards import ShardDirectory
from switchboard.settings import Settings

UNREACHABLE_URL = "postgresql+psycopg://nobody@127.0.0.1:9/none"  # never connected to here


class FakeMethod:
    def __init__(self, answer):
        self.answer = answer

    def remote(self):
        async def answer():
            if isinstance(self.answer, BaseException):
                raise self.answer
            if self.answer == "hang":
                await asyncio.sleep(3600)
            return self.answer
        return answer()


class FakeShard:
    def __init__(self, answer):
        self.health = FakeMethod(answer)


def FakeDirectory(*answers) -> ShardDirectory:
    """The real directory of one region whose shards answer health with `answers`."""
    shards = iter([FakeShard(answer) for answer in answers])
    placement = Placement(region="local", namespace="test", shard_names=tuple(f"s{i}" for i in range(len(answers))))
    return ShardDirectory(Settings(), [placement], get_handle=lambda name, namespace: next(shards))


class FakeHub:
    def __init__(self, running=True):
        self._running = running

    def running(self):
        return self._running


class FakeStore:
    def __init__(self, error: Exception | None = None):
        self.error = error

    def mailbox_head(self, user_id):
        if self.error is not None:
            raise self.error
        return 0


def core_with(*answers, store=None, hub=None) -> GatewayCore:
    core = GatewayCore(Settings(), UNREACHABLE_URL)
    core.directory = FakeDirectory(*answers)
    core.hub = hub or FakeHub()
    core.store = store or FakeStore()
    return core


OK = {"ok": True}


async def test_every_shard_answering_ok_and_a_database_answering_is_healthy():
    assert await core_with(OK, OK).health_problem() is None


async def test_a_shard_that_cannot_be_reached_is_a_problem():
    problem = await core_with(OK, ActorUnavailableError("gone", None)).health_problem()
    assert problem is not None and "cannot be reached" in problem


async def test_a_shard_that_does_not_answer_in_time_is_a_problem(monkeypatch):
    monkeypatch.setattr("switchboard.gateway.core.HEALTH_TIMEOUT_S", 0.05)
    problem = await core_with(OK, "hang").health_problem()
    assert problem is not None and "TimeoutError" in problem


async def test_a_shard_that_cannot_commit_is_named_with_its_reason():
    problem = await core_with(OK, {"ok": False, "problem": "a commit has run for 9 s"}).health_problem()
    assert problem == "shard 1: a commit has run for 9 s"


async def test_a_database_that_does_not_answer_is_a_problem():
    problem = await core_with(OK, store=FakeStore(OSError("refused"))).health_problem()
    assert problem is not None and "database" in problem


async def test_a_replica_not_started_or_draining_is_not_healthy():
    core = GatewayCore(Settings(), UNREACHABLE_URL)
    assert await core.health_problem() == "starting"
    core = core_with(OK)
    core.draining = True
    assert await core.health_problem() == "draining"


async def test_the_answer_is_cached_briefly_then_asked_again(monkeypatch):
    core = core_with(OK)
    assert await core.health_problem() is None
    core.directory = FakeDirectory({"ok": False, "problem": "stuck"})
    assert await core.health_problem() is None  # within HEALTH_CACHE_S: the cached answer
    monkeypatch.setattr("switchboard.gateway.core.HEALTH_CACHE_S", 0.0)
    assert await core.health_problem() == "shard 0: stuck"


@pytest.mark.parametrize("hub, expected", [
    (None, "not started"),
    (FakeHub(running=False), "a delivery stream pump or the heartbeat stopped"),
    (FakeHub(running=True), None),
])
def test_check_health_looks_at_the_replicas_own_machinery_only(hub, expected):
    core = GatewayCore(Settings(), UNREACHABLE_URL)
    core.hub = hub
    core.store = FakeStore(OSError("the database is down"))  # not check_health's business
    assert core.machinery_problem() == expected

"""DrainWatch: the gateway's drain starts when Serve marks the replica as shutting down."""

import asyncio

from switchboard.gateway import drain
from switchboard.gateway.drain import DrainWatch


async def test_drain_runs_once_when_the_flag_rises(monkeypatch):
    monkeypatch.setattr(drain, "POLL_INTERVAL_S", 0.01)
    state = {"draining": False}
    calls = []

    async def on_drain():
        calls.append(state["draining"])

    watch = DrainWatch(lambda: state["draining"], on_drain)
    watch.start()
    await asyncio.sleep(0.05)
    assert calls == []
    state["draining"] = True
    await asyncio.wait_for(watch._task, 1)
    assert calls == [True]


async def test_stop_cancels_a_watch_that_never_fired(monkeypatch):
    monkeypatch.setattr(drain, "POLL_INTERVAL_S", 0.01)
    calls = []

    async def on_drain():
        calls.append(1)

    watch = DrainWatch(lambda: False, on_drain)
    watch.start()
    watch.stop()
    await asyncio.gather(watch._task, return_exceptions=True)
    assert watch._task.cancelled() and calls == []


def test_no_serve_replica_outside_serve():
    assert drain.find_serve_replica() is None
    assert DrainWatch.for_replica(None, lambda: None) is None

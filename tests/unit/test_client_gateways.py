"""The SDK with several gateway URLs (issue #10 point 4): the first session goes to the first
gateway that can be reached; after a drop the client stays on its gateway while it can open a
session there, and moves to the next one (wrapping around) when it cannot, resuming with `since`.
Connections are fakes here; tests/integration/test_client_failover.py does it through real sockets."""

from __future__ import annotations

import asyncio

import pytest

from switchboard.client import Client
from switchboard.client.backoff import Backoff
from switchboard.client.errors import ConnectError, SessionClosed
from switchboard.client.gateways import GatewayList

A, B, C = "http://127.0.0.1:1", "http://127.0.0.2:2", "http://127.0.0.3:3"


class FakeConnection:
    def __init__(self, head: int):
        self.replayed: list[dict] = []
        self.ready = {"type": "ready", "user_id": "alice", "cursor": head}
        self.dropped = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""

    async def __aiter__(self):
        await self.dropped.wait()
        return
        yield

    def drop(self, code: int = 1006) -> None:
        self.close_code = code
        self.dropped.set()

    async def send(self, frame: dict) -> None:
        pass

    async def send_text(self, text: str) -> None:
        pass

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.drop(code)


class FakeGateways:
    """An opener: which ws URLs are up, and every attempt (url, since) in order."""

    def __init__(self, up: set[str]):
        self.up = up
        self.attempts: list[tuple[str, int | None]] = []
        self.open_connections: list[FakeConnection] = []

    async def open(self, url, token, since, **_):
        self.attempts.append((url, since))
        if url not in self.up:
            raise ConnectError(f"cannot open {url}")
        conn = FakeConnection(head=since or 5)
        self.open_connections.append(conn)
        return conn


def ws(url: str) -> str:
    return "ws" + url.removeprefix("http") + "/v1/ws"


def client_for(urls, gateways: FakeGateways) -> Client:
    return Client(urls, "token", opener=gateways.open, backoff=Backoff(initial_s=0.001, max_s=0.002), ack_every=None)


async def wait_for(condition, timeout_s: float = 2.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


def test_one_url_or_several_and_never_none():
    assert GatewayList(A).http_urls == [A]
    assert GatewayList([A, "ws://127.0.0.2:2/v1/ws"]).ws_urls == [ws(A), ws(B)]
    with pytest.raises(ValueError):
        GatewayList([])


async def test_the_first_session_goes_to_the_first_gateway_that_answers():
    gateways = FakeGateways(up={ws(B)})
    client = await client_for([A, B, C], gateways).connect()
    assert [url for url, _ in gateways.attempts] == [ws(A), ws(B)]
    assert client.url == B
    await client.close()


async def test_connect_fails_only_when_no_gateway_answers():
    gateways = FakeGateways(up=set())
    with pytest.raises(ConnectError):
        await client_for([A, B], gateways).connect()
    assert [url for url, _ in gateways.attempts] == [ws(A), ws(B)]


async def test_after_a_drop_the_client_stays_while_its_gateway_answers():
    gateways = FakeGateways(up={ws(A), ws(B)})
    client = await client_for([A, B], gateways).connect()
    gateways.open_connections[-1].drop(1001)
    await wait_for(lambda: len(gateways.attempts) == 2 and client.connected)
    assert gateways.attempts[-1] == (ws(A), 5)
    await client.close()


async def test_a_lost_gateway_fails_over_to_the_next_resuming_with_since():
    gateways = FakeGateways(up={ws(A), ws(B)})
    client = await client_for([A, B], gateways).connect()
    gateways.up.discard(ws(A))  # the region of A went offline
    gateways.open_connections[-1].drop()
    await wait_for(lambda: client.connected and client.url == B)
    assert gateways.attempts[-2:] == [(ws(A), 5), (ws(B), 5)]
    assert client.gateways.failovers == 1
    # and back around the list when B goes too and A has returned
    gateways.up = {ws(A)}
    gateways.open_connections[-1].drop()
    await wait_for(lambda: client.connected and client.url == A)
    await client.close()


async def test_a_refused_token_does_not_move_the_client():
    gateways = FakeGateways(up={ws(A), ws(B)})

    async def refuse(url, token, since, **options):
        gateways.attempts.append((url, since))
        raise SessionClosed(4001, "unauthorized")

    client = Client([A, B], "token", opener=refuse)
    with pytest.raises(Exception):
        await client.connect()
    assert gateways.attempts == [(ws(A), None)]
    assert client.gateways.index == 0

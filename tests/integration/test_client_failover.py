"""The SDK with several gateway URLs against the real platform (issue #10 point 4): the first URL
is a gateway in front of the platform (a TCP relay standing in for another region's entry point);
when it goes offline, with its sockets cut, the client fails over to the next URL and resumes with
`since`: the messages sent meanwhile arrive once each, in order, and its own unanswered send is
committed once."""

from __future__ import annotations

import asyncio
import socket

import pytest
from switchboard.client import Backoff, Client, Connected, Disconnected, MessageEvent
from test_client_sdk import Events, token_for

pytestmark = pytest.mark.integration

WAIT_S = 30.0
QUICK = Backoff(initial_s=0.05, max_s=0.5)


class Relay:
    """A TCP relay on a port of its own to the gateway's port: a second entry point whose loss
    (stop) closes its listening socket and every connection through it at once."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> Relay:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader, writer) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, upstream_writer}
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer),
                             return_exceptions=True)

    async def _pipe(self, reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def stop(self) -> None:
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_the_first_reachable_gateway_is_used(sb, new_user):
    alice = new_user("first")
    dead = f"http://127.0.0.1:{unused_port()}"
    async with Client([dead, sb.http_url], token_for(sb, alice.user_id), backoff=QUICK) as client:
        assert client.url == sb.http_url
        conversation = await client.api.create_conversation([new_user("peer").user_id])
        assert (await client.send(conversation.conversation_id, "through the second URL")).seq == 1


async def test_a_client_fails_over_to_the_next_gateway_and_resumes_without_gap_or_duplicate(sb, new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    relay = await Relay(sb.settings.port).start()
    try:
        async with Client(sb.http_url, token_for(sb, alice.user_id), backoff=QUICK) as a, \
                Client([relay.url, sb.http_url], token_for(sb, bob.user_id), backoff=QUICK) as b:
            assert b.url == relay.url
            bob_events = Events(b)
            before = await a.send(cid, "before the gateway goes")
            assert (await bob_events.next(MessageEvent)).message == before
            last = b.cursor

            await relay.stop()  # that gateway's region went offline
            assert (await bob_events.next(Disconnected)).session == 1
            during = [await a.send(cid, f"while bob moves {i}") for i in range(3)]
            own = asyncio.create_task(b.send(cid, "bob's send across the move"))

            # The replay (before Connected) and live events (after) alike: four messages, once each.
            got: list[MessageEvent] = []
            back = None
            while len(got) < 4:
                event = await bob_events.next((MessageEvent, Connected))
                if isinstance(event, Connected):
                    back = event
                else:
                    got.append(event)
            mine = await asyncio.wait_for(own, WAIT_S)
            assert back is not None and back.resumed and back.since == last, back
            assert b.url == sb.http_url and b.gateways.failovers >= 1
            assert [e.message for e in got] == during + [mine]  # his own send committed once, in order
            assert [e.cursor for e in got] == list(range(last + 1, last + 5))
            assert b.stats.dropped_events == 0
    finally:
        if relay.server.is_serving():
            await relay.stop()

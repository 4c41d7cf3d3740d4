"""What one socket has yet to write (gateway/outbox.py SocketOutbox), against a fake socket whose
writes the test can pause (a client that stops reading): frames written in order, `bytes` counting
what waits, the queue dropped and the socket closed 4009 past max_bytes, abort() when even that
close cannot complete within CLOSE_GRACE_S, drained() pacing to half of max_bytes, and close()
writing what is queued before the close frame."""

from __future__ import annotations

import asyncio

import pytest

from switchboard.gateway import outbox as outbox_module
from switchboard.gateway.outbox import SocketOutbox
from switchboard.gateway.wire_errors import CLOSE_TOO_SLOW


class FakeSocket:
    def __init__(self, close_hangs: bool = False):
        self.sent: list[str] = []
        self.closed: list[tuple[int, str]] = []
        self.aborted = 0
        self.reading = asyncio.Event()  # cleared: the client stopped reading, writes block
        self.reading.set()
        self.close_hangs = close_hangs

    async def send_text(self, text: str) -> None:
        await self.reading.wait()
        self.sent.append(text)

    async def close(self, code: int, reason: str) -> None:
        if self.close_hangs:
            await asyncio.Event().wait()  # the close frame never gets out
        self.closed.append((code, reason))

    def abort(self) -> None:
        self.aborted += 1


@pytest.fixture
def make():
    made = []

    def build(max_bytes: int = 100, close_hangs: bool = False) -> tuple[SocketOutbox, FakeSocket]:
        socket = FakeSocket(close_hangs)
        outbox = SocketOutbox(socket.send_text, socket.close, socket.abort, max_bytes=max_bytes, name="alice")
        outbox.start()
        made.append(outbox)
        return outbox, socket

    yield build
    for outbox in made:
        outbox.stop()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_frames_are_written_in_order(make):
    outbox, socket = make()
    for text in ("one", "two", "three"):
        outbox.write(text)
    await settle()
    assert socket.sent == ["one", "two", "three"]
    assert outbox.bytes == 0
    outbox.write("four")
    await settle()
    assert socket.sent[-1] == "four"


async def test_bytes_counts_what_waits_including_the_frame_being_written(make):
    outbox, socket = make(max_bytes=100)
    socket.reading.clear()
    outbox.write("aaaa")
    outbox.write("bb")
    await settle()
    assert outbox.bytes == 6 and socket.sent == []
    socket.reading.set()
    await settle()
    assert outbox.bytes == 0 and socket.sent == ["aaaa", "bb"]


async def test_past_max_bytes_the_queue_is_dropped_and_the_socket_closed_4009(make):
    outbox, socket = make(max_bytes=10)
    socket.reading.clear()
    outbox.write("123456")
    outbox.write("1234")  # exactly max_bytes: still fine
    await settle()
    assert not outbox.too_slow and outbox.bytes == 10
    outbox.write("x")
    assert outbox.too_slow and outbox.gone
    assert outbox.bytes == 0
    await settle()
    assert [code for code, _ in socket.closed] == [CLOSE_TOO_SLOW]
    assert socket.aborted == 0
    socket.reading.set()
    outbox.write("after")
    await settle()
    assert socket.sent == []  # the dropped queue is never written, nor anything after
    assert outbox.writer.done()


async def test_a_close_that_cannot_complete_is_aborted_after_the_grace(make, monkeypatch):
    monkeypatch.setattr(outbox_module, "CLOSE_GRACE_S", 0.03)
    outbox, socket = make(max_bytes=4, close_hangs=True)
    socket.reading.clear()
    outbox.write("1234")
    await settle()
    outbox.write("5")
    await asyncio.sleep(0.01)
    assert socket.aborted == 0  # still within the grace
    await asyncio.sleep(0.06)
    assert socket.aborted == 1 and socket.closed == []


async def test_drained_waits_until_at_most_half_of_max_bytes_waits(make):
    outbox, socket = make(max_bytes=10)
    socket.reading.clear()
    outbox.write("12345")  # half: still drained
    await asyncio.wait_for(outbox.drained(), 0.5)
    outbox.write("6")  # past half
    waiter = asyncio.ensure_future(outbox.drained())
    await settle()
    assert not waiter.done()
    socket.reading.set()  # "12345" goes: 1 byte waits
    await asyncio.wait_for(waiter, 0.5)
    assert outbox.bytes <= 5


async def test_drained_returns_once_the_socket_is_too_slow(make):
    outbox, socket = make(max_bytes=10)
    socket.reading.clear()
    outbox.write("12345678")
    waiter = asyncio.ensure_future(outbox.drained())
    await settle()
    assert not waiter.done()
    outbox.write("123")  # over: closed 4009, nothing more can be written
    await asyncio.wait_for(waiter, 0.5)


async def test_close_writes_what_is_queued_then_the_close_frame(make):
    outbox, socket = make()
    socket.reading.clear()
    outbox.write("one")
    outbox.write("two")
    outbox.close(1001, "going away")
    outbox.write("ignored")
    outbox.close(4001, "ignored too")
    await settle()
    assert socket.closed == []  # the close waits behind the frames
    socket.reading.set()
    await asyncio.wait_for(outbox.writer, 0.5)
    assert socket.sent == ["one", "two"]
    assert socket.closed == [(1001, "going away")]
    assert socket.aborted == 0


async def test_a_socket_that_fails_a_write_is_gone(make):
    async def broken_send(text):
        raise ConnectionResetError("the client went away")

    outbox, socket = make()
    outbox._send_text = broken_send
    outbox.write("one")
    await asyncio.wait_for(outbox.writer, 0.5)
    assert outbox.gone
    await asyncio.wait_for(outbox.drained(), 0.5)  # nobody waits forever on a dead socket

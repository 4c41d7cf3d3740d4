"""Small clients for the integration tests: a WebSocket client that collects every frame, an HTTP
client that carries a bearer token, and unique user ids so tests never see each other's traffic.

Both stand on the SDK (switchboard.client): its raw `Connection` (no reconnects, no filtering, so
the tests see exactly the frames the server sent) and `HttpApi.request` (raw responses, so the tests
check statuses and error bodies themselves)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable

import httpx
from switchboard.auth import mint_token
from switchboard.client import Connection, HttpApi, SessionClosed

# Frames normally arrive within milliseconds; these bound a wait, they are not sleeps.
FRAME_TIMEOUT_S = 5.0
# How long "nothing more arrives" is watched for.
QUIET_S = 0.5


def unique_user(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def unique_id(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class WsClient:
    """One WebSocket connection. A reader task appends every server frame to `frames` (the full
    record, never consumed) and to a pending list that `next` takes frames from."""

    def __init__(self, conn: Connection, user_id: str):
        self.conn = conn
        self.user_id = user_id
        self.frames: list[dict] = []
        self.raw: list[str] = []
        self._pending: list[dict] = []
        self._changed = asyncio.Event()
        self.closed = False
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.ready: dict | None = None
        self.replayed: list[dict] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                text = await self.conn.recv_text()
                self.raw.append(text)
                frame = json.loads(text)
                self.frames.append(frame)
                self._pending.append(frame)
                self._changed.set()
        except SessionClosed:
            pass
        finally:
            self.closed = True
            self.close_code = self.conn.close_code
            self.close_reason = self.conn.close_reason
            self._changed.set()

    # ---- sending -----------------------------------------------------------------------------

    async def send_json(self, frame: dict) -> None:
        """Raises SessionClosed once the socket is closed."""
        await self.conn.send(frame)

    async def send_raw(self, data: str | bytes) -> None:
        await self.conn.send_text(data)

    async def send(self, conversation_id: str, body: str, client_msg_id: str | None = None) -> str:
        client_msg_id = client_msg_id or unique_id()
        await self.send_json({"type": "send", "conversation_id": conversation_id,
                              "client_msg_id": client_msg_id, "body": body})
        return client_msg_id

    async def send_and_wait(self, conversation_id: str, body: str, client_msg_id: str | None = None,
                            timeout: float = FRAME_TIMEOUT_S) -> dict:
        """Send and return the answer for this client_msg_id (a `sent` or an `error` frame)."""
        client_msg_id = await self.send(conversation_id, body, client_msg_id)
        return await self.answer_for(client_msg_id, timeout)

    async def answer_for(self, client_msg_id: str, timeout: float = FRAME_TIMEOUT_S) -> dict:
        return await self.next(
            lambda f: (f["type"] == "sent" and f["client_msg_id"] == client_msg_id)
            or (f["type"] == "error" and f.get("ref") == client_msg_id),
            timeout,
        )

    async def ping(self, nonce: str | None = None, timeout: float = FRAME_TIMEOUT_S) -> dict:
        nonce = nonce or unique_id("n")
        await self.send_json({"type": "ping", "nonce": nonce})
        return await self.next(lambda f: f["type"] == "pong" and f.get("nonce") == nonce, timeout)

    # ---- receiving ---------------------------------------------------------------------------

    async def next(self, predicate: Callable[[dict], bool] | None = None, timeout: float = FRAME_TIMEOUT_S) -> dict:
        """Take the first pending frame matching predicate (others stay pending), waiting up to
        timeout. Raises AssertionError naming what did arrive, or if the socket closed first."""
        predicate = predicate or (lambda _: True)
        deadline = time.monotonic() + timeout
        while True:
            for index, frame in enumerate(self._pending):
                if predicate(frame):
                    del self._pending[index]
                    return frame
            if self.closed:
                raise AssertionError(
                    f"{self.user_id}: socket closed ({self.close_code} {self.close_reason!r}) "
                    f"before the frame came; pending: {self._pending[-5:]}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.user_id}: no matching frame in {timeout}s; pending: {self._pending[-5:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def next_of_type(self, kind: str, timeout: float = FRAME_TIMEOUT_S) -> dict:
        return await self.next(lambda f: f["type"] == kind, timeout)

    async def take_events(self, count: int, kind: str | None = None, timeout: float = FRAME_TIMEOUT_S) -> list[dict]:
        """The next `count` mailbox events (frames with a cursor), optionally of one kind."""
        events = []
        deadline = time.monotonic() + timeout
        for _ in range(count):
            remaining = max(0.01, deadline - time.monotonic())
            events.append(await self.next(
                lambda f: "cursor" in f and f["type"] not in ("ready", "resync_required")
                and (kind is None or f["type"] == kind),
                remaining,
            ))
        return events

    def drop_pending(self, frames: list[dict]) -> None:
        ids = {id(frame) for frame in frames}
        self._pending = [frame for frame in self._pending if id(frame) not in ids]

    def pending(self, predicate: Callable[[dict], bool] | None = None) -> list[dict]:
        predicate = predicate or (lambda _: True)
        return [frame for frame in self._pending if predicate(frame)]

    async def quiet(self, predicate: Callable[[dict], bool] | None = None, seconds: float = QUIET_S) -> list[dict]:
        """Wait `seconds`, then return the pending frames matching predicate (for "nothing came")."""
        await asyncio.sleep(seconds)
        return self.pending(predicate)

    def events(self) -> list[dict]:
        """Every mailbox event received on this connection, in arrival order."""
        return [f for f in self.frames if "cursor" in f and f["type"] not in ("ready", "resync_required")]

    def messages(self, conversation_id: str | None = None) -> list[dict]:
        return [f["message"] for f in self.frames if f["type"] == "message"
                and (conversation_id is None or f["message"]["conversation_id"] == conversation_id)]

    async def wait_closed(self, timeout: float = FRAME_TIMEOUT_S) -> int | None:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.close_code

    async def close(self) -> None:
        if not self.closed:
            try:
                await asyncio.wait_for(self.conn.close(), 2)
            except Exception:
                pass
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


async def open_ws(ws_url: str, user_id: str, token: str, since: int | None = None,
                  wait_ready: bool = True, timeout: float = FRAME_TIMEOUT_S) -> WsClient:
    """Connect, send the auth frame and (by default) wait for `ready`; the frames before `ready`
    are kept in `replayed` (and not left pending)."""
    conn = await Connection.connect(ws_url, timeout_s=timeout, max_size=None)
    client = WsClient(conn, user_id)
    await conn.authenticate(token, since)
    if wait_ready:
        client.ready = await client.next_of_type("ready", timeout)
        index = client.frames.index(client.ready)
        client.replayed = client.frames[:index]
        # Taken: next() and take_events() see what comes after `ready`.
        client.drop_pending(client.replayed)
    return client


async def open_raw_ws(ws_url: str, timeout: float = FRAME_TIMEOUT_S) -> WsClient:
    """A connection that has sent nothing yet (for auth-failure tests)."""
    return WsClient(await Connection.connect(ws_url, timeout_s=timeout, max_size=None), "anonymous")


class Api:
    """The HTTP API as one user: raw httpx responses through the SDK's HttpApi. `http` (an
    httpx.AsyncClient with the base URL and the bearer token as default header) is there for tests
    that send odd requests; `sdk` is the same user's typed HttpApi, sharing it."""

    def __init__(self, http_url: str, user_id: str, token: str | None):
        self.user_id = user_id
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=http_url, headers=headers, timeout=30.0)
        self.sdk = HttpApi(http_url, None, http=self.http)  # the token is the client's default header

    async def aclose(self) -> None:
        await self.http.aclose()

    def request(self, method: str, path: str, **kwargs):
        return self.sdk.request(method, path, **kwargs)

    async def create(self, members: list[str], title: str | None = None) -> httpx.Response:
        body: dict = {"members": members}
        if title is not None:
            body["title"] = title
        return await self.request("POST", "/v1/conversations", json=body)

    async def create_ok(self, members: list[str], title: str | None = None) -> dict:
        response = await self.create(members, title)
        assert response.status_code == 201, response.text
        return response.json()

    async def list(self) -> httpx.Response:
        return await self.request("GET", "/v1/conversations")

    async def get(self, cid: str) -> httpx.Response:
        return await self.request("GET", f"/v1/conversations/{cid}")

    async def add_member(self, cid: str, user_id: str) -> httpx.Response:
        return await self.request("POST", f"/v1/conversations/{cid}/members", json={"user_id": user_id})

    async def remove_member(self, cid: str, user_id: str) -> httpx.Response:
        return await self.request("DELETE", f"/v1/conversations/{cid}/members/{user_id}")

    async def post(self, cid: str, body: str, client_msg_id: str | None = None) -> httpx.Response:
        return await self.request("POST", f"/v1/conversations/{cid}/messages",
                                    json={"client_msg_id": client_msg_id or unique_id(), "body": body})

    async def post_ok(self, cid: str, body: str, client_msg_id: str | None = None) -> dict:
        response = await self.post(cid, body, client_msg_id)
        assert response.status_code == 201, response.text
        return response.json()

    async def history(self, cid: str, **params) -> httpx.Response:
        return await self.request("GET", f"/v1/conversations/{cid}/messages", params=params)

    async def history_ok(self, cid: str, **params) -> list[dict]:
        response = await self.history(cid, **params)
        assert response.status_code == 200, response.text
        return response.json()["messages"]

    async def read(self, cid: str, seq) -> httpx.Response:
        return await self.request("POST", f"/v1/conversations/{cid}/read", json={"seq": seq})


class User:
    """A test user: its id, a token, its HTTP client, and a way to open sockets."""

    def __init__(self, platform, user_id: str, region: str | None = None, gateway: str | None = None):
        """region: the token's claim (the user's home); gateway: the region whose entry point
        (`/regions/<gateway>`) the user's HTTP calls and sockets go to (default: the platform's
        root URL, the default region's)."""
        self.platform = platform
        self.user_id = user_id
        self.token = mint_token(platform.settings.jwt_secret, user_id, region=region)
        self.http_url = platform.http_url + (f"/regions/{gateway}" if gateway else "")
        self.ws_url = self.http_url.replace("http", "ws", 1) + "/v1/ws"
        self.api = Api(self.http_url, user_id, self.token)
        self.sockets: list[WsClient] = []

    async def ws(self, since: int | None = None, wait_ready: bool = True, gateway: str | None = None) -> WsClient:
        """A socket on the user's gateway, or on the `gateway` region's entry point."""
        ws_url = self.ws_url if gateway is None else f"{self.platform.ws_url.removesuffix('/v1/ws')}/regions/{gateway}/v1/ws"
        client = await open_ws(ws_url, self.user_id, self.token, since, wait_ready)
        self.sockets.append(client)
        return client

    async def aclose(self) -> None:
        for client in self.sockets:
            await client.close()
        await self.api.aclose()


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    """The PROTOCOL.md error shape with this status and code; returns the error object."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == code, body
    assert isinstance(error["message"], str) and error["message"], body
    return error


def assert_message(message: dict, *, conversation_id: str, seq: int, sender: str, client_msg_id: str,
                   body: str, before_ms: int | None = None) -> None:
    """A PROTOCOL.md message object with exactly these values."""
    assert set(message) >= {"conversation_id", "seq", "message_id", "sender", "client_msg_id", "body", "ts"}, message
    assert message["conversation_id"] == conversation_id, message
    assert message["seq"] == seq, message
    assert message["sender"] == sender, message
    assert message["client_msg_id"] == client_msg_id, message
    assert message["body"] == body, message
    assert isinstance(message["message_id"], str) and message["message_id"].startswith("m_"), message
    assert isinstance(message["ts"], int), message
    if before_ms is not None:
        now = int(time.time() * 1000)
        assert before_ms - 1000 <= message["ts"] <= now + 1000, (message["ts"], before_ms, now)


def now_ms() -> int:
    return int(time.time() * 1000)


# ---- platform actors killed and restarted ----------------------------------------------------------

ACTOR_RESTART_TIMEOUT_S = 60.0


def platform_actor(sb, name: str):
    import ray

    return ray.get_actor(name, namespace=sb.settings.namespace)


async def restarted_stats(sb, name: str, started_before: float) -> dict:
    """The first stats() of the actor `name` once it runs a new life (another `started_at`)."""
    deadline = time.monotonic() + ACTOR_RESTART_TIMEOUT_S
    while True:
        try:
            stats = await asyncio.wait_for(platform_actor(sb, name).stats.remote(), 10)
            if stats["started_at"] != started_before:
                return stats
        except Exception:
            pass
        assert time.monotonic() < deadline, f"{name} did not come back in {ACTOR_RESTART_TIMEOUT_S}s"
        await asyncio.sleep(0.2)

"""A small asyncio load client: users over WebSocket, conversations over HTTP, and a ledger of both.

Every send is stamped with this process's monotonic clock under (sender, client_msg_id); every
`message` event a user receives is matched against that stamp, so send-to-receive latency needs no
clock shared with the server. It only ever connects to loopback: it is a local load generator.

Sockets and HTTP calls go through the SDK (switchboard.client): its raw `Connection`, not the
reconnecting `Client`, because a benchmark must see every frame as sent and count a dropped socket
as a failure rather than heal it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from urllib.parse import urlsplit

import httpx

from switchboard.auth import mint_token
from switchboard.client import ApiError, ClientError, HttpApi, SessionClosed
from switchboard.client import Connection as Socket

REFUSAL_CODES = ("rate_limited", "overloaded")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
CONNECT_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 10.0
# Frames the workloads receive are small; this only guards against a runaway server.
MAX_FRAME_BYTES = 1 << 20


class BenchError(RuntimeError):
    """The benchmark cannot go on (target unreachable, setup refused); the message says why."""


@dataclasses.dataclass(frozen=True)
class Target:
    """Where to send load and how to mint its tokens."""

    name: str
    base_url: str  # http://127.0.0.1:PORT
    secret: str

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "ws") or parts.hostname not in LOOPBACK_HOSTS:
            raise BenchError(f"{self.base_url!r}: the load client only connects to http://127.0.0.1:PORT")

    @property
    def http_url(self) -> str:
        return "http" + self.base_url.rstrip("/").removeprefix("ws").removeprefix("http")

    @property
    def ws_url(self) -> str:
        return "ws" + self.http_url.removeprefix("http") + "/v1/ws"

    def token(self, user_id: str) -> str:
        return mint_token(self.secret, user_id)


async def health_problem(base_url: str) -> str | None:
    """None when GET /v1/health answers 200, else a sentence saying what is wrong."""
    url = base_url.rstrip("/") + "/v1/health"
    try:
        async with httpx.AsyncClient(timeout=3.0) as http:
            response = await http.get(url)
    except httpx.TransportError as exc:
        return f"nothing answers at {url} ({type(exc).__name__})"
    if response.status_code != 200:
        return f"{url} answered {response.status_code}: the platform is not ready for traffic"
    return None


async def create_conversation(http: httpx.AsyncClient, target: Target, creator: str,
                              members: list[str], title: str = "bench") -> dict:
    """The new conversation's conversation_id and members."""
    try:
        conversation = await HttpApi(target.http_url, target.token(creator), http=http).create_conversation(
            members, title=title)
    except ApiError as exc:
        raise BenchError(f"POST /v1/conversations answered {exc.status}: {exc.code}: {exc.message[:200]}") from None
    return {"conversation_id": conversation.conversation_id, "members": list(conversation.members)}


# ---- what was sent and what arrived --------------------------------------------------------------

@dataclasses.dataclass
class Send:
    recipients: frozenset[str]  # every member, the sender included (it gets its own echo)
    sent_at: float  # monotonic seconds
    outcome: str | None = None  # None until answered: "sent", "refused", "error" or "closed"
    received_by: set[str] = dataclasses.field(default_factory=set)


class Ledger:
    """Every send of one run and every `message` event its users received.

    Two counters make "are we done?" O(1): answers still awaited, and deliveries still owed for
    messages the server acknowledged with `sent`.
    """

    def __init__(self) -> None:
        self.members: dict[str, frozenset[str]] = {}
        self.sends: dict[tuple[str, str], Send] = {}
        self.latencies_ms: list[float] = []
        self.delivered = 0  # deliveries to members other than the sender
        self.refused = 0
        self.errors = 0
        self.duplicates = 0
        self.strangers = 0  # message events that match no send of this run
        self.cursor_regressions = 0
        self.closed_unexpectedly = 0
        self.awaiting_answers = 0
        self.owed_deliveries = 0
        self.last_event_at = 0.0

    def add_conversation(self, conversation: dict) -> None:
        self.members[conversation["conversation_id"]] = frozenset(conversation["members"])

    def record_send(self, sender: str, conversation_id: str, client_msg_id: str) -> None:
        self.sends[(sender, client_msg_id)] = Send(self.members[conversation_id], time.monotonic())
        self.awaiting_answers += 1

    def record_answer(self, sender: str, client_msg_id: str, outcome: str) -> None:
        send = self.sends.get((sender, client_msg_id))
        if send is None or send.outcome is not None:
            return
        send.outcome = outcome
        self.awaiting_answers -= 1
        self.last_event_at = time.monotonic()
        if outcome == "sent":
            self.owed_deliveries += len(send.recipients - send.received_by)
        elif outcome == "refused":
            self.refused += 1
        elif outcome == "error":
            self.errors += 1

    def record_delivery(self, user_id: str, message: dict) -> None:
        now = time.monotonic()
        send = self.sends.get((message.get("sender"), message.get("client_msg_id")))
        if send is None:
            self.strangers += 1
            return
        if user_id in send.received_by:
            self.duplicates += 1
            return
        send.received_by.add(user_id)
        self.last_event_at = now
        if send.outcome == "sent":
            self.owed_deliveries -= 1
        if user_id != message["sender"]:
            self.delivered += 1
            self.latencies_ms.append((now - send.sent_at) * 1000.0)

    def settled(self) -> bool:
        return self.awaiting_answers == 0 and self.owed_deliveries == 0

    def lost(self) -> int:
        """Messages acknowledged `sent` that some member never received."""
        return sum(1 for s in self.sends.values() if s.outcome == "sent" and s.received_by != s.recipients)

    def delivered_without_sent(self) -> int:
        """Messages some member received although their send was never answered `sent`."""
        return sum(1 for s in self.sends.values() if s.received_by and s.outcome != "sent")

    def unanswered(self) -> int:
        return self.awaiting_answers


# ---- one user's WebSocket ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Answer:
    outcome: str  # "sent", "refused", "error" or "closed"
    retry_after_ms: int = 0


class Connection:
    """One authenticated socket. A reader task files every frame in the ledger and resolves the
    future each `send` returned, so senders may wait for answers (closed loop) or not (paced)."""

    def __init__(self, user_id: str, socket: Socket, ledger: Ledger, cursor: int):
        self.user_id = user_id
        self.socket = socket
        self.ledger = ledger
        self.cursor = cursor
        self.is_open = True
        self._closing = False
        self._answers: dict[str, asyncio.Future[Answer]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, target: Target, user_id: str, ledger: Ledger) -> Connection:
        try:
            socket = await Socket.open(target.ws_url, target.token(user_id), timeout_s=CONNECT_TIMEOUT_S,
                                       keepalive_s=None, max_size=MAX_FRAME_BYTES)
        except ClientError as exc:
            raise BenchError(f"{user_id}: no `ready` from {target.ws_url}: {exc}") from None
        return cls(user_id, socket, ledger, socket.cursor)

    async def send(self, conversation_id: str, client_msg_id: str, body: str) -> asyncio.Future[Answer]:
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.ledger.record_send(self.user_id, conversation_id, client_msg_id)
        self._answers[client_msg_id] = answer
        frame = {"type": "send", "conversation_id": conversation_id,
                 "client_msg_id": client_msg_id, "body": body}
        try:
            await self.socket.send_text(json.dumps(frame))
        except SessionClosed:
            self._resolve(client_msg_id, Answer("closed"))
        return answer

    async def close(self) -> None:
        self._closing = True
        await self.socket.close()
        try:
            await asyncio.wait_for(self._reader, CONNECT_TIMEOUT_S)
        except asyncio.TimeoutError:
            pass

    async def _read(self) -> None:
        try:
            async for frame in self.socket:  # ends when the socket closes
                self._dispatch(frame)
        finally:
            self.is_open = False
            if not self._closing:
                self.ledger.closed_unexpectedly += 1
            for client_msg_id in list(self._answers):
                self._resolve(client_msg_id, Answer("closed"))

    def _dispatch(self, frame: dict) -> None:
        kind = frame.get("type")
        if kind == "message":
            if frame["cursor"] <= self.cursor:
                self.ledger.cursor_regressions += 1
            self.cursor = frame["cursor"]
            self.ledger.record_delivery(self.user_id, frame["message"])
        elif kind == "sent":
            self._resolve(frame["client_msg_id"], Answer("sent"))
        elif kind == "error":
            ref = frame.get("ref")
            if ref in self._answers:
                outcome = "refused" if frame.get("code") in REFUSAL_CODES else "error"
                self._resolve(ref, Answer(outcome, int(frame.get("retry_after_ms") or 0)))
            else:
                self.ledger.errors += 1
        # receipts, member events, typing and pongs are not part of these workloads

    def _resolve(self, client_msg_id: str, answer: Answer) -> None:
        future = self._answers.pop(client_msg_id, None)
        if future is None:
            return
        self.ledger.record_answer(self.user_id, client_msg_id, answer.outcome)
        if not future.done():
            future.set_result(answer)

"""The SDK's small parts as plain logic: backoff delays, URLs, frame parsing, error mapping, and
the HTTP API over an httpx.MockTransport (no server)."""

from __future__ import annotations

import json
import random

import httpx
import pytest
from switchboard.client import (
    ApiError,
    Backoff,
    Conversation,
    HttpApi,
    MemberEvent,
    Message,
    MessageEvent,
    ReceiptEvent,
    ResyncRequired,
    TypingEvent,
    parse_event,
)
from switchboard.client.address import http_url, ws_url

MESSAGE = {"conversation_id": "c_1", "seq": 3, "message_id": "m_x", "sender": "alice",
           "client_msg_id": "k", "body": "hi", "ts": 1764300000123}
CONVERSATION = {"conversation_id": "c_1", "title": "lunch", "members": ["alice", "bob"],
                "region": "local", "last_seq": 3, "created_at": 1764300000000}


# ---- backoff -------------------------------------------------------------------------------------

def test_backoff_grows_exponentially_to_its_cap_with_jitter_in_the_upper_half():
    backoff = Backoff(initial_s=0.1, max_s=2.0, multiplier=2.0)
    assert [backoff.nominal_s(n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert backoff.nominal_s(10_000) == 2.0  # no overflow for a client retrying for days
    rng = random.Random(7)
    for attempt in range(8):
        delays = [backoff.delay_s(attempt, rng) for _ in range(200)]
        nominal = backoff.nominal_s(attempt)
        assert all(nominal / 2 <= d <= nominal for d in delays)
        assert len(set(delays)) > 150  # jittered, not one value for every client


@pytest.mark.parametrize("bad", [dict(initial_s=0), dict(initial_s=3, max_s=2), dict(multiplier=0.5)])
def test_backoff_refuses_nonsense(bad):
    with pytest.raises(ValueError):
        Backoff(**bad)


# ---- addresses -----------------------------------------------------------------------------------

@pytest.mark.parametrize("given", ["http://127.0.0.1:8000", "http://127.0.0.1:8000/", "ws://127.0.0.1:8000/v1/ws"])
def test_one_base_url_gives_both_endpoints(given):
    assert http_url(given) == "http://127.0.0.1:8000"
    assert ws_url(given) == "ws://127.0.0.1:8000/v1/ws"


def test_tls_urls_stay_tls_and_junk_is_refused():
    assert ws_url("https://chat.example.com") == "wss://chat.example.com/v1/ws"
    assert http_url("wss://chat.example.com/v1/ws") == "https://chat.example.com"
    with pytest.raises(ValueError):
        http_url("127.0.0.1:8000")


@pytest.mark.parametrize("given", ["http://127.0.0.1:8000/regions/eu", "http://127.0.0.1:8000/regions/eu/",
                                   "ws://127.0.0.1:8000/regions/eu/v1/ws", "http://127.0.0.1:8000/regions/eu?x=1"])
def test_a_regions_path_is_kept(given):
    assert http_url(given) == "http://127.0.0.1:8000/regions/eu"
    assert ws_url(given) == "ws://127.0.0.1:8000/regions/eu/v1/ws"


# ---- events --------------------------------------------------------------------------------------

def test_server_frames_become_typed_events_and_extra_fields_are_ignored():
    message = parse_event({"type": "message", "cursor": 9, "message": {**MESSAGE, "future_field": 1}})
    assert message == MessageEvent(9, Message("c_1", 3, "m_x", "alice", "k", "hi", 1764300000123))
    assert parse_event({"type": "receipt", "cursor": 10, "conversation_id": "c_1", "user_id": "bob",
                        "seq": 3}) == ReceiptEvent(10, "c_1", "bob", 3)
    assert parse_event({"type": "member", "cursor": 11, "conversation_id": "c_1", "user_id": "carol",
                        "action": "joined"}) == MemberEvent(11, "c_1", "carol", "joined")
    assert parse_event({"type": "typing", "conversation_id": "c_1", "user_id": "bob"}) == TypingEvent("c_1", "bob")
    assert parse_event({"type": "resync_required", "cursor": 40}) == ResyncRequired(40)
    assert parse_event({"type": "pong", "nonce": "n"}) is None
    assert parse_event({"type": "something_new"}) is None


def test_events_are_frozen():
    event = parse_event({"type": "resync_required", "cursor": 1})
    with pytest.raises(AttributeError):
        event.cursor = 2


def test_error_frames_become_api_errors():
    error = ApiError.from_frame({"type": "error", "code": "overloaded", "message": "later", "ref": "k1"})
    assert (error.code, error.message, error.ref, error.status, error.retry_after_ms) == ("overloaded", "later", "k1", None, None)
    assert error.retryable
    assert not ApiError.from_frame({"type": "error", "code": "forbidden", "message": "no"}).retryable


# ---- the HTTP API over a mock transport ----------------------------------------------------------

class Recorded:
    """A MockTransport handler answering from a table and keeping every request."""

    def __init__(self, answers: dict[tuple[str, str], httpx.Response]):
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers[(request.method, request.url.path)]


def api_with(answers, token="tok") -> tuple[HttpApi, Recorded]:
    handler = Recorded(answers)
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return HttpApi("http://sb.test:8000", token, http=http), handler


async def test_create_conversation_sends_the_body_and_bearer_and_returns_a_conversation():
    api, handler = api_with({("POST", "/v1/conversations"): httpx.Response(201, json=CONVERSATION)})
    conversation = await api.create_conversation(["bob"], title="lunch")
    assert conversation == Conversation("c_1", "lunch", ("alice", "bob"), "local", 3, 1764300000000)
    request = handler.requests[0]
    assert str(request.url) == "http://sb.test:8000/v1/conversations"
    assert request.headers["authorization"] == "Bearer tok"
    assert json.loads(request.content) == {"members": ["bob"], "title": "lunch"}


async def test_send_message_tells_a_new_message_from_a_repeat():
    path = ("POST", "/v1/conversations/c_1/messages")
    api, handler = api_with({path: httpx.Response(201, json=MESSAGE)})
    message, created = await api.send_message("c_1", "hi", client_msg_id="k")
    assert created and message.seq == 3
    assert json.loads(handler.requests[0].content) == {"client_msg_id": "k", "body": "hi"}
    handler.answers[path] = httpx.Response(200, json=MESSAGE)
    message, created = await api.send_message("c_1", "hi", client_msg_id="k")
    assert not created and message.message_id == "m_x"
    # Without a client_msg_id one is made up, different for each call.
    await api.send_message("c_1", "a")
    await api.send_message("c_1", "b")
    made = [json.loads(r.content)["client_msg_id"] for r in handler.requests[2:]]
    assert len(set(made)) == 2 and all(1 <= len(k) <= 64 for k in made)


async def test_history_passes_its_page_parameters():
    api, handler = api_with({("GET", "/v1/conversations/c_1/messages"): httpx.Response(200, json={"messages": [MESSAGE]})})
    assert [m.seq for m in await api.history("c_1", after=2, limit=10)] == [3]
    assert dict(handler.requests[0].url.params) == {"after": "2", "limit": "10"}
    await api.history("c_1")
    assert dict(handler.requests[1].url.params) == {}


async def test_error_bodies_raise_api_errors_with_code_status_and_retry_after():
    api, _ = api_with({
        ("POST", "/v1/conversations/c_1/read"): httpx.Response(
            429, json={"error": {"code": "rate_limited", "message": "slow", "retry_after_ms": 1200}}),
        ("GET", "/v1/conversations/c_9"): httpx.Response(403, json={"error": {"code": "forbidden", "message": "no"}}),
        ("GET", "/v1/conversations"): httpx.Response(502, text="<html>bad gateway</html>"),
    })
    with pytest.raises(ApiError) as limited:
        await api.mark_read("c_1", 3)
    assert (limited.value.code, limited.value.status, limited.value.retry_after_ms) == ("rate_limited", 429, 1200)
    with pytest.raises(ApiError) as forbidden:
        await api.get_conversation("c_9")
    assert (forbidden.value.code, forbidden.value.status) == ("forbidden", 403)
    with pytest.raises(ApiError) as broken:
        await api.list_conversations()
    assert (broken.value.code, broken.value.status) == ("internal", 502)
    assert "bad gateway" in broken.value.message


async def test_a_token_callable_is_asked_per_request_and_health_needs_no_token():
    tokens = iter(["t1", "t2"])

    async def token() -> str:
        return next(tokens)

    api, handler = api_with({
        ("GET", "/v1/conversations"): httpx.Response(200, json={"conversations": [CONVERSATION]}),
        ("GET", "/v1/health"): httpx.Response(503, json={"status": "unavailable"}),
    }, token=token)
    assert [c.conversation_id for c in await api.list_conversations()] == ["c_1"]
    await api.list_conversations()
    assert [r.headers["authorization"] for r in handler.requests] == ["Bearer t1", "Bearer t2"]
    assert await api.health() is False
    assert "authorization" not in handler.requests[-1].headers

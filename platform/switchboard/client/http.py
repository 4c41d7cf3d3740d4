"""The HTTP API of PROTOCOL.md as one user: typed answers, errors raised as ApiError.

    api = HttpApi("http://127.0.0.1:8000", token)
    conversation = await api.create_conversation(["bob"], title="lunch")
    message, created = await api.send_message(conversation.conversation_id, "noon?")
    await api.aclose()

`request` gives the raw httpx.Response (with the bearer token) for callers that check statuses
themselves, such as the integration tests.
"""

from __future__ import annotations

import uuid

import httpx

from .address import http_url
from .errors import ApiError
from .events import Conversation, Message
from .tokens import TokenSource, current_token

HTTP_TIMEOUT_S = 10.0
# Conversations asked for per page when listing them all (the server allows up to 200 by default).
CONVERSATION_PAGE = 200


def new_client_msg_id() -> str:
    return uuid.uuid4().hex


class HttpApi:
    def __init__(self, base_url: str, token: TokenSource | None, *, timeout_s: float = HTTP_TIMEOUT_S,
                 http: httpx.AsyncClient | None = None):
        self.base_url = http_url(base_url)
        self._token = token
        self._owns_http = http is None
        self.http = http or httpx.AsyncClient(timeout=timeout_s)

    async def __aenter__(self) -> HttpApi:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One request to base_url + path with the bearer token (if this API has one)."""
        if self._token is not None:
            headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {await current_token(self._token)}"}
            kwargs["headers"] = headers
        return await self.http.request(method, self.base_url + path, **kwargs)

    async def _call(self, method: str, path: str, expect: tuple[int, ...] = (200,), **kwargs) -> httpx.Response:
        response = await self.request(method, path, **kwargs)
        if response.status_code not in expect:
            raise error_from_response(response)
        return response

    # ---- the rows of PROTOCOL.md ---------------------------------------------------------------

    async def health(self) -> bool:
        """True once the platform takes traffic (200); False on 503 or when nothing answers."""
        try:
            response = await self.http.get(self.base_url + "/v1/health")
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def create_conversation(self, members: list[str], title: str | None = None) -> Conversation:
        body: dict = {"members": list(members)}
        if title is not None:
            body["title"] = title
        response = await self._call("POST", "/v1/conversations", (201,), json=body)
        return Conversation.from_wire(response.json())

    async def list_conversations(self) -> list[Conversation]:
        """Every conversation of the caller, oldest first (all the pages)."""
        conversations, cursor = [], None
        while True:
            page, cursor = await self.conversations_page(limit=CONVERSATION_PAGE, cursor=cursor)
            conversations.extend(page)
            if cursor is None:
                return conversations

    async def conversations_page(self, limit: int | None = None,
                                 cursor: str | None = None) -> tuple[list[Conversation], str | None]:
        """One page of the caller's conversations, and the cursor of the next (None: the last)."""
        params = {k: v for k, v in (("limit", limit), ("cursor", cursor)) if v is not None}
        response = await self._call("GET", "/v1/conversations", params=params)
        body = response.json()
        return [Conversation.from_wire(c) for c in body["conversations"]], body.get("next_cursor")

    async def get_conversation(self, conversation_id: str) -> Conversation:
        response = await self._call("GET", f"/v1/conversations/{conversation_id}")
        return Conversation.from_wire(response.json())

    async def add_member(self, conversation_id: str, user_id: str) -> Conversation:
        response = await self._call("POST", f"/v1/conversations/{conversation_id}/members",
                                    json={"user_id": user_id})
        return Conversation.from_wire(response.json())

    async def leave(self, conversation_id: str, user_id: str) -> None:
        """Remove `user_id` (only the caller itself may leave)."""
        await self._call("DELETE", f"/v1/conversations/{conversation_id}/members/{user_id}")

    async def history(self, conversation_id: str, *, after: int | None = None, before: int | None = None,
                      limit: int | None = None) -> list[Message]:
        """One page in ascending seq: after=S the first `limit` above S, before=S the last `limit`
        below S, neither the latest `limit`."""
        params = {k: v for k, v in (("after", after), ("before", before), ("limit", limit)) if v is not None}
        response = await self._call("GET", f"/v1/conversations/{conversation_id}/messages", params=params)
        return [Message.from_wire(m) for m in response.json()["messages"]]

    async def send_message(self, conversation_id: str, body: str,
                           client_msg_id: str | None = None) -> tuple[Message, bool]:
        """The committed message, and True if this call created it (201) or False if it is the
        original of an earlier send with the same client_msg_id (200)."""
        payload = {"client_msg_id": client_msg_id or new_client_msg_id(), "body": body}
        response = await self._call("POST", f"/v1/conversations/{conversation_id}/messages", (200, 201),
                                    json=payload)
        return Message.from_wire(response.json()), response.status_code == 201

    async def mark_read(self, conversation_id: str, seq: int) -> None:
        await self._call("POST", f"/v1/conversations/{conversation_id}/read", json={"seq": seq})


def error_from_response(response: httpx.Response) -> ApiError:
    """The PROTOCOL.md error body as an ApiError; a body that is not one still gives a useful error."""
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error.get("message", ""))
        retry_after_ms = error.get("retry_after_ms")
    except (ValueError, KeyError, TypeError):
        code, message, retry_after_ms = _code_for_status(response.status_code), response.text[:200], None
    return ApiError(code, message, status=response.status_code,
                    retry_after_ms=retry_after_ms if isinstance(retry_after_ms, int) else None)


def _code_for_status(status: int) -> str:
    return {401: "unauthorized", 403: "forbidden", 404: "not_found", 400: "invalid", 422: "invalid",
            413: "too_large", 429: "rate_limited", 503: "overloaded"}.get(status, "internal")

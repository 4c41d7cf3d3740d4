"""The HTTP rows' request and response shapes, for the OpenAPI schema (/docs) only.

Requests are parsed and checked by protocol.py, the one place that reads client input (strict:
depth, 64-bit integers, identifiers, sizes); these models describe the same shapes to readers of
the API and are never used to parse. Answers are built as plain dicts (storage/models.py
to_wire); the models document them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="unauthorized, forbidden, not_found, invalid, too_large, rate_limited, overloaded, internal")
    message: str
    retry_after_ms: int | None = Field(None, description="with rate_limited: when to try again")


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str = Field(description='"ok", or "unavailable" (with a 503)')


class GatewayEntry(BaseModel):
    region: str
    url: str = Field(description="the region's gateway: an absolute URL (SWITCHBOARD_REGION_URLS) or a path "
                                 "on this host (/regions/<region>); /v1 and /v1/ws are under it")


class Gateways(BaseModel):
    region: str = Field(description="the region whose entry point answered")
    gateways: list[GatewayEntry] = Field(description="every region's entry point, in the order a client of "
                                                     "this region should try them: its own, its mirror, the rest")


class Conversation(BaseModel):
    conversation_id: str
    title: str
    members: list[str]
    region: str = Field(description="its home region (its creator's)")
    last_seq: int
    created_at: int = Field(description="ms since the epoch")


class ConversationPage(BaseModel):
    conversations: list[Conversation]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; null on the last")


class Message(BaseModel):
    conversation_id: str
    seq: int
    message_id: str
    sender: str
    client_msg_id: str
    body: str
    ts: int = Field(description="the commit time, ms since the epoch")


class MessagePage(BaseModel):
    messages: list[Message] = Field(description="ascending seq")


class CreateConversation(BaseModel):
    members: list[str] = Field(description="user_ids; the caller is always a member")
    title: str | None = None


class AddMember(BaseModel):
    user_id: str


class SendMessage(BaseModel):
    client_msg_id: str = Field(description="1-64 characters; a repeat answers 200 with the original")
    body: str = Field(description="at most SWITCHBOARD_MAX_BODY_BYTES of UTF-8")


class MarkRead(BaseModel):
    seq: int


class Left(BaseModel):
    conversation_id: str
    user_id: str
    action: str


class ReadMark(BaseModel):
    conversation_id: str
    user_id: str | None = None
    seq: int


ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 403, 404, 413, 429, 503)}


def body(model: type[BaseModel]) -> dict:
    """openapi_extra describing a JSON request body with `model`'s schema."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}

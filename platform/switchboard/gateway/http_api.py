"""The HTTP rows of PROTOCOL.md: parse and check the request, call the core, shape the answer."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from switchboard import protocol
from switchboard.actors.ops import AddMember, CreateConversation, MarkRead, RemoveMember, SendMessage
from switchboard.auth import Identity, verify_token
from switchboard.errors import Invalid, NotFound, TooLarge, Unauthorized

router = APIRouter(prefix="/v1")


def core_of(request: Request):
    return request.app.state.core


def identify(request: Request) -> Identity:
    settings = core_of(request).settings
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token")
    return verify_token(settings.jwt_secret, token.strip(), settings.regions, settings.region)


async def json_body(request: Request) -> dict:
    limit = core_of(request).settings.max_frame_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body is over {limit} bytes")
    raw = await request.body()
    if len(raw) > limit:
        raise TooLarge(f"request body is over {limit} bytes")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise Invalid("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Invalid("request body must be a JSON object")
    return body


def query_int(request: Request, name: str, minimum: int = 0) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"{name} must be an integer") from None
    if value < minimum:
        raise Invalid(f"{name} must be at least {minimum}")
    return value


@router.get("/health")
async def health(request: Request):
    if await core_of(request).healthy():
        return {"status": "ok"}
    return JSONResponse({"status": "unavailable"}, status_code=503)


@router.post("/conversations")
async def create_conversation(request: Request):
    core = core_of(request)
    me = identify(request)
    body = await json_body(request)
    members = protocol.validate_members(body.get("members", []), core.settings.max_members)
    title = protocol.validate_title(body.get("title"))
    operation = CreateConversation(
        conversation_id=protocol.new_conversation_id(), creator=me.user_id,
        members=tuple(members), title=title, region=me.region,
    )
    outcome = await core.run(operation)
    return JSONResponse(outcome.value, status_code=201)


@router.get("/conversations")
async def list_conversations(request: Request):
    core = core_of(request)
    me = identify(request)
    conversations = await core.read(core.store.list_conversations, me.user_id)
    return {"conversations": [c.to_wire() for c in conversations]}


@router.get("/conversations/{conversation_id}")
async def get_conversation(conversation_id: str, request: Request):
    core = core_of(request)
    me = identify(request)
    conversation = await core.member_conversation(_conversation_id(conversation_id), me.user_id)
    return conversation.to_wire()


@router.post("/conversations/{conversation_id}/members")
async def add_member(conversation_id: str, request: Request):
    core = core_of(request)
    me = identify(request)
    body = await json_body(request)
    user_id = protocol.validate_user_id(body.get("user_id"))
    outcome = await core.run(AddMember(_conversation_id(conversation_id), me.user_id, user_id))
    return outcome.value


@router.delete("/conversations/{conversation_id}/members/{user_id}")
async def remove_member(conversation_id: str, user_id: str, request: Request):
    core = core_of(request)
    me = identify(request)
    conversation_id = _conversation_id(conversation_id)
    await core.run(RemoveMember(conversation_id, me.user_id, protocol.validate_user_id(user_id)))
    return {"conversation_id": conversation_id, "user_id": user_id, "action": "left"}


@router.post("/conversations/{conversation_id}/messages")
async def send_message(conversation_id: str, request: Request):
    core = core_of(request)
    me = identify(request)
    body = await json_body(request)
    operation = SendMessage(
        conversation_id=_conversation_id(conversation_id),
        sender=me.user_id,
        client_msg_id=protocol.validate_client_msg_id(body.get("client_msg_id")),
        body=protocol.validate_body(body.get("body"), core.settings.max_body_bytes),
    )
    core.limiter.check(me.user_id)
    outcome = await core.run(operation)
    return JSONResponse(outcome.value, status_code=201 if outcome.created else 200)


@router.get("/conversations/{conversation_id}/messages")
async def list_messages(conversation_id: str, request: Request):
    core = core_of(request)
    me = identify(request)
    conversation_id = _conversation_id(conversation_id)
    after = query_int(request, "after")
    before = query_int(request, "before")
    if after is not None and before is not None:
        raise Invalid("give `after` or `before`, not both")
    limit = query_int(request, "limit", minimum=1) or 50
    if limit > core.settings.history_limit_max:
        raise Invalid(f"limit is at most {core.settings.history_limit_max}")
    await core.member_conversation(conversation_id, me.user_id)
    page = await core.read(core.store.messages_page, conversation_id, after, before, limit)
    return {"messages": [message.to_wire() for message in page]}


@router.post("/conversations/{conversation_id}/read")
async def mark_read(conversation_id: str, request: Request):
    core = core_of(request)
    me = identify(request)
    body = await json_body(request)
    seq = protocol.validate_seq(body.get("seq"))
    outcome = await core.run(MarkRead(_conversation_id(conversation_id), me.user_id, seq))
    return outcome.value


def _conversation_id(raw: str) -> str:
    """A path id that cannot be a conversation is simply not found (not a malformed request)."""
    if not protocol.CONVERSATION_ID_RE.fullmatch(raw):
        raise NotFound("no such conversation")
    return raw

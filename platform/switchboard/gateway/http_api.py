"""The HTTP rows of PROTOCOL.md: parse and check the request, call the core, shape the answer.

Every authenticated call spends one token of the caller's HTTP budget (http_rate_per_s, on this
replica); sends spend the user's shared send budget, conversation creations and membership
changes its shared membership budget (gateway/rate_limit.py). Bodies are read as a stream and
cut at the frame limit whether or not a Content-Length was sent.
"""

from __future__ import annotations

import re
import time

from fastapi import APIRouter, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer

from switchboard import protocol
from switchboard.actors.ops import AddMember, CreateConversation, MarkRead, RemoveMember, SendMessage
from switchboard.auth import Identity, verify_token
from switchboard.errors import Invalid, NotFound, TooLarge, Unauthorized

from . import entry_points, schemas

# Documents the bearer scheme in /docs; identify() does the checking (with our error codes).
bearer = HTTPBearer(auto_error=False, description="an access token: JWT HS256 with sub, exp, optional region")
router = APIRouter(prefix="/v1")
authenticated = APIRouter(prefix="/v1", dependencies=[Security(bearer)], responses=schemas.ERRORS)

CONVERSATION_PAGE_DEFAULT = 50
# A conversation-list cursor: the last entry's (created_at, conversation_id).
CURSOR_RE = re.compile(r"([0-9]{1,19})\.(c_[A-Za-z0-9_\-]{1,64})")
MEMBERSHIP_RATE = "over the rate of conversation and membership changes"


def core_of(request: Request):
    return request.app.state.core


def identify(request: Request) -> Identity:
    core = core_of(request)
    settings = core.settings
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token")
    identity = verify_token(settings.jwt_secret, token.strip(), settings.regions, settings.region)
    core.http_limiter.check(identity.user_id, "over the request rate")
    return identity


async def json_body(request: Request) -> dict:
    settings = core_of(request).settings
    raw = await read_body(request, settings.max_frame_bytes)
    return protocol.parse_json_body(raw, settings.max_json_depth)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read chunk by chunk and refused as soon as it passes `limit` bytes (a declared
    Content-Length over it is refused before reading anything)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body is over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def query_int(request: Request, name: str, minimum: int = 0) -> int | None:
    return protocol.validate_query_int(request.query_params.get(name), name, minimum)


@router.get("/health", response_model=None, responses={200: {"model": schemas.Health}, 503: {"model": schemas.Health}})
async def health(request: Request):
    """200 once the platform can take traffic: this replica is up, its region's shards answer and
    can commit, and PostgreSQL answers; 503 otherwise (no token needed)."""
    if await core_of(request).health_problem() is None:
        return {"status": "ok"}
    return JSONResponse({"status": "unavailable"}, status_code=503)


@router.get("/gateways", response_model=schemas.Gateways)
async def gateways(request: Request) -> dict:
    """Every region's gateway entry point, this one's region first and then the order to fail
    over in (no token needed: it is what a client reads before it picks where to connect)."""
    core = core_of(request)
    order = entry_points.failover_order(core.settings, core.home_region)
    return {"region": core.home_region,
            "gateways": [{"region": region, "url": entry_points.public_url(core.settings, region)} for region in order]}


@authenticated.post("/conversations", status_code=201, response_model=None,
                    responses={201: {"model": schemas.Conversation}}, openapi_extra=schemas.body(schemas.CreateConversation))
async def create_conversation(request: Request):
    core = core_of(request)
    me = identify(request)
    body = await json_body(request)
    members = protocol.validate_members(body.get("members", []), core.settings.max_members)
    title = protocol.validate_title(body.get("title"))
    await core.limits.take(me, "membership", MEMBERSHIP_RATE)
    operation = CreateConversation(
        conversation_id=protocol.new_conversation_id(me.region), creator=me.user_id,
        members=tuple(members), title=title, region=me.region,
    )
    outcome = await core.run(operation)
    return JSONResponse(outcome.value, status_code=201)


@authenticated.get("/conversations", response_model=None, responses={200: {"model": schemas.ConversationPage}})
async def list_conversations(request: Request):
    """The caller's conversations, oldest first, `limit` at a time (default 50, at most
    SWITCHBOARD_CONVERSATION_PAGE_MAX); pass the answer's `next_cursor` as `cursor` for the next."""
    core = core_of(request)
    me = identify(request)
    limit = query_int(request, "limit", minimum=1) or CONVERSATION_PAGE_DEFAULT
    if limit > core.settings.conversation_page_max:
        raise Invalid(f"limit is at most {core.settings.conversation_page_max}")
    after = _page_cursor(request.query_params.get("cursor"))
    conversations = await core.read(core.store.list_conversations, me.user_id, limit + 1, after)
    page, more = conversations[:limit], len(conversations) > limit
    next_cursor = f"{page[-1].created_at}.{page[-1].conversation_id}" if more else None
    return {"conversations": [c.to_wire() for c in page], "next_cursor": next_cursor}


@authenticated.get("/conversations/{conversation_id}", response_model=None,
                   responses={200: {"model": schemas.Conversation}})
async def get_conversation(conversation_id: str, request: Request):
    core = core_of(request)
    me = identify(request)
    conversation = await core.member_conversation(_conversation_id(conversation_id), me.user_id)
    return conversation.to_wire()


@authenticated.post("/conversations/{conversation_id}/members", response_model=None,
                    responses={200: {"model": schemas.Conversation}}, openapi_extra=schemas.body(schemas.AddMember))
async def add_member(conversation_id: str, request: Request):
    core = core_of(request)
    me = identify(request)
    body = await json_body(request)
    user_id = protocol.validate_user_id(body.get("user_id"))
    await core.limits.take(me, "membership", MEMBERSHIP_RATE)
    outcome = await core.run(AddMember(_conversation_id(conversation_id), me.user_id, user_id))
    return outcome.value


@authenticated.delete("/conversations/{conversation_id}/members/{user_id}", response_model=None,
                      responses={200: {"model": schemas.Left}})
async def remove_member(conversation_id: str, user_id: str, request: Request):
    core = core_of(request)
    me = identify(request)
    conversation_id = _conversation_id(conversation_id)
    user_id = protocol.validate_user_id(user_id)
    await core.limits.take(me, "membership", MEMBERSHIP_RATE)
    await core.run(RemoveMember(conversation_id, me.user_id, user_id))
    return {"conversation_id": conversation_id, "user_id": user_id, "action": "left"}


@authenticated.post("/conversations/{conversation_id}/messages", status_code=201, response_model=None,
                    responses={201: {"model": schemas.Message}, 200: {"model": schemas.Message}},
                    openapi_extra=schemas.body(schemas.SendMessage))
async def send_message(conversation_id: str, request: Request):
    started = time.monotonic()  # the send timeout counts from here, the lease included
    core = core_of(request)
    me = identify(request)
    body = await json_body(request)
    operation = SendMessage(
        conversation_id=_conversation_id(conversation_id),
        sender=me.user_id,
        client_msg_id=protocol.validate_client_msg_id(body.get("client_msg_id")),
        body=protocol.validate_body(body.get("body"), core.settings.max_body_bytes),
    )
    await core.limits.take(me, "send")
    outcome = await core.run(operation, started)
    return JSONResponse(outcome.value, status_code=201 if outcome.created else 200)


@authenticated.get("/conversations/{conversation_id}/messages", response_model=None,
                   responses={200: {"model": schemas.MessagePage}})
async def list_messages(conversation_id: str, request: Request):
    """`after=SEQ` or `before=SEQ`, and `limit` (default 50, at most SWITCHBOARD_HISTORY_LIMIT_MAX);
    always ascending seq."""
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


@authenticated.post("/conversations/{conversation_id}/read", response_model=None,
                    responses={200: {"model": schemas.ReadMark}}, openapi_extra=schemas.body(schemas.MarkRead))
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


def _page_cursor(raw: str | None) -> tuple[int, str] | None:
    if raw is None:
        return None
    match = CURSOR_RE.fullmatch(raw)
    if match is None or int(match.group(1)) > protocol.INT64_MAX:
        raise Invalid("cursor is not one this API handed out")
    return int(match.group(1)), match.group(2)

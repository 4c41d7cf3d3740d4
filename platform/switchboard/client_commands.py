"""The client side of the `switchboard` command: send, tail, demo.

They reach the platform the way `status` does (SWITCHBOARD_PORT / the state file of `up`, or
--url) and sign development tokens with SWITCHBOARD_JWT_SECRET, so run them with the platform's
environment. They use only the SDK (switchboard.client): what they do, an application can do.

    switchboard send alice bob "lunch?"           a direct conversation with bob (found or created)
    switchboard send alice bob,carol "lunch?"     a group conversation with bob and carol
    switchboard send alice c_8x... "lunch?"       an existing conversation
    switchboard tail bob                          bob's live events; next time, from where it stopped
    switchboard demo --users 20 --duration 30     simulated users chatting, with live figures
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from switchboard.settings import Settings

# A send refused as retryable (rate_limited, overloaded) is tried this many times in all.
SEND_ATTEMPTS = 5
OVERLOAD_RETRY_S = 0.5
TAIL_DIR = "tail"


def add_client_commands(commands) -> None:
    """Register send, tail and demo on the `switchboard` subcommand parser."""
    send = commands.add_parser("send", help="send a message as USER (to a user, users or a conversation)")
    send.add_argument("user", help="the sender")
    send.add_argument("to", metavar="TO", help="a conversation id (c_...), a user id, or comma-separated user ids")
    send.add_argument("body", nargs="+", help="the message (several words are joined with spaces)")
    send.add_argument("--title", help="title of a conversation created for TO")
    send.add_argument("--client-msg-id", help="idempotency key (default: a random one)")
    send.add_argument("--json", action="store_true", help="print the committed message as JSON")
    _add_target_options(send)
    send.set_defaults(run=cmd_send)

    tail = commands.add_parser("tail", help="print USER's live events, resuming where the last tail stopped")
    tail.add_argument("user")
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--since", type=int, metavar="CURSOR", help="resume after this mailbox cursor")
    start.add_argument("--from-start", action="store_true", help="replay the whole retained mailbox")
    start.add_argument("--live", action="store_true", help="ignore the saved cursor: only new events")
    tail.add_argument("--count", type=int, metavar="N", help="stop after N mailbox events")
    tail.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    tail.add_argument("--json", action="store_true", help="one JSON object per event")
    _add_target_options(tail)
    tail.set_defaults(run=cmd_tail)

    demo = commands.add_parser("demo", help="simulated users chatting against the running platform")
    demo.add_argument("--users", type=int, default=20, help="simulated users (default 20)")
    demo.add_argument("--duration", type=float, default=30.0, metavar="SECONDS", help="sending time (default 30)")
    demo.add_argument("--rate", type=float, default=1.0, metavar="MSGS_PER_S",
                      help="messages per second each user sends (default 1)")
    demo.add_argument("--group-size", type=int, default=5, help="members of each group conversation (default 5)")
    _add_target_options(demo)
    demo.set_defaults(run=cmd_demo)


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="platform base URL (default http://127.0.0.1:$SWITCHBOARD_PORT)")
    parser.add_argument("--region", help="the user's home region in the minted token")


# ---- where the platform is, who we are ---------------------------------------------------------

def platform_settings() -> Settings:
    """The environment's settings, with the address `up` recorded if it left a state file."""
    from switchboard.state_file import read_state, settings_from_state

    settings = Settings.from_env()
    return settings_from_state(settings, read_state(settings))


def base_url(args: argparse.Namespace, settings: Settings) -> str:
    from switchboard.addresses import http_url

    return args.url or http_url(settings)


def token_source(settings: Settings, user_id: str, region: str | None):
    """A callable minting a fresh development token per session (tokens expire)."""
    from switchboard.auth import mint_token

    mint_token(settings.jwt_secret, user_id, region=region)  # a bad user_id fails here, at once
    return lambda: mint_token(settings.jwt_secret, user_id, region=region)


def fail(command: str, message: str) -> int:
    print(f"switchboard {command}: {message}", file=sys.stderr)
    return 1


# ---- send --------------------------------------------------------------------------------------

def cmd_send(args: argparse.Namespace) -> int:
    from switchboard.client import ApiError, HttpApi
    from switchboard.errors import SwitchboardError

    settings = platform_settings()
    try:
        token = token_source(settings, args.user, args.region)
    except SwitchboardError as error:
        return fail("send", error.message)

    async def run() -> int:
        async with HttpApi(base_url(args, settings), token) as api:
            if not await api.health():
                return fail("send", f"the platform at {api.base_url} is not answering /v1/health")
            try:
                cid = await conversation_for(api, args.user, args.to, args.title)
                message, created = await send_with_retries(api, cid, " ".join(args.body), args.client_msg_id)
            except ApiError as error:
                return fail("send", f"{error.code}: {error.message}")
        if args.json:
            print(json.dumps(dataclass_dict(message)))
        else:
            repeat = "" if created else " (a repeat: the original message)"
            print(f"{message.conversation_id} #{message.seq} {message.sender}: {message.body}{repeat}")
        return 0

    return asyncio.run(run())


async def conversation_for(api, user_id: str, to: str, title: str | None) -> str:
    """TO as a conversation id: itself; as users: the caller's conversation with exactly them and
    the caller (the newest such), else a new one."""
    if to.startswith("c_"):
        return to
    wanted = {user_id, *(u.strip() for u in to.split(",") if u.strip())}
    matches = [c for c in await api.list_conversations() if set(c.members) == wanted]
    if matches:
        return max(matches, key=lambda c: c.created_at).conversation_id
    members = sorted(wanted - {user_id})
    return (await api.create_conversation(members, title=title)).conversation_id


async def send_with_retries(api, cid: str, body: str, client_msg_id: str | None):
    """HttpApi.send_message, retried with the same client_msg_id while refused as retryable."""
    from switchboard.client import ApiError, new_client_msg_id

    client_msg_id = client_msg_id or new_client_msg_id()
    for attempt in range(SEND_ATTEMPTS):
        try:
            return await api.send_message(cid, body, client_msg_id)
        except ApiError as error:
            if not error.retryable or attempt == SEND_ATTEMPTS - 1:
                raise
            await asyncio.sleep((error.retry_after_ms or 0) / 1000 or OVERLOAD_RETRY_S)
    raise AssertionError("unreachable")


def dataclass_dict(value) -> dict:
    import dataclasses

    return dataclasses.asdict(value)


# ---- tail --------------------------------------------------------------------------------------

def cursor_path(settings: Settings, user_id: str) -> Path:
    return Path(settings.data_dir).expanduser() / TAIL_DIR / f"{user_id}.cursor"


def load_cursor(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def save_cursor(path: Path, cursor: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(f"{cursor}\n")
    temporary.replace(path)  # atomic: a tail killed mid-write never leaves half a number


def cmd_tail(args: argparse.Namespace) -> int:
    from switchboard.errors import SwitchboardError

    settings = platform_settings()
    try:
        token = token_source(settings, args.user, args.region)
    except SwitchboardError as error:
        return fail("tail", error.message)
    path = cursor_path(settings, args.user)
    if args.from_start:
        since = 0
    elif args.live:
        since = None
    elif args.since is not None:
        since = args.since
    else:
        since = load_cursor(path)
    try:
        return asyncio.run(tail(args, base_url(args, settings), token, since, path))
    except KeyboardInterrupt:
        return 130


async def tail(args: argparse.Namespace, url: str, token, since: int | None, path: Path) -> int:
    from switchboard.client import (
        ApiError,
        Client,
        ClientError,
        Connected,
        Disconnected,
        MemberEvent,
        MessageEvent,
        ReceiptEvent,
        ResyncRequired,
    )

    start = "live from now" if since is None else f"resuming after cursor {since}"
    print(f"# {args.user}: {start}", file=sys.stderr, flush=True)
    client = Client(url, token, since=since)
    try:
        await client.connect()
    except ApiError as error:
        return fail("tail", f"{error.code}: {error.message}")
    except ClientError as error:
        return fail("tail", str(error))
    taken = 0
    try:
        async with asyncio.timeout(args.duration):
            async for event in client.events():
                if isinstance(event, Connected):  # after the replay, if there was one
                    print(f"# connected as {client.user_id}, mailbox head {event.cursor}", file=sys.stderr, flush=True)
                    continue
                if isinstance(event, Disconnected):
                    print(f"# disconnected ({event.code} {event.reason}); reconnecting", file=sys.stderr, flush=True)
                    continue
                print(render(event, args.json), flush=True)
                if isinstance(event, (MessageEvent, ReceiptEvent, MemberEvent, ResyncRequired)):
                    save_cursor(path, client.cursor)
                    taken += not isinstance(event, ResyncRequired)
                    if args.count is not None and taken >= args.count:
                        break
    except TimeoutError:
        pass
    except ApiError as error:
        return fail("tail", f"stopped: {error.code}: {error.message}")
    finally:
        await client.close()
    return 0


def render(event, as_json: bool) -> str:
    from switchboard.client import MemberEvent, MessageEvent, ReceiptEvent, ResyncRequired, ServerError, TypingEvent

    if as_json:
        return json.dumps({"event": type(event).__name__, **dataclass_dict(event)})
    if isinstance(event, MessageEvent):
        m = event.message
        return f"[{event.cursor}] {m.conversation_id} #{m.seq} {m.sender}: {m.body}"
    if isinstance(event, ReceiptEvent):
        return f"[{event.cursor}] {event.conversation_id} {event.user_id} read up to #{event.seq}"
    if isinstance(event, MemberEvent):
        return f"[{event.cursor}] {event.conversation_id} {event.user_id} {event.action}"
    if isinstance(event, TypingEvent):
        return f"{event.conversation_id} {event.user_id} is typing"
    if isinstance(event, ResyncRequired):
        return (f"[{event.cursor}] older events were pruned: reload history over HTTP "
                f"(GET /v1/conversations/CID/messages); live from cursor {event.cursor}")
    if isinstance(event, ServerError):
        return f"error {event.code}: {event.message}"
    return repr(event)


# ---- demo --------------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from switchboard.demo import DemoError, run_demo
    from switchboard.errors import SwitchboardError

    if args.users < 2 or args.duration <= 0 or args.rate <= 0 or args.group_size < 3:
        return fail("demo", "need --users >= 2, --duration > 0, --rate > 0 and --group-size >= 3")
    settings = platform_settings()
    try:
        token_source(settings, "demo-check", args.region)
        summary = asyncio.run(run_demo(base_url(args, settings), settings.jwt_secret, args.users,
                                       args.duration, args.rate, args.group_size, args.region))
    except (DemoError, SwitchboardError) as error:
        return fail("demo", getattr(error, "message", None) or str(error))
    except KeyboardInterrupt:
        return 130
    return 0 if summary.lost == 0 else 1

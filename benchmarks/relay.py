"""The "Python ceiling": a minimal single-process, in-memory WebSocket relay.

It speaks the protocol subset the workloads use (auth -> ready, send -> sent, `message` events with
a per-user cursor to every member's sockets, POST /v1/conversations, GET /v1/health) with no
persistence, no Ray and no rate limit. Whatever the platform measures, this is roughly the best a
Python server could do on the same machine with the same client, so the runner reports ratios to it.

Run it alone:  python -m switchboard.benchmarks.relay --port 8123 --secret S
Or from code:  with RelayProcess(secret) as relay: ... relay.base_url ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from switchboard.auth import verify_token
from switchboard.errors import Forbidden, Invalid, NotFound, SwitchboardError, Unauthorized
from switchboard.protocol import (
    AckFrame,
    AuthFrame,
    FrameError,
    PingFrame,
    SendFrame,
    error_frame,
    new_conversation_id,
    new_message_id,
    now_ms,
    parse_client_frame,
    pong_frame,
    ready_frame,
    sent_frame,
    validate_members,
    validate_title,
)
from switchboard.settings import Settings

REGION = "local"
# The relay keeps the platform's size limits so both servers parse the same frames the same way.
LIMITS = Settings()
HTTP_STATUS = {"unauthorized": 401, "forbidden": 403, "not_found": 404, "invalid": 400, "too_large": 413}


class Relay:
    """All state of the relay: conversations, per-user cursors, and the live sockets' outboxes.

    Each socket gets an unbounded outbox drained by its own writer task, so a fan-out never waits
    on one slow reader; unbounded is acceptable only because this is a benchmark baseline.
    """

    def __init__(self, secret: str):
        self.secret = secret
        self.members: dict[str, list[str]] = {}  # conversation_id -> member user_ids
        self.titles: dict[str, str] = {}
        self.seqs: dict[str, int] = {}  # conversation_id -> last seq
        self.cursors: dict[str, int] = {}  # user_id -> last mailbox cursor
        self.outboxes: dict[str, set[asyncio.Queue]] = {}  # user_id -> its sockets' outboxes
        self.sends: dict[tuple[str, str, str], dict] = {}  # (cid, sender, client_msg_id) -> message

    def identify(self, token: object) -> str:
        return verify_token(self.secret, token, (REGION,), REGION).user_id

    def create_conversation(self, creator: str, members: list[str], title: str) -> dict:
        cid = new_conversation_id()
        self.members[cid] = list(dict.fromkeys([creator, *members]))
        self.titles[cid] = title
        self.seqs[cid] = 0
        return self.conversation(cid)

    def conversation(self, cid: str) -> dict:
        return {"conversation_id": cid, "title": self.titles[cid], "members": self.members[cid],
                "region": REGION, "last_seq": self.seqs[cid], "created_at": now_ms()}

    def send(self, sender: str, frame: SendFrame) -> dict:
        """Commit a message and push it to every member's sockets; repeats return the original."""
        key = (frame.conversation_id, sender, frame.client_msg_id)
        if key in self.sends:
            return self.sends[key]
        members = self.members.get(frame.conversation_id)
        if members is None:
            raise NotFound("no such conversation")
        if sender not in members:
            raise Forbidden("not a member of this conversation")
        self.seqs[frame.conversation_id] += 1
        message = {"conversation_id": frame.conversation_id, "seq": self.seqs[frame.conversation_id],
                   "message_id": new_message_id(), "sender": sender,
                   "client_msg_id": frame.client_msg_id, "body": frame.body, "ts": now_ms()}
        self.sends[key] = message
        self._fan_out(members, message)
        return message

    def _fan_out(self, members: list[str], message: dict) -> None:
        # Encode the message once; only the cursor differs between members.
        encoded = json.dumps(message, separators=(",", ":"))
        for user_id in members:
            cursor = self.cursors[user_id] = self.cursors.get(user_id, 0) + 1
            text = f'{{"type":"message","cursor":{cursor},"message":{encoded}}}'
            for outbox in self.outboxes.get(user_id, ()):
                outbox.put_nowait(text)

    def attach(self, user_id: str) -> tuple[asyncio.Queue, int]:
        outbox: asyncio.Queue = asyncio.Queue()
        self.outboxes.setdefault(user_id, set()).add(outbox)
        return outbox, self.cursors.get(user_id, 0)

    def detach(self, user_id: str, outbox: asyncio.Queue) -> None:
        self.outboxes.get(user_id, set()).discard(outbox)


def create_app(secret: str) -> FastAPI:
    relay = Relay(secret)
    app = FastAPI(title="switchboard ceiling relay")

    @app.exception_handler(SwitchboardError)
    async def _error(_request: Request, exc: SwitchboardError) -> JSONResponse:
        return JSONResponse({"error": exc.to_wire()}, status_code=HTTP_STATUS.get(exc.code.value, 500))

    @app.get("/v1/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/conversations", status_code=201)
    async def create_conversation(request: Request) -> dict:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthorized("missing bearer token")
        creator = relay.identify(token)
        try:
            body = await request.json()
        except ValueError:
            raise Invalid("body is not valid JSON") from None
        if not isinstance(body, dict):
            raise Invalid("body must be a JSON object")
        members = validate_members(body.get("members", []), LIMITS.max_members)
        return relay.create_conversation(creator, members, validate_title(body.get("title")))

    @app.websocket("/v1/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        user_id = await _authenticate(relay, websocket)
        if user_id is None:
            return
        outbox, head = relay.attach(user_id)
        writer = asyncio.create_task(_write(websocket, outbox))
        try:
            outbox.put_nowait(json.dumps(ready_frame(user_id, head)))
            while True:
                reply = _handle(relay, user_id, await websocket.receive_text())
                if reply is not None:
                    outbox.put_nowait(json.dumps(reply))
        except WebSocketDisconnect:
            pass
        finally:
            relay.detach(user_id, outbox)
            writer.cancel()

    return app


async def _authenticate(relay: Relay, websocket: WebSocket) -> str | None:
    """The user the first frame proves, or None after closing the socket with 4001."""
    try:
        text = await asyncio.wait_for(websocket.receive_text(), LIMITS.auth_timeout_s)
        frame = parse_client_frame(text, LIMITS.max_body_bytes)
        if not isinstance(frame, AuthFrame):
            raise Unauthorized("the first frame must be auth")
        return relay.identify(frame.token)
    except WebSocketDisconnect:
        return None
    except (asyncio.TimeoutError, SwitchboardError):
        await websocket.close(code=4001)
        return None


def _handle(relay: Relay, user_id: str, text: str) -> dict | None:
    """One client frame after `ready` to its reply frame (None when the frame has no reply)."""
    try:
        frame = parse_client_frame(text, LIMITS.max_body_bytes)
    except FrameError as exc:
        return error_frame(exc.code.value, exc.message, exc.ref)
    try:
        if isinstance(frame, SendFrame):
            return sent_frame(frame.client_msg_id, relay.send(user_id, frame))
        if isinstance(frame, PingFrame):
            return pong_frame(frame.nonce)
        if isinstance(frame, AckFrame):
            return None  # nothing is stored, so there is nothing to prune
        return error_frame("invalid", f"the ceiling relay does not implement {type(frame).__name__}")
    except SwitchboardError as exc:
        return error_frame(exc.code.value, exc.message, getattr(frame, "client_msg_id", None))


async def _write(websocket: WebSocket, outbox: asyncio.Queue) -> None:
    try:
        while True:
            await websocket.send_text(await outbox.get())
    except Exception:  # the socket went away; the reader side cleans up
        return


# ---- running it in a subprocess --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RelayProcess:
    """The relay in a child process on a free loopback port, so it never shares a CPU core's event
    loop with the load client (that would halve both)."""

    START_TIMEOUT_S = 20.0

    def __init__(self, secret: str):
        self.secret = secret
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> RelayProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "switchboard.benchmarks.relay", "--port", str(self.port)],
            env={**os.environ, "SWITCHBOARD_BENCH_RELAY_SECRET": self.secret},
        )
        self._wait_healthy()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the ceiling relay exited with status {self.process.returncode}")
            try:
                if httpx.get(f"{self.base_url}/v1/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"the ceiling relay did not answer /v1/health within {self.START_TIMEOUT_S} s")


def main(argv: list[str] | None = None) -> None:
    import uvicorn  # imported here so importing this module for RelayProcess stays light

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    # The secret may come from the environment so it does not show in `ps`.
    parser.add_argument("--secret", default=os.environ.get("SWITCHBOARD_BENCH_RELAY_SECRET"))
    args = parser.parse_args(argv)
    if not args.secret:
        parser.error("--secret (or SWITCHBOARD_BENCH_RELAY_SECRET) is required")
    uvicorn.run(create_app(args.secret), host="127.0.0.1", port=args.port, log_level="warning",
                ws_max_size=LIMITS.max_frame_bytes, ws_ping_interval=None, access_log=False)


if __name__ == "__main__":
    main()

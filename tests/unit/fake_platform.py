"""A tiny in-process WebSocket server speaking the part of PROTOCOL.md the SDK's Client uses, with
knobs to misbehave on purpose: drop sockets (1001, or abruptly), commit a send but lose its
answer, refuse tokens, repeat a cursor, prune a mailbox. No Ray, no database: plain dicts.

Tokens are "tok-<user_id>"; anything else is refused with close 4001.
"""

from __future__ import annotations

import asyncio
import json
import time

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


class FakeSocket:
    """One accepted socket: an outbox drained by a writer task, so frames go out in order."""

    def __init__(self, ws: ServerConnection, user_id: str):
        self.ws = ws
        self.user_id = user_id
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.writer = asyncio.create_task(self._write())

    def put(self, frame: dict) -> None:
        self.outbox.put_nowait(json.dumps(frame))

    async def _write(self) -> None:
        try:
            while True:
                item = await self.outbox.get()
                if isinstance(item, tuple):
                    await self.ws.close(*item)
                    return
                await self.ws.send(item)
        except ConnectionClosed:
            return


class FakePlatform:
    def __init__(self) -> None:
        self.mailboxes: dict[str, list[dict]] = {}  # user -> events; cursor = index + 1
        self.pruned_through: dict[str, int] = {}
        self.members: dict[str, list[str]] = {}
        self.messages: dict[tuple[str, str, str], dict] = {}  # (cid, sender, client_msg_id) -> message
        self.seqs: dict[str, int] = {}
        self.sockets: dict[str, list[FakeSocket]] = {}
        self.auths: list[tuple[str, int | None]] = []  # (user_id, since) of every accepted auth
        self.received: list[tuple[str, dict]] = []  # (user_id, frame) of every client frame after auth
        self.lose_answers = 0  # the next N sends are committed but never answered
        self.reject_tokens = False
        self.refuse_sends: dict[str, dict] = {}  # client_msg_id -> error fields to answer instead
        self.close_on_send: dict[str, tuple[int, str]] = {}  # client_msg_id -> close instead
        self._server = None
        self.url = ""

    async def start(self) -> FakePlatform:
        self._server = await serve(self._handle, "127.0.0.1", 0, compression=None)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    # ---- what a test does to it -------------------------------------------------------------

    def conversation(self, cid: str, members: list[str]) -> None:
        self.members[cid] = list(members)
        self.seqs.setdefault(cid, 0)

    def commit(self, cid: str, sender: str, client_msg_id: str, body: str) -> tuple[dict, bool]:
        """The message and whether it is new (a repeat returns the original, delivers nothing)."""
        key = (cid, sender, client_msg_id)
        if key in self.messages:
            return self.messages[key], False
        self.seqs[cid] += 1
        message = {"conversation_id": cid, "seq": self.seqs[cid], "message_id": f"m_{cid}_{self.seqs[cid]}",
                   "sender": sender, "client_msg_id": client_msg_id, "body": body,
                   "ts": int(time.time() * 1000)}
        self.messages[key] = message
        for member in self.members[cid]:
            self.push(member, {"type": "message", "message": message})
        return message, True

    def push(self, user_id: str, event: dict) -> dict:
        """Append an event to a mailbox and send it to the user's live sockets."""
        box = self.mailboxes.setdefault(user_id, [])
        frame = {**event, "cursor": len(box) + 1}
        box.append(frame)
        for socket in self.sockets.get(user_id, []):
            socket.put(frame)
        return frame

    def send_raw(self, user_id: str, frame: dict) -> None:
        """A frame straight to the user's sockets, bypassing the mailbox (to misbehave)."""
        for socket in self.sockets.get(user_id, []):
            socket.put(frame)

    async def drop(self, user_id: str, code: int = 1001, reason: str = "going away") -> None:
        for socket in self.sockets.pop(user_id, []):
            socket.outbox.put_nowait((code, reason))

    def abort(self, user_id: str) -> None:
        """The TCP connection vanishes with no close frame (the client sees 1006)."""
        for socket in self.sockets.pop(user_id, []):
            socket.ws.transport.abort()

    def messages_of(self, cid: str) -> list[dict]:
        return sorted((m for (c, _, _), m in self.messages.items() if c == cid), key=lambda m: m["seq"])

    def frames_from(self, user_id: str, kind: str) -> list[dict]:
        return [f for u, f in self.received if u == user_id and f.get("type") == kind]

    # ---- the protocol -------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        try:
            auth = json.loads(await ws.recv())
        except ConnectionClosed:
            return
        token = auth.get("token", "")
        if self.reject_tokens or not token.startswith("tok-"):
            await ws.close(4001, "unauthorized")
            return
        user_id, since = token.removeprefix("tok-"), auth.get("since")
        self.auths.append((user_id, since))
        socket = FakeSocket(ws, user_id)
        box = self.mailboxes.setdefault(user_id, [])
        # Replay, `ready` and registration in one step: no live event can slip in between.
        if since is not None:
            if since < self.pruned_through.get(user_id, 0):
                socket.put({"type": "resync_required", "cursor": len(box)})
            else:
                for frame in box[since:]:
                    socket.put(frame)
        socket.put({"type": "ready", "user_id": user_id, "cursor": len(box)})
        self.sockets.setdefault(user_id, []).append(socket)
        try:
            async for text in ws:
                self._on_frame(socket, json.loads(text))
        except ConnectionClosed:
            pass
        finally:
            if socket in self.sockets.get(user_id, []):
                self.sockets[user_id].remove(socket)
            if not socket.outbox.empty():  # a close being written: let it reach the client
                await asyncio.wait([socket.writer], timeout=1)
            socket.writer.cancel()

    def _on_frame(self, socket: FakeSocket, frame: dict) -> None:
        user_id = socket.user_id
        self.received.append((user_id, frame))
        kind = frame.get("type")
        if kind == "send":
            cmid = frame["client_msg_id"]
            if cmid in self.close_on_send:
                socket.outbox.put_nowait(self.close_on_send.pop(cmid))
                return
            if cmid in self.refuse_sends:
                socket.put({"type": "error", "ref": cmid, **self.refuse_sends.pop(cmid)})
                return
            message, _ = self.commit(frame["conversation_id"], user_id, cmid, frame["body"])
            if self.lose_answers > 0:
                self.lose_answers -= 1
                return
            socket.put({"type": "sent", "client_msg_id": cmid, "message": message})
        elif kind == "ping":
            socket.put({"type": "pong", "nonce": frame.get("nonce")})
        elif kind == "read":
            cid = frame["conversation_id"]
            if user_id not in self.members.get(cid, []):
                socket.put({"type": "error", "code": "forbidden", "message": "not a member", "ref": None})
                return
            for member in self.members[cid]:
                self.push(member, {"type": "receipt", "conversation_id": cid, "user_id": user_id,
                                   "seq": frame["seq"]})
        elif kind == "typing":
            for member in self.members.get(frame["conversation_id"], []):
                if member != user_id:
                    self.send_raw(member, {"type": "typing", "conversation_id": frame["conversation_id"],
                                           "user_id": user_id})

"""A WebSocket stand-in for Session tests: the frames written to it (parsed) and the close, if any."""

from __future__ import annotations

import json

from switchboard.storage.models import MESSAGE


class RecordingSocket:
    def __init__(self):
        self.frames: list[dict] = []
        self.closed_with: tuple[int, str] | None = None

    async def send_text(self, text: str) -> None:
        self.frames.append(json.loads(text))

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)

    def cursors(self) -> list[int]:
        return [f["cursor"] for f in self.frames if f["type"] == MESSAGE]

    def types(self) -> list[str]:
        return [f["type"] for f in self.frames]

"""A hook for tools that audit the wire rather than use it (the chaos run's history checker).

Subclass Recorder, override what you need, and pass it as Client(recorder=...). Sessions are the
Client's connection attempts, numbered from 1. frame_received sees every frame the server sent on
that session, in order, before the Client filters anything (so a duplicate the Client drops is
still recorded): what the server did, not what the application was shown.
"""

from __future__ import annotations


class Recorder:
    def session_opening(self, session: int, since: int | None) -> None:
        """A connection attempt starts; its auth frame carries `since` (None: no replay asked)."""

    def frame_received(self, session: int, frame: dict) -> None:
        """One server frame, parsed, exactly as sent (replay and `ready` included)."""

    def send_attempt(self, session: int, client_msg_id: str) -> None:
        """A `send` frame went out on this session (the first attempt, or a re-send)."""

    def session_closed(self, session: int, code: int | None, reason: str) -> None:
        """The session ended (or the attempt failed: code None when no close frame came)."""

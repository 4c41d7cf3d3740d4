"""switchboard.client: the Python SDK for Switchboard's client protocol v1 (PROTOCOL.md).

    Client      one user's live session: reconnects with `since`, re-sends unanswered sends with
                their client_msg_id, yields typed events (client.py)
    HttpApi     the HTTP API as one user: conversations, members, history, read (http.py)
    Connection  one raw WebSocket session, no reconnects: for tools that check the wire (connection.py)
    Recorder    hooks that see every raw frame per session and every send attempt (recorder.py)
    events      Message, Conversation and the typed events (events.py)
    errors      ApiError (a PROTOCOL.md error code) and the SDK's other errors (errors.py)

It needs only `websockets` and `httpx`; nothing here imports Ray or the platform.
"""

from .backoff import Backoff
from .client import Client, ClientStats
from .connection import Connection
from .errors import (
    ApiError,
    ClientClosed,
    ClientError,
    ConnectError,
    NotConnected,
    SessionClosed,
)
from .events import (
    Connected,
    Conversation,
    Disconnected,
    Event,
    MemberEvent,
    Message,
    MessageEvent,
    ReceiptEvent,
    ResyncRequired,
    ServerError,
    TypingEvent,
    parse_event,
)
from .http import HttpApi, new_client_msg_id
from .recorder import Recorder

__all__ = [
    "ApiError", "Backoff", "Client", "ClientClosed", "ClientError", "ClientStats", "ConnectError",
    "Connected", "Connection", "Conversation", "Disconnected", "Event", "HttpApi", "MemberEvent",
    "Message", "MessageEvent", "NotConnected", "ReceiptEvent", "Recorder", "ResyncRequired", "ServerError",
    "SessionClosed", "TypingEvent", "new_client_msg_id", "parse_event",
]

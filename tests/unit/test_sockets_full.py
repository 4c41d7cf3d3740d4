"""A replica's socket places (GatewayCore.sockets_full, websocket.py): open sessions and sockets
still waiting to authenticate both take one; past SWITCHBOARD_SOCKETS_PER_REPLICA the next socket
is closed 1013 at once, and the deployment's request slots are the sockets plus the HTTP slots."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from switchboard.gateway.app import build_app, gateway_application
from switchboard.gateway.core import GatewayCore
from switchboard.settings import Settings

UNREACHABLE_URL = "postgresql+psycopg://nobody@127.0.0.1:9/none"  # never connected to here


def core_with(sessions: int, waiting: int, places: int) -> GatewayCore:
    core = GatewayCore(Settings(sockets_per_replica=places, target_sockets_per_replica=places), UNREACHABLE_URL)
    core.sessions.update(object() for _ in range(sessions))
    core.preauth._count = waiting  # sockets in their auth wait, as PreAuthGate.holding counts them
    return core


@pytest.mark.parametrize(("sessions", "waiting", "full"), [(2, 0, False), (3, 0, True), (1, 2, True), (0, 2, False)])
def test_sessions_and_sockets_waiting_to_authenticate_both_take_a_place(sessions, waiting, full):
    core = core_with(sessions, waiting, places=3)
    assert core.sockets_full() is full
    assert core.sockets_refused_full == int(full)


def test_the_socket_past_the_places_is_closed_1013_before_anything_else():
    client = TestClient(build_app(core_with(3, 0, places=3)))
    with client.websocket_connect("/v1/ws") as socket:
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
    assert closed.value.code == 1013 and "retry" in closed.value.reason


def test_the_request_slots_are_the_sockets_plus_the_http_slots():
    settings = Settings(sockets_per_replica=500, target_sockets_per_replica=250, http_slots_per_replica=40)
    deployment = gateway_application(settings, UNREACHABLE_URL)._bound_deployment
    assert deployment.max_ongoing_requests == 540

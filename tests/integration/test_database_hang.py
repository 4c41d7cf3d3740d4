"""A database that hangs (issue #9 point 3): every send is answered `overloaded` within the send
timeout plus one second, nothing answered `overloaded` was committed, /v1/health says 503 while
the shard cannot commit, and everything works again once the database does.

The hang is a held lock: another session takes `messages` in ACCESS EXCLUSIVE mode, so every
commit that writes a message waits on it, as it would behind a stuck disk or a runaway migration.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import psycopg
from helpers import unique_id

from switchboard.storage.database import sqlalchemy_url

HOLD_S = 9.0


def hold_lock(database_url: str, seconds: float, locked: threading.Event) -> None:
    url = sqlalchemy_url(database_url).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=False) as connection:
        connection.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        locked.set()
        time.sleep(seconds)
        connection.rollback()


async def health_status(http_url: str) -> int:
    async with httpx.AsyncClient(timeout=5) as http:
        return (await http.get(f"{http_url}/v1/health")).status_code


async def test_a_hung_database_answers_every_send_overloaded_in_time_and_commits_none_of_them(sb, store, new_user):
    alice, bob = new_user("stuck"), new_user("waiting")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    ws = await alice.ws()
    assert (await ws.send_and_wait(cid, "before the hang"))["type"] == "sent"
    timeout = sb.settings.send_timeout_s
    locked = threading.Event()
    holder = threading.Thread(target=hold_lock, args=(sb.database_url, HOLD_S, locked), daemon=True)
    holder.start()
    assert locked.wait(10)

    async def ws_send(key: str):
        started = time.monotonic()
        answer = await ws.send_and_wait(cid, "during the hang", key, timeout=timeout + 5)
        return key, answer, time.monotonic() - started

    async def http_send(key: str):
        started = time.monotonic()
        response = await alice.api.post(cid, "during the hang (http)", key)
        return key, response, time.monotonic() - started

    keys = [unique_id("hung") for _ in range(6)]
    results = await asyncio.gather(*(ws_send(key) for key in keys[:3]), *(http_send(key) for key in keys[3:]))
    ws_results, http_results = results[:3], results[3:]
    during = await health_status(sb.http_url)
    for key, answer, seconds in ws_results:
        assert (answer["type"], answer.get("code")) == ("error", "overloaded"), answer
        assert seconds <= timeout + 1.0, f"{key} answered after {seconds:.2f} s"
    for key, response, seconds in http_results:
        assert response.status_code == 503 and response.json()["error"]["code"] == "overloaded", response.text
        assert seconds <= timeout + 1.0, f"{key} answered after {seconds:.2f} s"
    assert during == 503, "health said ok while the shard could not commit"
    print(f"\nhung database: answers after {sorted(round(s, 2) for _, _, s in ws_results + http_results)} s "
          f"(send timeout {timeout} s); health {during}")

    holder.join(HOLD_S + 5)
    # Back: health recovers, sends commit, and none of the refused ones was committed meanwhile.
    deadline = time.monotonic() + 15
    while await health_status(sb.http_url) != 200:
        assert time.monotonic() < deadline, "health did not recover"
        await asyncio.sleep(0.3)
    assert (await ws.send_and_wait(cid, "after the hang"))["type"] == "sent"
    stored = {m.client_msg_id for m in store.messages_page(cid, 0, None, 200)}
    assert not stored & set(keys), f"answered overloaded but committed: {stored & set(keys)}"

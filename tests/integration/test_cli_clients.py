"""`switchboard send`, `tail` and `demo` as subprocesses against the test platform, found the way a
user's shell finds it: SWITCHBOARD_PORT and SWITCHBOARD_JWT_SECRET (and a private data dir, where
`tail` keeps its cursor)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SWITCHBOARD = str(Path(sys.executable).parent / "switchboard")
RUN_TIMEOUT_S = 90.0


@pytest.fixture
def cli_env(sb, tmp_path) -> dict[str, str]:
    return {**os.environ, "SWITCHBOARD_PORT": str(sb.settings.port),
            "SWITCHBOARD_JWT_SECRET": sb.settings.jwt_secret, "SWITCHBOARD_DATA_DIR": str(tmp_path)}


async def switchboard(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(SWITCHBOARD, *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    return process.returncode, out.decode(), err.decode()


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_send_finds_or_creates_the_conversation_and_is_idempotent(cli_env, new_user):
    alice, bob = new_user("alice"), new_user("bob")
    code, out, err = await switchboard(cli_env, "send", alice.user_id, bob.user_id, "hello", "there", "--json")
    assert code == 0, err
    first = json.loads(out)
    assert (first["sender"], first["body"], first["seq"]) == (alice.user_id, "hello there", 1)
    cid = first["conversation_id"]

    code, out, err = await switchboard(cli_env, "send", alice.user_id, bob.user_id, "again", "--json")
    assert code == 0, err
    assert (json.loads(out)["conversation_id"], json.loads(out)["seq"]) == (cid, 2)  # the same conversation

    for _ in range(2):
        code, out, err = await switchboard(cli_env, "send", bob.user_id, cid, "once", "--client-msg-id", "k-cli")
        assert code == 0, err
    assert out.strip() == f"{cid} #3 {bob.user_id}: once (a repeat: the original message)"
    history = await bob.api.history_ok(cid)
    assert [(m["seq"], m["sender"], m["body"]) for m in history] == [
        (1, alice.user_id, "hello there"), (2, alice.user_id, "again"), (3, bob.user_id, "once")]

    code, _, err = await switchboard(cli_env, "send", bob.user_id, "c_" + "z" * 16, "nobody")
    assert code == 1 and "not_found" in err


async def test_tail_prints_events_and_resumes_where_it_stopped(cli_env, new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    for body in ("one", "two"):
        await alice.api.post_ok(cid, body)

    code, out, err = await switchboard(cli_env, "tail", bob.user_id, "--from-start", "--count", "3", "--json")
    assert code == 0, err
    events = json_lines(out)
    assert [(e["event"], e["cursor"]) for e in events] == [("MemberEvent", 1), ("MessageEvent", 2), ("MessageEvent", 3)]
    assert [e["message"]["body"] for e in events[1:]] == ["one", "two"]
    cursor_file = Path(cli_env["SWITCHBOARD_DATA_DIR"]) / "tail" / f"{bob.user_id}.cursor"
    assert cursor_file.read_text().strip() == "3"

    # Missed while no tail ran: the next tail (no options) starts after the saved cursor.
    for body in ("three", "four"):
        await alice.api.post_ok(cid, body)
    code, out, err = await switchboard(cli_env, "tail", bob.user_id, "--count", "2")
    assert code == 0, err
    assert out.splitlines() == [f"[4] {cid} #3 {alice.user_id}: three", f"[5] {cid} #4 {alice.user_id}: four"]
    assert f"{bob.user_id}: resuming after cursor 3" in err

    # And live: a tail waiting when the message is sent.
    process = await asyncio.create_subprocess_exec(
        SWITCHBOARD, "tail", bob.user_id, "--count", "1", "--json", env=cli_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            while b"connected as" not in (line := await process.stderr.readline()):
                assert line, "tail ended before it connected"
        live = await alice.api.post_ok(cid, "live")
        out, err = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err
    [event] = json_lines(out.decode())
    assert (event["event"], event["cursor"]) == ("MessageEvent", 6)
    assert event["message"] == {k: live[k] for k in event["message"]}  # the message as committed
    assert event["message"]["message_id"] == live["message_id"]
    assert cursor_file.read_text().strip() == "6"


async def test_demo_runs_users_chatting_and_reports_honest_figures(cli_env):
    code, out, err = await switchboard(cli_env, "demo", "--users", "4", "--duration", "3", "--rate", "2",
                                       "--group-size", "3")
    assert code == 0, (out, err)
    assert re.search(r"4 users, 4 direct and 1 group conversations", out), out
    acked = int(re.search(r"sent\s+(\d+) messages acknowledged", out).group(1))
    delivered = int(re.search(r"delivered\s+(\d+) to other members", out).group(1))
    assert acked > 0 and delivered >= acked  # every message has at least one other member
    assert "lost 0, duplicates 0" in out and "0 refused, 0 errors" in out
    assert re.search(r"p50 \d+\.\d ms, p95 \d+\.\d ms, p99 \d+\.\d ms", out), out
    assert "4/4 connected at the end" in out
    assert re.search(r"connections 4/4", err), err  # the live line

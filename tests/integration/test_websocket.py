"""The WebSocket rows of PROTOCOL.md through the Serve port, with real clients."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from conftest import FLOOD_STRIKES, SEND_BURST
from helpers import assert_message, open_raw_ws, unique_id
from switchboard.auth import mint_token
from switchboard.client import SessionClosed

pytestmark = pytest.mark.integration

CLOSE_UNAUTHORIZED = 4001
CLOSE_POLICY = 4008
CLOSE_TOO_LARGE = 1009


async def conversation(owner, *others) -> str:
    return (await owner.api.create_ok([o.user_id for o in others]))["conversation_id"]


# ---- connecting --------------------------------------------------------------------------------

async def test_auth_then_ready_with_head_cursor(new_user):
    alice, bob = new_user("alice"), new_user("bob")
    first = await alice.ws()
    assert first.ready == {"type": "ready", "user_id": alice.user_id, "cursor": 0}
    assert first.replayed == []
    await conversation(bob, alice)  # one `member joined` event in alice's mailbox
    second = await alice.ws()
    assert second.ready == {"type": "ready", "user_id": alice.user_id, "cursor": 1}
    assert second.replayed == []
    # The live connection got the event with the cursor the second one starts after.
    event = await first.next_of_type("member")
    assert event["cursor"] == 1


def _bad_first_frames(sb, uid: str) -> dict[str, str | bytes]:
    secret = sb.settings.jwt_secret
    return {
        "not a jwt": json.dumps({"type": "auth", "token": "not-a-jwt"}),
        "bad signature": json.dumps({"type": "auth", "token": mint_token("x" * 40, uid)}),
        "expired": json.dumps({"type": "auth", "token": mint_token(secret, uid, ttl_s=-60)}),
        "unknown region": json.dumps({"type": "auth", "token": mint_token(secret, uid, region="mars")}),
        "token not a string": json.dumps({"type": "auth", "token": 12345}),
        "no token": json.dumps({"type": "auth"}),
        "bad since": json.dumps({"type": "auth", "token": mint_token(secret, uid), "since": "soon"}),
        "ping first": json.dumps({"type": "ping", "nonce": "n"}),
        "not json": "hello",
        "binary": b'{"type": "auth"}',
    }


async def test_bad_auth_closes_4001(sb):
    uid = "someone"
    for label, first_frame in _bad_first_frames(sb, uid).items():
        client = await open_raw_ws(sb.ws_url)
        try:
            await client.send_raw(first_frame)
            code = await client.wait_closed(timeout=5)
            assert code == CLOSE_UNAUTHORIZED, (label, code, client.close_reason)
            assert [f for f in client.frames if f["type"] == "ready"] == [], label
        finally:
            await client.close()


async def test_token_in_the_url_is_not_accepted(sb, new_user):
    """Tokens never go in URLs: with one in the query string, the first frame must still be auth."""
    alice = new_user("alice")
    client = await open_raw_ws(f"{sb.ws_url}?token={alice.token}")
    try:
        await client.send_json({"type": "ping", "nonce": "n"})
        assert await client.wait_closed(timeout=5) == CLOSE_UNAUTHORIZED
        assert client.frames == []
    finally:
        await client.close()


async def test_no_auth_within_10_s_closes_4001(sb):
    """The one slow test (~10 s): PROTOCOL.md fixes the auth timeout at 10 s, so it is tested at
    its real value rather than at a shortened setting."""
    assert sb.settings.auth_timeout_s == 10.0
    started = time.monotonic()
    client = await open_raw_ws(sb.ws_url)
    try:
        code = await client.wait_closed(timeout=15)
        elapsed = time.monotonic() - started
        assert code == CLOSE_UNAUTHORIZED
        assert 9.5 <= elapsed <= 13.0, elapsed
        assert client.frames == []
    finally:
        await client.close()


# ---- live delivery -----------------------------------------------------------------------------

async def test_message_pushed_to_every_connection_with_one_cursor(new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = await conversation(alice, bob)
    a1, a2 = await alice.ws(), await alice.ws()
    b1, b2 = await bob.ws(), await bob.ws()

    started = time.monotonic()
    key = await b1.send(cid, "hello alice")
    sent = await b1.next_of_type("sent")
    pushed = {name: await ws.next_of_type("message") for name, ws in
              (("a1", a1), ("a2", a2), ("b1", b1), ("b2", b2))}
    latency = time.monotonic() - started
    assert sent["client_msg_id"] == key
    assert_message(sent["message"], conversation_id=cid, seq=1, sender=bob.user_id, client_msg_id=key,
                   body="hello alice")
    # Alice's two devices and Bob's two (his own other device included) got it, one cursor per user.
    assert pushed["a1"] == pushed["a2"] == {"type": "message", "cursor": 2, "message": sent["message"]}
    assert pushed["b1"] == pushed["b2"] == {"type": "message", "cursor": 2, "message": sent["message"]}
    assert latency < 2.0, latency  # pushed, not polled
    # `sent` answers the sending connection only.
    assert await b2.quiet(lambda f: f["type"] == "sent") == []
    assert a1.pending() == a2.pending() == []


async def test_sent_only_after_commit(new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = await conversation(alice, bob)
    a = await alice.ws()
    for i in range(5):
        answer = await a.send_and_wait(cid, f"durable {i}")
        assert answer["type"] == "sent", answer
        # Straight from PostgreSQL, right after the answer: it is there.
        history = await bob.api.history_ok(cid, after=i)
        assert history == [answer["message"]]
        assert answer["message"]["seq"] == i + 1


async def test_retried_send_answers_the_original_and_delivers_once(new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = await conversation(alice, bob)
    a, b = await alice.ws(), await bob.ws()
    key = unique_id()
    first = await a.send_and_wait(cid, "once", key)
    assert first["type"] == "sent"
    again = await a.send_and_wait(cid, "once, retried", key)
    assert again == first

    # Two copies in flight at once (the same group commit, likely) still make one message.
    key2 = unique_id()
    await a.send(cid, "twice at once", key2)
    await a.send(cid, "twice at once", key2)
    answers = [await a.answer_for(key2), await a.answer_for(key2)]
    assert answers[0] == answers[1]
    assert answers[0]["type"] == "sent" and answers[0]["message"]["seq"] == 2

    # And over HTTP: the same key finds the same original.
    over_http = await alice.api.post(cid, "once", key)
    assert over_http.status_code == 200
    assert over_http.json() == first["message"]

    assert [m["seq"] for m in await bob.api.history_ok(cid)] == [1, 2]
    events = await b.take_events(2, kind="message")
    assert [e["message"]["client_msg_id"] for e in events] == [key, key2]
    assert await b.quiet(lambda f: f["type"] == "message") == []
    assert len(a.messages(cid)) == 2


def _bad_frames(cid: str) -> list[tuple[str | bytes, str | None]]:
    """(frame, the ref its error must carry)."""
    return [
        ("not json at all", None),
        ("[1, 2, 3]", None),
        ('"a string"', None),
        (json.dumps({"no_type": True}), None),
        (json.dumps({"type": 7}), None),
        (json.dumps({"type": "bogus", "client_msg_id": "ref-bogus"}), "ref-bogus"),
        (json.dumps({"type": "send", "conversation_id": cid, "client_msg_id": "ref-nobody"}), "ref-nobody"),
        (json.dumps({"type": "send", "conversation_id": cid, "client_msg_id": "ref-int", "body": 5}), "ref-int"),
        (json.dumps({"type": "send", "conversation_id": cid, "client_msg_id": "ref-empty", "body": ""}), "ref-empty"),
        (json.dumps({"type": "send", "conversation_id": "nope", "client_msg_id": "ref-cid", "body": "x"}), "ref-cid"),
        (json.dumps({"type": "send", "conversation_id": cid, "body": "no key"}), None),
        # A client_msg_id present but invalid is still echoed as the ref.
        (json.dumps({"type": "send", "conversation_id": cid, "client_msg_id": "k" * 65, "body": "x"}), "k" * 65),
        (json.dumps({"type": "read", "conversation_id": cid, "seq": "one"}), None),
        (json.dumps({"type": "ack", "cursor": -1}), None),
        (json.dumps({"type": "typing"}), None),
        (json.dumps({"type": "ping", "nonce": "n" * 500}), None),
        (b'{"type": "ping", "nonce": "binary"}', None),
        (json.dumps({"type": "auth", "token": "again"}), None),
    ]


async def test_malformed_frames_get_errors_and_the_connection_stays_open(new_user):
    alice = new_user("alice")
    cid = await conversation(alice)
    a = await alice.ws()
    for frame, ref in _bad_frames(cid):
        await a.send_raw(frame)
        error = await a.next_of_type("error")
        assert error["code"] == "invalid", (frame, error)
        assert error["ref"] == ref, (frame, error)
        assert isinstance(error["message"], str) and error["message"], error
        assert not a.closed
    pong = await a.ping("still-here")
    assert pong == {"type": "pong", "nonce": "still-here"}
    assert await alice.api.history_ok(cid) == []
    ok = await a.send_and_wait(cid, "works after all that")
    assert ok["type"] == "sent" and ok["message"]["seq"] == 1


async def test_oversized_body_is_too_large_and_the_connection_stays_open(new_user):
    alice = new_user("alice")
    cid = await conversation(alice)
    a = await alice.ws()
    limit = 16 * 1024
    for body in ("x" * (limit + 1), "é" * (limit // 2 + 1)):
        key = unique_id()
        error = await a.send_and_wait(cid, body, key)
        assert error["type"] == "error"
        assert (error["code"], error["ref"]) == ("too_large", key)
    assert (await a.ping())["type"] == "pong"
    at_limit = await a.send_and_wait(cid, "x" * limit)
    assert at_limit["type"] == "sent" and at_limit["message"]["seq"] == 1
    assert [m["seq"] for m in await alice.api.history_ok(cid)] == [1]


async def send_oversized_frame(new_user):
    alice = new_user("alice")
    cid = await conversation(alice)
    a = await alice.ws()
    await a.send(cid, "x" * (64 * 1024 + 1))
    return alice, cid, a


async def test_frame_over_64_kib_ends_the_connection(new_user):
    alice, cid, a = await send_oversized_frame(new_user)
    await a.wait_closed()
    assert a.closed
    assert [f for f in a.frames if f["type"] in ("sent", "error")] == []
    assert await alice.api.history_ok(cid) == []


async def test_frame_over_64_kib_closes_1009(new_user):
    _, _, a = await send_oversized_frame(new_user)
    assert await a.wait_closed() == CLOSE_TOO_LARGE


# ---- typing, read, ack, ping --------------------------------------------------------------------

async def test_typing_reaches_other_members_live_connections_only(new_user):
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    cid = await conversation(alice, bob)
    a1, a2, b, c = await alice.ws(), await alice.ws(), await bob.ws(), await carol.ws()
    await a1.send_json({"type": "typing", "conversation_id": cid})
    assert await b.next_of_type("typing") == {"type": "typing", "conversation_id": cid, "user_id": alice.user_id}
    assert await a1.quiet() == []  # no answer, no echo to the typist
    assert a2.pending() == []  # nor to the typist's other device
    assert c.pending() == []  # nor to a non-member
    # Not stored: a replay from the start holds no typing frame, and the cursor did not move.
    replay = await bob.ws(since=0)
    assert [f["type"] for f in replay.replayed] == ["member"]
    assert replay.ready["cursor"] == 1


async def test_read_frame_sends_receipts(new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = await conversation(alice, bob)
    a, b = await alice.ws(), await bob.ws()
    sent = await a.send_and_wait(cid, "read me")
    await b.next_of_type("message")
    await a.next_of_type("message")
    await b.send_json({"type": "read", "conversation_id": cid, "seq": sent["message"]["seq"]})
    receipt = {"type": "receipt", "conversation_id": cid, "user_id": bob.user_id, "seq": 1}
    assert await a.next_of_type("receipt") == {**receipt, "cursor": 3}
    assert await b.next_of_type("receipt") == {**receipt, "cursor": 3}
    assert await b.quiet() == []  # no other answer to the reader
    # A read past the conversation's last seq is refused, and the socket stays.
    await b.send_json({"type": "read", "conversation_id": cid, "seq": 99})
    error = await b.next_of_type("error")
    assert (error["code"], error["ref"]) == ("invalid", None)
    assert (await b.ping())["type"] == "pong"


async def test_ack_is_silent_and_ping_answers_pong(new_user):
    alice = new_user("alice")
    await conversation(alice)
    a = await alice.ws()
    assert a.ready["cursor"] == 1
    await a.send_json({"type": "ack", "cursor": 1})
    await a.send_json({"type": "ack", "cursor": 1_000_000})  # beyond the head: harmless
    assert await a.quiet() == []
    assert await a.ping("n-1") == {"type": "pong", "nonce": "n-1"}
    assert await a.ping("n-2") == {"type": "pong", "nonce": "n-2"}
    assert not a.closed


# ---- isolation ---------------------------------------------------------------------------------

async def test_non_member_refused_on_every_frame(new_user):
    alice, outsider = new_user("alice"), new_user("outsider")
    cid = await conversation(alice)
    await alice.api.post_ok(cid, "private")
    a, o = await alice.ws(), await outsider.ws()
    key = unique_id()
    error = await o.send_and_wait(cid, "let me in", key)
    assert (error["type"], error["code"], error["ref"]) == ("error", "forbidden", key)
    await o.send_json({"type": "read", "conversation_id": cid, "seq": 1})
    assert (await o.next_of_type("error"))["code"] == "forbidden"
    await o.send_json({"type": "typing", "conversation_id": cid})
    assert (await o.next_of_type("error"))["code"] == "forbidden"
    assert await a.quiet() == []
    assert [m["body"] for m in await alice.api.history_ok(cid)] == ["private"]
    missing = await o.send_and_wait("c_doesnotexist000000", "anyone?")
    assert (missing["type"], missing["code"]) == ("error", "not_found")
    assert (await o.ping())["type"] == "pong"
    assert o.events() == []


# ---- rate limit --------------------------------------------------------------------------------

async def test_burst_past_the_rate_limit_every_send_answered(new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = await conversation(alice, bob)
    a, b = await alice.ws(), await bob.ws()
    keys = [unique_id() for _ in range(SEND_BURST * 3)]
    for i, key in enumerate(keys):  # as fast as the socket takes them
        await a.send(cid, f"burst {i}", key)
    answers = {key: await a.answer_for(key, timeout=15) for key in keys}
    await asyncio.sleep(0.3)
    for key in keys:  # exactly one answer each
        matching = [f for f in a.frames if f.get("client_msg_id") == key or f.get("ref") == key]
        matching = [f for f in matching if f["type"] in ("sent", "error")]
        assert len(matching) == 1, (key, matching)
    sent = [key for key in keys if answers[key]["type"] == "sent"]
    refused = [key for key in keys if answers[key]["type"] == "error"]
    assert len(sent) >= SEND_BURST
    assert refused, "3x the burst was never refused"
    for key in refused:
        error = answers[key]
        assert error["code"] == "rate_limited", error
        assert isinstance(error["retry_after_ms"], int) and error["retry_after_ms"] >= 1, error
    assert not a.closed

    # Every committed one is delivered exactly once, in seq order, and nothing else is.
    events = await b.take_events(len(sent), kind="message", timeout=15)
    assert [e["message"]["seq"] for e in events] == list(range(1, len(sent) + 1))
    assert sorted(e["message"]["client_msg_id"] for e in events) == sorted(sent)
    cursors = [e["cursor"] for e in events]
    assert cursors == list(range(cursors[0], cursors[0] + len(sent)))
    assert await b.quiet(lambda f: f["type"] == "message") == []
    history = await bob.api.history_ok(cid, limit=200)
    assert sorted(m["client_msg_id"] for m in history) == sorted(sent)


async def flood(new_user):
    alice = new_user("alice")
    cid = await conversation(alice)
    a = await alice.ws()
    try:
        for i in range(SEND_BURST + FLOOD_STRIKES * 4):
            await a.send(cid, f"flood {i}")
    except SessionClosed:
        pass
    await a.wait_closed(timeout=10)
    return alice, cid, a


async def test_flooding_past_the_rate_limit_ends_the_connection(new_user):
    alice, cid, a = await flood(new_user)
    assert a.closed
    # Whatever was committed is all there, gap-free, and every `sent` seen is among it.
    sent = [f["client_msg_id"] for f in a.frames if f["type"] == "sent"]
    history = await alice.api.history_ok(cid, limit=200)
    assert [m["seq"] for m in history] == list(range(1, len(history) + 1))
    assert set(sent) <= {m["client_msg_id"] for m in history}
    assert len(history) <= SEND_BURST + FLOOD_STRIKES * 4


async def test_flooding_past_the_rate_limit_closes_4008(new_user):
    _, _, a = await flood(new_user)
    assert a.close_code == CLOSE_POLICY


async def test_flooding_answers_every_send_before_the_close(new_user):
    alice, cid, a = await flood(new_user)
    answers = [f for f in a.frames if f["type"] in ("sent", "error")]
    refusals = [f for f in answers if f["type"] == "error"]
    assert {f["code"] for f in refusals} == {"rate_limited"}
    assert len(refusals) >= FLOOD_STRIKES
    # Every send the server took before closing was answered; committed ones are exactly the `sent`.
    sent = {f["client_msg_id"] for f in answers if f["type"] == "sent"}
    history = await alice.api.history_ok(cid, limit=200)
    assert len(sent) >= SEND_BURST
    assert sent == {m["client_msg_id"] for m in history}

"""Every HTTP row of PROTOCOL.md, and the error table, against the real platform."""

from __future__ import annotations

import asyncio
import time

import httpx
import jwt
import pytest
from conftest import MAX_MEMBERS, SEND_BURST, SEND_RATE_PER_S
from helpers import Api, assert_error, assert_message, now_ms, unique_id, unique_user
from switchboard.auth import mint_token

pytestmark = pytest.mark.integration

UNKNOWN_CID = "c_doesnotexist000000"


# ---- health ------------------------------------------------------------------------------------

async def test_health_needs_no_token(sb):
    async with httpx.AsyncClient(base_url=sb.http_url) as http:
        response = await http.get("/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# ---- conversations -----------------------------------------------------------------------------

async def test_create_conversation(new_user):
    alice, bob = new_user("alice"), new_user("bob")
    before = now_ms()
    response = await alice.api.create([bob.user_id], title="Lunch")
    assert response.status_code == 201, response.text
    conversation = response.json()
    assert set(conversation) >= {"conversation_id", "title", "members", "region", "last_seq", "created_at"}
    assert conversation["conversation_id"].startswith("c_")
    assert conversation["title"] == "Lunch"
    assert sorted(conversation["members"]) == sorted([alice.user_id, bob.user_id])
    assert conversation["region"] == "local"
    assert conversation["last_seq"] == 0
    assert before - 1000 <= conversation["created_at"] <= now_ms() + 1000


async def test_create_adds_the_caller_and_title_is_optional(new_user):
    alice, bob = new_user("alice"), new_user("bob")
    alone = await alice.api.create_ok([])
    assert alone["members"] == [alice.user_id]
    assert alone["title"] in ("", None)  # PROTOCOL.md: title optional (its absent value is not fixed)
    deduped = await alice.api.create_ok([bob.user_id, bob.user_id, alice.user_id])
    assert sorted(deduped["members"]) == sorted([alice.user_id, bob.user_id])
    assert alone["conversation_id"] != deduped["conversation_id"]


async def test_conversation_region_is_the_creators(new_user):
    default, local, eu = new_user("def"), new_user("loc", region="local"), new_user("eu", region="eu")
    assert (await default.api.create_ok([]))["region"] == "local"
    assert (await local.api.create_ok([]))["region"] == "local"
    created = await eu.api.create_ok([default.user_id])
    assert created["region"] == "eu"
    fetched = (await default.api.get(created["conversation_id"])).json()
    assert fetched["region"] == "eu"


async def test_list_conversations_with_last_seq(new_user):
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    first = await alice.api.create_ok([bob.user_id], title="one")
    second = await bob.api.create_ok([alice.user_id], title="two")
    await carol.api.create_ok([bob.user_id], title="not alice's")
    for i in range(3):
        await alice.api.post_ok(first["conversation_id"], f"m{i}")
    await bob.api.post_ok(second["conversation_id"], "hi")

    response = await alice.api.list()
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"conversations", "next_cursor"}  # paged (test_hostile_floods.py)
    assert body["next_cursor"] is None
    listed = {c["conversation_id"]: c for c in body["conversations"]}
    assert set(listed) == {first["conversation_id"], second["conversation_id"]}
    assert listed[first["conversation_id"]]["last_seq"] == 3
    assert listed[second["conversation_id"]]["last_seq"] == 1
    assert listed[first["conversation_id"]]["title"] == "one"
    assert sorted(listed[second["conversation_id"]]["members"]) == sorted([alice.user_id, bob.user_id])

    fresh = new_user("fresh")
    assert (await fresh.api.list()).json() == {"conversations": [], "next_cursor": None}


async def test_get_conversation(new_user):
    alice, bob = new_user("alice"), new_user("bob")
    created = await alice.api.create_ok([bob.user_id], title="t")
    await bob.api.post_ok(created["conversation_id"], "x")
    response = await bob.api.get(created["conversation_id"])
    assert response.status_code == 200
    assert response.json() == {**created, "last_seq": 1}


async def test_user_named_only_by_a_conversation_exists(new_user):
    """No registration: a user listed by a conversation can use it with its first token."""
    alice = new_user("alice")
    never_seen = unique_user("ghost")
    created = await alice.api.create_ok([never_seen])
    ghost = Api(alice.api.http.base_url, never_seen, mint_token(alice.platform.settings.jwt_secret, never_seen))
    try:
        response = await ghost.get(created["conversation_id"])
        assert response.status_code == 200
        assert never_seen in response.json()["members"]
    finally:
        await ghost.aclose()


async def test_user_id_rules(sb, new_user):
    """1-64 characters of A-Z a-z 0-9 _ . - (PROTOCOL.md "Identity")."""
    alice = new_user("alice")
    longest = "A-z_0.9" + "x" * 57
    assert len(longest) == 64
    created = await alice.api.create_ok([longest])
    assert longest in created["members"]
    longest_api = Api(sb.http_url, longest, mint_token(sb.settings.jwt_secret, longest))
    try:
        assert (await longest_api.get(created["conversation_id"])).status_code == 200
    finally:
        await longest_api.aclose()
    for bad in ("x" * 65, "has space", "slash/y", "ümlaut", ""):
        assert_error(await alice.api.create([bad]), 400, "invalid")
        assert_error(await alice.api.add_member(created["conversation_id"], bad), 400, "invalid")


async def test_member_limit(new_user):
    alice = new_user("alice")
    others = [unique_user("m") for _ in range(MAX_MEMBERS - 1)]
    full = await alice.api.create_ok(others)
    assert len(full["members"]) == MAX_MEMBERS
    assert_error(await alice.api.add_member(full["conversation_id"], unique_user("late")), 400, "invalid")
    assert_error(await alice.api.create(others + [unique_user("extra")]), 400, "invalid")
    assert len((await alice.api.get(full["conversation_id"])).json()["members"]) == MAX_MEMBERS


# ---- membership --------------------------------------------------------------------------------

async def test_add_member_and_members_get_a_joined_event(new_user):
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    created = await alice.api.create_ok([bob.user_id])
    cid = created["conversation_id"]
    a, b, c = await alice.ws(), await bob.ws(), await carol.ws()
    assert (a.ready["cursor"], b.ready["cursor"], c.ready["cursor"]) == (1, 1, 0)

    response = await bob.api.add_member(cid, carol.user_id)
    assert response.status_code == 200, response.text
    conversation = response.json()
    assert conversation["conversation_id"] == cid
    assert sorted(conversation["members"]) == sorted([alice.user_id, bob.user_id, carol.user_id])

    joined = {"type": "member", "conversation_id": cid, "user_id": carol.user_id, "action": "joined"}
    assert await a.next_of_type("member") == {**joined, "cursor": 2}
    assert await b.next_of_type("member") == {**joined, "cursor": 2}
    assert await c.next_of_type("member") == {**joined, "cursor": 1}
    assert (await carol.api.get(cid)).status_code == 200

    # Adding a member again changes nothing and tells no one.
    again = await alice.api.add_member(cid, carol.user_id)
    assert again.status_code == 200
    assert sorted(again.json()["members"]) == sorted(conversation["members"])
    assert await a.quiet(lambda f: f["type"] == "member") == []


async def test_leave_own_membership_only(new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    a, b = await alice.ws(), await bob.ws()

    refused = await alice.api.remove_member(cid, bob.user_id)
    assert_error(refused, 403, "forbidden")
    assert bob.user_id in (await alice.api.get(cid)).json()["members"]

    response = await bob.api.remove_member(cid, bob.user_id)
    assert response.status_code == 200, response.text
    left = {"type": "member", "conversation_id": cid, "user_id": bob.user_id, "action": "left"}
    assert await a.next_of_type("member") == {**left, "cursor": 2}
    assert await b.next_of_type("member") == {**left, "cursor": 2}

    assert (await alice.api.get(cid)).json()["members"] == [alice.user_id]
    assert_error(await bob.api.get(cid), 403, "forbidden")
    assert (await bob.api.list()).json() == {"conversations": [], "next_cursor": None}
    # Gone members get no more events of it.
    await alice.api.post_ok(cid, "after bob left")
    assert (await a.next_of_type("message"))["message"]["body"] == "after bob left"
    assert await b.quiet(lambda f: f["type"] == "message") == []


# ---- messages ----------------------------------------------------------------------------------

async def test_post_message_and_idempotent_repeat(new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    before = now_ms()
    key = unique_id()
    response = await alice.api.post(cid, "hello", key)
    assert response.status_code == 201, response.text
    original = response.json()
    assert_message(original, conversation_id=cid, seq=1, sender=alice.user_id, client_msg_id=key,
                   body="hello", before_ms=before)

    repeat = await alice.api.post(cid, "hello (retried, even with another body)", key)
    assert repeat.status_code == 200, repeat.text
    assert repeat.json() == original

    # The idempotency key is (conversation, sender, client_msg_id): bob's same key is a new message.
    bobs = await bob.api.post(cid, "bob's", key)
    assert bobs.status_code == 201
    assert bobs.json()["seq"] == 2
    assert bobs.json()["message_id"] != original["message_id"]

    history = await alice.api.history_ok(cid)
    assert [m["seq"] for m in history] == [1, 2]
    assert history[0] == original
    assert (await alice.api.get(cid)).json()["last_seq"] == 2


async def test_history_pages(new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    # 55 messages (over the default page of 50) from two senders, within their send buckets.
    posted = await asyncio.gather(
        *(alice.api.post_ok(cid, f"a{i}") for i in range(30)),
        *(bob.api.post_ok(cid, f"b{i}") for i in range(25)),
    )
    by_seq = sorted(posted, key=lambda m: m["seq"])
    assert [m["seq"] for m in by_seq] == list(range(1, 56))

    def seqs(page):
        return [m["seq"] for m in page]

    assert await alice.api.history_ok(cid, limit=200) == by_seq
    assert seqs(await alice.api.history_ok(cid)) == list(range(6, 56))  # the latest 50
    assert seqs(await alice.api.history_ok(cid, after=0)) == list(range(1, 51))
    assert seqs(await alice.api.history_ok(cid, after=10, limit=5)) == [11, 12, 13, 14, 15]
    assert seqs(await alice.api.history_ok(cid, before=10, limit=5)) == [5, 6, 7, 8, 9]
    assert seqs(await alice.api.history_ok(cid, before=3)) == [1, 2]
    assert seqs(await alice.api.history_ok(cid, limit=3)) == [53, 54, 55]
    assert await alice.api.history_ok(cid, after=55) == []
    assert await alice.api.history_ok(cid, before=1) == []
    assert await alice.api.history_ok(cid, after=50, limit=200) == by_seq[50:]
    assert (await bob.api.history_ok(cid, after=20, limit=1)) == [by_seq[20]]


@pytest.mark.parametrize("params", [
    {"limit": 201}, {"limit": 0}, {"limit": -1}, {"limit": "ten"}, {"after": "x"}, {"before": "1.5"},
    {"after": -1}, {"after": 1, "before": 5},
])
async def test_history_bad_query(new_user, params):
    alice = new_user("alice")
    cid = (await alice.api.create_ok([]))["conversation_id"]
    assert_error(await alice.api.history(cid, **params), 400, "invalid")


async def test_read_marks_and_receipt_events(new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    await alice.api.post_ok(cid, "one")
    await alice.api.post_ok(cid, "two")
    a, b = await alice.ws(), await bob.ws()
    assert (a.ready["cursor"], b.ready["cursor"]) == (3, 3)  # joined + two messages

    response = await bob.api.read(cid, 2)
    assert response.status_code == 200, response.text
    receipt = {"type": "receipt", "conversation_id": cid, "user_id": bob.user_id, "seq": 2}
    assert await a.next_of_type("receipt") == {**receipt, "cursor": 4}
    assert await b.next_of_type("receipt") == {**receipt, "cursor": 4}

    assert_error(await bob.api.read(cid, "2"), 400, "invalid")
    assert_error(await bob.api.read(cid, -1), 400, "invalid")
    assert_error(await bob.api.read(cid, None), 400, "invalid")


# ---- errors: 401 -------------------------------------------------------------------------------

def _calls(cid: str, uid: str) -> list[tuple[str, str, dict | None]]:
    """Every authenticated HTTP row of PROTOCOL.md, on conversation cid."""
    return [
        ("POST", "/v1/conversations", {"members": []}),
        ("GET", "/v1/conversations", None),
        ("GET", f"/v1/conversations/{cid}", None),
        ("POST", f"/v1/conversations/{cid}/members", {"user_id": unique_user("x")}),
        ("DELETE", f"/v1/conversations/{cid}/members/{uid}", None),
        ("POST", f"/v1/conversations/{cid}/messages", {"client_msg_id": unique_id(), "body": "x"}),
        ("GET", f"/v1/conversations/{cid}/messages", None),
        ("POST", f"/v1/conversations/{cid}/read", {"seq": 1}),
    ]


def _bad_tokens(secret: str, uid: str) -> dict[str, dict]:
    exp = int(time.time()) + 3600
    return {
        "no header": {},
        "bare scheme": {"Authorization": "Bearer"},
        "not a jwt": {"Authorization": "Bearer not-a-jwt"},
        "other scheme": {"Authorization": f"Basic {mint_token(secret, uid)}"},
        "bad signature": {"Authorization": f"Bearer {mint_token('some-other-secret-of-the-same-length-as-a-real-one', uid)}"},
        "expired": {"Authorization": f"Bearer {mint_token(secret, uid, ttl_s=-60)}"},
        "unknown region": {"Authorization": f"Bearer {mint_token(secret, uid, region='mars')}"},
        "no exp": {"Authorization": "Bearer " + jwt.encode({"sub": uid}, secret, algorithm="HS256")},
        "no sub": {"Authorization": "Bearer " + jwt.encode({"exp": exp}, secret, algorithm="HS256")},
        "bad sub": {"Authorization": "Bearer " + jwt.encode({"sub": "no spaces!", "exp": exp}, secret,
                                                             algorithm="HS256")},
        "alg none": {"Authorization": "Bearer " + jwt.encode({"sub": uid, "exp": exp}, None, algorithm="none")},
    }


async def test_unauthorized_on_every_call(sb, new_user):
    alice = new_user("alice")
    cid = (await alice.api.create_ok([]))["conversation_id"]
    await alice.api.post_ok(cid, "x")
    async with httpx.AsyncClient(base_url=sb.http_url) as http:
        for label, headers in _bad_tokens(sb.settings.jwt_secret, alice.user_id).items():
            for method, path, body in _calls(cid, alice.user_id):
                response = await http.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (label, method, path, response.text)
                assert_error(response, 401, "unauthorized")
    # Nothing was done by any of them.
    assert (await alice.api.get(cid)).json()["members"] == [alice.user_id]
    assert [m["seq"] for m in await alice.api.history_ok(cid)] == [1]


async def test_token_in_the_url_is_not_accepted(sb, new_user):
    """Tokens never go in URLs: a token in the query string authenticates nothing."""
    alice = new_user("alice")
    cid = (await alice.api.create_ok([]))["conversation_id"]
    async with httpx.AsyncClient(base_url=sb.http_url) as http:
        for name in ("token", "access_token"):
            response = await http.get(f"/v1/conversations/{cid}", params={name: alice.token})
            assert_error(response, 401, "unauthorized")


# ---- errors: 403, 404 --------------------------------------------------------------------------

async def test_non_member_forbidden_on_every_call(new_user):
    alice, outsider = new_user("alice"), new_user("outsider")
    created = await alice.api.create_ok([], title="private")
    cid = created["conversation_id"]
    await alice.api.post_ok(cid, "secret")
    a = await alice.ws()

    for method, path, body in _calls(cid, outsider.user_id)[2:]:
        response = await outsider.api.request(method, path, json=body)
        assert_error(response, 403, "forbidden")
    # ...also when it names someone else (an actual member) or reads seq 0.
    assert_error(await outsider.api.remove_member(cid, alice.user_id), 403, "forbidden")
    assert_error(await outsider.api.read(cid, 0), 403, "forbidden")
    assert_error(await outsider.api.add_member(cid, outsider.user_id), 403, "forbidden")

    # None of it took effect, and the member heard nothing.
    after = (await alice.api.get(cid)).json()
    assert after == {**created, "last_seq": 1}
    assert [m["body"] for m in await alice.api.history_ok(cid)] == ["secret"]
    assert (await outsider.api.list()).json() == {"conversations": [], "next_cursor": None}
    assert await a.quiet() == []


async def test_unknown_conversation_not_found_on_every_call(new_user):
    alice = new_user("alice")
    for cid in (UNKNOWN_CID, "not-a-conversation-id"):
        for method, path, body in _calls(cid, alice.user_id)[2:]:
            response = await alice.api.request(method, path, json=body)
            assert_error(response, 404, "not_found")


# ---- errors: 400 / 422, 413 --------------------------------------------------------------------

async def test_malformed_bodies_are_invalid(new_user):
    alice, bob = new_user("alice"), new_user("bob")
    cid = (await alice.api.create_ok([bob.user_id]))["conversation_id"]
    http = alice.api.http
    cases = [
        ("POST", "/v1/conversations", b"{not json"),
        ("POST", "/v1/conversations", b"[]"),
        ("POST", "/v1/conversations", b'{"members": "bob"}'),
        ("POST", "/v1/conversations", b'{"members": ["no spaces allowed"]}'),
        ("POST", "/v1/conversations", b'{"members": [7]}'),
        ("POST", "/v1/conversations", b'{"members": [], "title": 5}'),
        ("POST", f"/v1/conversations/{cid}/members", b'{"user_id": ""}'),
        ("POST", f"/v1/conversations/{cid}/members", b'{"user_id": "' + b"x" * 65 + b'"}'),
        ("POST", f"/v1/conversations/{cid}/members", b"{}"),
        ("POST", f"/v1/conversations/{cid}/messages", b"{oops"),
        ("POST", f"/v1/conversations/{cid}/messages", b'{"body": "no client_msg_id"}'),
        ("POST", f"/v1/conversations/{cid}/messages", b'{"client_msg_id": "k", "body": ""}'),
        ("POST", f"/v1/conversations/{cid}/messages", b'{"client_msg_id": "k", "body": 5}'),
        ("POST", f"/v1/conversations/{cid}/messages", b'{"client_msg_id": "", "body": "x"}'),
        ("POST", f"/v1/conversations/{cid}/messages", b'{"client_msg_id": "' + b"k" * 65 + b'", "body": "x"}'),
        ("POST", f"/v1/conversations/{cid}/messages", b'{"client_msg_id": "k", "body": "nul \\u0000"}'),
        ("POST", f"/v1/conversations/{cid}/read", b'{"seq": "one"}'),
        ("POST", f"/v1/conversations/{cid}/read", b'"seq"'),
    ]
    for method, path, content in cases:
        response = await http.request(method, path, content=content, headers={"Content-Type": "application/json"})
        assert response.status_code in (400, 422), (path, content, response.status_code, response.text)
        assert_error(response, response.status_code, "invalid")
    assert (await alice.api.get(cid)).json()["last_seq"] == 0
    assert sorted((await alice.api.get(cid)).json()["members"]) == sorted([alice.user_id, bob.user_id])


async def test_body_over_16_kib_is_too_large(new_user):
    alice = new_user("alice")
    cid = (await alice.api.create_ok([]))["conversation_id"]
    limit = 16 * 1024
    assert_error(await alice.api.post(cid, "x" * (limit + 1)), 413, "too_large")
    assert_error(await alice.api.post(cid, "é" * (limit // 2 + 1)), 413, "too_large")  # bytes, not chars
    assert_error(await alice.api.post(cid, "x" * 70_000), 413, "too_large")  # past the frame limit too
    assert await alice.api.history_ok(cid) == []
    at_limit = await alice.api.post_ok(cid, "x" * limit)
    assert len(at_limit["body"]) == limit
    two_byte = await alice.api.post_ok(cid, "é" * (limit // 2))
    assert two_byte["body"] == "é" * (limit // 2)
    assert [m["seq"] for m in await alice.api.history_ok(cid)] == [1, 2]


# ---- errors: 429 -------------------------------------------------------------------------------

async def test_rate_limited_with_retry_after(new_user):
    alice = new_user("alice")
    cid = (await alice.api.create_ok([]))["conversation_id"]
    accepted: list[str] = []
    refused: list[tuple[str, object]] = []
    for _ in range(5):  # rounds of concurrent posts until the bucket runs dry (the first, normally)
        keys = [unique_id() for _ in range(SEND_BURST * 2)]
        responses = await asyncio.gather(*(alice.api.post(cid, "burst", key) for key in keys))
        assert {r.status_code for r in responses} <= {201, 429}, [r.text for r in responses]
        accepted += [key for key, r in zip(keys, responses) if r.status_code == 201]
        refused += [(key, r) for key, r in zip(keys, responses) if r.status_code == 429]
        if refused:
            break
    assert refused, "bursts of 2x the bucket were never refused"
    assert len(accepted) >= SEND_BURST
    for _, response in refused:
        error = assert_error(response, 429, "rate_limited")
        assert isinstance(error["retry_after_ms"], int)
        assert 1 <= error["retry_after_ms"] <= 1000 / SEND_RATE_PER_S + 1, error
        assert response.headers["Retry-After"] == "1"

    # Refused means not committed: history holds exactly the accepted ones, gap-free.
    history = await alice.api.history_ok(cid, limit=200)
    assert [m["seq"] for m in history] == list(range(1, len(accepted) + 1))
    assert sorted(m["client_msg_id"] for m in history) == sorted(accepted)

    # After the advertised wait (a token refills every 1/rate s), a retry goes through.
    await asyncio.sleep(1.5 / SEND_RATE_PER_S)
    retried = await alice.api.post(cid, "retried", refused[0][0])
    assert retried.status_code == 201, retried.text
    assert retried.json()["seq"] == len(accepted) + 1

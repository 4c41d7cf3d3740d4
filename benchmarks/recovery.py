"""How fast a killed mailbox shard serves again: kill -> first committed send through the restarted
shard, for a shard holding many mailboxes with history; and where that time goes.

    python -m switchboard.benchmarks.recovery [--mailboxes 10000] [--history 20] [--kills 5]
                                              [--live 10000] [--no-checkpoint]

It starts a private platform (its own Ray instance, an embedded PostgreSQL in a temporary
directory, the Serve gateway on a free port), seeds the shard with --mailboxes users in pairs of
two-person conversations with --history messages each by bulk SQL, sends once in every
conversation (so the shard's sequencer holds them all, as a busy shard does) and keeps --live
mailboxes online through a stand-in gateway replica. Then, each round: a checkpoint (what the
periodic one does), more commits after it, and `ray.kill(no_restart=False)` of the shard; timed from
the kill:
  sent     a send over a real WebSocket through the Serve gateway answered `sent` (the user's
           mailbox and the conversation's sequencer are both on the killed shard)
  ready    a new WebSocket of another user of that shard answered `ready`
  reattach the stand-in gateway re-attached every live mailbox
and, from the restarted process's own stamps: the process start, imports, database connect,
checkpoint load and replay, and the first commit. --no-checkpoint deletes the checkpoint before
each kill (the lazy rebuild, for comparison). A local timing printout: nothing asserts a time, and
on a shared 2-core machine the figures move with whatever else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import tempfile
import time
import uuid

import ray
from sqlalchemy import text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from switchboard.actors import registry
from switchboard.actors.ops import AddMember, SendMessage
from switchboard.actors.ring import Ring
from switchboard.auth import mint_token
from switchboard.local import init_ray, start_platform, stop_database, stop_platform
from switchboard.settings import Settings
from switchboard.storage.database import make_engine

REGION = "local"
TARGET = 0  # the shard that is killed
SUBMIT_BATCH = 500
HEARTBEAT_S = 2.0
# Commits between a round's checkpoint and its kill: what a restart must replay.
SENDS_AFTER_CHECKPOINT = 200


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m switchboard.benchmarks.recovery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mailboxes", type=int, default=10_000, help="users seeded on the shard (even)")
    parser.add_argument("--history", type=int, default=20, help="messages per seeded conversation")
    parser.add_argument("--live", type=int, default=None, help="mailboxes kept online (default: all)")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--shards", type=int, default=1, help="shards in the region (shard 0 is killed)")
    parser.add_argument("--no-checkpoint", action="store_true", help="delete the checkpoint before each kill")
    parser.add_argument("--reattach", choices=("per-socket", "batched"), default="batched",
                        help="how the stand-in gateway re-attaches its sockets: one attach call each"
                             " (the gateway before session 3) or one attach_many call (gateway/delivery.py)")
    args = parser.parse_args(argv)
    args.live = args.mailboxes if args.live is None else min(args.live, args.mailboxes)
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- seeding: users, conversations, messages and mailbox events by bulk SQL -----------------------

def ids_on_target(ring: Ring, prefix: str, count: int, owner) -> list[str]:
    found, i = [], 0
    while len(found) < count:
        candidate = f"{prefix}{i:06d}"
        if owner(ring, candidate) == TARGET:
            found.append(candidate)
        i += 1
    return found


def seed(database_url: str, ring: Ring, mailboxes: int, history: int) -> list[tuple[str, str, str]]:
    """Pairs of users on the target shard, each pair in one conversation the target sequences, with
    `history` messages and every member's mailbox events. Returns (conversation, a, b)."""
    users = ids_on_target(ring, "rb-", mailboxes, Ring.user_shard)
    cids = ids_on_target(ring, "rc-", mailboxes // 2, Ring.conversation_shard)
    pairs = [(cid, users[2 * i], users[2 * i + 1]) for i, cid in enumerate(cids)]
    params = {"cids": [p[0] for p in pairs], "as": [p[1] for p in pairs], "bs": [p[2] for p in pairs],
              "users": users, "h": history, "now": int(time.time() * 1000), "region": REGION}
    pairs_sql = "unnest(CAST(:cids AS text[]), CAST(:as AS text[]), CAST(:bs AS text[])) AS t(c, a, b)"
    statements = [
        f"""INSERT INTO conversations (conversation_id, title, region, created_by, created_at, last_seq)
            SELECT c, 'recovery', :region, a, :now, :h FROM {pairs_sql}""",
        f"""INSERT INTO members (conversation_id, user_id, joined_at)
            SELECT c, u, :now FROM {pairs_sql}, LATERAL (VALUES (a), (b)) AS m(u)""",
        f"""INSERT INTO messages (conversation_id, seq, message_id, sender, client_msg_id, body, ts)
            SELECT c, s, md5(c || ':' || s), CASE WHEN s % 2 = 1 THEN a ELSE b END, 'seed-' || s,
                   'history message ' || s, :now + s
            FROM {pairs_sql}, generate_series(1, :h) AS s""",
        f"""INSERT INTO mailbox_events (user_id, cursor, kind, conversation_id, seq, payload, created_at)
            SELECT u, 1, 'member', c, NULL,
                   jsonb_build_object('conversation_id', c, 'user_id', u, 'action', 'joined'), :now
            FROM {pairs_sql}, LATERAL (VALUES (a), (b)) AS m(u)
            UNION ALL
            SELECT u, s + 1, 'message', c, s, NULL, :now + s
            FROM {pairs_sql}, LATERAL (VALUES (a), (b)) AS m(u), generate_series(1, :h) AS s""",
        "INSERT INTO mailboxes (user_id, head) SELECT u, :h + 1 FROM unnest(CAST(:users AS text[])) AS u",
    ]
    engine = make_engine(database_url, pool_size=1)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement), params)
    finally:
        engine.dispose()
    return pairs


# ---- a stand-in gateway replica: the calls gateway/delivery.py makes to a shard -------------------

@ray.remote
class StandInGateway:
    """Holds `users`' mailboxes online on the shard like a gateway replica holding one quiet socket
    each, in its own process as a replica is: one delivery stream, heartbeats, and when the stream
    breaks (the shard restarted) a new stream and a re-attach of every socket with the last cursor
    it received: one attach_many call for all of them (what gateway/delivery.py does), or one
    attach call per socket at once (--reattach per-socket, the gateway before session 3)."""

    def __init__(self, settings: Settings, users: list[str], batched: bool):
        self.settings = settings
        self.batched = batched
        self.gateway_id = f"gw-standin-{uuid.uuid4().hex[:8]}"
        self.cursors: dict[str, int] = {user: 0 for user in users}
        self.reattached_at: float | None = None
        self._round = 0  # moved by begin_round(): only a re-attach begun since counts
        self._reattaching: asyncio.Task | None = None
        self._again = False  # the stream broke again while a re-attach ran: one more after it
        self._tasks: list[asyncio.Task] = []

    def _shard(self):
        return registry.get_actor(self.settings, registry.shard_name(REGION, TARGET))

    async def start(self) -> None:
        # Stream and heartbeat first, as a gateway does: attaching 10,000 sockets takes longer
        # than the shard's lease on a silent gateway.
        self._tasks = [asyncio.create_task(self._pump()), asyncio.create_task(self._heartbeat())]
        await self._attach_all()

    async def begin_round(self) -> None:
        """A kill follows: forget earlier re-attaches, including any still finishing."""
        self._round += 1
        self.reattached_at = None

    async def reattached(self) -> float | None:
        """When the re-attach after this round's restart finished (None until then)."""
        return self.reattached_at

    async def _attach_all(self) -> None:
        if self.batched:
            sockets = [(user, cursor or None) for user, cursor in self.cursors.items()]
            results = await self._retrying(lambda: self._shard().attach_many.remote(self.gateway_id, sockets))
        else:  # each socket on its own, as each gateway session does
            results = await asyncio.gather(*(
                self._retrying(lambda user=user, since=since: self._shard().attach.remote(self.gateway_id, user, since))
                for user, since in ((user, cursor or None) for user, cursor in self.cursors.items())
            ))
        for user, result in zip(list(self.cursors), results):
            self.cursors[user] = max(self.cursors[user], result.head)

    @staticmethod
    async def _retrying(call):
        while True:
            try:
                return await call()
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                await asyncio.sleep(0.05)  # the shard is restarting

    async def _pump(self) -> None:
        reconnecting = False
        while True:
            try:
                async for ref in self._shard().stream.remote(self.gateway_id):
                    batch = await ref
                    if reconnecting:  # the first (empty) batch: the stream is open at the shard
                        reconnecting = False
                        self._resume()
                    self._note(batch)
            except Exception:
                pass
            reconnecting = True
            await asyncio.sleep(0.05)

    def _resume(self) -> None:
        if self._reattaching is not None and not self._reattaching.done():
            self._again = True
        else:
            self._reattaching = asyncio.create_task(self._reattach())

    async def _reattach(self) -> None:
        while True:
            self._again = False
            begun_in = self._round
            await self._attach_all()
            if not self._again:
                break
        if begun_in == self._round:  # not a leftover of an earlier restart, finishing late
            self.reattached_at = time.time()

    def _note(self, batch) -> None:
        for item in batch:
            user, payload = item[0], item[1]
            cursor = payload.get("cursor") if isinstance(payload, dict) else payload  # (user, cursor, text)
            if cursor is not None and user in self.cursors:
                self.cursors[user] = max(self.cursors[user], cursor)

    async def _heartbeat(self) -> None:
        while True:
            try:
                self._shard().heartbeat.remote(self.gateway_id)
            except Exception:
                pass
            await asyncio.sleep(HEARTBEAT_S)


# ---- real clients through the Serve gateway --------------------------------------------------------

class Client:
    """One WebSocket of one user, reconnecting when the gateway closes it."""

    def __init__(self, platform, user_id: str):
        self.platform, self.user_id = platform, user_id
        self.token = mint_token(platform.settings.jwt_secret, user_id)
        self.ws = None

    async def connect(self, timeout_s: float = 30.0) -> float:
        """Open and authenticate; returns the time `ready` arrived (retrying a refused attach)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.ws = await connect(self.platform.ws_url, open_timeout=10)
                await self.ws.send(json.dumps({"type": "auth", "token": self.token}))
                while True:
                    frame = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
                    if frame["type"] == "ready":
                        return time.time()
            except (ConnectionClosed, OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def send_until_sent(self, conversation_id: str, timeout_s: float = 60.0) -> float:
        """Send once, resending the same client_msg_id on `overloaded` or a lost socket; returns
        the time `sent` arrived. `self.refusals` records when each refusal or loss came."""
        key = uuid.uuid4().hex
        frame = json.dumps({"type": "send", "conversation_id": conversation_id, "client_msg_id": key, "body": "probe"})
        deadline = time.monotonic() + timeout_s
        self.refusals = []
        while time.monotonic() < deadline:
            try:
                await self.ws.send(frame)
                while True:
                    answer = json.loads(await asyncio.wait_for(self.ws.recv(), 15))
                    if answer.get("type") == "sent" and answer.get("client_msg_id") == key:
                        return time.time()
                    if answer.get("type") == "error" and answer.get("ref") == key:
                        self.refusals.append((time.time(), answer.get("code")))
                        break  # overloaded while the shard restarts: send it again
            except (ConnectionClosed, TimeoutError) as error:
                self.refusals.append((time.time(), type(error).__name__))
                await self.connect()
        raise TimeoutError(f"send {key} not committed in {timeout_s}s")

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


async def create_probe_conversation(platform, ring: Ring) -> tuple[Client, Client, str]:
    import httpx

    sender, newcomer = (ids_on_target(ring, prefix, 1, Ring.user_shard)[0] for prefix in ("probe-a", "probe-c"))
    client = Client(platform, sender)
    async with httpx.AsyncClient(base_url=platform.http_url, timeout=30,
                                 headers={"Authorization": f"Bearer {client.token}"}) as http:
        while True:  # the gateway picks the id; keep one the killed shard sequences
            response = await http.post("/v1/conversations", json={"members": ["probe-b"], "title": "probe"})
            response.raise_for_status()
            cid = response.json()["conversation_id"]
            if ring.conversation_shard(cid) == TARGET:
                break
    await client.connect()
    return client, Client(platform, newcomer), cid


# ---- the rounds ------------------------------------------------------------------------------------

async def submit_all(shard, operations) -> None:
    for start in range(0, len(operations), SUBMIT_BATCH):
        outcomes = await shard.submit.remote(operations[start:start + SUBMIT_BATCH])
        failed = [o.error for o in outcomes if o.error is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} operations failed, e.g. {failed[0]!r}")


def target_shard(settings: Settings):
    return registry.get_actor(settings, registry.shard_name(REGION, TARGET))


async def one_round(args, platform, standin, pairs, sender: Client, newcomer: Client, cid: str, number: int) -> dict:
    settings = platform.settings
    shard = target_shard(settings)
    written = await shard.checkpoint.remote()
    after = [SendMessage(c, a, f"r{number}-{i}", "after the checkpoint")
             for i, (c, a, _) in enumerate(pairs[:SENDS_AFTER_CHECKPOINT])]
    after.append(AddMember(pairs[-1][0], pairs[-1][1], f"joiner-{number}"))
    await submit_all(shard, after)
    if args.no_checkpoint:
        engine = make_engine(platform.database_url, pool_size=1)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM checkpoints WHERE owner = :o"), {"o": registry.shard_name(REGION, TARGET)})
        engine.dispose()
    await newcomer.close()
    await standin.begin_round.remote()
    old_pid = (await shard.stats.remote())["pid"]

    killed_at = time.time()
    ray.kill(shard, no_restart=False)
    # ray.kill returns before the process is gone: a send made at once could still be answered
    # by the old instance, and this measures the restarted one.
    while process_alive(old_pid):
        await asyncio.sleep(0.005)
    sent_at, ready_at = await asyncio.gather(sender.send_until_sent(cid), newcomer.connect(timeout_s=60))
    while (reattached_at := await standin.reattached.remote()) is None:
        await asyncio.sleep(0.05)
    stats = await target_shard(settings).stats.remote()
    return {"killed_at": killed_at, "sent_at": sent_at, "ready_at": ready_at, "refusals": sender.refusals,
            "reattached_at": reattached_at, "stats": stats, "written": written}


async def commits_during_a_checkpoint(shard, pairs) -> None:
    """Single-send commits one after another, first alone, then while a checkpoint is taken: the
    checkpoint must not stall the writer thread noticeably."""

    async def one(key: str) -> float:
        started = time.perf_counter()
        await submit_all(shard, [SendMessage(pairs[0][0], pairs[0][1], key, "latency probe")])
        return (time.perf_counter() - started) * 1000

    alone = [await one(f"alone-{i}") for i in range(30)]
    checkpoint = asyncio.ensure_future(shard.checkpoint.remote())
    during = []
    while not checkpoint.done() or len(during) < 5:
        during.append(await one(f"during-{len(during)}"))
    written = await checkpoint
    print(f"single-send commit round trip: alone median {statistics.median(alone):.1f} ms, max {max(alone):.1f} ms;"
          f" during a {written['seconds'] * 1000:.0f} ms checkpoint median {statistics.median(during):.1f} ms,"
          f" max {max(during):.1f} ms ({len(during)} sends)")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie (killed, not yet reaped) is gone for us
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def report_round(number: int, result: dict) -> None:
    t0, stats = result["killed_at"], result["stats"]
    up = stats["startup"]

    def since(stamp):
        return f"{up[stamp] - t0:5.2f}" if up.get(stamp) else "  n/a"

    restored = stats["restored"]
    print(f"round {number}: sent {result['sent_at'] - t0:5.2f} s | new socket ready {result['ready_at'] - t0:5.2f} s"
          f" | {stats['online_users']} mailboxes re-attached {result['reattached_at'] - t0:5.2f} s")
    def at(stamp):
        return f"{stamp - t0:5.2f}" if stamp else "  n/a"

    print(f"   restarted process (s after the kill): created {since('process_started')},"
          f" our imports from {since('imports_started')}, constructor {since('init_started')},"
          f" connected {since('connected')}, restored {since('restored')}, ready {since('ready')};"
          f" first submit call {at(stats['first_submit_at'])}, first commit {at(stats['first_commit_at'])}")
    if result["refusals"]:
        print("   the probe send was refused or lost at " + ", ".join(f"{at(when)} ({why})" for when, why in result["refusals"]))
    if restored.get("loaded"):
        print(f"   checkpoint: {restored['bytes'] / 1024:.0f} KiB, load {restored['load_seconds'] * 1000:.0f} ms,"
              f" replay {restored['replay_seconds'] * 1000:.0f} ms: {restored['conversations']} conversations"
              f" ({restored['current']} current, {restored['reloaded']} reloaded), {restored['replayed_messages']}"
              f" messages and {restored['mailbox_events_after_watermark']} mailbox events after the watermark,"
              f" {restored['mailbox_mailboxes']} mailboxes live")
    else:
        print("   no checkpoint: started empty, loads lazily")
    written = result["written"]
    print(f"   the round's checkpoint write: {written['bytes'] / 1024:.0f} KiB in {written['seconds'] * 1000:.0f} ms"
          f" ({written['conversations']} conversations, {written['mailboxes']} mailboxes,"
          f" {written['recent_sends']} sends)")


def summary(results: list[dict]) -> None:
    for label, key in (("sent", "sent_at"), ("new socket ready", "ready_at"), ("all re-attached", "reattached_at")):
        values = [r[key] - r["killed_at"] for r in results]
        print(f"{label:>17}: median {statistics.median(values):.2f} s, max {max(values):.2f} s over {len(values)} kills")


async def run(args, platform) -> None:
    ring = Ring(args.shards)
    started = time.perf_counter()
    pairs = await asyncio.to_thread(seed, platform.database_url, ring, args.mailboxes, args.history)
    print(f"seeded {args.mailboxes} mailboxes, {len(pairs)} conversations x {args.history} messages"
          f" in {time.perf_counter() - started:.1f} s")
    users = [u for _, a, b in pairs for u in (a, b)][:args.live]
    standin = StandInGateway.options(num_cpus=0).remote(platform.settings, users, args.reattach == "batched")
    started = time.perf_counter()
    await submit_all(target_shard(platform.settings), [SendMessage(c, a, "warm", "warm-up") for c, a, _ in pairs])
    await standin.start.remote()
    sender, newcomer, cid = await create_probe_conversation(platform, ring)
    print(f"warmed the shard (a send per conversation) and attached {args.live} mailboxes"
          f" ({args.reattach} re-attach) in {time.perf_counter() - started:.1f} s")
    await commits_during_a_checkpoint(target_shard(platform.settings), pairs)
    results = []
    for number in range(1, args.kills + 1):
        results.append(await one_round(args, platform, standin, pairs, sender, newcomer, cid, number))
        report_round(number, results[-1])
    summary(results)
    ray.kill(standin)
    await sender.close()
    await newcomer.close()


def main(argv=None) -> None:
    args = parse_args(argv)
    data_dir = tempfile.mkdtemp(prefix="sb-recovery-")
    ray_dir = tempfile.mkdtemp(prefix="sbrec-", dir="/tmp")
    # Direct ingress is off: its HAProxy binds fixed ports that another platform on this machine may
    # hold, and the ingress path is not what is measured here. Each round takes its own checkpoint.
    settings = Settings(data_dir=data_dir, port=free_port(), namespace=f"recovery-{uuid.uuid4().hex[:8]}",
                        shards_per_region=args.shards, min_replicas=1, max_replicas=1,
                        direct_ingress=False, checkpoint_interval_s=0)
    init_ray(settings, "local", loopback=True, include_dashboard=False, _temp_dir=ray_dir)
    try:
        # keep_postgres: stopped below, before its directory goes (an exit handler would be too late).
        platform = start_platform(settings, keep_postgres=True)
        try:
            asyncio.run(run(args, platform))
        finally:
            stop_platform(settings)
    finally:
        ray.shutdown()
        stop_database(settings)
        shutil.rmtree(ray_dir, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

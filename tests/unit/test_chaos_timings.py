"""The chaos run's figures from hand-made timelines: recovery after a shard loss counts only what the
restarted shard did, and the database-outage report catches a false `sent`, a hung send, a refusal
other than `overloaded` and a connection closed by the outage."""

from __future__ import annotations

from switchboard.actors.ring import Ring
from switchboard.chaos.faults import FaultRecord
from switchboard.chaos.timings import outage_report, shard_recoveries, summarize
from switchboard.chaos.traffic import Answer, Attempt, Close, Delivery, Timeline

RING = Ring(2)


def conversation_on(shard: int) -> str:
    return next(f"c_{n}" for n in range(1000) if RING.conversation_shard(f"c_{n}") == shard)


def user_on(shard: int) -> str:
    return next(f"u{n}" for n in range(1000) if RING.user_shard(f"u{n}") == shard)


def sent(at: float, conversation: str, ts_ms: int, user: str = "u-sender", key: str = "k") -> Answer:
    return Answer(at, user, 0, key, "sent", {"conversation_id": conversation, "seq": 1, "ts": ts_ms})


def test_recovery_counts_only_what_the_restarted_shard_did():
    kill = FaultRecord("shard_kill", at=100.0, wall_ms=1_000_000, detail="shard 0", killed_shards=frozenset({0}),
                       restarted_wall_ms=1_002_000)
    timeline = Timeline(
        answers=[
            sent(100.5, conversation_on(0), 1_000_100),  # committed by the dying process: not recovery
            sent(101.0, conversation_on(1), 1_002_500),  # another shard's conversation
            sent(103.0, conversation_on(0), 1_002_800),  # the restarted shard's first commit
        ],
        deliveries=[
            Delivery(102.0, user_on(1), conversation_on(1), 1_002_100),  # a mailbox elsewhere
            Delivery(104.0, user_on(0), conversation_on(0), 1_002_800),
        ],
    )
    [recovery] = shard_recoveries([kill], timeline, RING)
    assert (recovery.sequencer_s, recovery.mailbox_s, recovery.seconds) == (3.0, 4.0, 4.0)
    assert summarize([recovery]) == {"median": 4.0, "max": 4.0}


def test_a_loss_with_nothing_after_it_has_no_recovery_figure():
    kill = FaultRecord("shard_kill", at=100.0, wall_ms=1_000_000, killed_shards=frozenset({1}))
    [recovery] = shard_recoveries([kill], Timeline(), RING)
    assert recovery.seconds is None
    assert summarize([recovery]) == {"median": None, "max": None}


def outage() -> FaultRecord:
    return FaultRecord("pg_restart", at=9.0, wall_ms=900_000, down_at=10.0, down_wall_ms=1_000_000,
                       restart_at=20.0, up_at=20.5)


def test_an_outage_where_every_send_is_refused_promptly_is_clean():
    timeline = Timeline(
        attempts=[Attempt(11.0, "u1", 0, "a"), Attempt(12.0, "u2", 0, "b")],
        answers=[Answer(12.0, "u1", 0, "a", "overloaded", None), Answer(13.5, "u2", 0, "b", "overloaded", None),
                 sent(21.0, "c_1", 1_011_000)],
    )
    report = outage_report([outage()], timeline, send_timeout_s=5.0)
    assert report.problems == []
    assert (report.attempts, report.overloaded) == (2, 2)
    assert report.recovered_s == [1.0]


def test_an_outage_report_catches_each_kind_of_problem():
    timeline = Timeline(
        attempts=[Attempt(11.0, "u1", 0, "false"), Attempt(11.0, "u2", 0, "hung"), Attempt(12.0, "u3", 0, "lost"),
                  Attempt(12.0, "u4", 0, "bug"), Attempt(12.0, "u5", 0, "ok")],
        answers=[
            Answer(11.5, "u1", 0, "false", "sent", {"conversation_id": "c_1", "seq": 1, "ts": 1_001_500}),
            Answer(30.0, "u2", 0, "hung", "overloaded", None),  # 19 s after it was made
            Answer(12.5, "u4", 0, "bug", "internal", None),
            Answer(12.5, "u5", 0, "ok", "overloaded", None),
        ],
        closes=[Close(15.0, "u6", 0, 1001, "mailbox unavailable")],
    )
    report = outage_report([outage()], timeline, send_timeout_s=5.0)
    assert report.sent_while_down == 1
    assert len(report.hung) == 2  # answered late, and never answered on its open connection
    assert report.refused_otherwise == {"internal": 1}
    assert len(report.connections_closed) == 1
    assert len(report.problems) == 5


def test_a_sent_for_a_message_committed_before_the_outage_is_true():
    # A retry answered from the sequencer's memory: its message was committed before the database went.
    timeline = Timeline(
        attempts=[Attempt(11.0, "u1", 0, "old"), Attempt(11.0, "u2", 0, "new")],
        answers=[Answer(11.2, "u1", 0, "old", "sent", {"conversation_id": "c_1", "seq": 1, "ts": 999_000}),
                 Answer(12.0, "u2", 0, "new", "overloaded", None)],
    )
    report = outage_report([outage()], timeline, send_timeout_s=5.0)
    assert report.problems == []


def test_with_regions_only_the_struck_regions_conversations_and_users_count():
    from switchboard.chaos.timings import StruckRegion
    from switchboard.protocol import new_conversation_id

    def on_shard(make, shard, pick):
        return next(x for x in (make(n) for n in range(5000)) if pick(x) == shard)

    eu_cid = on_shard(lambda n: new_conversation_id("eu"), 0, RING.conversation_shard)
    us_cid = on_shard(lambda n: new_conversation_id("us"), 0, RING.conversation_shard)
    kill = FaultRecord("shard_kill", at=100.0, wall_ms=1_000_000, killed_shards=frozenset({0}))
    timeline = Timeline(
        answers=[Answer(101.0, "a", 0, "m1", "sent", {"conversation_id": us_cid, "ts": 1_001_000}),
                 Answer(103.0, "a", 0, "m2", "sent", {"conversation_id": eu_cid, "ts": 1_003_000})],
        deliveries=[Delivery(101.5, user_on(0), us_cid, 1_001_000),  # homed in us: not struck
                    Delivery(104.0, "other", eu_cid, 1_003_000)],
    )
    homes = {user_on(0): "us", "other": None}
    other_on_0 = RING.user_shard("other") == 0
    struck = StruckRegion("eu", ("eu", "us"), homes)
    [recovery] = shard_recoveries([kill], timeline, RING, struck)
    assert recovery.sequencer_s == 3.0  # us's conversation on shard 0 was not lost
    assert recovery.mailbox_s == (4.0 if other_on_0 else None)
    [unaware] = shard_recoveries([kill], timeline, RING)
    assert (unaware.sequencer_s, unaware.mailbox_s) == (1.0, 1.5)

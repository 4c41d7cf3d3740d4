"""Figures read off the run's timeline: recovery after each shard loss, and how sends fared while
PostgreSQL was down (issue #4 points 3 and 4). Plain functions over the records; no Ray, no sockets.

Recovery of a lost shard (a shard_kill, or a node_remove that took shards with it) is the time from
the fault to the first moment the restarted shard works again in each of its roles: the first `sent`
for a conversation it sequences, and the first live delivery to a user whose mailbox it hosts, each
counted only for a message committed after the new incarnation started (so nothing the dying
process still did counts). Both are measured where a user sees them, at the client.
"""

from __future__ import annotations

import dataclasses
import math
import statistics

from switchboard.actors.ring import Ring
from switchboard.protocol import conversation_region

from .faults import FaultRecord
from .traffic import Timeline

# How far past the platform's send timeout an answer may come before the send counts as hung: the
# gateway's deadline is checked between retries, and a commit attempt can take a connect timeout.
HANG_MARGIN_S = 5.0


@dataclasses.dataclass
class Recovery:
    kind: str
    detail: str
    sequencer_s: float | None  # first `sent` on a conversation the lost shard sequences
    mailbox_s: float | None  # first live delivery to a user whose mailbox the lost shard hosts
    restarted_s: float | None = None  # when the new incarnation's constructor ran (where the time goes)
    ready_s: float | None = None  # when it had restored its checkpoint and began to serve

    @property
    def seconds(self) -> float | None:
        parts = [p for p in (self.sequencer_s, self.mailbox_s) if p is not None]
        return max(parts) if parts else None


@dataclasses.dataclass(frozen=True)
class StruckRegion:
    """Which users and conversations the faults' shards serve when there are several regions (the
    faults strike the default region's shards): a conversation by the region its id names, a user
    by its home (None: no claim, the default)."""

    region: str
    regions: tuple[str, ...]
    homes: dict  # user_id -> home region or None

    def has_conversation(self, conversation_id: str) -> bool:
        return conversation_region(conversation_id, self.regions, self.region) == self.region

    def has_user(self, user_id: str) -> bool:
        return (self.homes.get(user_id) or self.region) == self.region


def shard_recoveries(records: list[FaultRecord], timeline: Timeline, default_ring: Ring,
                     struck: StruckRegion | None = None) -> list[Recovery]:
    """struck: with several regions, only the struck region's conversations and users count
    (another region's shard of the same index was not lost). default_ring: for records that do
    not say how many shards the region had when they struck."""
    in_conversation = struck.has_conversation if struck else (lambda _: True)
    in_user = struck.has_user if struck else (lambda _: True)
    recoveries = []
    for record in records:
        if not record.killed_shards or record.skipped:
            continue
        since_ms = max(record.wall_ms, record.restarted_wall_ms or 0)
        ring = Ring(record.shard_count) if record.shard_count else default_ring  # the ring when it struck
        sequencer = [
            answer.at - record.at for answer in timeline.answers
            if answer.kind == "sent" and answer.at > record.at and answer.message["ts"] >= since_ms
            and ring.conversation_shard(answer.message["conversation_id"]) in record.killed_shards
            and in_conversation(answer.message["conversation_id"])
        ]
        mailbox = [
            delivery.at - record.at for delivery in timeline.deliveries
            if delivery.at > record.at and delivery.ts_ms >= since_ms
            and ring.user_shard(delivery.user_id) in record.killed_shards and in_user(delivery.user_id)
        ]
        restarted_s = (record.restarted_wall_ms - record.wall_ms) / 1000 if record.restarted_wall_ms else None
        recoveries.append(Recovery(record.kind, record.detail, min(sequencer, default=None),
                                   min(mailbox, default=None), restarted_s, record.restart_phases.get("ready")))
    return recoveries


def summarize(recoveries: list[Recovery]) -> dict:
    return summarize_seconds([r.seconds for r in recoveries if r.seconds is not None])


@dataclasses.dataclass
class OutageReport:
    """How sends fared while the database was down (down_at to restart_at of each pg_restart)."""

    attempts: int = 0  # send attempts made while the database was down
    overloaded: int = 0  # of them, answered `overloaded`
    refused_otherwise: dict[str, int] = dataclasses.field(default_factory=dict)  # other error codes
    sent_while_down: int = 0  # answered `sent` although the database was down: a false `sent`
    hung: list[str] = dataclasses.field(default_factory=list)  # answered late, or never on an open connection
    connections_closed: list[str] = dataclasses.field(default_factory=list)
    recovered_s: list[float] = dataclasses.field(default_factory=list)  # restart begun -> first `sent`

    @property
    def problems(self) -> list[str]:
        problems = []
        if self.sent_while_down:
            problems.append(f"{self.sent_while_down} send(s) answered `sent` while the database was down")
        problems += [f"hung send: {h}" for h in self.hung]
        problems += [f"connection closed during the outage: {c}" for c in self.connections_closed]
        problems += [f"{count} send(s) answered `{code}` while the database was down (expected `overloaded`)"
                     for code, count in sorted(self.refused_otherwise.items())]
        if self.attempts and not self.overloaded:
            problems.append("no send attempted during the outage was answered `overloaded`")
        return problems

    def to_json(self) -> dict:
        return {"attempts": self.attempts, "overloaded": self.overloaded, "refused_otherwise": self.refused_otherwise,
                "sent_while_down": self.sent_while_down,
                "hung": len(self.hung), "connections_closed": len(self.connections_closed),
                "recovered_s": [round(s, 3) for s in self.recovered_s]}


def outage_report(records: list[FaultRecord], timeline: Timeline, send_timeout_s: float) -> OutageReport:
    report = OutageReport()
    answers: dict[tuple[str, int, str], list] = {}
    for answer in timeline.answers:
        answers.setdefault((answer.user_id, answer.session, answer.client_msg_id), []).append(answer)
    closed_sessions = {(close.user_id, close.session): close for close in timeline.closes}
    for record in records:
        if record.kind != "pg_restart" or record.skipped or record.down_at is None:
            continue
        down_at, restart_at = record.down_at, record.restart_at
        for attempt in timeline.attempts:
            if not down_at <= attempt.at <= restart_at:
                continue
            report.attempts += 1
            later = [a for a in answers.get((attempt.user_id, attempt.session, attempt.client_msg_id), [])
                     if a.at >= attempt.at]
            name = f"{attempt.user_id} {attempt.client_msg_id}"
            if not later:
                if (attempt.user_id, attempt.session) not in closed_sessions:
                    report.hung.append(f"{name}: never answered on its open connection")
                continue
            first = later[0]
            if first.kind == "overloaded":
                report.overloaded += 1
            elif first.kind != "sent":
                report.refused_otherwise[first.kind] = report.refused_otherwise.get(first.kind, 0) + 1
            elif first.kind == "sent" and first.at < restart_at and first.message["ts"] >= record.down_wall_ms:
                # A `sent` for a message committed before the outage (a retry answered from the
                # sequencer's memory) is true; one committed while the database was down is not.
                report.sent_while_down += 1
            if first.at - attempt.at > send_timeout_s + HANG_MARGIN_S:
                report.hung.append(f"{name}: answered after {first.at - attempt.at:.1f} s")
        report.connections_closed += [
            f"{close.user_id} connection {close.session} (code {close.code} {close.reason})"
            for close in timeline.closes if down_at <= close.at <= restart_at
        ]
        back = [a.at - restart_at for a in timeline.answers if a.kind == "sent" and a.at > restart_at]
        if back:
            report.recovered_s.append(min(back))
    return report


def send_waits(records: list[FaultRecord], timeline: Timeline, kind: str) -> list[list[float]]:
    """For each fault of `kind` (a hand back): how long each send waited for its `sent`, among the
    sends first attempted from the fault until a second after its shards had all started again
    (a fault with no such send is left out)."""
    first_attempt: dict[str, float] = {}
    for attempt in timeline.attempts:
        first_attempt.setdefault(attempt.client_msg_id, attempt.at)
    committed: dict[str, float] = {}
    for answer in timeline.answers:
        if answer.kind == "sent":
            committed.setdefault(answer.client_msg_id, answer.at)
    per_fault = []
    for record in records:
        if record.kind != kind or record.skipped or record.restarted_wall_ms is None:
            continue
        window_end = record.at + (record.restarted_wall_ms - record.wall_ms) / 1000 + 1.0
        waits = [committed[cid] - at for cid, at in first_attempt.items()
                 if record.at <= at <= window_end and cid in committed]
        if waits:
            per_fault.append(waits)
    return per_fault


def send_pauses(records: list[FaultRecord], timeline: Timeline, kind: str) -> list[float]:
    """For each fault of `kind`: the longest wait of send_waits."""
    return [max(waits) for waits in send_waits(records, timeline, kind)]


def send_p99s(records: list[FaultRecord], timeline: Timeline, kind: str) -> list[float]:
    """For each fault of `kind`: the 99th percentile of send_waits (nearest rank)."""
    return [percentile(waits, 0.99) for waits in send_waits(records, timeline, kind)]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summarize_seconds(seconds: list[float]) -> dict:
    if not seconds:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(seconds), 3), "max": round(max(seconds), 3)}

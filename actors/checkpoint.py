"""Checkpoints: what a shard or a router writes to PostgreSQL so that a restart starts from it.

A shard's checkpoint holds what it would otherwise rebuild lazily, one query at a time: the
conversations it sequences (last_seq, members, read marks), its newest sends (to answer retries
from memory), its live mailboxes (head and the gateway replicas holding their sockets) and those
gateways. A router's holds the placement and epoch it hands out and when retention last ran.

The watermark is per item, not one position for the whole checkpoint: each conversation carries
the `version` it had (the commit's fence moves it by one on every change), each mailbox its head.
On restart an item whose stored version still matches is current; one that moved is reloaded, with
the messages it got since; mailbox heads are read afresh in one query. So a checkpoint taken while
commits go on, or one hours old, is exactly as safe as none: it only saves work. A single global
position would need a commit-ordered change log, which PostgreSQL does not give without an index
written on every send.

Encoding: one row per actor (storage/schema.py `checkpoints`) holding JSON in compact rows (lists,
not objects), zlib-compressed. It is built in chunks so that no single C call holds the GIL long
enough to stall the shard's writer thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import time
import zlib

from switchboard.storage.models import Conversation, Message

log = logging.getLogger(__name__)

# Each kind has its own format number; a checkpoint of another format is not used (a lazy
# start instead). Shard format 2: a mailbox's sockets are named per gateway, not counted.
SHARD_FORMAT = 2
ROUTER_FORMAT = 1
# Rows encoded per json.dumps call: each call holds the GIL for ~1 ms at most.
ENCODE_CHUNK_ROWS = 500
# Fast and good enough: the documents are repetitive JSON (ids, member lists).
COMPRESSION_LEVEL = 1


@dataclasses.dataclass(frozen=True)
class MailboxRecord:
    """A live mailbox: its head when checkpointed, and the sockets each gateway replica held."""

    user_id: str
    head: int
    gateways: dict[str, list[int]]  # gateway_id -> the ids of its sockets of this user


@dataclasses.dataclass
class ShardCheckpoint:
    owner: str  # the shard actor's name
    shard_count: int  # of the ring it was taken under; another ring's checkpoint is not used
    taken_at: int  # ms since the epoch
    commits: int  # the shard's commits when taken (a figure for stats, not a watermark)
    conversations: list[Conversation]
    recent_sends: list[Message]
    mailboxes: list[MailboxRecord]
    gateways: list[str]


@dataclasses.dataclass(frozen=True)
class RouterCheckpoint:
    owner: str
    taken_at: int
    region: str
    namespace: str
    shard_names: tuple[str, ...]
    epoch: int
    retention_last_run: int  # ms since the epoch


# ---- shard ---------------------------------------------------------------------------------------

def encode_shard(checkpoint: ShardCheckpoint, pause_s: float = 0.0) -> bytes:
    """The checkpoint as stored. With pause_s, sleeps that long after each chunk of rows: on a
    shard sharing few cores with its commits, an unpaced encoding of 10,000 mailboxes doubled the
    commit latency for its ~0.2 s; a checkpoint taking longer costs nothing (its items carry their
    own watermarks). The cyclic collector is paused meanwhile: the encoding's ~60,000 short-lived
    rows used to trigger full collections (~0.23 s over a busy shard's heap, every thread stopped)."""
    with collector_paused():
        return _encode_shard(checkpoint, pause_s)


def _encode_shard(checkpoint: ShardCheckpoint, pause_s: float) -> bytes:

    def conversation(c: Conversation) -> list:
        return [c.conversation_id, c.title, c.region, c.created_by, c.created_at, c.last_seq, c.version,
                sorted(c.members), c.read_marks]

    def send(m: Message) -> list:
        return [m.conversation_id, m.seq, m.message_id, m.sender, m.client_msg_id, m.body, m.ts]

    def mailbox(m: MailboxRecord) -> list:
        return [m.user_id, m.head, m.gateways]

    header = {
        "format": SHARD_FORMAT, "kind": "shard", "owner": checkpoint.owner, "shard_count": checkpoint.shard_count,
        "taken_at": checkpoint.taken_at, "commits": checkpoint.commits, "gateways": checkpoint.gateways,
    }
    document = (
        json.dumps(header, separators=(",", ":"))[:-1]
        + ',"conversations":' + _dump_rows(checkpoint.conversations, conversation, pause_s)
        + ',"recent_sends":' + _dump_rows(checkpoint.recent_sends, send, pause_s)
        + ',"mailboxes":' + _dump_rows(checkpoint.mailboxes, mailbox, pause_s)
        + "}"
    )
    return zlib.compress(document.encode(), COMPRESSION_LEVEL)


def decode_shard(state: bytes) -> ShardCheckpoint | None:
    """The checkpoint, or None for one this code cannot read (another format or kind)."""
    document = _load(state, "shard", SHARD_FORMAT)
    if document is None:
        return None
    try:
        return _shard_from(document)
    except (KeyError, TypeError, ValueError) as error:
        log.warning("malformed shard checkpoint ignored: %r", error)
        return None


def _shard_from(document: dict) -> ShardCheckpoint:
    return ShardCheckpoint(
        owner=document["owner"],
        shard_count=document["shard_count"],
        taken_at=document["taken_at"],
        commits=document["commits"],
        # Positional arguments: three times faster than keywords for 10,000 of them.
        conversations=[
            Conversation(cid, title, region, creator, created_at, last_seq, set(members), marks, version)
            for cid, title, region, creator, created_at, last_seq, version, members, marks
            in document["conversations"]
        ],
        recent_sends=[Message(*row) for row in document["recent_sends"]],
        mailboxes=[MailboxRecord(user_id, head, gateways) for user_id, head, gateways in document["mailboxes"]],
        gateways=list(document["gateways"]),
    )


# ---- router --------------------------------------------------------------------------------------

def encode_router(checkpoint: RouterCheckpoint) -> bytes:
    document = {"format": ROUTER_FORMAT, "kind": "router", **dataclasses.asdict(checkpoint)}
    return zlib.compress(json.dumps(document, separators=(",", ":")).encode(), COMPRESSION_LEVEL)


def decode_router(state: bytes) -> RouterCheckpoint | None:
    document = _load(state, "router", ROUTER_FORMAT)
    if document is None:
        return None
    try:
        fields = {field.name: document[field.name] for field in dataclasses.fields(RouterCheckpoint)}
        return RouterCheckpoint(**{**fields, "shard_names": tuple(fields["shard_names"])})
    except (KeyError, TypeError) as error:
        log.warning("malformed router checkpoint ignored: %r", error)
        return None


# ---- helpers -------------------------------------------------------------------------------------

@contextlib.contextmanager
def collector_paused():
    """Pause the cyclic collector (process-wide) while many containers are made in one go. A
    restore makes ~200,000 (the decoded document, then the objects built from it), which the
    collector would rescan again and again: ~30% of a 10,000-mailbox restore, measured. It runs
    as usual again afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _dump_rows(items: list, to_row, pause_s: float) -> str:
    parts = []
    for start in range(0, len(items), ENCODE_CHUNK_ROWS):
        if parts and pause_s:
            time.sleep(pause_s)
        rows = [to_row(item) for item in items[start:start + ENCODE_CHUNK_ROWS]]
        parts.append(json.dumps(rows, separators=(",", ":"))[1:-1])
    return "[" + ",".join(parts) + "]"


def _load(state: bytes, kind: str, version: int) -> dict | None:
    try:
        document = json.loads(zlib.decompress(state))
    except (zlib.error, ValueError) as error:
        log.warning("unreadable %s checkpoint ignored: %s", kind, error)
        return None
    if not isinstance(document, dict) or (document.get("format"), document.get("kind")) != (version, kind):
        log.warning("a checkpoint that is not a %s one of format %d ignored", kind, version)
        return None
    return document

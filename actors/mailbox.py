"""Virtual mailboxes: each user's cursor log, live while the user has connections.

A mailbox is a virtual actor (an Orleans grain) hosted by a shard: it exists in memory only while
one of its user's sockets is attached somewhere, and is rebuilt from PostgreSQL (its head cursor)
when the next one attaches. Offline users cost nothing: their events are already durable in
mailbox_events, written by the sequencer's commit, and are replayed on resume with `since`.

What a live mailbox adds is order: it pushes events to the gateways in strict cursor order. An
event that arrives ahead of a missing one (two sequencers on two shards committed them, and their
deliveries crossed) waits; a gap not filled by a delivery soon is read back from PostgreSQL, which
is safe because a committed cursor N implies every cursor below N committed too.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
from collections.abc import Awaitable, Callable

from switchboard.errors import TooManySockets
from switchboard.protocol import frame_text, mailbox_event_text
from switchboard.storage.models import MailboxEvent, MailboxHead
from switchboard.storage.store import Store

from .checkpoint import MailboxRecord
from .gateway_outbox import Delivery, GatewayOutbox  # noqa: F401  (Delivery: re-exported)

log = logging.getLogger(__name__)

RunBlocking = Callable[..., Awaitable]

# How long an out-of-order event waits for the delivery it overtook before the gap is read from
# the database. Deliveries between shards normally land within a few milliseconds.
GAP_REPAIR_DELAY_S = 0.25
# Events one attach or replay answer carries at most: a resume of a 20,000-event mailbox is read
# and sent in pages (the session asks for the next one once its socket has taken the last), never
# as one list in the shard or one Ray reply. attach_many shares a budget across its sockets.
REPLAY_PAGE = 200
ATTACH_MANY_EVENTS_MAX = 2_000
# The largest cursor: `replay` with no upper bound reads up to whatever is committed.
CURSOR_MAX = 2**63 - 1
# How long sockets restored from a checkpoint stay registered without their gateway re-attaching
# them. A gateway re-attaches all its sockets of a restarted shard at once (10,000 take seconds);
# a socket it no longer holds is dropped after this.
RESTORED_SOCKETS_GRACE_S = 30.0


@dataclasses.dataclass
class AttachResult:
    """The mailbox head and the first page of events after `since` (all of them unless `more`)."""

    head: int
    events: list[MailboxEvent]
    resync_required: bool = False
    more: bool = False  # events after the last one here remain: ask `replay` for them


@dataclasses.dataclass
class _Mailbox:
    user_id: str
    head: int | None = None  # None while loading from the database
    # gateway_id -> ids of that replica's sockets of this user. Ids (not a count) make a
    # re-attach of the same socket idempotent, and the per-user socket cap exact.
    gateways: dict[str, set[int]] = dataclasses.field(default_factory=dict)
    pending: dict[int, MailboxEvent] = dataclasses.field(default_factory=dict)
    repair: asyncio.Task | None = None
    # Gateways whose sockets came from a checkpoint: the gateway re-attaches each of its
    # sockets after the restart, and the first re-attach replaces the restored ones by live ones.
    restored: set[str] = dataclasses.field(default_factory=set)

    def socket_count(self) -> int:
        return sum(len(sockets) for sockets in self.gateways.values())


# Messages whose JSON is kept for the next recipients' events (a group message's fan-out, a
# sender's own devices); a message is rendered once while its deliveries drain.
RENDERED_MESSAGES_MAX = 4096


class MailboxHost:
    def __init__(self, store: Store, run_blocking: RunBlocking, gap_repair_delay_s: float = GAP_REPAIR_DELAY_S,
                 home_region: str | None = None):
        self.store = store
        # Recorded on each mailbox this host loads, so commits anywhere push its events here.
        self.home_region = home_region
        self.run_blocking = run_blocking
        self.gap_repair_delay_s = gap_repair_delay_s
        self._mailboxes: dict[str, _Mailbox] = {}
        self._outboxes: dict[str, GatewayOutbox] = {}
        self._last_seen: dict[str, float] = {}  # gateway_id -> monotonic time of its last sign
        self._acks: dict[str, int] = {}
        self._restored_until: float | None = None  # monotonic deadline for restored sockets
        self._rendered: collections.OrderedDict[tuple[str, int], str] = collections.OrderedDict()
        self._socket_ids = itertools.count(-1, -1)  # for callers that name no socket (tests, old gateways)

    # ---- gateways and their sockets -------------------------------------------------------

    def outbox(self, gateway_id: str) -> GatewayOutbox:
        outbox = self._outboxes.get(gateway_id)
        if outbox is None:
            outbox = self._outboxes[gateway_id] = GatewayOutbox()
        return outbox

    def open_outbox(self, gateway_id: str) -> GatewayOutbox:
        """A new stream from a gateway replaces its old one: the old stream wakes and ends, and
        the gateway re-attaches its sockets with their cursors, so nothing queued is lost."""
        old = self._outboxes.get(gateway_id)
        outbox = self._outboxes[gateway_id] = GatewayOutbox()
        if old is not None:
            outbox.items, outbox.bytes, old.items, old.bytes = old.items, old.bytes, [], 0
            if outbox.items:
                outbox.ready.set()
            old.ready.set()
        return outbox

    def current_outbox(self, gateway_id: str) -> GatewayOutbox | None:
        return self._outboxes.get(gateway_id)

    def touch(self, gateway_id: str, now: float) -> None:
        """A sign of life from a gateway replica (its heartbeat, a stream, an attach)."""
        self._last_seen[gateway_id] = now

    def expire_gateways(self, now: float, lease_s: float) -> list[str]:
        """Drop the gateways silent for longer than the lease. A replica whose process died never
        ends its stream (Ray keeps the generator of a dead caller running), so only its silence
        tells that its sockets are gone."""
        expired = [g for g, seen in self._last_seen.items() if now - seen > lease_s]
        for gateway_id in expired:
            self.drop_gateway(gateway_id)
        return expired

    def drop_gateway(self, gateway_id: str) -> None:
        """Forget a gateway replica that went away, and every socket it held."""
        self._last_seen.pop(gateway_id, None)
        outbox = self._outboxes.pop(gateway_id, None)
        if outbox is not None:
            outbox.ready.set()  # its stream, if one still runs, wakes and ends
        for user_id in [u for u, box in self._mailboxes.items() if gateway_id in box.gateways]:
            self.detach(gateway_id, user_id, all_sockets=True)

    async def attach(self, gateway_id: str, user_id: str, since: int | None, socket_id: int | None = None,
                     max_sockets: int | None = None) -> AttachResult:
        """Socket `socket_id` of user_id on gateway_id goes live (again: attaching a registered
        socket changes nothing). Returns the head and, with `since`, the first page of events
        after it; live events after the head follow on the stream. With max_sockets, a socket
        beyond the user's cap is refused (TooManySockets)."""
        socket_id = next(self._socket_ids) if socket_id is None else socket_id
        mailbox = self._register(gateway_id, user_id, socket_id, max_sockets)
        try:
            if mailbox.head is None:
                await self._load(mailbox)
            return await self._answer(mailbox, since, REPLAY_PAGE)
        except BaseException:
            self.detach(gateway_id, user_id, socket_id)
            raise

    async def attach_many(self, gateway_id: str, sockets: list[tuple]) -> list[AttachResult]:
        """attach() for many sockets of one gateway at once, answers in order: what a gateway
        re-attaching every socket of a restarted shard needs. `sockets` holds (user_id, since) or
        (user_id, since, socket_id). One call instead of one per socket (a call costs ~1 ms
        whatever it carries, and the calls queued ahead of the first send after a restart delay
        it), one query for the heads not in memory, and at most ATTACH_MANY_EVENTS_MAX events in
        the answer (the sockets further behind page the rest with `replay`).
        All or nothing: if a query fails, none of the sockets stays attached."""
        named = [(s[0], s[1], s[2] if len(s) > 2 else next(self._socket_ids)) for s in sockets]
        mailboxes = [self._register(gateway_id, user_id, socket_id) for user_id, _, socket_id in named]
        try:
            unloaded = sorted({mailbox.user_id for mailbox in mailboxes if mailbox.head is None})
            if unloaded:
                # As in _load: deliveries meanwhile wait in `pending`, and _drain drops the ones
                # the heads read here already include.
                heads = await self.run_blocking(self.store.mailbox_heads, unloaded)
                for user_id in unloaded:
                    mailbox = self._mailboxes.get(user_id)  # gone if all its sockets left meanwhile
                    if mailbox is not None and mailbox.head is None:
                        mailbox.head = heads.get(user_id, MailboxHead(0, 0)).head
                        self._drain(mailbox)
            budget = ATTACH_MANY_EVENTS_MAX
            results = []
            for mailbox, (_, since, _) in zip(mailboxes, named):
                result = await self._answer(mailbox, since, min(REPLAY_PAGE, budget))
                budget = max(0, budget - len(result.events))
                results.append(result)
            return results
        except BaseException:
            for user_id, _, socket_id in named:
                self.detach(gateway_id, user_id, socket_id)
            raise

    async def replay(self, user_id: str, after: int, limit: int = REPLAY_PAGE) -> AttachResult:
        """The next page of user_id's events after cursor `after`, up to what is committed: how a
        session catches up page by page. No registration: a read only."""
        limit = max(1, min(limit, REPLAY_PAGE))
        stored = await self.run_blocking(self.store.mailbox_head, user_id)
        mailbox = self._mailboxes.get(user_id)
        head = max(stored.head, mailbox.head or 0) if mailbox is not None else stored.head
        if after < stored.pruned_through or after > head:
            return AttachResult(head=head, events=[], resync_required=True)
        if after == head:
            return AttachResult(head=head, events=[])
        events = await self.run_blocking(self.store.events_after, user_id, after, head, limit)
        more = bool(events) and events[-1].cursor < head
        return AttachResult(head=head, events=events, more=more)

    def _register(self, gateway_id: str, user_id: str, socket_id: int, max_sockets: int | None = None) -> _Mailbox:
        """Register one socket of user_id on gateway_id (the mailbox goes live if it was not)."""
        self.outbox(gateway_id)
        mailbox = self._mailboxes.get(user_id)
        if mailbox is not None and gateway_id in mailbox.restored:
            mailbox.restored.discard(gateway_id)
            mailbox.gateways[gateway_id] = set()  # this gateway now names its sockets as it re-attaches
        known = mailbox is not None and socket_id in mailbox.gateways.get(gateway_id, ())
        if not known and max_sockets is not None and mailbox is not None and mailbox.socket_count() >= max_sockets:
            raise TooManySockets(f"a user may hold at most {max_sockets} sockets")
        if mailbox is None:
            mailbox = self._mailboxes[user_id] = _Mailbox(user_id)
        mailbox.gateways.setdefault(gateway_id, set()).add(socket_id)
        return mailbox

    async def _answer(self, mailbox: _Mailbox, since: int | None, page: int) -> AttachResult:
        """The head and, with `since`, the first `page` events after it, for a mailbox whose head
        is loaded."""
        head = mailbox.head
        if since is None or since == head:
            # Nothing to replay, and retention never prunes up to a head, so no query: what
            # makes re-attaching every socket after a shard restart cheap.
            return AttachResult(head=head, events=[])
        stored = await self.run_blocking(self.store.mailbox_head, mailbox.user_id)
        if since < stored.pruned_through or since > head:
            return AttachResult(head=head, events=[], resync_required=True)
        if page <= 0:
            return AttachResult(head=head, events=[], more=True)
        events = await self.run_blocking(self.store.events_after, mailbox.user_id, since, head, page)
        return AttachResult(head=head, events=events, more=bool(events) and events[-1].cursor < head)

    def detach(self, gateway_id: str, user_id: str, socket_id: int | None = None, all_sockets: bool = False) -> None:
        """One socket leaves (any one of that gateway's, if none is named), or all of them."""
        mailbox = self._mailboxes.get(user_id)
        if mailbox is None:
            return
        sockets = mailbox.gateways.get(gateway_id)
        if sockets is not None:
            if all_sockets:
                sockets.clear()
            elif socket_id is not None:
                sockets.discard(socket_id)
            elif sockets:
                sockets.pop()
            if not sockets:
                del mailbox.gateways[gateway_id]
                mailbox.restored.discard(gateway_id)
        if not mailbox.gateways:
            if mailbox.repair is not None:
                mailbox.repair.cancel()
            del self._mailboxes[user_id]

    def let_go(self, owns_user) -> int:
        """After a reshard: forget the mailboxes of users another shard owns now (their gateways
        re-attach the sockets there, with their cursors). Returns how many were let go."""
        moved = [user_id for user_id in self._mailboxes if not owns_user(user_id)]
        for user_id in moved:
            mailbox = self._mailboxes.pop(user_id)
            if mailbox.repair is not None:
                mailbox.repair.cancel()
        return len(moved)

    def announce(self, item: tuple) -> None:
        """Put one item on every gateway replica's stream (actors/placement.py PLACEMENT_MARK)."""
        for outbox in self._outboxes.values():
            outbox.put(*item)

    def online_users(self) -> int:
        return len(self._mailboxes)

    def sockets_of(self, user_id: str) -> dict[str, int]:
        """How many sockets of user_id each gateway replica holds (for operators and tests)."""
        mailbox = self._mailboxes.get(user_id)
        return {} if mailbox is None else {g: len(ids) for g, ids in mailbox.gateways.items()}

    # ---- checkpoints (actors/checkpoint.py) -------------------------------------------------

    def snapshot(self) -> tuple[list[MailboxRecord], list[str]]:
        """The live mailboxes and the gateways with a lease; runs on the event loop."""
        mailboxes = [
            MailboxRecord(user_id, mailbox.head, {g: sorted(ids) for g, ids in mailbox.gateways.items()})
            for user_id, mailbox in self._mailboxes.items()
            if mailbox.head is not None and mailbox.gateways
        ]
        return mailboxes, list(self._last_seen)

    def restore(self, mailboxes: list[MailboxRecord], gateways: list[str], heads: dict[str, MailboxHead],
                now: float, grace_s: float = RESTORED_SOCKETS_GRACE_S) -> dict[str, int]:
        """Make the checkpointed mailboxes live again before any gateway re-attaches, so events
        committed from now on flow to those gateways at once and re-attaching costs no query.

        Each mailbox starts at its stored head (`heads`, read just now), not the checkpointed
        one: events committed in between are replayed to each socket from its own cursor when its
        gateway re-attaches it. The gateways get a fresh lease; a dead one expires as usual."""
        for gateway_id in gateways:
            self.touch(gateway_id, now)
            self.outbox(gateway_id)
        events_after_watermark = 0
        for record in mailboxes:
            sockets = {g: set(ids) for g, ids in record.gateways.items() if g in self._last_seen and ids}
            if not sockets or record.user_id in self._mailboxes:
                continue
            head = heads.get(record.user_id, MailboxHead(0, 0)).head
            events_after_watermark += max(0, head - record.head)
            self._mailboxes[record.user_id] = _Mailbox(
                record.user_id, head=head, gateways=sockets, restored=set(sockets)
            )
        self._restored_until = now + grace_s
        return {
            "mailboxes": len(self._mailboxes),
            "gateways": len(gateways),
            "events_after_watermark": events_after_watermark,
        }

    def expire_restored(self, now: float) -> int:
        """Past the grace, forget the restored sockets their gateway did not re-attach; returns
        the number of (gateway, mailbox) registrations dropped."""
        if self._restored_until is None or now < self._restored_until:
            return 0
        self._restored_until = None
        expired = [(g, u) for u, mailbox in self._mailboxes.items() for g in mailbox.restored]
        for gateway_id, user_id in expired:
            self.detach(gateway_id, user_id, all_sockets=True)
        return len(expired)

    # ---- events in -------------------------------------------------------------------------

    def deliver(self, events: list[MailboxEvent]) -> None:
        """Committed events for users hosted here; offline users' events are already durable."""
        for event in events:
            mailbox = self._mailboxes.get(event.user_id)
            if mailbox is None:
                continue
            if mailbox.head is not None and event.cursor <= mailbox.head:
                continue
            mailbox.pending[event.cursor] = event
            if mailbox.head is not None:
                self._drain(mailbox)

    def deliver_ephemeral(self, user_ids: list[str], frame: dict) -> None:
        """Typing indicators: no cursor, not stored, only to sockets live right now."""
        text = frame_text(frame)
        for user_id in user_ids:
            mailbox = self._mailboxes.get(user_id)
            if mailbox is not None:
                for gateway_id in mailbox.gateways:
                    self.outbox(gateway_id).put(user_id, None, text)

    def ack(self, user_id: str, cursor: int) -> None:
        self._acks[user_id] = max(cursor, self._acks.get(user_id, 0))

    def take_acks(self) -> dict[str, int]:
        acks, self._acks = self._acks, {}
        return acks

    # ---- internals -------------------------------------------------------------------------

    async def _load(self, mailbox: _Mailbox) -> None:
        # Deliveries that arrive while this read runs wait in `pending`; the head read below
        # includes any of them that committed before it, so _drain drops exactly those.
        stored = await self.run_blocking(self.store.mailbox_head, mailbox.user_id, self.home_region)
        if mailbox.head is None:
            mailbox.head = stored.head
            self._drain(mailbox)

    def _drain(self, mailbox: _Mailbox) -> None:
        """Push every pending event that is next in cursor order; schedule repair of a gap."""
        for cursor in [c for c in mailbox.pending if c <= mailbox.head]:
            del mailbox.pending[cursor]
        while mailbox.head + 1 in mailbox.pending:
            event = mailbox.pending.pop(mailbox.head + 1)
            mailbox.head = event.cursor
            text = self._render(event)
            for gateway_id in mailbox.gateways:
                self.outbox(gateway_id).put(mailbox.user_id, event.cursor, text)
        if mailbox.pending and mailbox.repair is None:
            mailbox.repair = asyncio.get_running_loop().create_task(self._repair_gap(mailbox))

    def _render(self, event: MailboxEvent) -> str:
        if event.kind != "message":
            return mailbox_event_text(event.kind, event.cursor, event.payload)
        key = (event.conversation_id, event.seq)
        message_text = self._rendered.get(key)
        if message_text is None:
            message_text = self._rendered[key] = frame_text(event.payload["message"])
            if len(self._rendered) > RENDERED_MESSAGES_MAX:
                self._rendered.popitem(last=False)
        return mailbox_event_text(event.kind, event.cursor, event.payload, message_text)

    async def _repair_gap(self, mailbox: _Mailbox) -> None:
        try:
            while mailbox.pending and self._mailboxes.get(mailbox.user_id) is mailbox:
                await asyncio.sleep(self.gap_repair_delay_s)
                if not mailbox.pending:
                    break
                missing_through = min(mailbox.pending) - 1
                if missing_through > mailbox.head:
                    try:
                        found = await self.run_blocking(
                            self.store.events_after, mailbox.user_id, mailbox.head, missing_through, REPLAY_PAGE
                        )
                    except Exception as error:  # the database is away: try again next round
                        log.warning("gap repair for %s failed: %s", mailbox.user_id, error)
                        continue
                    for event in found:
                        mailbox.pending.setdefault(event.cursor, event)
                self._drain(mailbox)  # mailbox.repair is this task, so no second one starts
        finally:
            mailbox.repair = None

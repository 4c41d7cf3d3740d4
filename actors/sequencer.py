"""The conversation sequencer: the single owner of each conversation's order.

It turns a batch of operations into one WriteBatch (group commit), so `seq` is gap-free and every
member's mailbox event is written in the same transaction as the message itself. Plain class:
no Ray, no asyncio; the shard runs `commit` on its one writer thread, so the cache below is only
ever touched by one thread at a time.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import time

from switchboard.errors import Forbidden, Invalid, NotFound, Overloaded, SwitchboardError
from switchboard.protocol import UNSTORABLE_TEXT_RE, new_message_id, now_ms, validate_text
from switchboard.storage.models import MEMBER, MESSAGE, RECEIPT, Conversation, MailboxEvent, Message, WriteBatch
from switchboard.storage.store import StalePlacement, StaleSequencer, StorageUnavailable, Store

from .conversation_cache import ConversationCache
from .ops import AddMember, CreateConversation, MarkRead, Operation, Outcome, RemoveMember, SendMessage
from .placement import Ownership, PlacementView

log = logging.getLogger(__name__)

# Sends remembered for answering retries without a query; older retries collide in the unique
# index and are looked up then.
RECENT_SENDS_SIZE = 100_000
# Sends committed after a checkpoint that a restart reads back for answering retries from memory:
# the ones in flight at the crash are among the newest. Older retries still find their original
# through the unique index.
REPLAYED_SENDS_MAX = 10_000
# Refused without a query, as the error the planner would give.
DEADLINE_MESSAGE = "not committed within the send timeout; retry"
# What a client is told when the database failed a commit (the details go to the log only).
COMMIT_FAILED_MESSAGE = "the database is unavailable; nothing was committed, retry later"


@dataclasses.dataclass
class _Draft:
    """A conversation's state as this batch changes it; becomes the cached state on commit."""

    conversation: Conversation
    stored_last_seq: int
    new: bool = False
    changed: bool = False  # the batch writes something of it: its fence moves its version


@dataclasses.dataclass
class CommitResult:
    """The outcomes of the first len(outcomes) operations of the batch, in order. The rest did
    not fit (commit_events_max) and were not planned: the caller submits them again."""

    outcomes: list[Outcome]
    events: list[MailboxEvent]
    storage_failed: bool = False  # the database failed the transaction (health, logs)

    @property
    def planned(self) -> int:
        return len(self.outcomes)


class _DeadlinePassed(Exception):
    """The batch's time ran out before it reached the database: nothing was written."""


class Sequencer:
    def __init__(self, store: Store, max_members: int, ownership: Ownership | None = None):
        self.store = store
        # What this shard owns, and the epoch its commits are fenced with (None: everything,
        # unfenced, for a sequencer on its own in unit tests).
        self.ownership = ownership
        self.max_members = max_members
        self.cache = ConversationCache()  # and the ids known not to exist
        self._recent_sends: collections.OrderedDict[tuple[str, str, str], Message] = collections.OrderedDict()
        self.clock = time.monotonic
        self.loads = 0  # conversations read from the store on first use (not from a checkpoint)
        self.replans = 0  # batches planned again after StaleSequencer

    # ---- reads ------------------------------------------------------------------------------

    def conversation(self, conversation_id: str) -> Conversation | None:
        cached = self.cache.get(conversation_id)
        if cached is not None or self.cache.known_missing(conversation_id):
            return cached
        loaded = self.store.load_conversation(conversation_id)
        self.loads += 1
        if loaded is not None:
            self.cache.remember(loaded)
        else:
            self.cache.remember_miss(conversation_id)
        return loaded

    def let_go(self, owns) -> int:
        """Forget the conversations this shard no longer owns (on the writer thread)."""
        return self.cache.let_go(owns)

    def members_for_typing(self, conversation_id: str, user_id: str) -> list[str]:
        conversation = self._member_conversation(conversation_id, user_id)
        return sorted(conversation.members - {user_id})

    # ---- checkpoints (actors/checkpoint.py) -------------------------------------------------

    def snapshot(self, recent_sends_max: int) -> tuple[list[Conversation], list[Message]]:
        """The cached conversations and the newest sends, as of the last commit.

        Runs on the writer thread between two commits and copies references only (~1 ms for
        10,000 conversations). That is enough because a cached Conversation is never changed in
        place: a batch works on copies (drafts) and replaces the cached ones on commit, so the
        caller may encode these on another thread while commits go on."""
        conversations = self.cache.values()
        newest = list(itertools.islice(reversed(self._recent_sends.values()), recent_sends_max))
        newest.reverse()
        return conversations, newest

    def restore(self, conversations: list[Conversation], recent_sends: list[Message]) -> dict[str, int]:
        """Start from a checkpoint instead of an empty cache: keep each conversation whose stored
        version is still the one checkpointed, reload those that changed after it (and the
        messages they got since, for answering retries), drop those gone. Before the first commit.

        A stale checkpoint only means more to reload; and even a wrong last_seq could not misnumber
        a message, since the commit's fence checks it against the stored one."""
        checkpointed = {c.conversation_id: c for c in conversations}
        stored = self.store.conversation_versions(list(checkpointed))
        current = [c for cid, c in checkpointed.items() if stored.get(cid) == c.version]
        changed = [cid for cid, c in checkpointed.items() if cid in stored and stored[cid] != c.version]
        reloaded = self.store.load_conversations(changed)
        newer = self.store.messages_after({cid: checkpointed[cid].last_seq for cid in changed}, REPLAYED_SENDS_MAX)
        self.cache.clear()
        self._recent_sends.clear()
        for conversation in current + reloaded:
            self.cache.remember(conversation)
        for message in recent_sends + newer:
            self._remember_send(message)
        return {
            "conversations": len(checkpointed),
            "current": len(current),
            "reloaded": len(reloaded),
            "gone": len(checkpointed) - len(current) - len(changed),
            "replayed_messages": len(newer),
            "recent_sends": len(self._recent_sends),
        }

    # ---- the group commit -------------------------------------------------------------------

    def commit(self, operations: list[Operation], deadline: float | None = None,
               events_max: int | None = None) -> CommitResult:
        """Validate, sequence and durably commit a batch; one Outcome per planned operation, in
        order (see CommitResult: past `events_max` mailbox events the rest is left unplanned).
        Past `deadline` (on self.clock) nothing is written: the transaction carries the time
        left as its statement timeout, and a batch whose time ran out fails as a whole.

        The first attempt trusts the unique index to catch a retried send this process does not
        remember (saving a query per batch); a collision rolls the batch back, and the second
        attempt looks the originals up first.
        """
        view = self.ownership.view if self.ownership is not None else None  # one placement per batch
        try:
            return self._commit_once(operations, False, deadline, events_max, view)
        except StalePlacement as error:
            return self._placement_moved(operations, view, error)
        except StaleSequencer as error:
            # A retried send collided, or our cached last_seq was wrong (another owner wrote, or
            # a commit we thought failed had landed). Forget, reload and plan the batch again.
            log.info("sequencer re-planning a batch: %s", error)
            self.replans += 1
            self._forget(operations)
            try:
                return self._commit_once(operations, True, deadline, events_max, view)
            except StalePlacement as second:
                return self._placement_moved(operations, view, second)
            except (StaleSequencer, StorageUnavailable) as second:
                log.warning("commit of %d operations failed twice: %s", len(operations), second)
                self._forget(operations)
                return self._all_failed(operations, Overloaded(COMMIT_FAILED_MESSAGE), storage_failed=True)
            except _DeadlinePassed:
                return self._all_failed(operations, Overloaded(DEADLINE_MESSAGE))
        except StorageUnavailable as error:
            # The commit may or may not have landed; the cache must not guess. Retried sends are
            # safe: the idempotency key finds the original if it did land.
            log.warning("commit of %d operations failed: %s", len(operations), error)
            self._forget(operations)
            return self._all_failed(operations, Overloaded(COMMIT_FAILED_MESSAGE), storage_failed=True)
        except _DeadlinePassed:
            return self._all_failed(operations, Overloaded(DEADLINE_MESSAGE))

    def _placement_moved(self, operations: list[Operation], view: PlacementView, error: Exception) -> CommitResult:
        """The database refused this shard's epoch: a reshard happened that the shard has not
        adopted yet. Nothing was written; every operation is answered Moved (the gateway re-routes
        it, here again for what this shard still owns) and the shard fetches the new placement."""
        log.warning("commit refused: %s", error)
        self._forget(operations)
        self.ownership.on_stale()
        return self._all_failed(operations, view.moved())

    def _commit_once(self, operations: list[Operation], look_up_originals: bool, deadline: float | None,
                     events_max: int | None, view: PlacementView | None = None) -> CommitResult:
        if view is not None:  # what another shard owns now is refused before anything is read
            owned = [op for op in operations if view.owns_conversation(op.conversation_id)]
            if len(owned) < len(operations):
                return self._plan_owned(operations, owned, look_up_originals, deadline, events_max, view)
        self._load_missing(operations)
        batch = WriteBatch(placement_fence=view.fence() if view is not None else None)
        drafts: dict[str, _Draft] = {}
        known_sends = self._known_sends(operations, look_up_originals)
        outcomes = []
        for operation in operations:
            if events_max is not None and outcomes and \
                    len(batch.events) + self._events_of(operation, drafts) > events_max:
                break  # the rest waits for the next transaction: one batch never grows unbounded
            try:
                outcomes.append(self._plan(operation, batch, drafts, known_sends))
            except SwitchboardError as error:
                outcomes.append(Outcome.failed(error))
        if not batch.is_empty():
            for conversation_id, draft in drafts.items():
                if draft.changed and not draft.new:
                    batch.seq_fences[conversation_id] = (draft.stored_last_seq, draft.conversation.last_seq)
                    draft.conversation.version += 1  # as the fence moves it in the store
            timeout_s = None if deadline is None else deadline - self.clock()
            if timeout_s is not None and timeout_s <= 0:
                raise _DeadlinePassed()  # nothing cached changed: drafts are copies
            self.store.apply(batch, timeout_s=timeout_s)
        for draft in drafts.values():
            self.cache.remember(draft.conversation)
        for message in batch.messages:
            self._remember_send(message)
        return CommitResult(outcomes=outcomes, events=batch.events)

    def _plan_owned(self, operations, owned, look_up_originals, deadline, events_max, view) -> CommitResult:
        """Commit the owned operations; the others are answered Moved, each in its place."""
        result = self._commit_once(owned, look_up_originals, deadline, events_max, view) if owned else \
            CommitResult([], [])
        answers = iter(result.outcomes)
        outcomes = []
        for operation in operations:
            if not view.owns_conversation(operation.conversation_id):
                outcomes.append(Outcome.failed(view.moved()))
                continue
            outcome = next(answers, None)
            if outcome is None:  # the owned ones past commit_events_max: left for the next batch
                break
            outcomes.append(outcome)
        return CommitResult(outcomes, result.events, result.storage_failed)

    def _known_sends(self, operations: list[Operation], look_up: bool) -> dict[tuple[str, str, str], Message]:
        """Originals of retried sends: those this sequencer committed recently, and with
        `look_up` any other stored one (one query for the whole batch)."""
        keys = [
            (operation.conversation_id, operation.sender, operation.client_msg_id)
            for operation in operations
            if isinstance(operation, SendMessage)
        ]
        known = {key: self._recent_sends[key] for key in keys if key in self._recent_sends}
        if look_up:
            storable = [key for key in keys if key not in known and not UNSTORABLE_TEXT_RE.search(key[2])]
            known.update(self.store.find_sent(storable))
        return known

    def _load_missing(self, operations: list[Operation]) -> None:
        """Read the batch's conversations that are not in memory in one go (three queries), not
        one by one as planning meets them: after a restart without a checkpoint, the first batch
        touching 500 conversations was 500 round trips on the writer thread. Creates are left out:
        their ids are new, and planning a create looks for a retried one anyway."""
        touched = {op.conversation_id for op in operations if not isinstance(op, CreateConversation)}
        missing = sorted(cid for cid in touched if cid not in self.cache and not self.cache.known_missing(cid))
        if missing:
            self.loads += len(missing)
            for conversation in self.store.load_conversations(missing):
                self.cache.remember(conversation)
            for conversation_id in missing:
                if conversation_id not in self.cache:
                    self.cache.remember_miss(conversation_id)

    def _events_of(self, operation: Operation, drafts: dict[str, _Draft]) -> int:
        """The mailbox events planning `operation` would add (one per member it reaches)."""
        if isinstance(operation, CreateConversation):
            return len(operation.members) + 1
        draft = drafts.get(operation.conversation_id)
        conversation = draft.conversation if draft else self.cache.peek(operation.conversation_id)
        return len(conversation.members) + 1 if isinstance(conversation, Conversation) else 0

    def _remember_send(self, message: Message) -> None:
        self._recent_sends[(message.conversation_id, message.sender, message.client_msg_id)] = message
        while len(self._recent_sends) > RECENT_SENDS_SIZE:
            self._recent_sends.popitem(last=False)

    # ---- planning each operation -----------------------------------------------------------

    def _plan(self, operation, batch: WriteBatch, drafts, known_sends) -> Outcome:
        if isinstance(operation, SendMessage):
            return self._plan_send(operation, batch, drafts, known_sends)
        if isinstance(operation, CreateConversation):
            return self._plan_create(operation, batch, drafts)
        if isinstance(operation, AddMember):
            return self._plan_add(operation, batch, drafts)
        if isinstance(operation, RemoveMember):
            return self._plan_remove(operation, batch, drafts)
        if isinstance(operation, MarkRead):
            return self._plan_read(operation, batch, drafts)
        raise Invalid(f"unknown operation {type(operation).__name__}")

    def _plan_send(self, op: SendMessage, batch, drafts, known_sends) -> Outcome:
        draft = self._draft(op.conversation_id, drafts)
        conversation = draft.conversation
        self._require_member(conversation, op.sender)
        # The gateway refuses these already; checked again here because one unstorable row
        # would fail the whole group commit it joined, not only its own send.
        validate_text(op.body, "body")
        validate_text(op.client_msg_id, "client_msg_id")
        key = (op.conversation_id, op.sender, op.client_msg_id)
        original = known_sends.get(key)
        if original is not None:
            return Outcome(value=original.to_wire(), created=False)
        message = Message(
            conversation_id=op.conversation_id,
            seq=conversation.last_seq + 1,
            message_id=new_message_id(),
            sender=op.sender,
            client_msg_id=op.client_msg_id,
            body=op.body,
            ts=now_ms(),
        )
        conversation.last_seq = message.seq
        draft.changed = True
        known_sends[key] = message  # a repeat within this same batch answers the original too
        batch.messages.append(message)
        wire = message.to_wire()
        for user_id in sorted(conversation.members):
            batch.events.append(
                MailboxEvent(user_id, MESSAGE, op.conversation_id, {"message": wire}, seq=message.seq)
            )
        return Outcome(value=wire)

    def _plan_create(self, op: CreateConversation, batch, drafts) -> Outcome:
        existing = drafts.get(op.conversation_id)
        existing = existing.conversation if existing else self.conversation(op.conversation_id)
        if existing is not None:
            # The gateway retried a create whose answer it lost: the id is its own, so answer it.
            if existing.created_by != op.creator:
                raise Forbidden("conversation id already taken")
            return Outcome(value=existing.to_wire(), created=False)
        members = set(op.members) | {op.creator}
        if len(members) > self.max_members:
            raise Invalid(f"a conversation holds at most {self.max_members} members")
        conversation = Conversation(
            conversation_id=op.conversation_id, title=op.title, region=op.region,
            created_by=op.creator, created_at=now_ms(), last_seq=0, members=members,
        )
        drafts[op.conversation_id] = _Draft(conversation, stored_last_seq=0, new=True)
        batch.new_conversations.append(conversation)
        # Each member's devices learn of the new conversation from one event about themselves.
        for user_id in sorted(members):
            batch.events.append(self._member_event(user_id, op.conversation_id, user_id, "joined"))
        return Outcome(value=conversation.to_wire())

    def _plan_add(self, op: AddMember, batch, drafts) -> Outcome:
        draft = self._draft(op.conversation_id, drafts)
        conversation = draft.conversation
        self._require_member(conversation, op.actor)
        if op.user_id in conversation.members:
            return Outcome(value=conversation.to_wire(), created=False)
        if len(conversation.members) >= self.max_members:
            raise Invalid(f"a conversation holds at most {self.max_members} members")
        conversation.members = conversation.members | {op.user_id}
        draft.changed = True
        batch.added_members.append((op.conversation_id, op.user_id, now_ms()))
        for user_id in sorted(conversation.members):
            batch.events.append(self._member_event(user_id, op.conversation_id, op.user_id, "joined"))
        return Outcome(value=conversation.to_wire())

    def _plan_remove(self, op: RemoveMember, batch, drafts) -> Outcome:
        draft = self._draft(op.conversation_id, drafts)
        conversation = draft.conversation
        self._require_member(conversation, op.actor)
        if op.actor != op.user_id:
            raise Forbidden("only a member itself may leave")
        # Everyone who was a member, the leaver's other devices included, hears of it.
        for user_id in sorted(conversation.members):
            batch.events.append(self._member_event(user_id, op.conversation_id, op.user_id, "left"))
        conversation.members = conversation.members - {op.user_id}
        draft.changed = True
        batch.removed_members.append((op.conversation_id, op.user_id))
        return Outcome(value=conversation.to_wire())

    def _plan_read(self, op: MarkRead, batch, drafts) -> Outcome:
        draft = self._draft(op.conversation_id, drafts)
        conversation = draft.conversation
        self._require_member(conversation, op.user_id)
        if op.seq > conversation.last_seq:
            raise Invalid(f"seq {op.seq} is beyond the conversation's last_seq {conversation.last_seq}")
        previous = conversation.read_marks.get(op.user_id, 0)
        if op.seq <= previous:
            return Outcome(value={"conversation_id": op.conversation_id, "seq": previous}, created=False)
        conversation.read_marks[op.user_id] = op.seq
        draft.changed = True
        batch.read_marks.append((op.conversation_id, op.user_id, op.seq))
        receipt = {"conversation_id": op.conversation_id, "user_id": op.user_id, "seq": op.seq}
        for user_id in sorted(conversation.members):
            batch.events.append(MailboxEvent(user_id, RECEIPT, op.conversation_id, dict(receipt)))
        return Outcome(value=receipt)

    # ---- helpers ----------------------------------------------------------------------------

    def _draft(self, conversation_id: str, drafts: dict[str, _Draft]) -> _Draft:
        draft = drafts.get(conversation_id)
        if draft is None:
            stored = self.conversation(conversation_id)
            if stored is None:
                raise NotFound("no such conversation")
            working = dataclasses.replace(stored, members=set(stored.members), read_marks=dict(stored.read_marks))
            draft = drafts[conversation_id] = _Draft(working, stored_last_seq=stored.last_seq)
        return draft

    def _member_conversation(self, conversation_id: str, user_id: str) -> Conversation:
        conversation = self.conversation(conversation_id)
        if conversation is None:
            raise NotFound("no such conversation")
        self._require_member(conversation, user_id)
        return conversation

    @staticmethod
    def _require_member(conversation: Conversation, user_id: str) -> None:
        if user_id not in conversation.members:
            raise Forbidden("not a member of this conversation")

    @staticmethod
    def _member_event(recipient: str, conversation_id: str, user_id: str, action: str) -> MailboxEvent:
        payload = {"conversation_id": conversation_id, "user_id": user_id, "action": action}
        return MailboxEvent(recipient, MEMBER, conversation_id, payload)

    def _forget(self, operations: list[Operation]) -> None:
        self.cache.forget(operation.conversation_id for operation in operations)

    @staticmethod
    def _all_failed(operations: list[Operation], error: SwitchboardError, storage_failed: bool = False) -> CommitResult:
        return CommitResult([Outcome.failed(error) for _ in operations], [], storage_failed)

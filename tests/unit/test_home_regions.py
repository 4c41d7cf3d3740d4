"""Home regions: a conversation id names its sequencer's region, a mailbox row its user's, a shard
pushes each recipient's events to that region (one hand-off per region), and the gateway's
directory finds either across every region's shards. In-memory store, fake peers and handles."""

from __future__ import annotations

import itertools

import pytest

from switchboard.actors.home_regions import REMEMBERED_MAX, HomeRegions
from switchboard.actors.ops import CreateConversation, SendMessage
from switchboard.actors.ring import Ring
from switchboard.actors.router import Placement
from switchboard.actors.shard import MailboxShard, PeerLink
from switchboard.gateway.shards import SHARD_INDEX_STRIDE, ShardDirectory
from switchboard.protocol import CONVERSATION_ID_RE, conversation_region, new_conversation_id
from switchboard.settings import Settings
from switchboard.storage.memory_store import MemoryStore

REGIONS = ("eu", "us", "ap-south")


# ---- conversation ids --------------------------------------------------------------------------

@pytest.mark.parametrize("region", REGIONS)
def test_a_new_conversation_id_names_its_region_and_is_a_valid_id(region):
    conversation_id = new_conversation_id(region)
    assert CONVERSATION_ID_RE.fullmatch(conversation_id)
    assert conversation_region(conversation_id, REGIONS, "eu") == region


def test_ids_that_name_no_configured_region_belong_to_the_default_region():
    legacy = "c_" + "ab_cdefghijklmn"[:16].ljust(16, "x")  # c_ + 16 characters, a "_" inside
    assert conversation_region(legacy, ("ab",), "eu") == "eu"
    assert conversation_region(new_conversation_id("gone"), REGIONS, "eu") == "eu"
    assert conversation_region("c_room", REGIONS, "us") == "us"
    assert conversation_region("c_us_short", REGIONS, "eu") == "eu"  # the random part is 16 long


# ---- HomeRegions ---------------------------------------------------------------------------------

async def run_now(function, *args):
    return function(*args)


async def test_home_regions_read_unknown_users_once_and_default_the_rest():
    store = MemoryStore()
    store.mailbox_head("carol", "us")
    store.mailbox_head("dave", "gone")  # a region no longer configured
    homes = HomeRegions(REGIONS, "eu", store, run_now)
    assert await homes.homes(["carol", "dave", "erin"]) == {"carol": "us", "dave": "eu", "erin": "eu"}
    assert await homes.homes(["carol", "erin"]) == {"carol": "us", "erin": "eu"}
    assert homes.reads == 1


async def test_a_user_with_no_recorded_home_goes_to_the_committing_region_and_is_not_remembered_there():
    store = MemoryStore()
    homes = HomeRegions(REGIONS, "eu", store, run_now)
    assert homes.home("frank", None, "us") == "us"  # never attached: the sequencer's own region
    assert homes.home("frank", None, "ap-south") == "ap-south"  # a guess each time, not a memory
    assert homes.home("frank", None, "gone") == "eu"
    assert homes.home("frank", "ap-south", "us") == "ap-south"  # once recorded, that wins
    assert homes.home("frank", None, "us") == "ap-south"
    assert await homes.homes(["gina"]) == {"gina": "eu"}  # typing reads her: no record
    assert homes.home("gina", None, "us") == "us"  # read, none recorded: still a guess
    assert await homes.homes(["gina"]) == {"gina": "eu"} and homes.reads == 1  # and read once only


def test_what_a_commit_returns_is_remembered_and_the_memory_is_bounded():
    homes = HomeRegions(REGIONS, "eu")
    assert homes.home("carol", "us") == "us"
    assert homes.home("erin", None) == "eu"
    for n in range(REMEMBERED_MAX + 1):
        homes.home(f"u{n}", "us")
    assert len(homes._known) <= REMEMBERED_MAX


def test_a_creators_region_stands_until_a_commit_records_one():
    homes = HomeRegions(REGIONS, "eu")
    homes.learn("carol", "us")  # she created a conversation in us before attaching a socket
    assert homes.home("carol", None) == "us"
    assert homes.home("carol", "ap-south") == "ap-south"  # recorded by her mailbox: it wins
    homes.learn("dave", "gone")  # not a configured region: ignored
    assert homes.home("dave", None) == "eu"


async def test_one_region_needs_no_lookup_at_all():
    homes = HomeRegions(["local"], "local", MemoryStore(), run_now)
    assert homes.single
    assert await homes.homes(["a", "b"]) == {"a": "local", "b": "local"}
    assert homes.reads == 0


# ---- a shard's fan-out across regions ----------------------------------------------------------

class RegionPeers(PeerLink):
    def __init__(self):
        self.here: list[tuple[int, list]] = []
        self.abroad: list[tuple[str, list]] = []
        self.typing_abroad: list[tuple[str, list]] = []

    def deliver(self, shard_index, events):
        self.here.append((shard_index, list(events)))

    def deliver_ephemeral(self, shard_index, user_ids, frame):
        pass

    def deliver_abroad(self, region, events):
        self.abroad.append((region, list(events)))

    def deliver_ephemeral_abroad(self, region, user_ids, frame):
        self.typing_abroad.append((region, sorted(user_ids)))


def conversation_of_shard_0(ring: Ring) -> str:
    """A new eu conversation id that the shard under test (index 0) sequences."""
    return next(cid for cid in (new_conversation_id("eu") for _ in range(1000)) if ring.conversation_shard(cid) == 0)


@pytest.fixture
async def eu_shard():
    store, peers = MemoryStore(), RegionPeers()
    ring = Ring(2)
    shard = MailboxShard(index=0, ring=ring, store=store, peers=peers, max_members=50, commit_batch_max=64,
                         queue_max=100, region="eu", homes=HomeRegions(REGIONS, "eu", store, run_now))
    yield shard, store, peers, ring
    await shard.stop()


async def test_each_recipient_region_gets_one_hand_off_per_commit_and_home_users_go_by_the_ring(eu_shard):
    shard, store, peers, ring = eu_shard
    store.mailbox_head("us1", "us")
    store.mailbox_head("us2", "us")
    store.mailbox_head("ap1", "ap-south")
    at_home = [next(u for u in (f"eu{n}" for n in itertools.count()) if ring.user_shard(u) == 1)]
    members = ("us1", "us2", "ap1", *at_home)
    cid = conversation_of_shard_0(ring)
    (created,) = await shard.submit([CreateConversation(cid, "us1", members, "", "eu")])
    created.unwrap()
    peers.here.clear()
    peers.abroad.clear()
    (sent,) = await shard.submit([SendMessage(cid, "us1", "k1", "hello")])
    sent.unwrap()
    abroad = {region: sorted(e.user_id for e in events) for region, events in peers.abroad}
    assert abroad == {"us": ["us1", "us2"], "ap-south": ["ap1"]}
    assert len(peers.abroad) == 2  # one hand-off per region, not per recipient
    assert [(index, [e.user_id for e in events]) for index, events in peers.here] == [(1, at_home)]


async def test_typing_goes_abroad_by_the_recorded_regions(eu_shard):
    shard, store, peers, ring = eu_shard
    store.mailbox_head("us1", "us")
    cid = conversation_of_shard_0(ring)
    (created,) = await shard.submit([CreateConversation(cid, "eu-a", ("eu-a", "us1"), "", "eu")])
    created.unwrap()
    (typed,) = await shard.submit([_typing(cid, "eu-a")])
    typed.unwrap()
    assert peers.typing_abroad == [("us", ["us1"])]


def _typing(cid, user_id):
    from switchboard.actors.ops import Typing
    return Typing(cid, user_id)


def test_a_mailbox_claimed_by_a_region_makes_its_events_carry_that_region():
    store = MemoryStore()
    assert store.mailbox_head("carol", "us").head == 0
    assert store.mailbox_regions(["carol", "nobody"]) == {"carol": "us"}


# ---- the gateway's directory over every region -----------------------------------------------

def directory(home: str = "eu") -> ShardDirectory:
    placements = [Placement(region=r, namespace="t", shard_names=tuple(f"shard:{r}:{i}" for i in range(n)))
                  for r, n in (("eu", 2), ("us", 3))]
    settings = Settings(region="eu", regions=("eu", "us"))
    return ShardDirectory(settings, placements, home, get_handle=lambda name, namespace: name)


def test_the_directory_finds_a_user_on_its_home_regions_ring():
    found = directory()
    us_ring = Ring(3)
    index, handle = found.for_user("carol", "us")
    assert handle == f"shard:us:{us_ring.user_shard('carol')}"
    assert found.is_abroad(index)
    index, handle = found.for_user("carol", "eu")
    assert handle == f"shard:eu:{Ring(2).user_shard('carol')}" and not found.is_abroad(index)
    assert found.for_user("carol", "unknown")[1] == handle  # a region not run here: the default


def test_the_directory_finds_a_conversation_in_the_region_its_id_names():
    found = directory(home="us")
    cid = new_conversation_id("us")
    assert found.for_conversation(cid)[1] == f"shard:us:{Ring(3).conversation_shard(cid)}"
    assert found.for_conversation("c_legacy_id_xyz")[1].startswith("shard:eu:")
    assert list(found.home_indexes()) == [SHARD_INDEX_STRIDE + i for i in range(3)]  # us is the second region

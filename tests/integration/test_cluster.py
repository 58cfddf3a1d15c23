"""A real 3-node cluster: convergence, compare-and-set, leader loss, quorum loss, scaling."""

from __future__ import annotations

import asyncio
import json
import time

import msgspec
import nats.js.errors
import pytest
from nats.js import api

from tests.integration.harness import (
    StackFactory,
    bounded,
    eventually,
    room_record,
    run_cli,
)
from unibus.client.profile import write_stack_info
from unibus.controlplane.authz import Decision, check_user
from unibus.core import naming
from unibus.core.errors import AssetMissingError, ConflictError, StoreUnavailableError
from unibus.core.health import asset_statuses
from unibus.core.kvstore import BARRIER_KEY, JetStreamStore
from unibus.core.models import EpochRef, Role, RoomRecord, SealedKeyRecord, Status, UserRecord
from unibus.core.nkeys import KeyPair, Prefix
from unibus.core.provisioning import ASSETS, AssetKind, AssetStatus


def _user_key() -> str:
    return KeyPair.generate(Prefix.USER).public_key


async def test_cold_start_from_clean_stores_converges_with_every_asset_at_r3(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3)
    nc = await stacks.connect(stack)

    statuses = await eventually(
        lambda: asset_statuses(nc.jetstream(timeout=3.0), cluster_size=3),
        until=lambda found: all(s.followers_current == 2 for s in found),
        what="every asset fully replicated",
    )

    assert {s.name for s in statuses} == {a.name for a in ASSETS}
    assert all(s.replicas == 3 and not s.missing and not s.degraded for s in statuses)
    assert all(s.leader in stack.spec.node_names for s in statuses)


async def test_a_healthy_cluster_under_steady_writes_is_reported_healthy_at_every_read(
    stacks: StackFactory,
) -> None:
    """The slower follower's ack of the newest entry is often in flight when a stream info
    is taken (8 reads in 100 under this writer, before): that is not a degraded asset."""
    stack = await stacks.start(nodes=3)
    js = (await stacks.connect(stack)).jetstream(timeout=3.0)
    await eventually(
        lambda: asset_statuses(js, cluster_size=3),
        until=lambda found: not any(s.degraded for s in found),
        what="every asset fully replicated",
    )
    users = await js.key_value(naming.USERS_BUCKET)
    writing = asyncio.Event()
    writing.set()

    async def write_steadily() -> int:
        written = 0
        while writing.is_set():
            await users.put(BARRIER_KEY, str(written).encode())
            written += 1
        return written

    writer = asyncio.create_task(write_steadily())
    try:
        reported = [await asset_statuses(js, cluster_size=3) for _ in range(60)]
    finally:
        writing.clear()
        written = await writer
    degraded = [s.summary() for found in reported for s in found if s.degraded]
    assert written > 60
    assert degraded == []


async def test_two_concurrent_compare_and_set_writers_on_one_room_exactly_one_wins(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3)
    store = await JetStreamStore.open(await stacks.connect(stack))
    owner, alice, bob = _user_key(), _user_key(), _user_key()
    created = await store.create_room(room_record(owner), members=(), sealed_keys=())
    base = created.value

    def with_member(member: str) -> RoomRecord:
        return msgspec.structs.replace(
            base,
            members=tuple(sorted({*base.members, member})),
            epochs=(*base.epochs, EpochRef(epoch=2, key_id=f"k{member[1:6].lower()}")),
        )

    results = await asyncio.gather(
        store.commit_room(created, with_member(alice)),
        store.commit_room(created, with_member(bob)),
        return_exceptions=True,
    )

    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert len(losers) == 1
    assert isinstance(losers[0], ConflictError)
    stored = await store.get_room(base.room_id)
    assert stored.value == winners[0].value
    assert stored.revision == winners[0].revision


async def test_keys_written_by_the_losing_rekey_stay_inert(stacks: StackFactory) -> None:
    stack = await stacks.start(nodes=3)
    store = await JetStreamStore.open(await stacks.connect(stack))
    owner = _user_key()
    created = await store.create_room(room_record(owner, key_id="k1"), members=(), sealed_keys=())
    room_id = created.value.room_id

    def rekey(key_id: str) -> tuple[RoomRecord, SealedKeyRecord]:
        record = msgspec.structs.replace(
            created.value, epochs=(*created.value.epochs, EpochRef(epoch=2, key_id=key_id))
        )
        sealed = SealedKeyRecord(
            room_id=room_id,
            epoch=2,
            key_id=key_id,
            member=owner,
            sealed=key_id.encode(),
            signer=owner,
        )
        return record, sealed

    won_room, won_key = rekey("winner")
    lost_room, lost_key = rekey("loser")
    await store.commit_room(created, won_room, sealed_keys=(won_key,))
    with pytest.raises(ConflictError):
        await store.commit_room(created, lost_room, sealed_keys=(lost_key,))

    keys = await store.sealed_keys(room_id, owner)
    assert [(k.epoch, k.key_id) for k in keys] == [(2, "winner")]


async def test_sigkill_of_stream_leader_loses_no_acknowledged_write(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3)
    nc = await stacks.connect(stack)
    js = nc.jetstream(timeout=2.0)
    subject = naming.room_subject(naming.new_room_id())
    acked: set[str] = set()

    async def publish_until_acked(msg_id: str) -> None:
        async def attempt() -> api.PubAck:
            # The message id makes a retried publish a no-op if the first one landed.
            return await js.publish(subject, msg_id.encode(), headers={"Nats-Msg-Id": msg_id})

        await eventually(attempt, until=lambda ack: ack.seq > 0, timeout=60.0, what=msg_id)
        acked.add(msg_id)

    for i in range(50):
        await publish_until_acked(f"before-{i}")
    leader = (await js.stream_info(naming.MESSAGES_STREAM)).cluster.leader  # type: ignore[union-attr]
    assert leader in stack.spec.node_names

    stack.stop_node(leader, kill=True)
    for i in range(50):
        await publish_until_acked(f"after-{i}")

    # The killed node may also have led the JetStream meta group: API calls then wait for
    # that election too, so they get a longer timeout and the consumer is retried.
    reader = nc.jetstream(timeout=10.0)
    info = await reader.stream_info(naming.MESSAGES_STREAM)
    assert info.cluster is not None
    assert info.cluster.leader != leader
    sub = await eventually(
        lambda: reader.pull_subscribe(subject, durable=None, stream=naming.MESSAGES_STREAM),
        until=lambda _: True,
        timeout=60.0,
        what="a consumer on the stream after the kill",
    )
    stored: set[str] = set()
    async with bounded(60):
        while len(stored) < len(acked):
            for msg in await sub.fetch(100, timeout=5):
                stored.add(msg.data.decode())
                await msg.ack()
    assert stored == acked
    assert info.state.messages == len(acked)


async def test_with_two_nodes_stopped_an_authorization_read_fails_closed_within_its_bound(
    stacks: StackFactory,
) -> None:
    """Even when the survivor is the users stream's leader, which keeps serving plain reads."""
    stack = await stacks.start(nodes=3)
    probe = await stacks.connect(stack)
    users = await probe.jetstream().stream_info(naming.kv_stream(naming.USERS_BUCKET))
    survivor = users.cluster.leader if users.cluster and users.cluster.leader else "n1"
    nc = await stacks.connect(stack, nodes=(survivor,))
    op_timeout = 1.0
    store = await JetStreamStore.open(nc, op_timeout=op_timeout)
    admin = stack.info().admin_key
    decision, _ = await check_user(store, admin)
    assert decision is Decision.ALLOWED

    for name in stack.spec.node_names:
        if name != survivor:
            stack.stop_node(name)

    async with bounded(op_timeout * 10):
        decision, user = await check_user(store, admin)
        with pytest.raises(StoreUnavailableError):
            await store.authorize_user(admin)
    assert decision is Decision.STORE_UNAVAILABLE
    assert user is None


async def test_a_missing_bucket_on_a_read_path_is_an_error_and_is_not_recreated(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3)
    nc = await stacks.connect(stack)
    js = nc.jetstream(timeout=3.0)
    store = await JetStreamStore.open(nc)
    await js.delete_stream(naming.kv_stream(naming.USERS_BUCKET))

    with pytest.raises(AssetMissingError):
        await store.get_user(stack.info().admin_key)
    decision, _ = await check_user(store, stack.info().admin_key)
    with pytest.raises(AssetMissingError):
        await JetStreamStore.open(nc)

    assert decision is Decision.STORE_UNAVAILABLE
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.stream_info(naming.kv_stream(naming.USERS_BUCKET))


async def test_unibus_scale_from_r1_to_r3_keeps_every_asset_data(stacks: StackFactory) -> None:
    stack = await stacks.start(nodes=3, replicas=1)
    nc = await stacks.connect(stack)
    js = nc.jetstream(timeout=5.0)
    before = {s.name: s for s in await asset_statuses(js, cluster_size=3)}
    assert all(s.replicas == 1 and s.degraded for s in before.values())
    for bucket in naming.KV_BUCKETS:
        kv = await js.key_value(bucket)
        await kv.put("probe", bucket.encode())
    room_subject = naming.room_subject(naming.new_room_id())
    for i in range(10):
        await js.publish(room_subject, f"m{i}".encode())
    blobs = await js.object_store(naming.BLOBS_BUCKET)
    blob = bytes(range(256)) * 1024
    await blobs.put("probe", blob)

    write_stack_info(stack.layout.root, stack.info())

    status, out, err = await run_cli(
        "scale", "--dir", str(stack.layout.root), "--replicas", "3", "--json"
    )

    assert status == 0, err
    assert set(json.loads(out)["changed"]) == {a.name for a in ASSETS}

    def fully_replicated(found: list[AssetStatus]) -> bool:
        return all(s.replicas == 3 and s.followers_current == 2 for s in found)

    after = await eventually(
        lambda: asset_statuses(js, cluster_size=3), until=fully_replicated, what="R3"
    )
    assert not any(s.degraded for s in after)
    for bucket in naming.KV_BUCKETS:
        entry = await (await js.key_value(bucket)).get("probe")
        assert entry.value == bucket.encode()
    assert (await js.stream_info(naming.MESSAGES_STREAM)).state.messages == 10
    assert (await blobs.get("probe")).data == blob
    kinds = {s.kind for s in after}
    assert kinds == {AssetKind.KV, AssetKind.STREAM, AssetKind.OBJECT_STORE}


async def test_users_are_create_only_and_revocation_flips_status(stacks: StackFactory) -> None:
    stack = await stacks.start(nodes=3)
    store = await JetStreamStore.open(await stacks.connect(stack))
    key = _user_key()
    now = time.time()
    member = UserRecord(
        key=key,
        handle="ada",
        role=Role.MEMBER,
        status=Status.ACTIVE,
        created_at=now,
        updated_at=now,
    )
    await store.add_user(member)

    with pytest.raises(ConflictError):
        await store.add_user(msgspec.structs.replace(member, role=Role.ADMIN))
    assert (await store.get_user(key)).value.role is Role.MEMBER

    await store.set_user_status(key, Status.REVOKED)
    assert (await check_user(store, key))[0] is Decision.REVOKED
    assert (await store.get_user(key)).value.status is Status.REVOKED


async def test_the_reverse_index_follows_room_commits_and_is_repairable(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3)
    nc = await stacks.connect(stack)
    store = await JetStreamStore.open(nc)
    owner, ada = _user_key(), _user_key()
    created = await store.create_room(room_record(owner, ada), members=(), sealed_keys=())
    room_id = created.value.room_id
    assert await store.rooms_of(ada) == [room_id]

    removed = msgspec.structs.replace(created.value, members=(owner,))
    await store.commit_room(created, removed)
    assert await store.rooms_of(ada) == []
    index = await nc.jetstream().key_value(naming.ROOMS_BY_MEMBER_BUCKET)
    await index.delete(naming.room_index_key(owner, room_id))
    await index.put(naming.room_index_key(ada, room_id), b'{"room_id":"stale","member":"x"}')

    repair = await store.repair_index()

    assert (repair.added, repair.removed) == (1, 1)
    assert await store.rooms_of(owner) == [room_id]
    assert await store.rooms_of(ada) == []


async def test_a_nonce_is_accepted_once(stacks: StackFactory) -> None:
    stack = await stacks.start(nodes=3)
    store = await JetStreamStore.open(await stacks.connect(stack))
    caller = _user_key()

    await store.claim_nonce(caller, "n0nce-1")

    with pytest.raises(ConflictError):
        await store.claim_nonce(caller, "n0nce-1")
    await store.claim_nonce(caller, "n0nce-2")


async def test_concurrent_authorization_reads_share_one_quorum_barrier(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3)
    nc = await stacks.connect(stack)
    js = nc.jetstream(timeout=3.0)
    admin = stack.info().admin_key
    users_stream = naming.kv_stream(naming.USERS_BUCKET)

    async def last_seq() -> int:
        return int((await js.stream_info(users_stream)).state.last_seq)

    coalescing = await JetStreamStore.open(nc, quorum_max_age=30.0)
    before = await last_seq()
    await asyncio.gather(*(coalescing.authorize_user(admin) for _ in range(20)))
    await coalescing.authorize_user(admin)
    assert await last_seq() - before == 1

    strict = await JetStreamStore.open(nc)
    before = await last_seq()
    for _ in range(3):
        await strict.authorize_user(admin)
    assert await last_seq() - before == 3

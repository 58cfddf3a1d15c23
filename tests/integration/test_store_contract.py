"""One contract suite for every ``Store`` backend: the replicated KV and the legacy SQLite.

Each test runs against a JetStreamStore on a real 1-node stack and a SQLiteStore on a
fresh file; both must behave the same, including not-found and conflicts.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from tests.integration.harness import StackFactory
from unibus.core import naming
from unibus.core.errors import ConflictError, NotFoundError, StoreError
from unibus.core.kvstore import WRITE_WINDOW, JetStreamStore
from unibus.core.models import (
    EpochRef,
    MemberRecord,
    Role,
    RoomRecord,
    SealedKeyRecord,
    Status,
    UserRecord,
)
from unibus.core.nkeys import KeyPair, Prefix
from unibus.core.store import IndexRepair, Store
from unibus.migrate.legacy import SQLiteStore


@pytest_asyncio.fixture(params=["jetstream", "sqlite"])
async def store(
    request: pytest.FixtureRequest, stacks: StackFactory, tmp_path: Path
) -> AsyncIterator[Store]:
    if request.param == "jetstream":
        stack = await stacks.start(nodes=1)
        yield await JetStreamStore.open(await stacks.connect(stack))
    else:
        sqlite = await SQLiteStore.open(tmp_path / "legacy.db", create=True)
        try:
            yield sqlite
        finally:
            await sqlite.close()


def _key() -> str:
    return KeyPair.generate(Prefix.USER).public_key


def _user(key: str, role: Role = Role.MEMBER, handle: str = "ada") -> UserRecord:
    now = time.time()
    return UserRecord(
        key=key, handle=handle, role=role, status=Status.ACTIVE, created_at=now, updated_at=now
    )


def _room(owner: str, *members: str, key_id: str = "k1") -> RoomRecord:
    now = time.time()
    return RoomRecord(
        room_id=naming.new_room_id(),
        owner=owner,
        members=tuple(sorted({owner, *members})),
        epochs=(EpochRef(epoch=1, key_id=key_id),),
        created_at=now,
        updated_at=now,
    )


def _sealed(room: RoomRecord, member: str, epoch: int, key_id: str) -> SealedKeyRecord:
    return SealedKeyRecord(
        room_id=room.room_id,
        epoch=epoch,
        key_id=key_id,
        member=member,
        sealed=f"{member}:{epoch}".encode(),
        signer=room.owner,
        signature=b"sig",
    )


def _statement(room: RoomRecord, member: str, epoch: int = 1) -> MemberRecord:
    return MemberRecord(
        room_id=room.room_id,
        member=member,
        added_by=room.owner,
        epoch=epoch,
        added_at=room.created_at,
        signature=b"s",
    )


async def test_users_create_only_read_list_and_revoke(store: Store) -> None:
    ada, bob = _key(), _key()
    added = await store.add_user(_user(ada, Role.ADMIN))

    assert (await store.get_user(ada)).value == added.value
    assert (await store.authorize_user(ada)).value.is_active
    with pytest.raises(ConflictError):
        await store.add_user(_user(ada, Role.MEMBER, handle="other"))
    assert (await store.get_user(ada)).value.role is Role.ADMIN

    await store.add_user(_user(bob))
    # (a started stack has seeded its first admin: compare our users only)
    assert {ada, bob} <= {u.key for u in await store.list_users()}
    assert await store.has_admin()

    revoked = await store.set_user_status(ada, Status.REVOKED)
    assert revoked.value.status is Status.REVOKED
    assert revoked.revision != added.revision
    again = await store.set_user_status(ada, Status.REVOKED)
    assert again.revision == revoked.revision
    assert (await store.get_user(ada)).value.status is Status.REVOKED
    await store.check_available()


async def test_missing_users_and_rooms_are_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        await store.get_user(_key())
    with pytest.raises(NotFoundError):
        await store.set_user_status(_key(), Status.REVOKED)
    with pytest.raises(NotFoundError):
        await store.get_room(naming.new_room_id())
    with pytest.raises(NotFoundError):
        await store.member_records(naming.new_room_id())
    with pytest.raises(NotFoundError):
        await store.sealed_keys(naming.new_room_id(), _key())
    assert await store.rooms_of(_key()) == []


async def test_room_create_read_index_statements_and_keys(store: Store) -> None:
    owner, alice = _key(), _key()
    room = _room(owner, alice)
    created = await store.create_room(
        room,
        members=[_statement(room, owner), _statement(room, alice)],
        sealed_keys=[_sealed(room, owner, 1, "k1"), _sealed(room, alice, 1, "k1")],
    )

    assert (await store.get_room(room.room_id)).value == created.value == room
    assert room.room_id in [r.room_id for r in await store.list_rooms()]
    assert await store.rooms_of(alice) == [room.room_id]
    assert [m.member for m in await store.member_records(room.room_id)] == sorted(room.members)
    assert await store.sealed_keys(room.room_id, alice) == [_sealed(room, alice, 1, "k1")]
    with pytest.raises(ConflictError):
        await store.create_room(room, members=(), sealed_keys=())


async def test_commit_is_compare_and_set_and_a_loser_changes_nothing(store: Store) -> None:
    owner, alice, bob = _key(), _key(), _key()
    room = _room(owner, alice)
    created = await store.create_room(
        room,
        members=[_statement(room, alice)],
        sealed_keys=[_sealed(room, owner, 1, "k1"), _sealed(room, alice, 1, "k1")],
    )
    # Remove alice with a rekey to epoch 2.
    rekeyed = msgspec.structs.replace(
        room, members=(owner,), epochs=(*room.epochs, EpochRef(epoch=2, key_id="k2"))
    )
    winner = await store.commit_room(
        created, rekeyed, sealed_keys=[_sealed(rekeyed, owner, 2, "k2")]
    )
    # A concurrent writer that read the same revision loses, and its keys stay inert.
    loser = msgspec.structs.replace(
        room,
        members=tuple(sorted({owner, alice, bob})),
        epochs=(*room.epochs, EpochRef(epoch=2, key_id="kx")),
    )
    with pytest.raises(ConflictError):
        await store.commit_room(
            created,
            loser,
            members=[_statement(loser, bob, 2)],
            sealed_keys=[_sealed(loser, bob, 2, "kx")],
        )

    current = await store.get_room(room.room_id)
    assert current.value == rekeyed
    assert current.revision == winner.revision
    assert await store.rooms_of(alice) == []
    assert await store.rooms_of(bob) == []
    assert await store.sealed_keys(room.room_id, bob) == []
    assert [k.epoch for k in await store.sealed_keys(room.room_id, owner)] == [1, 2]
    # A removed member keeps its old epoch's key (it could read the history it was in).
    assert [k.epoch for k in await store.sealed_keys(room.room_id, alice)] == [1]
    assert await store.member_records(room.room_id) == []
    assert (await store.repair_index()).added == 0


async def test_nonce_is_accepted_once(store: Store) -> None:
    caller = _key()
    await store.claim_nonce(caller, "n1")
    await store.claim_nonce(caller, "n2")
    with pytest.raises(ConflictError):
        await store.claim_nonce(caller, "n1")


# -- JetStream only: the raw-record API the migration uses, and the pipelined index repair -----
@pytest_asyncio.fixture
async def jetstream(stacks: StackFactory) -> tuple[JetStreamStore, NATS]:
    nc = await stacks.connect(await stacks.start(nodes=1))
    return await JetStreamStore.open(nc), nc


async def test_raw_records_round_trip_without_markers(
    jetstream: tuple[JetStreamStore, NATS],
) -> None:
    store, _ = jetstream
    room = _room(_key())
    records = sorted(
        (naming.member_key(room.room_id, member), msgspec.json.encode(_statement(room, member)))
        for member in (_key() for _ in range(3 * WRITE_WINDOW + 5))
    )

    assert await store.put_records(naming.MEMBERS_BUCKET, records) == len(records)
    await store.claim_marker("_contract-test", "x")

    assert sorted(await store.read_records(naming.MEMBERS_BUCKET)) == records
    users = await store.read_records(naming.USERS_BUCKET)
    assert [key for key, _ in users if key.startswith("_")] == []
    with pytest.raises(ValueError, match="not one of the store's buckets"):
        await store.read_records("KV_UNIBUS_members")


async def test_a_failed_bulk_write_fails_whole_as_a_store_error(
    jetstream: tuple[JetStreamStore, NATS],
) -> None:
    store, nc = jetstream
    await nc.jetstream().delete_key_value(naming.MEMBERS_BUCKET)
    room = _room(_key())
    records = [(naming.member_key(room.room_id, _key()), b"{}") for _ in range(2 * WRITE_WINDOW)]

    with pytest.raises(StoreError):
        await store.put_records(naming.MEMBERS_BUCKET, records)


async def test_repair_index_rebuilds_many_entries(jetstream: tuple[JetStreamStore, NATS]) -> None:
    store, nc = jetstream
    owner = _key()
    members = [_key() for _ in range(2 * WRITE_WINDOW)]
    room = _room(owner, *members)
    await store.create_room(room, members=(), sealed_keys=())
    index = await nc.jetstream().key_value(naming.ROOMS_BY_MEMBER_BUCKET)
    lost = members[: WRITE_WINDOW + 3]
    for member in lost:
        await index.delete(naming.room_index_key(member, room.room_id))
    stale = [_key() for _ in range(WRITE_WINDOW + 1)]
    for member in stale:
        await index.put(naming.room_index_key(member, room.room_id), b"{}")

    repair = await store.repair_index()

    assert (repair.added, repair.removed) == (len(lost), len(stale))
    assert all([await store.rooms_of(m) == [room.room_id] for m in [owner, *members]])
    assert all([await store.rooms_of(m) == [] for m in stale])
    assert await store.repair_index() == IndexRepair(added=0, removed=0)


async def test_repair_index_keeps_the_entries_of_a_room_committed_while_it_reads(
    jetstream: tuple[JetStreamStore, NATS], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = jetstream
    owner = _key()
    late = _room(owner, _key(), _key())
    reads = 0
    expected_index = store._expected_index

    async def room_created_between_the_reads() -> dict[str, tuple[str, str]]:
        # The first read of the rooms sees no room; then a room is committed with its
        # index entries (as the API does), before the index is read.
        nonlocal reads
        reads += 1
        found = await expected_index()
        if reads == 1:
            await store.create_room(late, members=(), sealed_keys=())
        return found

    monkeypatch.setattr(store, "_expected_index", room_created_between_the_reads)

    assert await store.repair_index() == IndexRepair(added=0, removed=0)
    assert all([await store.rooms_of(m) == [late.room_id] for m in late.members])

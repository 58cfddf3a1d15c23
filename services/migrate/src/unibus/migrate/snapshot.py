"""A backend-agnostic snapshot of the whole control plane, and its parity hash (SPEC §8).

A ``Snapshot`` holds every user (with status), every room (with its real epochs), the
statements of every room's current members, and every committed sealed key across
epochs. Both backends export one: the legacy SQLite file (``export_sqlite``) and the KV
buckets (``export_kv``, through the ``JetStreamStore``'s leader reads). Two snapshots are
equal exactly when their ``content_hash`` is: records are normalized (sorted, canonical
keys) first.

Keys of an uncommitted epoch (a losing rekey attempt) and statements of removed members
are not state: neither export includes them.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from unibus.core import naming
from unibus.core.kvstore import JetStreamStore
from unibus.core.models import (
    MemberRecord,
    RoomRecord,
    SealedKeyRecord,
    UserRecord,
    decode,
)
from unibus.migrate.legacy import SQLiteStore


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    users: tuple[UserRecord, ...] = ()
    rooms: tuple[RoomRecord, ...] = ()
    members: tuple[MemberRecord, ...] = ()
    sealed_keys: tuple[SealedKeyRecord, ...] = ()

    @classmethod
    def of(
        cls,
        users: Iterable[UserRecord],
        rooms: Iterable[RoomRecord],
        members: Iterable[MemberRecord],
        sealed_keys: Iterable[SealedKeyRecord],
    ) -> Snapshot:
        """A normalized snapshot: every list sorted by its record's identity."""
        return cls(
            users=tuple(sorted(users, key=user_id)),
            rooms=tuple(
                sorted(
                    (msgspec.structs.replace(r, members=tuple(sorted(r.members))) for r in rooms),
                    key=room_id,
                )
            ),
            members=tuple(sorted(members, key=member_id)),
            sealed_keys=tuple(sorted(sealed_keys, key=sealed_key_id)),
        )

    def counts(self) -> dict[str, int]:
        return {
            "users": len(self.users),
            "rooms": len(self.rooms),
            "members": len(self.members),
            "sealed_keys": len(self.sealed_keys),
        }

    @property
    def is_empty(self) -> bool:
        return not self.users and not self.rooms

    def content_hash(self) -> str:
        """SHA-256 over the canonical JSON of every record, in identity order."""
        return "sha256:" + hashlib.sha256(msgspec.json.encode(self)).hexdigest()


def user_id(record: UserRecord) -> str:
    return record.key


def room_id(record: RoomRecord) -> str:
    return record.room_id


def member_id(record: MemberRecord) -> str:
    return naming.member_key(record.room_id, record.member)


def sealed_key_id(record: SealedKeyRecord) -> str:
    return naming.sealed_key_key(record.room_id, record.epoch, record.key_id, record.member)


# -- SQLite -------------------------------------------------------------------------------------
async def export_sqlite(path: Path) -> Snapshot:
    """Read a legacy file read-only (it is never modified); keys come out canonical."""
    store = await SQLiteStore.open(path, readonly=True)
    try:
        users, rooms, members, keys = await asyncio.to_thread(store.read_all)
    finally:
        await store.close()
    for room in rooms:
        naming.check_room_id(room.room_id)
    return Snapshot.of(users, rooms, members, keys)


# -- KV -----------------------------------------------------------------------------------------
async def export_kv(
    store: JetStreamStore, *, progress: Callable[[str], None] | None = None
) -> Snapshot:
    """Read every record of the target; committed state only (like ``export_sqlite``).

    Each bucket is read whole, so ``store`` needs a scan limit above its largest bucket;
    a bucket over it fails the export rather than shortening it.
    """
    users = [decode(UserRecord, d) for _, d in await store.read_records(naming.USERS_BUCKET)]
    rooms = [decode(RoomRecord, d) for _, d in await store.read_records(naming.ROOMS_BUCKET)]
    by_id = {room.room_id: room for room in rooms}
    members = [
        record
        for record in (
            decode(MemberRecord, d) for _, d in await store.read_records(naming.MEMBERS_BUCKET)
        )
        if record.room_id in by_id and record.member in by_id[record.room_id].members
    ]
    committed = {(r.room_id, ref.epoch, ref.key_id) for r in rooms for ref in r.epochs}
    raw_keys = await store.read_records(naming.ROOM_KEYS_BUCKET)
    if progress is not None:
        progress(f"target: read {len(users)} users, {len(rooms)} rooms, {len(raw_keys)} keys")
    keys = [
        record
        for record in (decode(SealedKeyRecord, d) for _, d in raw_keys)
        if (record.room_id, record.epoch, record.key_id) in committed
    ]
    return Snapshot.of(users, rooms, members, keys)

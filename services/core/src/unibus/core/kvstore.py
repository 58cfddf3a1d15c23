"""The ``Store`` over JetStream KV buckets (SPEC §4).

Point reads go through the stream leader (``STREAM.MSG.GET``), never direct get: a
direct get may be answered by a replica that is behind, and after a node restart such
replicas served old revisions (nats-server#4162). A leader read is still not enough for
an authorization decision: a leader cut off from both peers keeps answering reads for
many seconds (measured: more than 15 s on 2.15.1) while the majority may have elected a
new leader and committed a revocation. ``authorize_user`` therefore first commits a
barrier write on the same stream — only possible with a quorum — and then reads (the
Raft read-index technique). Concurrent authorization reads share one in-flight barrier,
and with ``quorum_max_age`` > 0 a barrier that recent is reused: a revocation then reaches
decisions at most that long (plus one barrier) after it commits. Every operation is bounded by
``op_timeout``; every backend failure becomes ``StoreUnavailableError`` so that callers
deciding on authorization deny. Opening the store never creates a bucket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Final

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from unibus.core import naming
from unibus.core.errors import (
    AssetMissingError,
    ConflictError,
    NotFoundError,
    StoreError,
    StoreUnavailableError,
)
from unibus.core.kvfollow import KvEntry, KvFollower
from unibus.core.models import (
    MemberRecord,
    NonceRecord,
    Role,
    RoomIndexEntry,
    RoomRecord,
    SealedKeyRecord,
    Status,
    UserRecord,
    Versioned,
    decode,
    encode,
)
from unibus.core.pipeline import pipelined
from unibus.core.retry import pause_after_conflict
from unibus.core.store import IndexRepair

DEFAULT_OP_TIMEOUT: Final = 2.0
DEFAULT_SCAN_LIMIT: Final = 100_000
_KV_OPERATION: Final = "KV-Operation"
_EXPECTED_LAST_SUBJECT_SEQ: Final = "Nats-Expected-Last-Subject-Sequence"
_ERR_WRONG_LAST_SEQUENCE: Final = frozenset({10071, 10164})
_ERR_STREAM_NOT_FOUND: Final = 10059
_CAS_ATTEMPTS: Final = 8
_SCAN_ATTEMPTS: Final = 3
WRITE_WINDOW: Final = 64
"""Acknowledged writes one bulk write keeps in flight (each still bounded by the op timeout)."""
BARRIER_KEY: Final = "_quorum-barrier"
"""Written by quorum-confirmed reads; never a valid record key (those never start with ``_``)."""


@asynccontextmanager
async def _translated(asset: str, timeout: float) -> AsyncIterator[None]:
    """Bound one backend call and map every failure onto the Store's errors."""
    try:
        async with asyncio.timeout(timeout):
            yield
    except StoreError:
        raise
    except nats.js.errors.KeyWrongLastSequenceError:
        raise ConflictError(f"{asset}: the record changed concurrently") from None
    except nats.js.errors.NotFoundError as exc:
        if getattr(exc, "err_code", None) == _ERR_STREAM_NOT_FOUND:
            raise AssetMissingError(asset) from None
        raise NotFoundError(f"{asset}: no such record") from None
    except nats.js.errors.APIError as exc:
        if exc.err_code in _ERR_WRONG_LAST_SEQUENCE:
            raise ConflictError(f"{asset}: the record changed concurrently") from None
        if exc.err_code == _ERR_STREAM_NOT_FOUND:
            raise AssetMissingError(asset) from None
        raise StoreUnavailableError(f"{asset}: JetStream refused: {exc.description}") from None
    except TimeoutError:
        raise StoreUnavailableError(f"{asset}: no answer within {timeout:g}s") from None
    except (nats.errors.Error, OSError) as exc:
        raise StoreUnavailableError(f"{asset}: {type(exc).__name__}") from None


class _Bucket:
    """One KV bucket, spoken to through JetStream primitives we can bound and reason about."""

    def __init__(self, nc: NATS, name: str, op_timeout: float) -> None:
        self.name = name
        self.stream = naming.kv_stream(name)
        self._prefix = f"$KV.{name}."
        self._nc = nc
        self._js = nc.jetstream(timeout=op_timeout)
        self._timeout = op_timeout

    async def check_exists(self) -> None:
        async with _translated(self.name, self._timeout):
            await self._js.stream_info(self.stream)

    async def get(self, key: str) -> tuple[bytes, int]:
        async with _translated(self.name, self._timeout):
            msg = await self._js.get_msg(self.stream, subject=self._prefix + key, direct=False)
        if msg.headers and msg.headers.get(_KV_OPERATION) in ("DEL", "PURGE"):
            raise NotFoundError(f"{self.name}: no such record")
        return msg.data or b"", msg.seq or 0

    async def _publish(self, key: str, value: bytes, headers: dict[str, str] | None) -> int:
        async with _translated(self.name, self._timeout):
            ack = await self._js.publish(
                self._prefix + key, value, headers=headers, timeout=self._timeout
            )
        return ack.seq

    async def put(self, key: str, value: bytes) -> int:
        return await self._publish(key, value, None)

    async def update(self, key: str, value: bytes, *, last: int) -> int:
        return await self._publish(key, value, {_EXPECTED_LAST_SUBJECT_SEQ: str(last)})

    async def create(self, key: str, value: bytes) -> int:
        try:
            return await self.update(key, value, last=0)
        except ConflictError:
            # A deleted key keeps a tombstone, so "last=0" fails; recreate over it.
            try:
                tombstone = await self._tombstone_revision(key)
            except NotFoundError:
                # Refused as "not new", yet no record is stored: an earlier attempt of this
                # write is still in flight, uncommitted (a leader that lost its quorum).
                raise StoreUnavailableError(
                    f"{self.name}: an earlier write of this record is not committed; retry"
                ) from None
            if tombstone is None:
                raise
            return await self.update(key, value, last=tombstone)

    async def _tombstone_revision(self, key: str) -> int | None:
        async with _translated(self.name, self._timeout):
            msg = await self._js.get_msg(self.stream, subject=self._prefix + key, direct=False)
        if msg.headers and msg.headers.get(_KV_OPERATION) in ("DEL", "PURGE"):
            return msg.seq
        return None

    async def confirm_quorum(self) -> None:
        """Commit a barrier write: proves this stream's leader holds a quorum right now."""
        await self.put(BARRIER_KEY, b"")

    async def delete(self, key: str) -> None:
        await self._publish(key, b"", {_KV_OPERATION: "DEL"})

    async def put_many(self, records: Iterable[tuple[str, bytes]]) -> int:
        """Unconditional puts, pipelined; only for records no ordering rule relates."""
        return await pipelined(
            (partial(self.put, key, value) for key, value in records), window=WRITE_WINDOW
        )

    async def delete_many(self, keys: Iterable[str]) -> int:
        return await pipelined((partial(self.delete, key) for key in keys), window=WRITE_WINDOW)

    async def scan(self, prefix: str = "", *, limit: int) -> list[tuple[str, bytes, int]]:
        """Latest value of every live key under ``prefix``, bounded in time and count.

        A short scan must never pass for a complete one — the index repair and the
        migration's parity act on it — so the read ends only when the consumer's own count
        of pending messages says it delivered everything (``KvFollower``), is then checked
        against the stream's count of subjects, retried on a mismatch (a write landed
        meanwhile), and fails closed if it keeps disagreeing.
        """
        for _ in range(_SCAN_ATTEMPTS):
            found, subjects_seen = await self._follow_scan(prefix, limit=limit)
            if subjects_seen == await self._subject_count(prefix):
                return found
        raise StoreUnavailableError(
            f"{self.name}: a scan under {prefix!r} did not see every key; retry"
        )

    async def _subject_count(self, prefix: str) -> int:
        async with _translated(self.name, self._timeout * 5):
            info = await self._js.stream_info(
                self.stream, subjects_filter=f"{self._prefix}{prefix}>"
            )
        return len(info.state.subjects or {})

    async def _follow_scan(
        self, prefix: str, *, limit: int
    ) -> tuple[list[tuple[str, bytes, int]], int]:
        latest: dict[str, KvEntry] = {}
        keys = f"{prefix}>" if prefix else ">"
        budget = self._timeout * 5
        async with _translated(self.name, budget):
            follower = KvFollower(self._nc, self.name, keys=keys, op_timeout=self._timeout)
            async with follower:
                async for entry in follower.initial(timeout=budget):
                    latest[entry.key] = entry
                    if len(latest) > limit:
                        raise StoreUnavailableError(
                            f"{self.name}: more than {limit} keys under {prefix!r}; "
                            "refusing an unbounded read"
                        )
        # Keys starting with "_" are markers and barriers, never records.
        found = [
            (e.key, e.value, e.revision)
            for e in latest.values()
            if not e.is_deletion and not e.key.startswith("_")
        ]
        return found, len(latest)


class JetStreamStore:
    """The replicated ``Store``; create it with ``await JetStreamStore.open(nc)``."""

    def __init__(
        self,
        nc: NATS,
        op_timeout: float,
        scan_limit: int,
        quorum_max_age: float = 0.0,
    ) -> None:
        self._users = _Bucket(nc, naming.USERS_BUCKET, op_timeout)
        self._rooms = _Bucket(nc, naming.ROOMS_BUCKET, op_timeout)
        self._members = _Bucket(nc, naming.MEMBERS_BUCKET, op_timeout)
        self._index = _Bucket(nc, naming.ROOMS_BY_MEMBER_BUCKET, op_timeout)
        self._keys = _Bucket(nc, naming.ROOM_KEYS_BUCKET, op_timeout)
        self._nonces = _Bucket(nc, naming.NONCES_BUCKET, op_timeout)
        self._scan_limit = scan_limit
        self._quorum_max_age = quorum_max_age
        self._quorum_confirmed_at = float("-inf")
        self._quorum_inflight: asyncio.Task[float] | None = None

    @classmethod
    async def open(
        cls,
        nc: NATS,
        *,
        op_timeout: float = DEFAULT_OP_TIMEOUT,
        scan_limit: int = DEFAULT_SCAN_LIMIT,
        quorum_max_age: float = 0.0,
    ) -> JetStreamStore:
        """Bind to the provisioned buckets; ``AssetMissingError`` if one is absent.

        ``quorum_max_age``: how old a quorum confirmation an authorization read may reuse
        (0: every read confirms, sharing only barriers already in flight).
        """
        store = cls(nc, op_timeout, scan_limit, quorum_max_age)
        for bucket in store._buckets():
            await bucket.check_exists()
        return store

    def _buckets(self) -> Iterable[_Bucket]:
        return (self._users, self._rooms, self._members, self._index, self._keys, self._nonces)

    def _bucket(self, name: str) -> _Bucket:
        for bucket in self._buckets():
            if bucket.name == name:
                return bucket
        raise ValueError(f"{name} is not one of the store's buckets")

    # -- raw records (the migration and its parity check) -------------------------------------
    async def read_records(self, bucket: str) -> list[tuple[str, bytes]]:
        """Key and undecoded value of every live record in ``bucket`` (a ``naming`` bucket).

        The scan is checked against the stream's own count of subjects and fails closed
        (``StoreUnavailableError``) rather than return a short list; markers and barriers
        (keys starting with ``_``) are not records and are left out.
        """
        return [
            (key, value)
            for key, value, _ in await self._bucket(bucket).scan(limit=self._scan_limit)
        ]

    async def put_records(self, bucket: str, records: Iterable[tuple[str, bytes]]) -> int:
        """Unconditional puts of undecoded records: no create-only or compare-and-set
        check and no reverse-index upkeep (``repair_index`` rebuilds the index).

        Returns the number written once every put has been acknowledged; the first
        failure fails the whole call (puts that landed before it stay: re-running the
        same call converges). Up to ``WRITE_WINDOW`` puts are in flight at once, in no
        particular order, so a caller must not pass records whose order matters.
        """
        return await self._bucket(bucket).put_many(records)

    # -- users --------------------------------------------------------------------------------
    async def add_user(self, user: UserRecord) -> Versioned[UserRecord]:
        try:
            revision = await self._users.create(user.key, encode(user))
        except ConflictError:
            raise ConflictError(f"user {user.key} already exists") from None
        return Versioned(user, revision)

    async def get_user(self, key: str) -> Versioned[UserRecord]:
        try:
            data, revision = await self._users.get(key)
        except NotFoundError:
            raise NotFoundError(f"no user {key}") from None
        return Versioned(decode(UserRecord, data), revision)

    async def authorize_user(self, key: str) -> Versioned[UserRecord]:
        await self._confirm_quorum()
        return await self.get_user(key)

    async def check_available(self) -> None:
        await self._confirm_quorum()

    async def _confirm_quorum(self) -> None:
        if time.monotonic() - self._quorum_confirmed_at <= self._quorum_max_age:
            return
        if self._quorum_inflight is None:
            self._quorum_inflight = asyncio.create_task(self._barrier())
            self._quorum_inflight.add_done_callback(self._barrier_done)
        # shield: one caller giving up must not cancel the barrier others wait on.
        self._quorum_confirmed_at = max(
            self._quorum_confirmed_at, await asyncio.shield(self._quorum_inflight)
        )

    async def _barrier(self) -> float:
        started = time.monotonic()
        await self._users.confirm_quorum()
        return started

    def _barrier_done(self, task: asyncio.Task[float]) -> None:
        self._quorum_inflight = None
        if not task.cancelled():
            task.exception()  # retrieved here so an unawaited failure is never logged

    async def claim_marker(self, name: str, value: str) -> str:
        """Create-only marker in the users bucket; returns the value that holds it."""
        if not name.startswith("_"):
            raise ValueError("markers start with '_' so they can never be a user key")
        try:
            await self._users.create(name, value.encode())
        except ConflictError:
            data, _ = await self._users.get(name)
            return data.decode(errors="replace")
        return value

    async def list_users(self) -> list[UserRecord]:
        rows = await self._users.scan(limit=self._scan_limit)
        return sorted((decode(UserRecord, data) for _, data, _ in rows), key=lambda u: u.handle)

    async def set_user_status(self, key: str, status: Status) -> Versioned[UserRecord]:
        for attempt in range(_CAS_ATTEMPTS):
            current = await self.get_user(key)
            if current.value.status is status:
                return current
            updated = msgspec.structs.replace(current.value, status=status, updated_at=time.time())
            try:
                revision = await self._users.update(key, encode(updated), last=current.revision)
            except ConflictError:
                await pause_after_conflict(attempt)
                continue
            return Versioned(updated, revision)
        raise ConflictError(f"user {key} kept changing; try again")

    async def update_user(
        self, previous: Versioned[UserRecord], updated: UserRecord
    ) -> Versioned[UserRecord]:
        if updated.key != previous.value.key:
            raise ValueError("update_user cannot change a user's key")
        try:
            revision = await self._users.update(
                updated.key, encode(updated), last=previous.revision
            )
        except ConflictError:
            raise ConflictError(
                f"user {updated.key} changed since it was read; re-read and retry"
            ) from None
        return Versioned(updated, revision)

    async def touch_user(self, current: Versioned[UserRecord]) -> Versioned[UserRecord]:
        # The same value: the callout's view sees no change and kicks nobody.
        return await self.update_user(current, current.value)

    async def has_admin(self) -> bool:
        return any(user.role is Role.ADMIN and user.is_active for user in await self.list_users())

    # -- rooms --------------------------------------------------------------------------------
    async def create_room(
        self,
        room: RoomRecord,
        *,
        members: Sequence[MemberRecord],
        sealed_keys: Sequence[SealedKeyRecord],
    ) -> Versioned[RoomRecord]:
        await self._write_inert(members, sealed_keys)
        try:
            revision = await self._rooms.create(room.room_id, encode(room))
        except ConflictError:
            raise ConflictError(f"room {room.room_id} already exists") from None
        await self._index_add(room.room_id, room.members)
        return Versioned(room, revision)

    async def get_room(self, room_id: str) -> Versioned[RoomRecord]:
        try:
            data, revision = await self._rooms.get(naming.check_room_id(room_id))
        except NotFoundError:
            raise NotFoundError(f"no room {room_id}") from None
        return Versioned(decode(RoomRecord, data), revision)

    async def commit_room(
        self,
        previous: Versioned[RoomRecord],
        updated: RoomRecord,
        *,
        members: Sequence[MemberRecord] = (),
        sealed_keys: Sequence[SealedKeyRecord] = (),
    ) -> Versioned[RoomRecord]:
        if updated.room_id != previous.value.room_id:
            raise ValueError("commit_room cannot change a room's id")
        await self._write_inert(members, sealed_keys)
        try:
            revision = await self._rooms.update(
                updated.room_id, encode(updated), last=previous.revision
            )
        except ConflictError:
            raise ConflictError(
                f"room {updated.room_id} changed since it was read; re-read and retry"
            ) from None
        before, after = set(previous.value.members), set(updated.members)
        await self._index_add(updated.room_id, sorted(after - before))
        await self._index_remove(updated.room_id, sorted(before - after))
        return Versioned(updated, revision)

    async def list_rooms(self) -> list[RoomRecord]:
        rows = await self._rooms.scan(limit=self._scan_limit)
        return [decode(RoomRecord, data) for _, data, _ in rows]

    async def rooms_of(self, user_key: str) -> list[str]:
        rows = await self._index.scan(naming.room_index_prefix(user_key), limit=self._scan_limit)
        return sorted(decode(RoomIndexEntry, data).room_id for _, data, _ in rows)

    async def member_records(self, room_id: str) -> list[MemberRecord]:
        room = (await self.get_room(room_id)).value
        current = set(room.members)
        rows = await self._members.scan(naming.member_prefix(room_id), limit=self._scan_limit)
        records = (decode(MemberRecord, data) for _, data, _ in rows)
        return sorted((r for r in records if r.member in current), key=lambda r: r.member)

    async def sealed_keys(self, room_id: str, member: str) -> list[SealedKeyRecord]:
        room = (await self.get_room(room_id)).value
        rows = await self._keys.scan(naming.sealed_keys_prefix(room_id), limit=self._scan_limit)
        committed = {(ref.epoch, ref.key_id) for ref in room.epochs}
        found = []
        for _, data, _ in rows:
            record = decode(SealedKeyRecord, data)
            # Keys of an epoch the room never committed belong to a losing or unfinished
            # attempt: inert, never handed out.
            if record.member == member and (record.epoch, record.key_id) in committed:
                found.append(record)
        return sorted(found, key=lambda r: r.epoch)

    async def repair_index(self) -> IndexRepair:
        # The room records are read before and after the index: a room committed or
        # changed while the index was read would otherwise make its fresh entries look
        # stale (deleted under a live member) or a just-removed member's entry look
        # missing (added back). Only what both reads agree on is changed.
        before = await self._expected_index()
        present = {key for key, _, _ in await self._index.scan(limit=self._scan_limit)}
        after = await self._expected_index()
        expected = {key: where for key, where in after.items() if key in before}
        missing = sorted(expected.keys() - present)
        stale = sorted(present - before.keys() - after.keys())
        # Pipelined: index entries are derived from room records and are nobody's commit
        # point, each key is written once, and the puts and deletes touch disjoint keys,
        # so no order among them matters. A failure fails the repair; what landed is
        # correct and a re-run converges.
        added = await self._index.put_many(
            (key, encode(RoomIndexEntry(room_id=expected[key][0], member=expected[key][1])))
            for key in missing
        )
        removed = await self._index.delete_many(stale)
        return IndexRepair(added=added, removed=removed)

    async def _expected_index(self) -> dict[str, tuple[str, str]]:
        return {
            naming.room_index_key(member, room.room_id): (room.room_id, member)
            for room in await self.list_rooms()
            for member in room.members
        }

    # -- anti-replay ---------------------------------------------------------------------------
    async def claim_nonce(self, caller: str, nonce: str) -> None:
        record = NonceRecord(caller=caller, created_at=time.time())
        try:
            await self._nonces.update(naming.nonce_key(caller, nonce), encode(record), last=0)
        except ConflictError:
            raise ConflictError("nonce already used: the request is a replay") from None

    # -- helpers ------------------------------------------------------------------------------
    async def _write_inert(
        self, members: Sequence[MemberRecord], sealed_keys: Sequence[SealedKeyRecord]
    ) -> None:
        for key_record in sealed_keys:
            await self._keys.put(
                naming.sealed_key_key(
                    key_record.room_id, key_record.epoch, key_record.key_id, key_record.member
                ),
                encode(key_record),
            )
        for member in members:
            await self._members.put(
                naming.member_key(member.room_id, member.member), encode(member)
            )

    async def _index_add(self, room_id: str, members: Iterable[str]) -> None:
        for member in members:
            await self._index.put(
                naming.room_index_key(member, room_id),
                encode(RoomIndexEntry(room_id=room_id, member=member)),
            )

    async def _index_remove(self, room_id: str, members: Iterable[str]) -> None:
        for member in members:
            await self._index.delete(naming.room_index_key(member, room_id))

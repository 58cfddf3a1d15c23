"""The migration job: legacy SQLite file → replicated KV (SPEC §8).

Steps, in order, each one before anything irreversible:

1. refuse a non-loopback NATS target without a pinned CA (before connecting);
2. open the source read-only: unreadable, corrupt or unknown-schema files are refused
   here, before anything is written anywhere (no backup, no connection);
3. export the source snapshot (keys converted to ``U…``); an empty source is refused;
4. back it up (``VACUUM INTO`` a timestamped file next to it, reopened and checked);
5. connect, ``provision`` what the migration needs (it creates nothing itself);
6. export the target snapshot and compare: a target that diverged from the source is
   refused with the differences unless ``force``; a user revoked in the target stays
   revoked whatever the source says;
7. write what is missing or different — per room, sealed keys and statements before the
   room record, as the Store does — so an interrupted run leaves nothing visible that a
   re-run does not converge; then rebuild the reverse index. Writes are pipelined
   (``apply_plan`` says which orders are kept) and every one is acknowledged;
8. re-export the target and verify parity (counts and content hash); a partial copy is an
   error, never a success.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final

import msgspec
import nats.errors

from unibus.core import naming
from unibus.core.connect import NatsTarget, connect
from unibus.core.errors import StoreUnavailableError, UnibusError
from unibus.core.kvstore import JetStreamStore
from unibus.core.models import MemberRecord, RoomRecord, SealedKeyRecord, Status, UserRecord
from unibus.core.pipeline import pipelined
from unibus.core.provisioning import ASSETS, Asset, AssetKind, Provisioning, provision
from unibus.migrate.legacy import LEGACY_COLUMNS, LegacyFormatError, open_connection
from unibus.migrate.snapshot import (
    Snapshot,
    export_kv,
    export_sqlite,
    member_id,
    sealed_key_id,
)

Progress = Callable[[str], None]
DEFAULT_OP_TIMEOUT: Final = 5.0
SCAN_TIMEOUT: Final = 60.0
SCAN_LIMIT: Final = 2_000_000
"""Records one read of a whole target bucket may return before the migration refuses."""
ROOMS_IN_FLIGHT: Final = 4
"""Rooms imported at once, each with up to ``kvstore.WRITE_WINDOW`` puts in flight."""
PROGRESS_EVERY: Final = 1000
MAX_REPORTED_DIFFERENCES: Final = 50
NEEDED_ASSETS: Final[tuple[Asset, ...]] = tuple(a for a in ASSETS if a.kind is AssetKind.KV)
"""Every KV bucket: the store the migration writes through binds to all of them, the API's
nonces included, so a migration into a cluster nobody provisioned yet still works."""


class MigrationError(UnibusError):
    """The migration did not (fully) happen; the message says why and what to do."""


class DivergedTargetError(MigrationError):
    """The target holds records that contradict the source."""

    def __init__(self, differences: Sequence[str]) -> None:
        shown = list(differences[:MAX_REPORTED_DIFFERENCES])
        more = len(differences) - len(shown)
        super().__init__(
            f"the target has diverged from the source ({len(differences)} differences: "
            + "; ".join(shown)
            + (f"; and {more} more" if more else "")
            + "); nothing was written. Re-run with --force to overwrite the target with "
            "the source (revoked users stay revoked)"
        )
        self.differences = list(differences)


# -- backup -------------------------------------------------------------------------------------
def backup_sqlite(source: Path, *, now: datetime | None = None) -> Path:
    """A consistent copy (``VACUUM INTO``) next to ``source``, reopened and checked."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    target = source.with_name(f"{source.name}.backup-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = source.with_name(f"{source.name}.backup-{stamp}-{n}")
    # The copy holds the whole allowlist: it is private from the moment it exists (VACUUM
    # INTO fills an empty file), never written under the umask and narrowed afterwards.
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        raise MigrationError(f"cannot create the backup {target}: {exc.strerror}") from None
    conn = open_connection(source, readonly=True)
    try:
        conn.execute("VACUUM INTO ?", (str(target),))
        counts = _table_counts(conn)
    except sqlite3.Error as exc:
        raise MigrationError(f"backup of {source} into {target} failed: {exc}") from None
    finally:
        conn.close()
    try:
        copy = open_connection(target, readonly=True)
    except LegacyFormatError as exc:
        raise MigrationError(f"the backup {target} does not reopen cleanly: {exc}") from None
    try:
        copied = _table_counts(copy)
    finally:
        copy.close()
    if copied != counts:
        raise MigrationError(f"the backup {target} differs from {source}: {copied} != {counts}")
    return target


def _table_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {
        table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608
        for table in LEGACY_COLUMNS
    }


# -- plan ---------------------------------------------------------------------------------------
@dataclass
class RoomWrites:
    room: RoomRecord
    write_room: bool
    sealed_keys: list[SealedKeyRecord] = field(default_factory=list)
    members: list[MemberRecord] = field(default_factory=list)


@dataclass
class Plan:
    """What the import will write, and what it found in the target."""

    users: list[UserRecord] = field(default_factory=list)
    rooms: list[RoomWrites] = field(default_factory=list)
    kept_revoked: list[str] = field(default_factory=list)
    revoked_from_source: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    extra_in_target: list[str] = field(default_factory=list)
    expected: Snapshot = field(default_factory=Snapshot)

    @property
    def writes(self) -> int:
        return len(self.users) + sum(
            int(r.write_room) + len(r.sealed_keys) + len(r.members) for r in self.rooms
        )


def _same_identity(a: UserRecord, b: UserRecord) -> bool:
    return (a.key, a.handle, a.role, a.created_at) == (b.key, b.handle, b.role, b.created_at)


def plan_import(source: Snapshot, target: Snapshot, *, force: bool = False) -> Plan:
    """Compare both sides; ``DivergedTargetError`` unless ``force`` when they contradict."""
    plan = Plan()
    expected_users = []
    in_target = {u.key: u for u in target.users}
    for user in source.users:
        present = in_target.get(user.key)
        want = user
        if (
            present is not None
            and present.status is Status.REVOKED
            and user.status is Status.ACTIVE
        ):
            # Never re-activate: the target's revocation is the newer decision.
            want = (
                present
                if _same_identity(present, user)
                else msgspec.structs.replace(
                    user, status=Status.REVOKED, updated_at=present.updated_at
                )
            )
            plan.kept_revoked.append(user.key)
        if present is None:
            plan.users.append(want)
        elif present != want:
            if _same_identity(present, want) and want.status is Status.REVOKED:
                plan.revoked_from_source.append(user.key)  # propagating a revocation is safe
            else:
                plan.differences.append(f"user {user.key} differs ({_user_diff(present, want)})")
            plan.users.append(want)
        expected_users.append(want)
    source_users = {u.key for u in source.users}
    plan.extra_in_target += [f"user {k}" for k in in_target if k not in source_users]

    rooms_t = {r.room_id: r for r in target.rooms}
    keys_t = {sealed_key_id(k): k for k in target.sealed_keys}
    members_t = {member_id(m): m for m in target.members}
    keys_s = _group(source.sealed_keys)
    members_s = _group(source.members)
    for room in source.rooms:
        present_room = rooms_t.get(room.room_id)
        writes = RoomWrites(room=room, write_room=present_room != room)
        if present_room is not None and present_room != room:
            plan.differences.append(
                f"room {room.room_id} differs ({_room_diff(present_room, room)})"
            )
        for key in keys_s.get(room.room_id, []):
            found = keys_t.get(sealed_key_id(key))
            if found != key:
                if found is not None:
                    plan.differences.append(f"sealed key {sealed_key_id(key)} differs")
                writes.sealed_keys.append(key)
        for member in members_s.get(room.room_id, []):
            found_member = members_t.get(member_id(member))
            if found_member != member:
                if found_member is not None:
                    plan.differences.append(f"member statement {member_id(member)} differs")
                writes.members.append(member)
        if writes.write_room or writes.sealed_keys or writes.members:
            # Keys and statements first: a re-run after an interruption redoes this room.
            writes.write_room = True
            plan.rooms.append(writes)
    source_rooms = {r.room_id for r in source.rooms}
    plan.extra_in_target += [f"room {r}" for r in rooms_t if r not in source_rooms]
    source_keys = {sealed_key_id(k) for k in source.sealed_keys}
    plan.extra_in_target += [
        f"sealed key {k}"
        for k, record in keys_t.items()
        if k not in source_keys and record.room_id in source_rooms
    ]
    plan.expected = Snapshot.of(expected_users, source.rooms, source.members, source.sealed_keys)
    # Records only in the target (a seeded first admin, a room made since) contradict
    # nothing: they are reported and left alone. Contradicting records are divergence.
    if plan.differences and not force:
        raise DivergedTargetError(plan.differences)
    return plan


def _group(records: Sequence[Any]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = {}
    for record in records:
        grouped.setdefault(record.room_id, []).append(record)
    return grouped


def _user_diff(a: UserRecord, b: UserRecord) -> str:
    fields = ("handle", "role", "status", "created_at")
    return (
        ", ".join(
            f"{f}: target {getattr(a, f)!r} vs source {getattr(b, f)!r}"
            for f in fields
            if getattr(a, f) != getattr(b, f)
        )
        or "timestamps"
    )


def _room_diff(a: RoomRecord, b: RoomRecord) -> str:
    parts = []
    if a.epoch != b.epoch or a.epochs != b.epochs:
        parts.append(f"epoch: target {a.epoch} vs source {b.epoch}")
    if a.members != b.members:
        parts.append(f"members: target {len(a.members)} vs source {len(b.members)}")
    if a.owner != b.owner:
        parts.append("owner")
    return ", ".join(parts) or "metadata"


# -- apply --------------------------------------------------------------------------------------
class _Progress:
    """Counts acknowledged writes and says so every ``PROGRESS_EVERY`` of them."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.done = 0
        self._reported = 0
        self._progress = progress

    def add(self, written: int) -> None:
        self.done += written
        if self.done - self._reported >= PROGRESS_EVERY:
            self._report()

    def finish(self) -> None:
        if self.done != self._reported:
            self._report()

    def _report(self) -> None:
        self._reported = self.done
        if self._progress is not None:
            self._progress(f"progress: {self.done}/{self.total} records written")


async def apply_plan(store: JetStreamStore, plan: Plan, progress: Progress | None = None) -> None:
    """Users, then per room its sealed keys and statements, then its record.

    Only these orders matter, and only these are kept: every user is acknowledged
    before the first room record names one, and a room's record — its commit point, as
    in the Store — is put only once all of its keys and statements are acknowledged, so
    an interruption never leaves a room whose committed epoch lacks its keys (and the
    re-run redoes that room, since ``plan_import`` rewrites a room with any part
    missing). Within those steps records are independent puts, pipelined; rooms are
    imported ``ROOMS_IN_FLIGHT`` at once. Puts in flight together never share a key (each
    record of a plan has its own identity), so no value can overtake another of its key.
    Every put is acknowledged before this returns, and the first failure fails the whole
    import.
    """
    counter = _Progress(plan.writes, progress)
    encode = msgspec.json.encode
    for start in range(0, len(plan.users), PROGRESS_EVERY):
        chunk = plan.users[start : start + PROGRESS_EVERY]
        counter.add(
            await store.put_records(naming.USERS_BUCKET, ((u.key, encode(u)) for u in chunk))
        )
    await pipelined(
        (partial(_import_room, store, room, counter) for room in plan.rooms),
        window=ROOMS_IN_FLIGHT,
    )
    counter.finish()


async def _import_room(store: JetStreamStore, writes: RoomWrites, counter: _Progress) -> None:
    encode = msgspec.json.encode
    written = await store.put_records(
        naming.ROOM_KEYS_BUCKET, ((sealed_key_id(k), encode(k)) for k in writes.sealed_keys)
    )
    written += await store.put_records(
        naming.MEMBERS_BUCKET, ((member_id(m), encode(m)) for m in writes.members)
    )
    if writes.write_room:
        record = writes.room
        written += await store.put_records(
            naming.ROOMS_BUCKET, [(naming.check_room_id(record.room_id), encode(record))]
        )
    counter.add(written)


# -- parity -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Parity:
    ok: bool
    source_hash: str
    expected_hash: str
    target_hash: str
    missing_or_different: list[str]


def check_parity(expected: Snapshot, target: Snapshot) -> Parity:
    """Every expected record present and identical; hashes over the migrated records."""
    problems: list[str] = []
    pairs: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("user", {u.key: u for u in expected.users}, {u.key: u for u in target.users}),
        ("room", {r.room_id: r for r in expected.rooms}, {r.room_id: r for r in target.rooms}),
        (
            "member statement",
            {member_id(m): m for m in expected.members},
            {member_id(m): m for m in target.members},
        ),
        (
            "sealed key",
            {sealed_key_id(k): k for k in expected.sealed_keys},
            {sealed_key_id(k): k for k in target.sealed_keys},
        ),
    ]
    for kind, want, have in pairs:
        for key, record in want.items():
            if have.get(key) != record:
                problems.append(f"{kind} {key} {'missing' if key not in have else 'differs'}")
    users, rooms, members, keys = (set(pair[1]) for pair in pairs)
    restricted = Snapshot.of(
        [u for u in target.users if u.key in users],
        [r for r in target.rooms if r.room_id in rooms],
        [m for m in target.members if member_id(m) in members],
        [k for k in target.sealed_keys if sealed_key_id(k) in keys],
    )
    return Parity(
        ok=not problems and restricted.content_hash() == expected.content_hash(),
        source_hash="",
        expected_hash=expected.content_hash(),
        target_hash=restricted.content_hash(),
        missing_or_different=problems,
    )


# -- the job ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MigrationOptions:
    db: Path
    target: NatsTarget
    replicas: int = 3
    backup: bool = True
    force: bool = False
    op_timeout: float = DEFAULT_OP_TIMEOUT
    provision_budget: float = 120.0


@dataclass
class MigrationReport:
    result: str
    changed: bool
    source: str
    backup: str | None
    source_counts: dict[str, int]
    target_counts: dict[str, int]
    source_hash: str
    target_hash: str
    expected_hash: str
    parity: bool
    written: int
    kept_revoked: list[str]
    revoked_from_source: list[str]
    overwritten: list[str]
    extra_in_target: list[str]
    duration_s: float
    provisioned: list[str]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def lines(self) -> list[str]:
        out = [
            f"{self.result}: {self.source} -> KV "
            + ", ".join(f"{k}={v}" for k, v in self.target_counts.items()),
            f"source {self.source_hash} ({_counts(self.source_counts)})",
            f"target {self.target_hash} (all records: {_counts(self.target_counts)})",
            f"parity: {'ok' if self.parity else 'FAILED'}; {self.written} records written "
            f"in {self.duration_s:.1f}s",
        ]
        if self.backup:
            out.append(f"backup: {self.backup}")
        if self.kept_revoked:
            out.append(
                f"kept revoked in the target (active in the source): {', '.join(self.kept_revoked)}"
            )
        if self.revoked_from_source:
            out.append(f"revoked from the source: {', '.join(self.revoked_from_source)}")
        if self.overwritten:
            out.append(f"overwritten (--force): {len(self.overwritten)} records")
        if self.extra_in_target:
            out.append(f"left in the target only: {len(self.extra_in_target)} records")
        return out


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


async def migrate(options: MigrationOptions, progress: Progress | None = None) -> MigrationReport:
    """Run the whole job; ``MigrationError`` (or another ``UnibusError``) when it did not."""
    started = time.monotonic()
    say = progress or (lambda _msg: None)
    options.target.check_secure()  # before reading anything, before any socket opens
    source = await export_sqlite(options.db)
    if source.is_empty:
        raise MigrationError(
            f"{options.db} holds no users and no rooms; refusing to report an empty copy"
        )
    say(f"source: {_counts(source.counts())}")
    backup = None
    if options.backup:
        backup = await asyncio.to_thread(backup_sqlite, options.db)
        say(f"backup: {backup}")
    try:
        nc = await connect(
            options.target, name="unibus-migrate", max_reconnect_attempts=3, connect_timeout=5.0
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise StoreUnavailableError(
            f"cannot reach the bus at {', '.join(options.target.urls)} ({type(exc).__name__})"
        ) from None
    try:
        js = nc.jetstream(timeout=options.op_timeout)
        report = await provision(
            js,
            Provisioning(replicas=options.replicas, budget=options.provision_budget),
            assets=NEEDED_ASSETS,
        )
        store = await JetStreamStore.open(nc, op_timeout=options.op_timeout, scan_limit=SCAN_LIMIT)
        # Whole-bucket reads: each scan is bounded by 5 op timeouts, so this one is longer.
        reads = await JetStreamStore.open(nc, op_timeout=SCAN_TIMEOUT / 5, scan_limit=SCAN_LIMIT)
        target = await export_kv(reads, progress=say)
        plan = plan_import(source, target, force=options.force)
        say(f"plan: {plan.writes} records to write")
        await apply_plan(store, plan, say)
        repair = await store.repair_index()
        say(f"index: {repair.added} entries added, {repair.removed} removed")
        after = await export_kv(reads, progress=say)
    finally:
        await nc.close()
    parity = check_parity(plan.expected, after)
    if not parity.ok:
        raise MigrationError(
            "parity check failed, the copy is partial or wrong: "
            + "; ".join(parity.missing_or_different[:MAX_REPORTED_DIFFERENCES])
            + f" (expected {parity.expected_hash}, target {parity.target_hash}); re-run to resume"
        )
    return MigrationReport(
        result="migrated" if plan.writes else "already migrated, nothing written",
        changed=bool(plan.writes),
        source=str(options.db),
        backup=str(backup) if backup else None,
        source_counts=source.counts(),
        target_counts=after.counts(),
        source_hash=source.content_hash(),
        target_hash=parity.target_hash,
        expected_hash=parity.expected_hash,
        parity=True,
        written=plan.writes,
        kept_revoked=plan.kept_revoked,
        revoked_from_source=plan.revoked_from_source,
        overwritten=plan.differences,
        extra_in_target=plan.extra_in_target,
        duration_s=round(time.monotonic() - started, 3),
        provisioned=list(report.created),
    )

"""``apply_plan``: pipelined writes that keep the orders that matter (no sockets).

A fake store acknowledges each put after a random delay and logs when every put was
issued and acknowledged, so the test sees the real interleaving of the pipelined import.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import msgspec
import pytest

from tests.fixtures.legacy import build_legacy_db
from unibus.core import naming
from unibus.core.errors import StoreUnavailableError
from unibus.core.pipeline import pipelined
from unibus.migrate.job import Plan, apply_plan, member_id, plan_import, sealed_key_id
from unibus.migrate.snapshot import Snapshot, export_sqlite


class _FakeStore:
    def __init__(self, *, fail_on: str | None = None) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.written: dict[tuple[str, str], bytes] = {}
        self.in_flight = 0
        self.peak = 0
        self._fail_on = fail_on
        self._rng = random.Random(3)

    async def put_records(self, bucket: str, records: Iterable[tuple[str, bytes]]) -> int:
        return await pipelined(
            (partial(self._put, bucket, key, value) for key, value in records), window=64
        )

    async def _put(self, bucket: str, key: str, value: bytes) -> None:
        self.events.append(("issued", bucket, key))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self._rng.random() / 1000)
            if key == self._fail_on:
                raise StoreUnavailableError(f"{bucket}: no answer")
            self.written[bucket, key] = value
        finally:
            self.in_flight -= 1
        self.events.append(("acked", bucket, key))

    def when(self, what: str, bucket: str, key: str) -> int:
        return self.events.index((what, bucket, key))


@pytest.fixture
def plan(tmp_path: Path) -> Plan:
    fixture = build_legacy_db(tmp_path / "m.db", users=30, rooms=20, members_per_room=12)
    return plan_import(asyncio.run(export_sqlite(fixture.path)), Snapshot())


async def test_users_first_then_every_room_record_after_its_keys_and_statements(
    plan: Plan,
) -> None:
    store = _FakeStore()

    await apply_plan(store, plan)  # type: ignore[arg-type]

    assert len(store.written) == plan.writes
    last_user_ack = max(store.when("acked", naming.USERS_BUCKET, u.key) for u in plan.users)
    for room in plan.rooms:
        committed = store.when("issued", naming.ROOMS_BUCKET, room.room.room_id)
        assert committed > last_user_ack
        parts = [(naming.ROOM_KEYS_BUCKET, sealed_key_id(k)) for k in room.sealed_keys]
        parts += [(naming.MEMBERS_BUCKET, member_id(m)) for m in room.members]
        assert parts
        assert all(store.when("acked", *part) < committed for part in parts)
        assert store.written[naming.ROOMS_BUCKET, room.room.room_id] == msgspec.json.encode(
            room.room
        )
    assert store.peak > 64  # rooms overlap: more than one room's window in flight


async def test_a_failed_write_fails_the_import_and_its_room_is_never_committed(
    plan: Plan,
) -> None:
    victim = plan.rooms[3]
    store = _FakeStore(fail_on=sealed_key_id(victim.sealed_keys[-1]))

    with pytest.raises(StoreUnavailableError):
        await apply_plan(store, plan)  # type: ignore[arg-type]

    assert (naming.ROOMS_BUCKET, victim.room.room_id) not in store.written
    assert store.in_flight == 0
    committed = {key for bucket, key in store.written if bucket == naming.ROOMS_BUCKET}
    assert len(committed) < len(plan.rooms)


async def test_progress_counts_only_acknowledged_writes_and_ends_on_the_total(
    plan: Plan,
) -> None:
    lines: list[str] = []

    await apply_plan(_FakeStore(), plan, lines.append)  # type: ignore[arg-type]

    done = [int(line.split()[1].split("/")[0]) for line in lines]
    assert done == sorted(set(done))  # rising, never repeated
    assert lines[-1] == f"progress: {plan.writes}/{plan.writes} records written"

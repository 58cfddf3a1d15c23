"""The migration job (SPEC §8) against real stacks: parity, idempotence, resumption, refusals."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

import msgspec
import pytest

from tests.fixtures.legacy import build_legacy_db, corrupt_copy, unknown_schema_db
from tests.integration.harness import StackFactory, run_cli
from unibus.client.profile import write_stack_info
from unibus.core import naming
from unibus.core.connect import NatsTarget
from unibus.core.errors import PostureError
from unibus.core.kvstore import JetStreamStore
from unibus.core.models import Role, Status
from unibus.core.nkeys import canonical_user_key
from unibus.core.provisioning import ASSETS, AssetKind, asset_status
from unibus.migrate.job import (
    DivergedTargetError,
    MigrationError,
    MigrationOptions,
    migrate,
)
from unibus.migrate.legacy import LegacyFormatError
from unibus.migrate.snapshot import Snapshot, export_kv, export_sqlite
from unibus.stack.launcher import LocalStack

UNREACHABLE = NatsTarget(urls=("nats://127.0.0.1:1",))


async def _target_snapshot(stacks: StackFactory, stack: LocalStack) -> Snapshot:
    nc = await stacks.connect(stack)
    return await export_kv(await JetStreamStore.open(nc, op_timeout=10.0))


def _migrated_part(target: Snapshot, source: Snapshot) -> Snapshot:
    users = {u.key for u in source.users}
    return Snapshot.of(
        [u for u in target.users if u.key in users],
        target.rooms,
        target.members,
        target.sealed_keys,
    )


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _exists(path: str) -> bool:
    return Path(path).exists()


def _backups(db: Path) -> list[Path]:
    return sorted(db.parent.glob(f"{db.name}.backup-*"))


async def test_migration_into_a_3_node_r3_cluster_is_faithful_idempotent_and_safe(
    stacks: StackFactory, tmp_path: Path
) -> None:
    fixture = build_legacy_db(tmp_path / "membership.db")
    assert fixture.sealed_keys >= 1000
    assert len(fixture.revoked) >= 2
    assert max(fixture.rooms.values()) == 3
    stack = await stacks.start(nodes=3)
    options = MigrationOptions(db=fixture.path, target=stack.target("internal"), replicas=3)
    source = await export_sqlite(fixture.path)

    first = await migrate(options)

    # parity: counts and content hash of both sides
    assert first.parity
    assert first.changed
    assert first.source_hash == first.target_hash
    assert first.source_counts == source.counts()
    assert first.backup is not None
    assert _exists(first.backup)
    target = await _target_snapshot(stacks, stack)
    assert _migrated_part(target, source) == source
    rooms = {r.room_id: r for r in target.rooms}
    assert {rid: rooms[rid].epoch for rid in fixture.rooms} == fixture.rooms
    assert all(r.chain == () for r in target.rooms)
    revoked = {canonical_user_key(k) for k in fixture.revoked}
    assert {u.key for u in target.users if u.status is Status.REVOKED} >= revoked
    nc = await stacks.connect(stack)
    js = nc.jetstream(timeout=5.0)
    for asset in ASSETS:
        status = await asset_status(js, asset, cluster_size=3)
        assert status.replicas == 3, status

    # idempotent: a second run writes nothing and says so
    second = await migrate(options)
    assert not second.changed
    assert second.written == 0
    assert second.result.startswith("already migrated")
    assert await _target_snapshot(stacks, stack) == target

    # a user revoked in the target after the first run stays revoked
    store = await JetStreamStore.open(nc)
    active = next(u for u in source.users if u.status is Status.ACTIVE and u.role is Role.MEMBER)
    await store.set_user_status(active.key, Status.REVOKED)
    third = await migrate(options)
    assert third.kept_revoked == [active.key]
    assert (await store.get_user(active.key)).value.status is Status.REVOKED

    # a diverged target is refused with the differences, and nothing is written
    victim = source.users[5]
    before = (await store.get_user(victim.key)).value
    await store.set_user_status(victim.key, before.status)  # no-op, keeps revision
    raw = msgspec.structs.replace(before, handle="someone-else")
    await store.put_records(naming.USERS_BUCKET, [(victim.key, msgspec.json.encode(raw))])
    with pytest.raises(DivergedTargetError) as refused:
        await migrate(options)
    assert any(victim.key in d and "handle" in d for d in refused.value.differences)
    assert (await store.get_user(victim.key)).value.handle == "someone-else"

    # --force overwrites with the source, still without re-activating anyone
    forced = await migrate(dataclasses.replace(options, force=True))
    assert forced.parity
    assert forced.overwritten
    assert (await store.get_user(victim.key)).value.handle == victim.handle
    assert (await store.get_user(active.key)).value.status is Status.REVOKED


async def test_a_migration_into_a_cluster_nobody_provisioned_provisions_what_it_needs(
    stacks: StackFactory, tmp_path: Path
) -> None:
    fixture = build_legacy_db(tmp_path / "membership.db")
    stack = await stacks.start(nodes=3, provision=False)

    report = await migrate(
        MigrationOptions(db=fixture.path, target=stack.target("internal"), replicas=3)
    )

    assert report.parity
    assert report.provisioned
    js = (await stacks.connect(stack)).jetstream(timeout=5.0)
    for asset in ASSETS:
        if asset.kind is AssetKind.KV:
            status = await asset_status(js, asset, cluster_size=3)
            assert status.replicas == 3, status


async def test_a_killed_migration_converges_when_run_again(
    stacks: StackFactory, tmp_path: Path
) -> None:
    fixture = build_legacy_db(tmp_path / "big.db", users=60, rooms=150, members_per_room=40)
    assert fixture.sealed_keys > 10_000
    stack = await stacks.start(nodes=1)
    target = stack.target("internal")
    args = [
        sys.executable,
        "-m",
        "unibus.migrate",
        "--db",
        str(fixture.path),
        "--internal-id-file",
        str(target.identity_file),
        "--replicas",
        "1",
        "--no-backup",
        *(x for url in target.urls for x in ("--nats-url", url)),
    ]
    if target.ca_file is not None:
        args += ["--ca", str(target.ca_file)]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(120):
            while True:
                line = (await proc.stderr.readline()).decode()
                assert line, "the job ended before making progress"
                if line.startswith("progress:"):
                    break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    source = await export_sqlite(fixture.path)
    partial = await _target_snapshot(stacks, stack)
    assert len(partial.sealed_keys) < len(source.sealed_keys)

    proc2 = await asyncio.create_subprocess_exec(
        *args, "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(300):
        out, err = await proc2.communicate()
    assert proc2.returncode == 0, err.decode()
    report = json.loads(out)
    assert (report["version"], report["outcome"]) == (1, "migrated")
    assert report["parity"]
    assert report["changed"]
    # a scheduler reads the progress too: one JSON object per stderr line
    progress = [json.loads(line)["progress"] for line in err.decode().splitlines()]
    assert any(p.startswith("progress: ") for p in progress), progress
    assert _migrated_part(await _target_snapshot(stacks, stack), source) == source

    again = await migrate(
        MigrationOptions(db=fixture.path, target=target, replicas=1, backup=False)
    )
    assert not again.changed


async def test_the_cli_verb_migrates_a_local_stack_and_reports_json(
    stacks: StackFactory, tmp_path: Path
) -> None:
    fixture = build_legacy_db(tmp_path / "m.db", rooms=5)
    stack = await stacks.start(nodes=1)
    write_stack_info(stack.layout.root, stack.info())
    where = ["--dir", str(stack.layout.root)]

    code, out, err = await run_cli("migrate-to-kv", "--db", str(fixture.path), *where, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["parity"]
    assert report["source_hash"] == report["target_hash"]
    assert report["source_counts"]["sealed_keys"] == fixture.sealed_keys

    code, out, err = await run_cli("migrate-to-kv", "--db", str(fixture.path), *where)
    assert code == 0, err
    assert out.startswith("already migrated")


@pytest.mark.parametrize("kind", ["corrupt", "unknown-schema", "missing", "not-sqlite"])
async def test_unusable_sources_are_refused_with_nothing_written(tmp_path: Path, kind: str) -> None:
    good = build_legacy_db(tmp_path / "good.db", rooms=30).path
    db = tmp_path / f"{kind}.db"
    if kind == "corrupt":
        corrupt_copy(good, db)
    elif kind == "unknown-schema":
        unknown_schema_db(db)
    elif kind == "not-sqlite":
        db.write_bytes(b"this is not a database\n" * 100)
    before = _listing(tmp_path)

    with pytest.raises(LegacyFormatError):
        await migrate(MigrationOptions(db=db, target=UNREACHABLE))
    assert _listing(tmp_path) == before

    code, _, err = await run_cli(
        "migrate-to-kv",
        "--db",
        str(db),
        "--nats-url",
        "nats://127.0.0.1:1",
        "--identity",
        str(tmp_path / "none.nk"),
    )
    assert code == 1
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("unibus migrate-to-kv: error: ")
    assert _listing(tmp_path) == before


async def test_an_empty_source_is_never_a_success(tmp_path: Path) -> None:
    empty = build_legacy_db(tmp_path / "empty.db", users=0, rooms=0).path
    with pytest.raises(MigrationError, match="no users and no rooms"):
        await migrate(MigrationOptions(db=empty, target=UNREACHABLE))
    assert _backups(empty) == []


async def test_a_remote_url_without_ca_is_refused_before_connecting(tmp_path: Path) -> None:
    db = build_legacy_db(tmp_path / "m.db", rooms=2).path
    remote = NatsTarget(urls=("nats://192.0.2.10:4222",))  # TEST-NET: would hang if dialled
    async with asyncio.timeout(5):
        with pytest.raises(PostureError, match="--ca"):
            await migrate(MigrationOptions(db=db, target=remote))
    assert _backups(db) == []

    code, _, err = await run_cli(
        "migrate-to-kv",
        "--db",
        str(db),
        "--nats-url",
        "nats://192.0.2.10:4222",
        "--identity",
        str(tmp_path / "none.nk"),
        timeout=20,
    )
    assert code == 1, err
    assert "--ca" in err
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "unibus.migrate",
        "--db",
        str(db),
        "--nats-url",
        "nats://192.0.2.10:4222",
        "--internal-id-file",
        str(tmp_path / "none.nk"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        _, err2 = await proc.communicate()
    assert proc.returncode == 1
    assert b"--ca" in err2
    assert _backups(db) == []


async def test_the_job_reports_a_failure_as_a_json_summary_a_scheduler_can_read(
    tmp_path: Path,
) -> None:
    db = build_legacy_db(tmp_path / "m.db", rooms=2).path
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "unibus.migrate",
        "--json",
        "--db",
        str(db),
        "--nats-url",
        "nats://192.0.2.10:4222",  # remote without --ca: refused before any socket opens
        "--internal-id-file",
        str(tmp_path / "none.nk"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    assert proc.returncode == 1, err.decode()
    summary = json.loads(out)
    assert summary["version"] == 1
    assert summary["outcome"] == "failed"
    assert summary["error_type"] == "PostureError"
    assert "--ca" in summary["error"]
    assert "again" in summary["retry"]

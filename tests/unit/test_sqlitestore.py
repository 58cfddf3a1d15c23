"""The legacy SQLite store, the snapshot and the migration plan, without any socket."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
from pathlib import Path

import msgspec
import pytest

from tests.fixtures.legacy import build_legacy_db, corrupt_copy, unknown_schema_db
from unibus.cli.main import main as cli_main
from unibus.core.errors import ConflictError, NotFoundError
from unibus.core.models import Status
from unibus.core.nkeys import KeyPair, Prefix, canonical_user_key
from unibus.migrate.job import DivergedTargetError, backup_sqlite, plan_import
from unibus.migrate.legacy import LEGACY_KEY_ID, LegacyFormatError, SQLiteStore
from unibus.migrate.snapshot import Snapshot, export_sqlite


def _snapshot(path: Path) -> Snapshot:
    return asyncio.run(export_sqlite(path))


def test_a_legacy_file_reads_with_canonical_keys_and_real_epochs(tmp_path: Path) -> None:
    fixture = build_legacy_db(tmp_path / "m.db")
    snap = _snapshot(fixture.path)

    assert snap.counts() == {
        "users": len(fixture.users),
        "rooms": len(fixture.rooms),
        "members": fixture.members,
        "sealed_keys": fixture.sealed_keys,
    }
    assert {u.key for u in snap.users} == {canonical_user_key(k) for k in fixture.users}
    assert all(u.key.startswith("U") for u in snap.users)
    revoked = {u.key for u in snap.users if u.status is Status.REVOKED}
    assert revoked == {canonical_user_key(k) for k in fixture.revoked}
    assert {r.room_id: r.epoch for r in snap.rooms} == fixture.rooms
    assert all(ref.key_id == LEGACY_KEY_ID for r in snap.rooms for ref in r.epochs)
    assert all(r.chain == () for r in snap.rooms)


def test_reading_never_modifies_the_source(tmp_path: Path) -> None:
    fixture = build_legacy_db(tmp_path / "m.db", rooms=5)
    before = fixture.path.read_bytes()
    first = _snapshot(fixture.path)
    assert fixture.path.read_bytes() == before
    assert _snapshot(fixture.path).content_hash() == first.content_hash()


@pytest.mark.parametrize("kind", ["corrupt", "unknown", "missing", "text"])
def test_unusable_files_are_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.db"
    if kind == "corrupt":
        corrupt_copy(build_legacy_db(tmp_path / "good.db", rooms=30).path, path)
    elif kind == "unknown":
        unknown_schema_db(path)
    elif kind == "text":
        path.write_text("hello\n" * 500)
    with pytest.raises(LegacyFormatError):
        _snapshot(path)


def test_backup_is_a_checked_copy_next_to_the_source(tmp_path: Path) -> None:
    fixture = build_legacy_db(tmp_path / "m.db", rooms=5)
    backup = backup_sqlite(fixture.path)
    assert backup.parent == fixture.path.parent
    assert backup.name.startswith("m.db.backup-")
    assert _snapshot(backup) == _snapshot(fixture.path)
    assert backup_sqlite(fixture.path) != backup  # never overwrites an earlier backup


def test_a_backup_is_private_from_its_creation_whatever_the_umask(tmp_path: Path) -> None:
    fixture = build_legacy_db(tmp_path / "m.db", rooms=1)
    modes: dict[str, int] = {}
    real_open = os.open

    def recording_open(path: str, flags: int, mode: int = 0o777) -> int:
        modes.setdefault(str(path), mode)
        return real_open(path, flags, mode)

    previous = os.umask(0)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "open", recording_open)
            backup = backup_sqlite(fixture.path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert modes[str(backup)] == 0o600  # created private, not created open and narrowed


def test_plan_keeps_revoked_users_revoked_and_refuses_divergence(tmp_path: Path) -> None:
    source = _snapshot(build_legacy_db(tmp_path / "m.db", rooms=4).path)
    assert plan_import(source, Snapshot()).writes > 0
    assert plan_import(source, source).writes == 0

    active = next(u for u in source.users if u.status is Status.ACTIVE)
    revoked = msgspec.structs.replace(active, status=Status.REVOKED, updated_at=1.0)
    target = Snapshot.of(
        [revoked if u.key == active.key else u for u in source.users],
        source.rooms,
        source.members,
        source.sealed_keys,
    )
    plan = plan_import(source, target)
    assert plan.kept_revoked == [active.key]
    assert plan.writes == 0

    renamed = msgspec.structs.replace(active, handle="mallory")
    diverged = Snapshot.of(
        [renamed if u.key == active.key else u for u in source.users],
        source.rooms,
        source.members,
        source.sealed_keys,
    )
    with pytest.raises(DivergedTargetError, match="mallory"):
        plan_import(source, diverged)
    assert plan_import(source, diverged, force=True).users[0].handle == active.handle


def test_store_compare_and_set_and_extension_columns(tmp_path: Path) -> None:
    fixture = build_legacy_db(tmp_path / "m.db", rooms=3)

    async def run() -> None:
        store = await SQLiteStore.open(fixture.path)
        try:
            room = (await store.list_rooms())[0]
            current = await store.get_room(room.room_id)
            assert current.revision == 1
            updated = msgspec.structs.replace(room, updated_at=room.updated_at + 1)
            await store.commit_room(current, updated)
            with pytest.raises(ConflictError):
                await store.commit_room(current, updated)
            with pytest.raises(NotFoundError):
                await store.get_user(KeyPair.generate(Prefix.USER).public_key)
        finally:
            await store.close()

    asyncio.run(run())
    conn = sqlite3.connect(fixture.path)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(rooms)")}
    finally:
        conn.close()
    assert {"id", "epoch", "owner", "created_at", "revision"} <= columns


def test_user_verbs_on_a_legacy_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "new.db"
    key = KeyPair.generate(Prefix.USER).public_key
    hex_key = bytes.fromhex(
        "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
    ).hex()

    assert cli_main(["user", "add", "--db", str(db), "--handle", "ada", "--key", key]) == 0
    assert cli_main(["user", "add", "--db", str(db), "--handle", "bob", "--key", hex_key]) == 0
    assert cli_main(["user", "add", "--db", str(db), "--handle", "x", "--key", key]) == 1
    assert cli_main(["user", "revoke", "--db", str(db), key, "--json"]) == 0
    capsys.readouterr()
    assert cli_main(["user", "list", "--db", str(db), "--json"]) == 0
    listed = {u["key"]: u for u in json.loads(capsys.readouterr().out)}
    assert listed[key]["status"] == "revoked"
    assert listed[canonical_user_key(hex_key)]["handle"] == "bob"
    conn = sqlite3.connect(db)
    try:
        stored = {row[0] for row in conn.execute("SELECT sign_pub FROM users")}
    finally:
        conn.close()
    assert hex_key in stored  # the legacy column keeps its 64-hex form
    assert cli_main(["user", "list", "--db", str(tmp_path / "absent.db")]) == 1

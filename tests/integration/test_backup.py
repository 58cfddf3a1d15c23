"""Backup and restore (issue 15), as a drill on a real 3-node stack.

Users, a room, its history and a blob are written; ``unibus backup`` snapshots the live
cluster; every node loses its disk; the nodes come back empty and ``unibus restore`` puts
the backup into them. Then the members, with their old keys, read their old history and
their blob, and send again. A backup that is truncated, altered or of another format is
refused before anything is written, and so is a target that is not empty (unless forced).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import pytest

from tests.integration.deployment import Deployment
from tests.integration.harness import bounded, run_cli
from unibus.client.profile import write_stack_info
from unibus.core.provisioning import ASSETS
from unibus.stack.backup import BACKUP_ORDER, MANIFEST_FILE, target_contents
from unibus.stack.topology import SERVICES

pytestmark = pytest.mark.timeout(900)


async def _lose_every_disk_and_start_empty(deployment: Deployment) -> None:
    """Every node's JetStream state gone, the nodes started again, nothing provisioned."""
    stack = deployment.stack
    for node in stack.spec.node_names:
        for service in SERVICES:
            stack.stop_service(service, node)
    for node in stack.spec.node_names:
        stack.stop_node(node, kill=True)
    for node in stack.spec.node_names:
        shutil.rmtree(stack.layout.node_store(node))
        stack.start_node(node)
    await stack.wait_ready()


async def test_a_backup_restored_after_every_disk_is_lost_brings_back_history_and_blobs(
    deployment: Deployment, tmp_path: Path
) -> None:
    stack = deployment.stack
    write_stack_info(stack.layout.root, stack.info())
    where = ["--dir", str(stack.layout.root)]
    alice = await deployment.member("alice")
    bob = await deployment.member("bob")
    room = await alice.create_room([bob.key])
    await room.wait_admitted()
    said = [f"before the loss {i}".encode() for i in range(30)]
    for data in said:
        await room.publish(data)
    blob = b"an attachment " * 5000
    ref = await alice.put_blob(room, blob, name="notes.txt")
    saved = tmp_path / "backup"

    code, out, err = await run_cli("backup", *where, "--out", str(saved), "--json", timeout=300)

    assert code == 0, err
    taken = json.loads(out)["assets"]
    assert sorted(taken) == sorted(BACKUP_ORDER)
    assert taken["UNIBUS_messages"]["messages"] >= len(said) + 1  # and the announcement
    manifest = msgspec.json.decode((saved / MANIFEST_FILE).read_bytes())
    hashed = {a["asset"] for a in manifest["assets"] if a["content_sha256"]}
    assert hashed == set(BACKUP_ORDER) - {"UNIBUS_nonces"}, "an asset without a content hash"
    await _lose_every_disk_and_start_empty(deployment)
    nc = await deployment.stacks.connect(stack)
    assert await target_contents(nc) == {}, "the disks were not lost"

    code, out, err = await run_cli("restore", *where, "--from", str(saved), "--json", timeout=600)

    assert code == 0, err
    assert sorted(json.loads(out)["restored"]) == sorted(BACKUP_ORDER)
    assert set(await target_contents(nc)) == {asset.name for asset in ASSETS}
    for node in stack.spec.node_names:
        for service in SERVICES:
            stack.start_service(service, node)
    await stack.wait_services_ready()
    # Members, with their old keys, read what they had and go on.
    alice_again = await deployment.device(alice.identity)
    bob_again = await deployment.device(bob.identity)
    at_bob = await bob_again.room(room.room_id)
    at_alice = await alice_again.room(room.room_id)
    await at_bob.wait_admitted()
    async with bounded(120):
        history = [m.data async for m in at_bob.history()]
        assert [d for d in history if d.startswith(b"before the loss")] == said
        assert await bob_again.get_blob(at_bob, ref) == blob
        await at_alice.wait_admitted()
        await at_alice.publish(b"after the restore")
        newest = [m.data async for m in at_bob.history()]
        assert newest[-1] == b"after the restore"
    code, out, err = await run_cli("clientcheck", *where, "--json", timeout=240)
    assert code == 0, out[-2000:] + err[-2000:]


async def test_a_backup_that_is_truncated_altered_or_of_another_format_is_refused_untouched(
    deployment: Deployment, tmp_path: Path
) -> None:
    stack = deployment.stack
    write_stack_info(stack.layout.root, stack.info())
    where = ["--dir", str(stack.layout.root)]
    await deployment.member("carol")
    saved = tmp_path / "backup"
    code, _, err = await run_cli("backup", *where, "--out", str(saved), timeout=300)
    assert code == 0, err
    code, out, err = await run_cli("restore", "--from", str(saved), "--check", "--json")
    assert code == 0, err
    assert json.loads(out)["verified"] is True
    nc = await deployment.stacks.connect(stack)
    before = await target_contents(nc)

    # The target holds data: refused, and it says what is there.
    code, _, err = await run_cli("restore", *where, "--from", str(saved))
    assert code == 1
    assert "not empty" in err
    assert "UNIBUS_users" in err

    manifest_path = saved / MANIFEST_FILE
    manifest = msgspec.json.decode(manifest_path.read_bytes())
    users = next(a for a in manifest["assets"] if a["asset"] == "UNIBUS_users")
    data = saved / users["file"]
    original = data.read_bytes()
    cases = {
        "truncated": lambda: data.write_bytes(original[: len(original) // 2]),
        "altered": lambda: data.write_bytes(bytes([original[0] ^ 1]) + original[1:]),
        "another format": lambda: manifest_path.write_bytes(
            msgspec.json.encode({**manifest, "v": 99})
        ),
    }
    for case, damage in cases.items():
        damage()
        try:
            code, _, err = await run_cli("restore", *where, "--from", str(saved), "--force")
        finally:
            data.write_bytes(original)
            manifest_path.write_bytes(msgspec.json.encode(manifest))
        assert code == 1, case
        expected = "format 99" if case == "another format" else users["file"]
        assert expected in err, (case, err)
        assert await target_contents(nc) == before, f"a {case} backup wrote to the target"
    # Content parity is checked after the restore: a backup whose messages are not the
    # ones its manifest hashed is reported, not taken for a success.
    lying = {
        **manifest,
        "assets": [
            {**a, "content_sha256": "0" * 64} if a["asset"] == "UNIBUS_users" else a
            for a in manifest["assets"]
        ],
    }
    manifest_path.write_bytes(msgspec.json.encode(lying))
    code, _, err = await run_cli("restore", *where, "--from", str(saved), "--force", timeout=300)
    assert code == 1
    assert "UNIBUS_users: the restored messages differ from the backup's" in err

"""The backup drill on the compose stack (issue 15), as an operator runs it from the host.

Users, a room, its history and a blob are written; ``unibus backup`` snapshots the live
stack; ``docker compose down -v`` destroys every volume; the nodes come back empty
(``up -d n1 n2 n3``: staged from the stack's directory, nothing provisioned);
``unibus restore`` puts the backup in; the rest of the stack starts. ``clientcheck``
passes, and the members read their old history and blob with their old keys.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.containers.harness import UNIBUS_IMAGE, ComposeStack
from unibus.client.api import ApiClient
from unibus.client.sdk import BlobRef, Client
from unibus.core.nkeys import KeyPair, Prefix, read_seed_file

pytestmark = pytest.mark.timeout(900)
SAID = [f"before the volumes went {i}".encode() for i in range(25)]
BLOB = b"a blob that must survive " * 2000


@pytest.fixture(scope="module")
def drill_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    """A stack of this module's own: the drill destroys its volumes."""
    stack = ComposeStack.create(tmp_path_factory.mktemp("backup"), image=UNIBUS_IMAGE)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


async def _write(stack: ComposeStack, alice: KeyPair, bob: KeyPair) -> dict[str, Any]:
    info = stack.info
    ca = Path(info.ca_file)
    admin = ApiClient(info.api_urls, read_seed_file(Path(info.admin_seed_file)), ca_file=ca)
    async with admin:
        await admin.add_user(alice.public_key, "alice")
        await admin.add_user(bob.public_key, "bob")
    async with await Client.open(
        identity=alice, nats_urls=info.nats_urls, api_urls=info.api_urls, ca_file=ca
    ) as client:
        room = await client.create_room([bob.public_key])
        await room.wait_admitted()
        for data in SAID:
            await room.publish(data)
        ref = await client.put_blob(room, BLOB, name="drill.bin")
    return {"room": room.room_id, "ref": ref}


async def _read(stack: ComposeStack, bob: KeyPair, room_id: str, ref: BlobRef) -> dict[str, Any]:
    info = stack.info
    async with await Client.open(
        identity=bob, nats_urls=info.nats_urls, api_urls=info.api_urls, ca_file=Path(info.ca_file)
    ) as client:
        room = await client.room(room_id)
        await room.wait_admitted()
        history = [m.data async for m in room.history()]
        blob = await client.get_blob(room, ref)
    return {"history": history, "blob": blob}


def test_backup_then_every_volume_destroyed_then_restore_brings_the_bus_back(
    drill_stack: ComposeStack, tmp_path: Path
) -> None:
    stack = drill_stack
    stack.wait_healthy()
    alice, bob = KeyPair.generate(Prefix.USER), KeyPair.generate(Prefix.USER)
    written = asyncio.run(_write(stack, alice, bob))
    saved = tmp_path / "backup"
    where = ["--dir", str(stack.directory)]

    taken = stack.cli("backup", *where, "--out", str(saved), "--json", timeout=300)
    assert taken.returncode == 0, taken.stderr[-3000:]
    assert json.loads(taken.stdout)["assets"]["UNIBUS_messages"]["messages"] > len(SAID)

    gone = stack.compose("down", "-v", "--timeout", "10")
    assert gone.returncode == 0, gone.stderr
    nodes = stack.compose("up", "-d", "--no-build", "--wait", "n1", "n2", "n3", timeout=300)
    assert nodes.returncode == 0, nodes.stderr[-3000:]
    restored = stack.cli("restore", *where, "--from", str(saved), "--json", timeout=600)
    assert restored.returncode == 0, restored.stderr[-3000:]
    rest = stack.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "240", timeout=300)
    assert rest.returncode == 0, rest.stderr[-3000:]

    status = stack.wait_healthy(timeout=180)
    assert all(a["replicas"] == 3 and not a["degraded"] for a in status["assets"])
    check = stack.cli("clientcheck", *where, timeout=240)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    read = asyncio.run(_read(stack, bob, written["room"], written["ref"]))
    assert [d for d in read["history"] if d.startswith(b"before the volumes")] == SAID
    assert read["blob"] == BLOB

"""Rooms migrated from the legacy store come back to life (issue 14).

A legacy file built from the documented schema, with real key pairs and sealed keys that
open, is migrated into a running stack. Until its owner adopts a room, its members see it
as awaiting adoption (with what to run), not as an error, and read their legacy keys. The
owner adopts it with the CLI; then both members exchange messages and read the history,
and their legacy keys are still theirs. Nobody else may adopt it: not a member, not an
administrator while the owner is active, not twice. An administrator adopts a room whose
owner was revoked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.legacy import LegacyRoom, LegacyUser, build_legacy_db_with_keys
from tests.integration.deployment import Deployment
from tests.integration.harness import bounded, run_cli
from unibus.client.changes import adoption
from unibus.client.crypto import new_room_key, seal_room_key
from unibus.client.errors import ApiError, RoomAwaitingAdoptionError
from unibus.core import naming
from unibus.core.apimodels import NewRoom
from unibus.core.nkeys import KeyPair, Prefix, read_seed_file, write_seed_file
from unibus.migrate.job import MigrationOptions, migrate

pytestmark = pytest.mark.timeout(600)


def _user(handle: str, **kwargs: str) -> LegacyUser:
    return LegacyUser(KeyPair.generate(Prefix.USER), handle, **kwargs)


async def test_a_migrated_room_awaits_adoption_then_its_owner_adopts_it_and_members_talk(
    deployment: Deployment, tmp_path: Path
) -> None:
    alice, bob, dave = _user("alice"), _user("bob"), _user("dave")
    carol = _user("carol", status="revoked")
    room_id = naming.new_room_id()
    legacy = LegacyRoom(room_id, owner=alice, members=(alice, bob, carol), epochs=2, former=(dave,))
    keys = build_legacy_db_with_keys(
        tmp_path / "membership.db", [alice, bob, carol, dave], [legacy]
    )
    report = await migrate(
        MigrationOptions(
            db=tmp_path / "membership.db",
            target=deployment.stack.target("internal"),
            replicas=3,
        )
    )
    assert report.parity

    bob_client = await deployment.device(bob.identity)
    waiting = await bob_client.room(room_id)
    # Awaiting adoption: shown as such, nothing trusted or sent, the legacy keys readable.
    assert waiting.awaiting_adoption
    assert dict(waiting.legacy_keys) == {1: keys[(room_id, 1)], 2: keys[(room_id, 2)]}
    with pytest.raises(RoomAwaitingAdoptionError, match=f"unibus room adopt {room_id}"):
        await waiting.publish(b"too early")
    # A member who is not the owner cannot adopt it.
    with pytest.raises(ApiError) as refused:
        await waiting.adopt()
    assert refused.value.status == 403
    # Nor can an administrator while the owner is an active user.
    admin = read_seed_file(deployment.stack.layout.identity("admin"))
    with pytest.raises(ApiError) as refused:
        await deployment.admin.adopt_room(room_id, _adoption(admin, room_id, [bob]))
    assert refused.value.status == 403

    alice_seed = tmp_path / "alice.nk"
    write_seed_file(alice_seed, alice.identity.seed)
    stack = deployment.stack
    where = ["--identity", str(alice_seed), "--ca", str(stack.layout.certs.client_ca_cert)]
    for node in stack.spec.node_names:
        where += ["--nats-url", stack.client_url(node), "--api-url", stack.api_url(node)]
    code, out, err = await run_cli("room", "adopt", room_id, *where, "--json")
    assert code == 0, err
    adopted = json.loads(out)
    # The revoked member is not adopted; the epoch after the legacy ones begins.
    assert adopted["members"] == sorted([alice.identity.public_key, bob.identity.public_key])
    assert (adopted["epoch"], adopted["legacy_epochs"]) == (3, 2)

    alice_client = await deployment.device(alice.identity)
    alice_room = await alice_client.room(room_id)
    bob_room = await bob_client.room(room_id)
    assert not bob_room.awaiting_adoption
    assert bob_room.state.owner == alice.identity.public_key
    assert dict(bob_room.legacy_keys) == {1: keys[(room_id, 1)], 2: keys[(room_id, 2)]}
    await alice_room.wait_admitted()
    await bob_room.wait_admitted()
    await alice_room.publish(b"welcome back, bob")
    await bob_room.publish(b"hello again, alice")
    async with bounded(60):
        by_bob = [m.data async for m in bob_room.history()]
        by_alice = [m.data async for m in alice_room.history()]
    assert by_bob == by_alice == [b"welcome back, bob", b"hello again, alice"]

    # Adopted once: a second adoption is a conflict.
    with pytest.raises(ApiError) as again:
        await alice_client.api.adopt_room(room_id, _adoption(alice.identity, room_id, [bob]))
    assert again.value.status == 409


async def test_an_admin_adopts_a_room_whose_legacy_owner_was_revoked(
    deployment: Deployment, tmp_path: Path
) -> None:
    erin, frank = _user("erin", status="revoked"), _user("frank")
    room_id = naming.new_room_id()
    legacy = LegacyRoom(room_id, owner=erin, members=(erin, frank), epochs=1)
    build_legacy_db_with_keys(tmp_path / "membership.db", [erin, frank], [legacy])
    options = MigrationOptions(
        db=tmp_path / "membership.db", target=deployment.stack.target("internal"), replicas=3
    )
    assert (await migrate(options)).parity
    admin = read_seed_file(deployment.stack.layout.identity("admin"))
    admin_client = await deployment.device(admin)

    # Not a member, yet it may see the room: it is the one who can bring it back.
    room = await admin_client.room(room_id)
    assert room.awaiting_adoption
    await room.adopt()

    assert room.state.owner == admin.public_key
    assert room.state.members == tuple(sorted([admin.public_key, frank.identity.public_key]))
    frank_room = await (await deployment.device(frank.identity)).room(room_id)
    await room.wait_admitted()
    await frank_room.wait_admitted()
    await room.publish(b"this room is back")
    async with bounded(60):
        assert [m.data async for m in frank_room.history()] == [b"this room is back"]


def _adoption(adopter: KeyPair, room_id: str, members: list[LegacyUser]) -> NewRoom:
    """A well-formed adoption genesis by ``adopter`` (what a forger would send)."""
    everyone = {adopter.public_key, *(m.identity.public_key for m in members)}
    key = new_room_key()
    return adoption(
        adopter,
        room_id,
        legacy_epochs=2,
        members=everyone,
        sealed_by_member={member: seal_room_key(key, member) for member in everyone},
    )

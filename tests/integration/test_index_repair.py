"""``unibus index repair`` (issue 14): a stale member → room entry (a room the user is not
in) counts against the user's room cap and lists in their rooms; a missing one hides a
room they are in. The repair removes the one and restores the other, from the room
records, and a second run changes nothing."""

from __future__ import annotations

import json

from tests.integration.harness import StackFactory, create_room, run_cli, user_record
from unibus.client.profile import write_stack_info
from unibus.core import naming
from unibus.core.kvstore import JetStreamStore
from unibus.core.models import RoomIndexEntry, encode
from unibus.core.nkeys import KeyPair, Prefix


async def test_index_repair_removes_stale_entries_and_restores_missing_ones(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3)
    write_stack_info(stack.layout.root, stack.info())
    nc = await stacks.connect(stack)
    store = await JetStreamStore.open(nc)
    alice, bob = KeyPair.generate(Prefix.USER), KeyPair.generate(Prefix.USER)
    for pair, handle in ((alice, "alice"), (bob, "bob")):
        await store.add_user(user_record(pair.public_key, handle))
    real = await create_room(store, alice.public_key, bob.public_key)
    index = await nc.jetstream(timeout=5.0).key_value(naming.ROOMS_BY_MEMBER_BUCKET)
    # Stale: an entry for a room bob is not in. Missing: alice's entry for her own room.
    ghost = naming.new_room_id()
    entry = RoomIndexEntry(room_id=ghost, member=bob.public_key)
    await index.put(naming.room_index_key(bob.public_key, ghost), encode(entry))
    await index.delete(naming.room_index_key(alice.public_key, real))
    assert await store.rooms_of(bob.public_key) == sorted([real, ghost])
    assert await store.rooms_of(alice.public_key) == []

    code, out, err = await run_cli("index", "repair", "--dir", str(stack.layout.root), "--json")

    assert code == 0, err
    assert json.loads(out) == {"added": 1, "removed": 1}
    assert await store.rooms_of(bob.public_key) == [real]
    assert await store.rooms_of(alice.public_key) == [real]
    code, out, err = await run_cli("index", "repair", "--dir", str(stack.layout.root))
    assert code == 0, err
    assert "nothing to repair" in out

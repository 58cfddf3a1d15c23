"""A signed batch goes into the history as one JetStream atomic batch: acknowledged once,
stored whole, as one unbroken run of sequences. A history stream of an earlier release,
provisioned without atomic batches, still stores every message of a batch (message by
message), and provisioning gives it atomic batches without touching what it holds."""

from __future__ import annotations

import asyncio
import dataclasses

from nats.js.client import JetStreamContext

from tests.integration.deployment import Deployment
from tests.integration.harness import StackFactory, bounded
from unibus.client.room import Message, Room
from unibus.core import naming
from unibus.core.provisioning import Provisioning, provision


async def _history_of(room: Room) -> list[Message]:
    async with bounded(60):
        return [m async for m in room.history()]


async def _allow_atomic(js: JetStreamContext, allowed: bool) -> None:
    config = (await js.stream_info(naming.MESSAGES_STREAM)).config
    await js.update_stream(dataclasses.replace(config, allow_atomic=allowed))


async def test_a_batch_lands_as_one_unbroken_run_at_the_sequences_publish_many_returned(
    deployment: Deployment,
) -> None:
    alice = await deployment.member("alice")
    bob = await deployment.member("bob")
    alice_room = await alice.create_room([bob.key])
    bob_room = await bob.room(alice_room.room_id)
    batches = [[f"alice {b}.{i}".encode() for i in range(50)] for b in range(4)]

    async def bob_talks() -> list[int]:
        return [await bob_room.publish(f"bob {i}".encode()) for i in range(40)]

    # Bob's single messages race alice's batches into the same stream.
    results = await asyncio.gather(
        bob_talks(), *(alice_room.publish_many(batch) for batch in batches)
    )
    singles, runs = results[0], results[1:]

    for run in runs:
        assert run == list(range(run[0], run[0] + len(run)))
    history = [m for m in await _history_of(bob_room) if m.sender == alice.key]
    stored = {m.data: m.stream_seq for m in history}
    for batch, run in zip(batches, runs, strict=True):
        assert [stored[data] for data in batch] == run
    assert not set(singles) & {seq for run in runs for seq in run}
    assert bob_room.undeliverable.total == 0


async def test_a_history_stream_without_atomic_batches_still_stores_every_message_once(
    deployment: Deployment,
) -> None:
    js = (await deployment.stacks.connect(deployment.stack)).jetstream(timeout=10.0)
    await _allow_atomic(js, False)  # as an earlier release provisioned it
    alice = await deployment.member("alice")
    bob = await deployment.member("bob")
    alice_room = await alice.create_room([bob.key])
    bob_room = await bob.room(alice_room.room_id)
    first = [f"first {i}".encode() for i in range(30)]
    second = [f"second {i}".encode() for i in range(30)]

    seqs = await alice_room.publish_many(first) + await alice_room.publish_many(second)

    history = await _history_of(bob_room)
    assert [m.data for m in history] == first + second
    assert [m.stream_seq for m in history] == seqs
    assert len(set(seqs)) == len(seqs)
    assert bob_room.undeliverable.total == 0


async def test_provisioning_gives_an_earlier_history_stream_atomic_batches_and_keeps_its_messages(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3, provision=False)
    nc = await stacks.connect(stack)
    js = nc.jetstream(timeout=10.0)
    await provision(js, Provisioning(replicas=3))
    await _allow_atomic(js, False)  # as an earlier release provisioned it
    for i in range(5):
        await js.publish(naming.room_subject("a" * 20), f"old {i}".encode())
    assert not (await js.stream_info(naming.MESSAGES_STREAM)).config.allow_atomic

    await provision(js, Provisioning(replicas=3))

    info = await js.stream_info(naming.MESSAGES_STREAM)
    assert info.config.allow_atomic
    assert info.state.messages == 5

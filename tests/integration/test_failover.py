"""A node loss through the eyes of the other nodes' users (issue 11).

Each test first makes one node lead the streams the callout decides from (``UNIBUS_users``,
``UNIBUS_rooms``) and the API's nonces, then takes it away, and asserts what a user can rely
on — admitted, no error surfaced, nothing acknowledged lost, nothing revoked readmitted —
never which connection object survived or how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import pytest

from tests.integration.harness import (
    StackFactory,
    bounded,
    connect_once,
    eventually,
    probing,
    user_record,
)
from unibus.client.api import ApiClient
from unibus.client.connection import AccessDeniedError, BusConnection
from unibus.client.sdk import Client
from unibus.core import naming
from unibus.core.connect import NatsTarget, connect
from unibus.core.kvfollow import KvFollower
from unibus.core.kvstore import JetStreamStore
from unibus.core.models import Status
from unibus.core.nkeys import KeyPair, Prefix, read_seed_file, write_seed_file
from unibus.stack.launcher import LocalStack
from unibus.stack.leadership import move_leaders

DECIDING_STREAMS = (
    naming.kv_stream(naming.USERS_BUCKET),
    naming.kv_stream(naming.ROOMS_BUCKET),
    naming.kv_stream(naming.NONCES_BUCKET),
)


async def _leading_node(stacks: StackFactory, stack: LocalStack) -> str:
    """Make the first node lead the deciding streams; returns its name."""
    node = stack.spec.node_names[0]
    await move_leaders(await stacks.connect(stack), DECIDING_STREAMS, to=node)
    return node


def _survivors(stack: LocalStack, gone: str) -> tuple[str, ...]:
    return tuple(n for n in stack.spec.node_names if n != gone)


@dataclass(frozen=True)
class _Arranged:
    """A 3-node stack with services, whose first node leads the deciding streams, and a
    member the callouts already admit on the other two."""

    stack: LocalStack
    member: KeyPair
    leader: str
    survivors: tuple[str, ...]


async def _arrange(stacks: StackFactory, handle: str) -> _Arranged:
    stack = await stacks.start(nodes=3, services=True)
    store = await JetStreamStore.open(await stacks.connect(stack))
    member = KeyPair.generate(Prefix.USER)
    await store.add_user(user_record(member.public_key, handle))
    leader = await _leading_node(stacks, stack)
    survivors = _survivors(stack, leader)
    await eventually(
        lambda: _connect_once(stack, member, survivors), until=lambda _: True, what="admitted"
    )
    return _Arranged(stack, member, leader, survivors)


async def _connect_once(stack: LocalStack, who: KeyPair, nodes: tuple[str, ...]) -> None:
    """One fresh connection of ``who`` to ``nodes``, no retry (``connect_once``)."""
    path = stack.layout.root / f"probe-{who.public_key[:8]}.nk"
    if not path.exists():
        write_seed_file(path, who.seed)
    target = NatsTarget(
        urls=tuple(stack.client_url(n) for n in nodes),
        ca_file=stack.layout.certs.client_ca_cert,
        identity_file=path,
    )
    await connect_once(target)


def _probing(
    stack: LocalStack, who: KeyPair, nodes: tuple[str, ...]
) -> contextlib.AbstractAsyncContextManager[list[tuple[float, BaseException | None]]]:
    """Connect ``who`` every 200 ms while the block runs; yields the outcomes."""
    return probing(lambda: _connect_once(stack, who, nodes))


async def test_a_follower_delivers_every_change_in_order_across_the_loss_of_the_leader(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3)
    leader = await _leading_node(stacks, stack)
    survivors = _survivors(stack, leader)
    nc = await connect(stack.target(nodes=survivors), name="unibus-test-follower")
    writer = await stacks.connect(stack, nodes=survivors)
    kv = await writer.jetstream(timeout=10.0).key_value(naming.ROOMS_BUCKET)
    written: list[int] = []
    try:
        async with KvFollower(nc, naming.ROOMS_BUCKET) as follower:
            assert await follower.until_caught_up(10.0)
            for i in range(20):
                written.append(await kv.put(f"before-{i}", b"x"))
            stack.stop_node(leader, kill=True)

            async def put_after(i: int) -> int:
                return await kv.put(f"after-{i}", b"y")

            for i in range(20):
                written.append(
                    await eventually(lambda i=i: put_after(i), until=bool, what="a write")
                )
            seen: list[int] = []
            async with bounded(60):
                while len(seen) < len(written) or seen[-1] < written[-1]:
                    entry = await follower.next(timeout=30.0)
                    assert entry is not None, f"the follower stalled after {seen[-1:]}"
                    seen.append(entry.revision)
    finally:
        await nc.close()
    assert seen == sorted(seen), "out of order"
    assert set(written) <= set(seen), "a committed change was never delivered"


async def test_a_planned_stop_of_the_node_leading_users_and_rooms_refuses_no_connect(
    stacks: StackFactory,
) -> None:
    arranged = await _arrange(stacks, "probe")
    stack = arranged.stack

    async with _probing(stack, arranged.member, arranged.survivors) as outcomes:
        await asyncio.sleep(1.0)
        # The planned stop: lame duck, then SIGTERM (compose stop's SIGUSR2 does the same).
        await asyncio.to_thread(stack.stop_node, arranged.leader)
        await asyncio.sleep(8.0)

    refused = [(round(t, 2), repr(exc)) for t, exc in outcomes if exc is not None]
    assert len(outcomes) > 20, "the probe barely ran"
    assert refused == [], f"connects refused during a planned stop: {refused}"


async def test_an_sdk_client_rides_out_a_sigkill_of_the_leader_without_error_or_loss(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3, services=True)
    admin_key = read_seed_file(stack.layout.identity("admin"))
    ca = stack.layout.certs.client_ca_cert
    nats_urls = [stack.client_url(n) for n in stack.spec.node_names]
    api_urls = [stack.api_url(n) for n in stack.spec.node_names]
    alice, bob = KeyPair.generate(Prefix.USER), KeyPair.generate(Prefix.USER)
    async with ApiClient(api_urls, admin_key, ca_file=ca) as admin:
        await admin.add_user(alice.public_key, "alice")
        await admin.add_user(bob.public_key, "bob")
    sender = await Client.open(identity=alice, nats_urls=nats_urls, api_urls=api_urls, ca_file=ca)
    receiver = await Client.open(identity=bob, nats_urls=nats_urls, api_urls=api_urls, ca_file=ca)
    try:
        room = await sender.create_room([bob.public_key])
        theirs = await eventually(
            lambda: receiver.room(room.room_id), until=lambda r: r is not None, what="room seen"
        )
        received: list[bytes] = []
        acknowledged: list[bytes] = []

        async def receive() -> None:
            async for message in theirs.subscribe():
                received.append(message.data)

        reading = asyncio.create_task(receive())
        # The node that goes leads the deciding streams and holds the receiver's connection.
        leader = await eventually(
            lambda: asyncio.sleep(0, stack.node_of(receiver.bus.nc)),
            until=bool,
            what="the receiver connected",
        )
        await move_leaders(await stacks.connect(stack), DECIDING_STREAMS, to=leader)
        async with bounded(120):
            for i in range(60):
                if i == 10:
                    stack.stop_node(leader, kill=True)
                body = f"message {i}".encode()
                await room.publish(body)  # raises into the test if the SDK surfaces an error
                acknowledged.append(body)
                await asyncio.sleep(0.2)
            await eventually(
                lambda: asyncio.sleep(0, set(acknowledged) <= set(received)),
                until=bool,
                timeout=60,
                what="every acknowledged message received",
            )
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        history = [m.data async for m in theirs.history()]
    finally:
        await sender.close()
        await receiver.close()
    assert set(acknowledged) <= set(history), "an acknowledged message is not in the history"
    assert len(received) == len(set(received)), "a message was delivered twice"


async def test_a_revocation_committed_during_the_election_stays_enforced(
    stacks: StackFactory,
) -> None:
    arranged = await _arrange(stacks, "soon-revoked")
    stack, member, leader, survivors = (
        arranged.stack,
        arranged.member,
        arranged.leader,
        arranged.survivors,
    )
    survivor_store = await JetStreamStore.open(await stacks.connect(stack, nodes=survivors))

    stack.stop_node(leader, kill=True)

    async def revoke() -> object:
        return await survivor_store.set_user_status(member.public_key, Status.REVOKED)

    # Committed as soon as the survivors elected a leader for the users stream.
    await eventually(revoke, until=lambda _: True, timeout=60, interval=0.2, what="revoked")
    stack.start_node(leader)
    deadline = time.monotonic() + 15.0
    attempts = 0
    while time.monotonic() < deadline:
        attempts += 1
        with pytest.raises(Exception):  # noqa: B017,PT011 - refused, on whichever node
            await _connect_once(stack, member, stack.spec.node_names)
        await asyncio.sleep(0.2)
    assert attempts > 10
    with pytest.raises(AccessDeniedError):
        await BusConnection.connect(
            [stack.client_url(n) for n in stack.spec.node_names],
            member,
            ca_file=stack.layout.certs.client_ca_cert,
            connect_budget=5.0,
        )

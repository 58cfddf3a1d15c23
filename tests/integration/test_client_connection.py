"""BusConnection on a real 3-node cluster with the callout: kicks, expiry, revocation, node loss."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
import nats.js.errors
import pytest
import pytest_asyncio
from nats.aio.msg import Msg

from tests.integration.harness import StackFactory, bounded, create_room, eventually, user_record
from unibus.client.connection import AccessDeniedError, BusConnection, BusUnavailableError
from unibus.core import naming
from unibus.core.errors import ConfigError, PostureError
from unibus.core.kvstore import JetStreamStore
from unibus.core.models import Status
from unibus.core.nkeys import KeyPair, Prefix
from unibus.stack.launcher import LocalStack


@dataclass
class Inbox:
    """Everything one subscription received."""

    received: list[bytes] = field(default_factory=list)

    async def __call__(self, msg: Msg) -> None:
        self.received.append(msg.data)


@dataclass
class World:
    stack: LocalStack
    store: JetStreamStore
    alice: KeyPair
    bob: KeyPair
    shared_room: str
    connections: list[BusConnection] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [self.stack.client_url(n) for n in self.stack.spec.node_names]

    async def connect(self, who: KeyPair, **kwargs: float) -> BusConnection:
        conn = await BusConnection.connect(
            self.urls,
            who,
            ca_file=self.stack.layout.certs.client_ca_cert,
            name="unibus-test-client",
            **kwargs,  # type: ignore[arg-type]
        )
        self.connections.append(conn)
        return conn

    async def admitted(self, who: KeyPair) -> BusConnection:
        """Connect once the callout's view has the user (it follows the KV by a watch)."""

        async def attempt() -> BusConnection:
            return await self.connect(who, connect_budget=10.0)

        return await eventually(attempt, until=lambda c: c.is_connected, what="admitted")

    async def close(self) -> None:
        for conn in self.connections:
            await conn.close()


WorldFactory = Callable[..., Awaitable[World]]


@pytest_asyncio.fixture
async def make_world(stacks: StackFactory) -> AsyncIterator[WorldFactory]:
    worlds: list[World] = []

    async def make(environ: dict[str, str] | None = None) -> World:
        stack = await stacks.start(nodes=3, services=True, environ=environ)
        store = await JetStreamStore.open(await stacks.connect(stack))
        alice, bob = KeyPair.generate(Prefix.USER), KeyPair.generate(Prefix.USER)
        await store.add_user(user_record(alice.public_key, "alice"))
        await store.add_user(user_record(bob.public_key, "bob"))
        shared = await create_room(store, alice.public_key, bob.public_key)
        world = World(stack, store, alice, bob, shared)
        worlds.append(world)
        return world

    try:
        yield make
    finally:
        for world in worlds:
            await world.close()


async def _delivered(
    sender: BusConnection, subject: str, inbox: Inbox, marker: bytes, *, timeout: float = 30.0
) -> None:
    """``marker`` published by ``sender`` reaches ``inbox`` (re-published until it does)."""

    async def probe() -> bool:
        if marker not in inbox.received:
            await sender.publish(subject, marker)
        return marker in inbox.received

    await eventually(probe, until=bool, timeout=timeout, interval=0.2, what=f"{marker!r} received")


def _view_fresh(metrics_port: int) -> bool | None:
    """The callout's ``unibus_authcallout_view_fresh`` gauge (None: no answer)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("unibus_authcallout_view_fresh "):
            return float(line.split()[1]) == 1.0
    return None


def _counter() -> tuple[list[int], Callable[[], Awaitable[None]]]:
    calls: list[int] = []

    async def on_reauthorized() -> None:
        calls.append(1)

    return calls, on_reauthorized


# -- kicks -----------------------------------------------------------------------------------------
async def test_a_kicked_client_reconnects_by_itself_with_its_new_permissions(
    make_world: WorldFactory,
) -> None:
    world = await make_world()
    alice = await world.admitted(world.alice)
    bob = await world.admitted(world.bob)
    shared = naming.room_subject(world.shared_room)
    shared_inbox = Inbox()
    await bob.subscribe(shared, shared_inbox)
    await _delivered(alice, shared, shared_inbox, b"before the kick")

    # Bob subscribes to a room he is not in yet: the server refuses the SUB for now.
    alices = await create_room(world.store, world.alice.public_key)
    new_inbox = Inbox()
    await bob.subscribe(naming.room_subject(alices), new_inbox)
    reconnects = bob.reconnects

    # Adding bob to it changes his rooms: the callout kicks his connection.
    current = await world.store.get_room(alices)
    grown = msgspec.structs.replace(
        current.value, members=tuple(sorted({*current.value.members, world.bob.public_key}))
    )
    await world.store.commit_room(current, grown)

    await eventually(
        lambda: asyncio.sleep(0, bob.reconnects), until=lambda n: n > reconnects, what="kicked"
    )
    await _delivered(alice, shared, shared_inbox, b"after the kick")
    # nats-py re-sent the SUB on reconnect, now with permission for the new room.
    await _delivered(alice, naming.room_subject(alices), new_inbox, b"welcome")
    assert bob.generation == 1, "a kick is a plain reconnect, not a new connection"

    await bob.close()
    assert bob.is_closed
    with pytest.raises(BusUnavailableError, match="closed"):
        await bob.publish(shared, b"after close")
    with pytest.raises(BusUnavailableError, match="closed"):
        await bob.wait_connected(timeout=1)


# -- expiry ----------------------------------------------------------------------------------------
async def test_a_client_whose_authorization_expires_reauthorizes_and_keeps_receiving(
    make_world: WorldFactory,
) -> None:
    world = await make_world({"UNIBUS_JWT_TTL": "3"})
    alice = await world.admitted(world.alice)
    bob = await world.admitted(world.bob)
    calls, on_reauthorized = _counter()
    bob.on_reauthorized.append(on_reauthorized)
    subject = naming.room_subject(world.shared_room)
    inbox = Inbox()
    await bob.subscribe(subject, inbox)
    await _delivered(alice, subject, inbox, b"first authorization")
    start = bob.generation

    for expiry in (1, 2):
        wanted = start + expiry
        await eventually(
            lambda: asyncio.sleep(0, bob.generation),
            until=lambda g: g >= wanted,  # noqa: B023 - awaited within this iteration
            timeout=20,
            what=f"re-authorized after expiry {expiry}",
        )
        # The remembered subscription was re-established on the brand-new connection.
        await _delivered(alice, subject, inbox, f"after expiry {expiry}".encode())

    assert len(calls) >= 2
    await bob.wait_connected(timeout=10)
    # A JetStream context of the current connection gets answers (none of bob's history
    # consumers exists yet, so the answer is "not found").
    consumer = naming.history_consumer(world.shared_room, world.bob.public_key, 0)
    with pytest.raises(nats.js.errors.NotFoundError):
        await bob.jetstream().delete_consumer(naming.MESSAGES_STREAM, consumer)


# -- revocation ------------------------------------------------------------------------------------
async def test_a_revoked_user_gets_access_denied_within_a_bounded_time(
    make_world: WorldFactory,
) -> None:
    world = await make_world()
    bob = await world.admitted(world.bob)
    subject = naming.room_subject(world.shared_room)
    await bob.subscribe(subject, Inbox())

    await world.store.set_user_status(world.bob.public_key, Status.REVOKED)

    async def refused() -> bool:
        try:
            await bob.wait_connected(timeout=1)
        except AccessDeniedError:
            return True
        return False

    # Refusals must last the re-authorization window (30 s by default) before a once
    # accepted identity gives up: a callout refuses everyone during an election too.
    await eventually(refused, until=bool, timeout=75, what="AccessDeniedError surfaced")
    assert bob.is_closed
    async with bounded(5):
        with pytest.raises(AccessDeniedError, match="revoked"):
            await bob.wait_connected()
        with pytest.raises(AccessDeniedError):
            await bob.publish(subject, b"x")
        with pytest.raises(AccessDeniedError):
            await bob.request(subject, b"x", timeout=1)
        with pytest.raises(AccessDeniedError):
            bob.jetstream()
        with pytest.raises(AccessDeniedError):
            await bob.subscribe(subject, Inbox())

    # A new connection with the revoked key, and one with an unknown key, are refused too.
    async with bounded(30):
        with pytest.raises(AccessDeniedError, match="unibus keygen"):
            await world.connect(world.bob)
        with pytest.raises(AccessDeniedError):
            await world.connect(KeyPair.generate(Prefix.USER))


# -- node loss -------------------------------------------------------------------------------------
async def test_a_client_keeps_working_when_its_node_stops(make_world: WorldFactory) -> None:
    world = await make_world()
    alice = await world.admitted(world.alice)
    bob = await world.admitted(world.bob)
    subject = naming.room_subject(world.shared_room)
    inbox = Inbox()
    await bob.subscribe(subject, inbox)
    await _delivered(alice, subject, inbox, b"before")

    url = bob.nc.connected_url
    assert url is not None
    world.stack.stop_node(world.stack.node_of(bob.nc))

    # What bob relies on: his subscription goes on receiving, on another node, without
    # his code doing anything. Whether the SDK kept the connection or opened a new one
    # (a callout may refuse a reconnect while a leader is elected) is its own business.
    await _delivered(alice, subject, inbox, b"after the node stopped")
    await bob.wait_connected(timeout=10)
    assert bob.nc.connected_url is not None
    assert bob.nc.connected_url.port != url.port
    consumer = naming.history_consumer(world.shared_room, world.bob.public_key, 0)

    async def ask() -> bytes:
        return (await bob.request(naming.consumer_delete_subject(consumer), timeout=2)).data

    # JetStream answers into bob's own inbox prefix ("consumer not found": none was made).
    answer = await eventually(ask, until=bool, what="request answered")
    assert b"consumer not found" in answer


async def test_a_client_whose_node_hangs_goes_on_receiving_on_another_node(
    make_world: WorldFactory,
) -> None:
    """A frozen host (SIGSTOP: its sockets stay open, nothing answers) is noticed by the
    client's own pings and left for another node within seconds, not nats-py's minutes."""
    world = await make_world()
    bob = await world.admitted(world.bob)
    home = world.stack.node_of(bob.nc)
    # Alice publishes from a node that stays up: what is measured is bob's way out.
    alice = await eventually(
        lambda: world.admitted(world.alice),
        until=lambda c: world.stack.node_of(c.nc) != home,
        what="alice on another node than bob",
    )
    subject = naming.room_subject(world.shared_room)
    inbox = Inbox()
    await bob.subscribe(subject, inbox)
    await _delivered(alice, subject, inbox, b"before")

    pid = world.stack.pid(home)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        await _delivered(alice, subject, inbox, b"while bob's node hangs", timeout=40)
        assert bob.nc.connected_url is not None
        assert world.stack.node_of(bob.nc) != home
    finally:
        os.kill(pid, signal.SIGCONT)
    assert not bob.is_closed


async def test_a_client_rides_out_refusals_while_the_cluster_has_no_quorum(
    make_world: WorldFactory,
) -> None:
    world = await make_world()
    alice = await world.admitted(world.alice)
    # A window long enough for this test's outage; the default is shorter.
    bob = await eventually(
        lambda: world.connect(world.bob, connect_budget=10.0, reauth_denial_window=120.0),
        until=lambda c: c.is_connected,
        what="bob admitted",
    )
    subject = naming.room_subject(world.shared_room)
    inbox = Inbox()
    await bob.subscribe(subject, inbox)
    await _delivered(alice, subject, inbox, b"before the outage")
    nodes = world.stack.spec.node_names
    home = world.stack.node_of(bob.nc)
    survivor = next(n for n in nodes if n != home)
    stopped = [n for n in nodes if n != survivor]

    # Bob's node and one more go: the survivor's callout can no longer prove its view
    # against a quorum; once its view is stale it refuses bob (fails closed), again and
    # again, as it would refuse anyone during an election.
    for node in stopped:
        world.stack.stop_node(node)
    metrics = world.stack.spec.ports[nodes.index(survivor)].callout_metrics
    await eventually(
        lambda: asyncio.to_thread(_view_fresh, metrics),
        until=lambda fresh: fresh is False,
        timeout=30,
        what="the survivor's callout view stale",
    )
    await bob.nc.force_reconnect()
    await eventually(
        lambda: asyncio.sleep(0, bob.denials),
        until=lambda n: n >= 3,
        timeout=60,
        what="three refusals in a row (as many as a first connect tolerates)",
    )
    assert not bob.is_closed
    for node in stopped:
        world.stack.start_node(node)

    await bob.wait_connected(timeout=90)
    await _delivered(alice, subject, inbox, b"after the outage", timeout=90)
    assert bob.denials == 0
    assert not bob.is_closed


# -- refused before any socket opens -------------------------------------------------------------
async def test_a_remote_bus_without_a_pinned_ca_and_a_non_user_identity_are_refused() -> None:
    user = KeyPair.generate(Prefix.USER)
    async with bounded(5):
        with pytest.raises(PostureError, match="pinned CA"):
            await BusConnection.connect(["tls://bus.example.net:4222"], user, ca_file=None)
        with pytest.raises(ConfigError, match="user key pair"):
            await BusConnection.connect(
                ["nats://127.0.0.1:4222"], KeyPair.generate(Prefix.ACCOUNT), ca_file=None
            )

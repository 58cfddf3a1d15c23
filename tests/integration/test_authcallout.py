"""The callout on a real 3-node cluster: who gets in, what they may do, and revocation."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import msgspec
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js import api

from tests.integration.harness import StackFactory, create_room, eventually, user_record
from unibus.authcallout.kicks import Kicker
from unibus.core import naming
from unibus.core.connect import tls_context, tls_options
from unibus.core.kvstore import JetStreamStore
from unibus.core.models import Status
from unibus.core.nkeys import KeyPair, Prefix
from unibus.stack.launcher import LocalStack
from unibus.stack.leadership import move_leaders

PERMISSION_VIOLATION = "permissions violation"


@dataclass
class Client:
    """A user's connection plus everything the server told it asynchronously."""

    nc: NATS
    key: str
    errors: list[str] = field(default_factory=list)

    def violations(self) -> list[str]:
        return [e for e in self.errors if PERMISSION_VIOLATION in e.lower()]


@dataclass
class World:
    stack: LocalStack
    store: JetStreamStore
    alice: KeyPair
    bob: KeyPair
    shared_room: str
    bob_room: str
    clients: list[Client] = field(default_factory=list)

    async def connect(self, who: KeyPair, *, node: str = "n1", reconnect: bool = False) -> Client:
        client = Client(nc=NATS(), key=who.public_key)

        async def on_error(exc: Exception) -> None:
            client.errors.append(str(exc))

        await client.nc.connect(
            servers=[self.stack.client_url(node)],
            **tls_options(self.stack.layout.certs.client_ca_cert),  # type: ignore[arg-type]
            nkeys_seed_str=who.seed,
            inbox_prefix=naming.inbox_prefix(who.public_key),
            connect_timeout=5,
            allow_reconnect=reconnect,
            max_reconnect_attempts=5,
            reconnect_time_wait=0.2,
            error_cb=on_error,
        )
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            if not client.nc.is_closed:
                await client.nc.close()


@pytest_asyncio.fixture
async def world(stacks: StackFactory) -> AsyncIterator[World]:
    stack = await stacks.start(nodes=3, services=True)
    store = await JetStreamStore.open(await stacks.connect(stack))
    alice, bob = KeyPair.generate(Prefix.USER), KeyPair.generate(Prefix.USER)
    await store.add_user(user_record(alice.public_key, "alice"))
    await store.add_user(user_record(bob.public_key, "bob"))
    shared = await create_room(store, alice.public_key, bob.public_key)
    bobs = await create_room(store, bob.public_key)
    found = World(stack, store, alice, bob, shared, bobs)
    try:
        yield found
    finally:
        await found.close()


def _callout_metrics(stack: LocalStack, node: str, prefix: str) -> dict[str, float]:
    """The samples of one node's callout whose name starts with ``prefix``."""
    ports = stack.spec.ports[stack.spec.node_names.index(node)]
    url = f"http://127.0.0.1:{ports.callout_metrics}/metrics"
    with urllib.request.urlopen(url, timeout=2) as response:
        lines = response.read().decode().splitlines()
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in lines if line.startswith(prefix))
    }


def _decisions(stack: LocalStack) -> dict[str, float]:
    """Decisions by reason, summed over every callout instance."""
    totals: dict[str, float] = {}
    for node in stack.spec.node_names:
        samples = _callout_metrics(stack, node, "unibus_authcallout_decisions_total{")
        for labels, value in samples.items():
            reason = labels.split('reason="', 1)[1].split('"', 1)[0]
            totals[reason] = totals.get(reason, 0.0) + value
    return totals


async def _count(stack: LocalStack, reason: str) -> float:
    return (await asyncio.to_thread(_decisions, stack)).get(reason, 0.0)


async def _denied(world: World, who: KeyPair, node: str = "n1") -> str:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - nats-py raises several types here
        await world.connect(who, node=node)
    return str(caught.value)


# -- admission ---------------------------------------------------------------------------------
@pytest.mark.parametrize("node", ["n1", "n2", "n3"])
async def test_an_allowlisted_user_connects_to_any_node_into_the_bus_account(
    world: World, stacks: StackFactory, node: str
) -> None:
    client = await world.connect(world.alice, node=node)

    assert client.nc.is_connected
    kicker = Kicker(await stacks.connect(world.stack, "system"), expected_servers=3)
    names = [c.name for c in await kicker.connections()]
    assert any(name.startswith(world.alice.public_key + "@") for name in names)


async def test_an_unknown_key_is_denied_and_counted(world: World) -> None:
    before = await _count(world.stack, "unknown_key")

    message = await _denied(world, KeyPair.generate(Prefix.USER))

    assert "authorization violation" in message.lower()
    await eventually(
        lambda: _count(world.stack, "unknown_key"), until=lambda n: n > before, what="counted"
    )


async def test_a_revoked_user_is_denied_and_counted(world: World) -> None:
    await world.store.set_user_status(world.bob.public_key, Status.REVOKED)
    before = await _count(world.stack, "revoked")

    async def denied() -> bool:
        try:
            client = await world.connect(world.bob)
        except Exception:  # noqa: BLE001 - any refusal is what we wait for
            return True
        await client.nc.close()
        return False

    await eventually(denied, until=bool, what="revoked user denied")
    assert await _count(world.stack, "revoked") > before


async def _raw_connect(stack: LocalStack, connect: dict[str, object]) -> str:
    """Speak the NATS protocol by hand: INFO, CONNECT, PING; returns the server's verdict."""
    host, port = stack.spec.bind, stack.spec.ports[0].client
    context = tls_context(stack.layout.certs.client_ca_cert)
    # TLS first: the servers accept nothing in clear (handshake_first).
    reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    try:
        async with asyncio.timeout(10):
            info = json.loads((await reader.readline()).decode().split(" ", 1)[1])
            body = {**connect, "verbose": False, "pedantic": False, "protocol": 1}
            if body.get("sig") == "NONCE":
                body["sig"] = info["nonce"]
            writer.write(b"CONNECT " + json.dumps(body).encode() + b"\r\nPING\r\n")
            await writer.drain()
            while True:
                line = (await reader.readline()).decode().strip()
                if line.startswith(("PONG", "-ERR")) or not line:
                    return line
    finally:
        writer.close()


async def test_a_forged_nkey_signature_is_denied_as_bad_signature(world: World) -> None:
    before = await _count(world.stack, "bad_signature")
    forged = {"nkey": world.alice.public_key, "sig": "A" * 86}

    verdict = await _raw_connect(world.stack, forged)

    assert verdict.startswith("-ERR")
    await eventually(
        lambda: _count(world.stack, "bad_signature"), until=lambda n: n > before, what="counted"
    )


@pytest.mark.parametrize(
    ("credentials", "reason"),
    [
        ({"nkey": "not-a-key", "sig": "AAAA"}, "bad_request"),
        ({"user": "admin", "pass": "admin"}, "no_credentials"),
        ({"auth_token": "letmein"}, "no_credentials"),
        ({"nkey": KeyPair.generate(Prefix.ACCOUNT).public_key, "sig": "NONCE"}, "bad_request"),
        ({}, "no_credentials"),
    ],
)
async def test_garbage_credentials_are_denied_with_a_reason(
    world: World, credentials: dict[str, object], reason: str
) -> None:
    before = await _count(world.stack, reason)

    verdict = await _raw_connect(world.stack, credentials)

    assert verdict.startswith("-ERR")
    await eventually(
        lambda: _count(world.stack, reason), until=lambda n: n > before, what=f"{reason} counted"
    )


async def test_clients_cannot_inject_auth_requests_and_the_service_keeps_answering(
    world: World, stacks: StackFactory
) -> None:
    """Only servers originate auth requests; even the callout's own identity cannot.

    (Malformed requests as a server could send them are fuzzed in the unit tests.)
    """
    before = await asyncio.to_thread(_decisions, world.stack)
    callout = await stacks.connect(world.stack, "callout")
    for payload in (b"", b"garbage", b"xkv1" + bytes(100), b"eyJhbGciOi.x.y", bytes(70_000)):
        await callout.publish(naming.CALLOUT_SUBJECT, payload, reply=callout.new_inbox())
    await callout.flush()

    client = await world.connect(world.alice, node="n2")

    assert client.nc.is_connected
    after = await asyncio.to_thread(_decisions, world.stack)
    assert after["dropped_malformed"] == before["dropped_malformed"]
    assert after["allowed"] == before["allowed"] + 1


# -- permissions -------------------------------------------------------------------------------
async def _assert_publish_refused(client: Client, subject: str) -> None:
    seen = len(client.violations())
    await client.nc.publish(subject, b"x")
    await client.nc.flush()

    async def violations() -> list[str]:
        return client.violations()

    found = await eventually(violations, until=lambda v: len(v) > seen, timeout=10, what=subject)
    assert subject.lower() in found[-1].lower()


async def _assert_subscribe_refused(client: Client, subject: str) -> None:
    seen = len(client.violations())
    await client.nc.subscribe(subject)
    await client.nc.flush()

    async def violations() -> list[str]:
        return client.violations()

    found = await eventually(violations, until=lambda v: len(v) > seen, timeout=10, what=subject)
    assert subject.lower() in found[-1].lower()


async def test_a_member_can_publish_and_subscribe_its_rooms_subjects(world: World) -> None:
    alice = await world.connect(world.alice, node="n1")
    bob = await world.connect(world.bob, node="n3")
    subject = naming.room_subject(world.shared_room)
    sub = await bob.nc.subscribe(subject)
    await bob.nc.flush()

    async def delivered() -> bytes:
        await alice.nc.publish(subject, b"hello")
        return (await sub.next_msg(timeout=1)).data

    assert await eventually(delivered, until=lambda d: d == b"hello", what="delivery") == b"hello"
    assert alice.violations() == []
    assert bob.violations() == []


async def test_the_server_refuses_everything_outside_the_users_rooms(world: World) -> None:
    alice = await world.connect(world.alice)
    bob_key = world.bob.public_key
    bobs_consumer = naming.history_consumer(world.shared_room, bob_key, 0)

    await _assert_publish_refused(alice, naming.room_subject(world.bob_room))
    await _assert_subscribe_refused(alice, naming.room_wildcard(world.bob_room))
    await _assert_subscribe_refused(alice, ">")
    await _assert_publish_refused(alice, "$JS.API.STREAM.LIST")
    await _assert_publish_refused(alice, f"$JS.API.STREAM.MSG.GET.{naming.MESSAGES_STREAM}")
    await _assert_subscribe_refused(alice, "$SYS.>")
    await _assert_publish_refused(alice, "$SYS.REQ.SERVER.PING.CONNZ")
    await _assert_subscribe_refused(alice, naming.inbox_prefix(bob_key) + ".>")
    await _assert_subscribe_refused(alice, "_INBOX.>")
    await _assert_publish_refused(alice, naming.consumer_next_subject(bobs_consumer))
    await _assert_publish_refused(
        alice, naming.consumer_create_subject(world.shared_room, bobs_consumer)
    )
    await _assert_publish_refused(alice, naming.consumer_delete_subject(bobs_consumer))
    assert alice.nc.is_connected


async def test_two_connections_of_one_user_read_their_rooms_history_at_once(world: World) -> None:
    writer = await world.connect(world.alice, node="n1")
    js = writer.nc.jetstream(timeout=5)
    subject = naming.room_subject(world.shared_room)
    sent = [f"m{i}".encode() for i in range(20)]
    for payload in sent:
        await js.publish(subject, payload, stream=naming.MESSAGES_STREAM)
    readers = [await world.connect(world.alice, node=n) for n in ("n2", "n3")]

    async def read_all(client: Client, slot: int) -> list[bytes]:
        reader_js = client.nc.jetstream(timeout=5)
        name = naming.history_consumer(world.shared_room, client.key, slot)
        await reader_js.add_consumer(
            naming.MESSAGES_STREAM,
            api.ConsumerConfig(
                name=name,
                filter_subject=subject,
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
                inactive_threshold=60.0,
            ),
        )
        sub = await reader_js.pull_subscribe_bind(name, stream=naming.MESSAGES_STREAM)
        got: list[bytes] = []
        async with asyncio.timeout(30):
            while len(got) < len(sent):
                for msg in await sub.fetch(10, timeout=5):
                    got.append(msg.data)
                    await msg.ack()
        return got

    first, second = await asyncio.gather(read_all(readers[0], 0), read_all(readers[1], 1))

    assert first == sent
    assert second == sent
    assert all(not r.violations() for r in readers)


# -- live changes ------------------------------------------------------------------------------
async def test_revoking_a_connected_user_closes_its_connections_on_every_node(
    world: World,
) -> None:
    connections = [await world.connect(world.bob, node=n) for n in ("n1", "n2", "n3")]
    assert all(c.nc.is_connected for c in connections)

    await world.store.set_user_status(world.bob.public_key, Status.REVOKED)

    async def all_closed() -> bool:
        return all(c.nc.is_closed for c in connections)

    await eventually(all_closed, until=bool, timeout=15, what="every connection closed")
    message = await _denied(world, world.bob, node="n2")
    assert "authorization violation" in message.lower()


async def test_revoking_a_user_closes_its_session_on_a_node_in_lame_duck_at_once(
    world: World,
) -> None:
    """A node in lame duck answers no system request, CONNZ included, and closes its
    clients only over its lame-duck duration (30 s in the compose files): the callout that
    admitted the session kicks it by the server and client id it remembers."""
    bob = await world.connect(world.bob, node="n2")
    pid = world.stack.pid("n2")
    assert pid is not None
    assert bob.nc.is_connected
    os.kill(pid, signal.SIGUSR2)
    # The node starts closing its clients after about three seconds (it waits a second for
    # its leaderships to move, then the two-second grace period): act well before.
    await asyncio.sleep(0.3)
    await world.store.set_user_status(world.bob.public_key, Status.REVOKED)
    revoked_at = time.monotonic()

    await _closed_soon_after(bob, revoked_at)


def _revoke_latencies(stack: LocalStack) -> list[tuple[float, float]]:
    """(sum, count) of each live callout's revoke → disconnect histogram."""
    histogram = "unibus_authcallout_revoke_disconnect_seconds"
    found = []
    for node in stack.spec.node_names:
        if stack.service_pid("authcallout", node) is not None:
            samples = _callout_metrics(stack, node, f"{histogram}_")
            found.append((samples[f"{histogram}_sum"], samples[f"{histogram}_count"]))
    return found


async def _closed_soon_after(conn: Client, since: float) -> None:
    """``conn`` is closed by the server, within 1.5 s of ``since`` (monotonic)."""
    await eventually(
        lambda: asyncio.sleep(0, conn.nc.is_closed),
        until=bool,
        timeout=5,
        interval=0.02,
        what="the session closed",
    )
    assert time.monotonic() - since < 1.5


async def test_with_a_node_down_a_revoked_session_elsewhere_closes_without_waiting_for_it(
    world: World, stacks: StackFactory
) -> None:
    """The lost node cannot answer CONNZ: the kicks on the nodes that answer go out as
    their answers arrive, and the revoke → disconnect metric counts to the kick, not to
    the end of the lost node's two-second timeout."""
    bob = await world.connect(world.bob, node="n1")
    # No election in the way: the revocation's write needs the users stream's leader.
    streams = tuple(naming.kv_stream(b) for b in (naming.USERS_BUCKET, naming.ROOMS_BUCKET))
    at_n1 = await stacks.connect(world.stack, nodes=("n1",))
    await move_leaders(at_n1, streams, to="n1")
    store = await JetStreamStore.open(at_n1)
    world.stack.stop_node("n3", kill=True)

    await store.set_user_status(world.bob.public_key, Status.REVOKED)
    revoked_at = time.monotonic()
    await _closed_soon_after(bob, revoked_at)

    measured = await eventually(
        lambda: asyncio.to_thread(_revoke_latencies, world.stack),
        until=lambda found: any(count for _, count in found),
        what="the kick measured",
    )
    assert all(total < 1.5 * count for total, count in measured if count)


async def test_a_membership_added_while_connected_becomes_usable_after_the_reconnect(
    world: World,
) -> None:
    alice = await world.connect(world.alice, node="n1", reconnect=True)
    alice_only = await create_room(world.store, world.alice.public_key)
    bob = await world.connect(world.bob, node="n2", reconnect=True)
    subject = naming.room_subject(alice_only)
    received: list[bytes] = []

    async def collect(msg: nats.aio.msg.Msg) -> None:
        received.append(msg.data)

    await bob.nc.subscribe(subject, cb=collect)
    await bob.nc.flush()
    await eventually(
        lambda: asyncio.sleep(0, bob.violations()), until=bool, timeout=10, what="refused sub"
    )

    current = await world.store.get_room(alice_only)
    grown = msgspec.structs.replace(
        current.value, members=tuple(sorted({*current.value.members, world.bob.public_key}))
    )
    await world.store.commit_room(current, grown)

    async def bob_hears_alice() -> Sequence[bytes]:
        if alice.nc.is_connected:
            await alice.nc.publish(subject, b"welcome")
        return received

    await eventually(bob_hears_alice, until=bool, timeout=20, what="bob receives in the new room")
    assert received[0] == b"welcome"


async def test_a_user_past_the_room_cap_is_admitted_with_its_oldest_rooms_never_refused(
    world: World,
) -> None:
    """Refusing would let anyone lock a user out by adding it to rooms; the newest wait."""
    carol = KeyPair.generate(Prefix.USER)
    await world.store.add_user(user_record(carol.public_key, "carol"))
    first = await create_room(world.store, carol.public_key)
    for _ in range(255):
        await create_room(world.store, carol.public_key)

    async def admitted() -> bool:
        try:
            client = await world.connect(carol, node="n3")
        except Exception:  # noqa: BLE001 - the view may not have every room yet
            return False
        return client.nc.is_connected

    await eventually(admitted, until=bool, timeout=30, what="admitted at 256 rooms")
    newest = await create_room(world.store, carol.public_key)

    async def newest_withheld() -> bool:
        client = await world.connect(carol, node="n1")
        try:
            return not await _may_subscribe(client, newest) and await _may_subscribe(client, first)
        finally:
            await client.nc.close()

    await eventually(newest_withheld, until=bool, timeout=30, what="admitted without room 257")


async def _may_subscribe(client: Client, room_id: str) -> bool:
    """Whether the server accepts a SUB to the room: a refusal comes before the PONG."""
    before = len(client.errors)
    sub = await client.nc.subscribe(naming.room_subject(room_id))
    await client.nc.flush()
    await sub.unsubscribe()
    return not any(PERMISSION_VIOLATION in e.lower() for e in client.errors[before:])


# -- availability -------------------------------------------------------------------------------
async def test_without_quorum_the_callout_denies_and_admits_again_once_it_returns(
    world: World,
) -> None:
    survivor = "n1"
    others = [n for n in world.stack.spec.node_names if n != survivor]
    for name in others:
        world.stack.stop_node(name)

    async def denied_for_store() -> float:
        try:
            client = await world.connect(world.alice, node=survivor)
        except Exception:  # noqa: BLE001 - the refusal we wait for
            return await _count(world.stack, "store_unavailable")
        await client.nc.close()
        return 0.0

    await eventually(denied_for_store, until=lambda n: n > 0, timeout=30, what="fail closed")

    for name in others:
        world.stack.start_node(name)

    async def admitted() -> bool:
        try:
            client = await world.connect(world.alice, node=survivor)
        except Exception:  # noqa: BLE001 - still recovering
            return False
        return client.nc.is_connected

    await eventually(admitted, until=bool, timeout=60, what="admitted after recovery")


async def test_concurrent_connects_are_all_answered(world: World) -> None:
    """A reconnect storm: one task per request, none blocks another."""
    users = [KeyPair.generate(Prefix.USER) for _ in range(20)]
    for index, user in enumerate(users):
        await world.store.add_user(user_record(user.public_key, f"storm{index}"))

    async def all_known() -> bool:
        try:
            client = await world.connect(users[-1], node="n2")
        except Exception:  # noqa: BLE001 - the view may not have the last user yet
            return False
        await client.nc.close()
        return True

    await eventually(all_known, until=bool, what="view has every user")
    nodes = world.stack.spec.node_names
    clients = await asyncio.gather(
        *(world.connect(user, node=nodes[i % 3]) for i, user in enumerate(users * 2))
    )

    assert all(client.nc.is_connected for client in clients)

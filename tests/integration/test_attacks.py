"""Attacks a hostile member, a network relay or a KV writer made on a real stack (issue 10).

Each test is the attack as it was made from outside, and asserts what the victim can rely
on afterwards: nothing written, nothing admitted, nothing decrypted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import msgspec
import nats.js.errors
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from nats.aio.client import Client as NATS

from tests.integration.deployment import Deployment, Listener, deployed
from tests.integration.harness import StackFactory, bounded, eventually, run_cli, vm_hwm_kib
from unibus.client.api import ApiClient, ApiError
from unibus.client.changes import successor
from unibus.client.connection import BusConnection, BusUnavailableError
from unibus.client.crypto import open_room_key
from unibus.client.envelope import Sealer, decode_envelope, encode_envelope
from unibus.client.room import RollbackError, RoomError
from unibus.core import limits, naming
from unibus.core.connect import NatsTarget, connect
from unibus.core.nkeys import KeyPair, Prefix, read_seed_file
from unibus.core.provisioning import ASSETS, Provisioning, provision
from unibus.stack.certs import CertificateAuthority


async def _unchanged_for(
    probe: Callable[[], Awaitable[object]], expected: object, seconds: float
) -> None:
    """Fail as soon as ``probe()`` differs from ``expected``; pass once ``seconds`` went by."""
    deadline = time.monotonic() + seconds
    while True:
        assert await probe() == expected
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.2)


async def _last_seq(nc: NATS, stream: str, subject: str) -> int | None:
    """The stream sequence of ``subject``'s last message, None if it has none."""
    try:
        return (await nc.jetstream(timeout=5.0).get_last_msg(stream, subject)).seq
    except nats.js.errors.NotFoundError:
        return None


async def _subjects(nc: NATS, stream: str, pattern: str) -> list[str]:
    info = await nc.jetstream(timeout=5.0).stream_info(stream, subjects_filter=pattern)
    return sorted(info.state.subjects or {})


# -- 1. a reply subject reaches no stream ---------------------------------------------------------
async def test_no_reply_subject_a_member_names_writes_to_any_bucket_stream_or_room(
    deployment: Deployment,
) -> None:
    """Before the member account, JetStream acked into whatever subject a member named as
    reply, with the bus account's rights: user records, rooms, sealed keys, blob metadata and
    other rooms' history were all writable."""
    mallory = await deployment.member("mallory")
    victim = await deployment.member("victim")
    own = await mallory.create_room()
    other = await victim.create_room()
    await victim.put_blob(other, b"the victim's attachment")
    await own.wait_admitted()
    internal = await deployment.stacks.connect(deployment.stack)
    admin_key = read_seed_file(deployment.stack.layout.identity("admin")).public_key
    squatted = KeyPair.generate(Prefix.USER).public_key

    sealed = await _subjects(
        internal,
        naming.kv_stream(naming.ROOM_KEYS_BUCKET),
        f"$KV.{naming.ROOM_KEYS_BUCKET}.{other.room_id}.>",
    )
    blob_meta = await _subjects(
        internal, naming.object_stream(naming.BLOBS_BUCKET), f"$O.{naming.BLOBS_BUCKET}.M.>"
    )
    assert sealed
    assert blob_meta
    users = naming.kv_stream(naming.USERS_BUCKET)
    targets: dict[str, tuple[str, str]] = {
        "admin's user record": (users, f"$KV.{naming.USERS_BUCKET}.{admin_key}"),
        "another user's record": (users, f"$KV.{naming.USERS_BUCKET}.{victim.key}"),
        "a user not yet added": (users, f"$KV.{naming.USERS_BUCKET}.{squatted}"),
        "another room's record": (
            naming.kv_stream(naming.ROOMS_BUCKET),
            f"$KV.{naming.ROOMS_BUCKET}.{other.room_id}",
        ),
        "another room's sealed key": (naming.kv_stream(naming.ROOM_KEYS_BUCKET), sealed[0]),
        "blob metadata": (naming.object_stream(naming.BLOBS_BUCKET), blob_meta[0]),
        "another room's history": (naming.MESSAGES_STREAM, naming.room_subject(other.room_id)),
    }

    async def state() -> dict[str, int | None]:
        return {
            what: await _last_seq(internal, stream, subject)
            for what, (stream, subject) in targets.items()
        }

    before = await state()
    raw = mallory.bus.nc
    consumer = naming.history_consumer(own.room_id, mallory.key, 0)
    create = json.dumps(
        {
            "stream_name": naming.MESSAGES_STREAM,
            "config": {
                "name": consumer,
                "filter_subject": naming.room_subject(own.room_id),
                "ack_policy": "explicit",
                "deliver_policy": "all",
            },
        }
    ).encode()
    for _stream, reply in targets.values():
        # the three ways a member reaches JetStream: a stored message, the consumer API,
        # and a pull request
        await raw.publish(naming.room_subject(own.room_id), b"not an envelope", reply=reply)
        await raw.publish(
            naming.consumer_create_subject(own.room_id, consumer), create, reply=reply
        )
        await raw.publish(
            naming.consumer_next_subject(consumer), b'{"batch":1,"expires":100000000}', reply=reply
        )
    # An acknowledged publish after them: every hostile message reached the stream first.
    ack = await raw.request(naming.room_subject(own.room_id), b"sync", timeout=10.0)
    assert json.loads(ack.data)["stream"] == naming.MESSAGES_STREAM

    async with bounded(30):
        await _unchanged_for(state, before, seconds=2.0)
    # The victim and the admin keep working: the records are the ones the API wrote.
    assert (await deployment.admin.get_user(victim.key)).handle == "victim"
    assert (await deployment.admin.get_user(admin_key)).role == "admin"
    with pytest.raises(ApiError) as missing:
        await deployment.admin.get_user(squatted)
    assert missing.value.status == 404
    assert (await victim.room(other.room_id)).room_id == other.room_id


# -- 2. no credential before TLS ------------------------------------------------------------------
class _StrippingRelay:
    """A plaintext listener that answers like a node told not to require TLS, and keeps
    every byte a client sends it: what a relay on the path would get to forward."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"tls://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = {
            "server_id": "NRELAY",
            "version": "2.15.1",
            "proto": 1,
            "max_payload": 1048576,
            "auth_required": True,
            "tls_required": False,
            "nonce": "cmVsYXllZC1ub25jZQ",
        }
        writer.write(b"INFO " + json.dumps(info).encode() + b"\r\n")
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(5):
                await writer.drain()
                while chunk := await reader.read(65536):
                    self.received.append(chunk)
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def sent_connect(self) -> bool:
        return b"CONNECT" in b"".join(self.received)


@pytest_asyncio.fixture
async def relay() -> AsyncIterator[_StrippingRelay]:
    found = _StrippingRelay()
    try:
        yield found
    finally:
        await found.stop()


@pytest.fixture
def pinned_ca(tmp_path: Path) -> Path:
    ca = CertificateAuthority.create("a CA the client pins")
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def identity_file(tmp_path: Path) -> Path:
    path = tmp_path / "identity.nk"
    path.write_text(KeyPair.generate(Prefix.USER).seed + "\n")
    path.chmod(0o600)
    return path


async def test_the_service_connection_sends_no_connect_to_a_listener_that_offers_clear_text(
    relay: _StrippingRelay, pinned_ca: Path, identity_file: Path
) -> None:
    """The callout, the API, migrate, provision and the CLI admin verbs connect this way."""
    url = await relay.start()
    target = NatsTarget((url,), ca_file=pinned_ca, identity_file=identity_file)
    with pytest.raises(Exception):  # noqa: B017,PT011 - any failure; what matters is the wire
        async with bounded(30):
            await connect(target, name="unibus-test", allow_reconnect=False)
    assert relay.received, "the client never spoke: the test proved nothing"
    assert not relay.sent_connect
    assert all(chunk.startswith(b"\x16\x03") for chunk in relay.received[:1])  # a ClientHello


async def test_the_sdk_sends_no_connect_to_a_listener_that_offers_clear_text(
    relay: _StrippingRelay, pinned_ca: Path
) -> None:
    url = await relay.start()
    with pytest.raises(BusUnavailableError):
        async with bounded(30):
            await BusConnection.connect(
                [url], KeyPair.generate(Prefix.USER), ca_file=pinned_ca, connect_budget=3.0
            )
    assert relay.received
    assert not relay.sent_connect


async def test_the_cli_sends_no_connect_to_a_listener_that_offers_clear_text(
    relay: _StrippingRelay, pinned_ca: Path, identity_file: Path
) -> None:
    url = await relay.start()
    status, _out, err = await run_cli(
        "user", "list", "--nats-url", url, "--ca", str(pinned_ca), "--identity", str(identity_file)
    )
    assert status != 0, err
    assert relay.received
    assert not relay.sent_connect


# -- 3. no rollback past a removal ----------------------------------------------------------------
async def _save_room_record(deployment: Deployment, room_id: str) -> Callable[[], Awaitable[None]]:
    """A KV writer keeps the room's record as it is now; the result puts it back."""
    kv = (
        await (await deployment.stacks.connect(deployment.stack))
        .jetstream()
        .key_value(naming.ROOMS_BUCKET)
    )
    saved = (await kv.get(room_id)).value
    assert saved is not None

    async def put_back() -> None:
        await kv.put(room_id, saved)

    return put_back


async def _last_stored(deployment: Deployment, room_id: str) -> int | None:
    internal = await deployment.stacks.connect(deployment.stack)
    return await _last_seq(internal, naming.MESSAGES_STREAM, naming.room_subject(room_id))


async def test_a_room_rolled_back_past_a_removal_gets_no_message_under_the_old_epoch(
    deployment: Deployment,
) -> None:
    """The issue's scenario: Bob removes Mel, a KV writer puts the saved record back, and
    Dave's fresh client is served the older (validly signed) chain. The room's history
    shows the newer epoch, so Dave refuses to publish under the epoch Mel holds the key to."""
    bob = await deployment.member("bob")
    dave = await deployment.member("dave")
    mel = await deployment.member("mel")
    bob_room = await bob.create_room([dave.key, mel.key])
    room_id = bob_room.room_id
    put_back = await _save_room_record(deployment, room_id)

    await bob_room.remove(mel.key)
    assert bob_room.state.epoch == 2
    await bob_room.publish(b"after mel left")
    stored = await _last_stored(deployment, room_id)
    await put_back()

    fresh = await deployment.device(dave.identity)
    stale = await fresh.room(room_id)  # a device that never saw the room trusts it on first use
    assert stale.state.epoch == 1
    assert mel.key in stale.members
    with pytest.raises(RollbackError, match="epoch 2"):
        await stale.publish(b"for the room, not for mel")
    assert await _last_stored(deployment, room_id) == stored


async def test_a_device_that_saw_the_newer_chain_refuses_the_older_one_in_a_fresh_client(
    deployment: Deployment, tmp_path: Path
) -> None:
    bob = await deployment.member("bob")
    device = tmp_path / "dave-device.rooms.json"
    dave = await deployment.member("dave", heads_file=device)
    mel = await deployment.member("mel")
    bob_room = await bob.create_room([dave.key, mel.key])
    room_id = bob_room.room_id
    await dave.room(room_id)
    put_back = await _save_room_record(deployment, room_id)
    await bob_room.remove(mel.key)
    assert (await dave.room(room_id)).state.epoch == 2  # this device verified epoch 2
    await put_back()

    fresh = await deployment.device(dave.identity, heads_file=device)
    with pytest.raises(RollbackError, match="rollback"):
        await fresh.room(room_id)


async def test_members_on_the_newer_chain_see_a_message_sent_under_the_stale_head_flagged(
    deployment: Deployment,
) -> None:
    """What a client without these checks would send after a rollback reaches Bob marked."""
    bob = await deployment.member("bob")
    dave = await deployment.member("dave")
    mel = await deployment.member("mel")
    bob_room = await bob.create_room([dave.key, mel.key])
    room_id = bob_room.room_id
    old = bob_room.state
    await bob_room.remove(mel.key)
    listener = Listener(bob_room)
    await listener.ready(bob_room)

    old_key = next(
        open_room_key(sealed.sealed, dave.identity)
        for sealed in await dave.api.sealed_keys(room_id)
        if sealed.member == dave.key and sealed.epoch == old.epoch
    )
    [(message_id, envelope)] = Sealer(dave.identity, room_id).seal_batch_with_ids(
        [b"under the old head"], epoch=old.epoch, key_id=old.key_id, room_key=old_key
    )
    await (await dave.room(room_id)).wait_admitted()
    await dave.bus.jetstream().publish(
        naming.room_subject(room_id), envelope, headers={"Nats-Msg-Id": message_id}
    )
    await listener.receive(b"under the old head")
    [flagged] = [m for m in listener.messages if m.data == b"under the old head"]
    assert flagged.stale
    assert flagged.epoch == 1
    assert bob_room.stale_received == 1
    assert not any(m.stale for m in listener.messages if m is not flagged)
    await listener.stop()
    replayed = [m async for m in (await bob.room(room_id)).history()]
    assert [m.stale for m in replayed if m.data == b"under the old head"] == [True]


# -- 4. exhaustion ---------------------------------------------------------------------------------
async def test_a_chunked_body_to_a_route_without_one_is_refused_without_being_buffered(
    deployment: Deployment,
) -> None:
    """48 MiB, chunked (no length declared), to POST /v1/room-ids: read only to the bound."""
    pid = deployment.stack.service_pid("controlplane", "n1")
    assert pid is not None
    chunk = b"x" * (1024 * 1024)
    total = 48
    digest = hashlib.sha256(chunk * total).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(total):
            yield chunk

    before = await asyncio.to_thread(vm_hwm_kib, pid)
    request = deployment.admin.signed(
        "POST", f"{deployment.stack.api_url('n1')}/v1/room-ids", content=body(), digest=digest
    )
    context = ssl.create_default_context(cafile=str(deployment.stack.layout.certs.client_ca_cert))
    async with httpx.AsyncClient(verify=context, timeout=60) as http:
        try:
            response = await http.send(request)
        except httpx.TransportError:
            response = None  # the server stopped reading: also a refusal
    if response is not None:
        assert response.status_code == 413
        assert response.json()["error"] == "too_large"
    growth = (await asyncio.to_thread(vm_hwm_kib, pid)) - before
    assert growth < 8 * 1024, f"controlplane grew by {growth} KiB"


async def test_junk_and_unknown_epoch_traffic_costs_a_receiver_at_most_one_refetch(
    deployment: Deployment,
) -> None:
    """One refetch is two signed API calls per receiver: junk costs none, a new epoch one."""
    alice = await deployment.member("alice")
    bob = await deployment.member("bob")
    mallory = await deployment.member("mallory")
    alice_room = await alice.create_room([bob.key, mallory.key])
    bob_room = await bob.room(alice_room.room_id)
    listener = Listener(bob_room)
    await listener.ready(alice_room)
    internal = await deployment.stacks.connect(deployment.stack)
    nonces = naming.kv_stream(naming.NONCES_BUCKET)

    async def bob_calls() -> int:
        return len(await _subjects(internal, nonces, f"$KV.{naming.NONCES_BUCKET}.{bob.key}.>"))

    before = await bob_calls()
    subject = naming.room_subject(alice_room.room_id)
    js = mallory.bus.jetstream()
    await (await mallory.room(alice_room.room_id)).wait_admitted()
    genuine = Sealer(mallory.identity, alice_room.room_id).seal_batch_with_ids(
        [b"junk %d" % i for i in range(20)], epoch=7, key_id="kkkkkkkkkkkk", room_key=bytes(32)
    )
    for index, (message_id, envelope) in enumerate(genuine):
        # signed by mallory under an epoch nobody has: one refetch for all of them
        await js.publish(subject, envelope, headers={"Nats-Msg-Id": message_id})
        # the same with its epoch changed: the signature fails, no refetch at all
        forged = encode_envelope(
            msgspec.structs.replace(decode_envelope(envelope), epoch=8 + index)
        )
        await js.publish(subject, forged, headers={"Nats-Msg-Id": f"forged-{message_id}"})

    async def counted() -> int:
        return bob_room.undeliverable.total

    await eventually(counted, until=lambda n: n >= 40, what="40 messages refused")
    assert bob_room.undeliverable.counts.get("bad_signature") == 20
    assert await bob_calls() - before <= 2
    await listener.stop()


async def test_healthz_shows_anyone_posture_but_no_topology_and_the_admin_everything(
    deployment: Deployment,
) -> None:
    url = deployment.stack.api_url("n1")
    context = ssl.create_default_context(cafile=str(deployment.stack.layout.certs.client_ca_cert))
    async with httpx.AsyncClient(verify=context) as http:
        public = (await http.get(f"{url}/healthz")).json()
    assert public["posture"]["acl"] is True
    assert {asset["replicas"] for asset in public["assets"]} == {3}
    assert "leader" not in json.dumps(public)
    assert "callout_connections" not in public["posture"]

    full = await deployment.admin.call("GET", "/v1/health", expect=dict)
    assert all(asset["leader"] for asset in full["assets"])
    member = await deployment.member("member")
    with pytest.raises(ApiError) as refused:
        await member.api.call("GET", "/v1/health", expect=dict)
    assert refused.value.status == 403


async def test_a_revocation_committed_while_every_callout_was_down_disconnects_on_their_start(
    deployment: Deployment, identity_file: Path
) -> None:
    """A first load was not taken for a change: the user kept its connection until expiry."""
    victim = read_seed_file(identity_file)
    await deployment.admin.add_user(victim.public_key, "revoked-in-the-dark")
    stack = deployment.stack
    target = NatsTarget(
        tuple(stack.client_url(n) for n in stack.spec.node_names),
        ca_file=stack.layout.certs.client_ca_cert,
        identity_file=identity_file,
    )

    async def admitted() -> NATS:
        return await connect(target, name="unibus-test", allow_reconnect=False)

    live = await eventually(admitted, until=lambda nc: nc.is_connected, what="admitted")
    try:
        for node in stack.spec.node_names:
            stack.stop_service("authcallout", node)
        await deployment.admin.revoke_user(victim.public_key)
        for node in stack.spec.node_names:
            stack.start_service("authcallout", node)
        await eventually(
            lambda: asyncio.sleep(0, live.is_closed), until=bool, what="the revoked user kicked"
        )
    finally:
        await live.close()
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await connect(target, name="unibus-test", allow_reconnect=False)


# -- 4b. membership: nobody is held in a room or locked out of the bus ---------------------------
async def test_a_member_leaves_and_holds_no_key_to_what_the_room_says_next(
    deployment: Deployment,
) -> None:
    owner = await deployment.member("owner")
    bob = await deployment.member("bob")
    leaver = await deployment.member("leaver")
    owner_room = await owner.create_room([bob.key, leaver.key])
    room_id = owner_room.room_id
    leaving = await leaver.room(room_id)
    await leaving.leave()

    bob_room = await bob.room(room_id)
    assert leaver.key not in bob_room.members
    listener = Listener(owner_room)
    await listener.ready(bob_room)  # bob's first send after the leave rekeys the room
    assert bob_room.state.epoch == 3
    assert bob_room.state.actor == bob.key  # a plain member made the rekey
    await bob_room.publish(b"after the leave")
    await listener.receive(b"after the leave")
    # The leaver has no key to any epoch from the leave on, and the API refuses it the room.
    keys = await (await deployment.store()).sealed_keys(room_id, leaver.key)
    assert keys
    assert all(k.epoch == 1 for k in keys)
    with pytest.raises(ApiError) as refused:
        await leaver.api.sealed_keys(room_id)
    assert refused.value.status == 403
    await listener.stop()


async def test_the_owner_cannot_leave_and_nobody_can_leave_on_behalf_of_another(
    deployment: Deployment,
) -> None:
    owner = await deployment.member("owner")
    bob = await deployment.member("bob")
    carol = await deployment.member("carol")
    room = await owner.create_room([bob.key, carol.key])
    with pytest.raises(RoomError, match="owner cannot leave"):
        await room.leave()
    # Bob signs a "leave" that also takes carol along: refused by the chain rules.
    bob_room = await bob.room(room.room_id)
    view = await bob.api.get_room(room.room_id)
    _, change = successor(
        view.chain[-1], bob.identity, members={owner.key}, admins=set(), new_epoch=True
    )
    with pytest.raises(ApiError) as refused:
        await bob.api.leave_room(room.room_id, change)
    assert refused.value.status in (400, 403)
    await bob_room.refresh()
    assert set(bob_room.members) == {owner.key, bob.key, carol.key}


async def test_the_api_and_the_callout_enforce_one_room_cap_and_nobody_is_locked_out(
    stacks: StackFactory,
) -> None:
    """UNIBUS_MAX_ROOMS=2, read by both services from one place. Mallory fills the victim's
    cap; the inviter is refused, not the victim; the victim leaves a junk room and is
    invited again; past the cap (a KV writer's doing), the victim is still admitted."""
    async with deployed(stacks, {"UNIBUS_MAX_ROOMS": "2"}) as deployment:
        victim = await deployment.member("victim")
        mallory = await deployment.member("mallory")
        friend = await deployment.member("friend")
        junk = [await mallory.create_room([victim.key]) for _ in range(2)]
        with pytest.raises(ApiError) as capped:
            await friend.create_room([victim.key])
        assert (capped.value.status, capped.value.code) == (409, "room_cap")

        await (await victim.room(junk[0].room_id)).leave()
        welcome = await friend.create_room([victim.key])
        assert welcome.room_id in await victim.rooms()

        # A third room, written straight into the KV: the callout grants the oldest two.
        other = await friend.create_room()
        store = await deployment.store()
        current = await store.get_room(other.room_id)
        grown = tuple(sorted({*current.value.members, victim.key}))
        await store.commit_room(current, msgspec.structs.replace(current.value, members=grown))
        fresh = await deployment.device(victim.identity)
        await (await fresh.room(welcome.room_id)).wait_admitted()


async def test_every_asset_has_its_reserved_storage_and_an_unlimited_one_gets_it_on_provision(
    stacks: StackFactory,
) -> None:
    """A full history or object store once took the room of the nonce and barrier writes,
    and then the callout denied everyone: each asset now has, and reserves, its own."""
    stack = await stacks.start(nodes=3, provision=False)
    nc = await stacks.connect(stack)
    js = nc.jetstream(timeout=10.0)
    unlimited = {name: -1 for name in limits.ASSET_BYTES}
    await provision(js, Provisioning(replicas=3, asset_bytes=unlimited))  # an older release
    assert (await js.stream_info(naming.MESSAGES_STREAM)).config.max_bytes in (None, -1)

    await provision(js, Provisioning(replicas=3))
    for asset in ASSETS:
        config = (await js.stream_info(asset.stream)).config
        assert config.max_bytes == limits.ASSET_BYTES[asset.name], asset.name
    history = (await js.stream_info(naming.MESSAGES_STREAM)).config
    assert history.max_msgs_per_subject == limits.HISTORY_MAX_PER_ROOM
    assert history.max_msg_size is not None
    assert history.max_msg_size > limits.MAX_ENVELOPE_BYTES
    account = json.loads((await nc.request("$JS.API.INFO", b"", timeout=10.0)).data)
    assert account["reserved_storage"] == sum(limits.ASSET_BYTES.values())


async def test_a_user_past_its_blob_budget_is_refused_with_429_and_others_are_not(
    stacks: StackFactory,
) -> None:
    async with deployed(stacks, {"UNIBUS_BLOB_BUDGET_BYTES": str(64 * 1024)}) as deployment:
        mallory = await deployment.member("mallory")
        alice = await deployment.member("alice")
        room = await mallory.create_room([alice.key])
        near = ApiClient(
            [deployment.stack.api_url("n1")],
            mallory.identity,
            ca_file=deployment.stack.layout.certs.client_ca_cert,
        )
        try:
            await near.upload_blob(room.room_id, b"x" * 40_000)
            await near.upload_blob(room.room_id, b"x" * 20_000)
            with pytest.raises(ApiError) as refused:
                await near.upload_blob(room.room_id, b"x" * 10_000)
        finally:
            await near.aclose()
        assert (refused.value.status, refused.value.code) == (429, "quota")
        assert "try again in" in refused.value.message
        await alice.api.upload_blob(room.room_id, b"alice's own")

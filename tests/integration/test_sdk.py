"""The client SDK end to end on a real 3-node stack (as `unibus up` starts it) with its services.

Users are added through the admin API; every client is the SDK's ``Client`` over the bus
and the signed API. What a server, a KV write or another member could forge is rejected
by the clients, counted, and never delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats.js.api
import pytest
from nats.aio.msg import Msg

from tests.integration.deployment import PROBE, Deployment, Listener
from tests.integration.harness import bounded, eventually, run_cli
from unibus.client.api import ApiError
from unibus.client.crypto import new_room_key, seal_room_key
from unibus.client.envelope import (
    EnvelopeError,
    Opener,
    Sealer,
    decode_envelope,
    encode_envelope,
)
from unibus.client.profile import write_stack_info
from unibus.client.room import Message, Room, RoomError
from unibus.client.sdk import BlobError, BlobRef, Client
from unibus.core import naming
from unibus.core.models import EpochRef, SealedKeyRecord
from unibus.core.nkeys import KeyPair, Prefix, decode_public
from unibus.core.roomchain import sign_sealed_key


@dataclass
class Inbox:
    """Everything a raw bus subscription received, before any decryption."""

    received: list[bytes] = field(default_factory=list)

    async def __call__(self, msg: Msg) -> None:
        self.received.append(msg.data)


async def _admitted(client: Client, room_id: str) -> None:
    """Return once ``client``'s raw connection may use the room's subject.

    Only for tests that publish around the SDK (as an attacker would): the SDK's own
    publish, subscribe and history wait for the kick and re-authorization by themselves.
    """
    await (await client.room(room_id)).wait_admitted()


async def _collect(history: AsyncIterator[Message]) -> list[Message]:
    async with bounded(60):
        return [m async for m in history]


def _genuine(messages: list[Message]) -> list[Message]:
    return [m for m in messages if not m.data.startswith(PROBE)]


async def _counted(room: Room, total: int) -> dict[str, int]:
    """``room.undeliverable.counts`` once ``total`` messages were counted."""
    await eventually(
        lambda: asyncio.sleep(0, room.undeliverable.total),
        until=lambda n: n >= total,
        what=f"{total} undeliverable counted",
    )
    return dict(room.undeliverable.counts)


def _reencode(envelope: bytes, **changes: object) -> bytes:
    return encode_envelope(msgspec.structs.replace(decode_envelope(envelope), **changes))


async def _room_of(client: Client, room_id: str) -> Room:
    """A fresh Room object (its own Opener: no replay memory) for ``client``."""
    room = Room(room_id, client.identity, client.api, client.bus)
    await room.refresh()
    return room


# -- 1. both directions ----------------------------------------------------------------------------
async def test_two_members_exchange_messages_both_ways_each_delivered_once_with_sender_and_epoch(
    deployment: Deployment,
) -> None:
    alice = await deployment.member("alice")
    bob = await deployment.member("bob")
    alice_room = await alice.create_room([bob.key])
    bob_room = await bob.room(alice_room.room_id)
    at_alice, at_bob = Listener(alice_room), Listener(bob_room)
    await at_bob.ready(alice_room)
    await at_alice.ready(bob_room)

    from_alice = [f"alice {i}".encode() for i in range(5)]
    from_bob = [f"bob {i}".encode() for i in range(5)]
    await alice_room.publish_many(from_alice[:3])
    await bob_room.publish_many(from_bob[:3])
    for a, b in zip(from_alice[3:], from_bob[3:], strict=True):
        await alice_room.publish(a)
        await bob_room.publish(b)
    # Last from each side: whatever either listener gets from a sender comes before these.
    await alice_room.publish(b"alice done")
    await bob_room.publish(b"bob done")
    for listener in (at_alice, at_bob):
        await listener.receive(b"alice done", b"bob done")

    for listener in (at_alice, at_bob):
        counts = Counter(listener.data)
        assert set(counts) == {*from_alice, *from_bob, b"alice done", b"bob done"}
        assert all(n == 1 for n in counts.values()), counts
        for message in _genuine(listener.messages):
            expected = alice.key if message.data.startswith(b"alice") else bob.key
            assert message.sender == expected
            assert message.epoch == 1
        # One sender's messages arrive in the order they were published.
        assert [d for d in listener.data if d.startswith(b"alice")] == [*from_alice, b"alice done"]
        assert [d for d in listener.data if d.startswith(b"bob")] == [*from_bob, b"bob done"]
        assert len({m.msg_id for m in listener.messages}) == len(listener.messages)
        assert listener.room.undeliverable.total == 0
    await at_alice.stop()
    await at_bob.stop()

    # Replays of the stream end quietly once caught up (three at once, on separate slots).
    readers = [
        (await _room_of(alice, alice_room.room_id), 0),
        (await _room_of(alice, alice_room.room_id), 1),
        (await _room_of(bob, alice_room.room_id), 0),
    ]
    replays = await asyncio.gather(
        *(_collect(reader.history(slot=slot)) for reader, slot in readers)
    )
    for replay in replays:
        assert [m.data for m in _genuine(replay)] == at_alice.data


async def test_a_room_is_usable_right_after_create_and_invite_without_waiting_for_permissions(
    deployment: Deployment,
) -> None:
    alice = await deployment.member("alice")
    bob = await deployment.member("bob")
    carol = await deployment.member("carol")

    # No waiting anywhere: the SDK waits for the kick and re-authorization by itself.
    alice_room = await alice.create_room([bob.key])
    first = await alice_room.publish(b"right after create")
    bob_room = await bob.room(alice_room.room_id)
    seen: list[bytes] = []

    async def follow() -> None:
        async for message in bob_room.subscribe(history=True):
            seen.append(message.data)

    follower = asyncio.create_task(follow())
    await alice_room.invite(carol.key)
    carol_room = await carol.room(alice_room.room_id)
    second = await carol_room.publish(b"right after invite")
    await eventually(
        lambda: asyncio.sleep(0, list(seen)),
        until=lambda got: got == [b"right after create", b"right after invite"],
        what="both messages delivered to bob, in order",
    )
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower

    assert second > first
    assert bob_room.undeliverable.total == 0


async def test_history_and_live_together_deliver_every_message_once_and_count_nothing(
    deployment: Deployment,
) -> None:
    alice = await deployment.member("alice")
    bob = await deployment.member("bob")
    alice_room = await alice.create_room([bob.key])
    bob_room = await bob.room(alice_room.room_id)
    stored = [f"stored {i}".encode() for i in range(300)]
    await alice_room.publish_many(stored)
    live = [f"live {i}".encode() for i in range(200)]
    got: list[bytes] = []

    async def follow() -> None:
        async for message in bob_room.subscribe(history=True):
            got.append(message.data)

    async def publish_during_the_replay() -> None:
        for text in live:
            await alice_room.publish(text)

    follower = asyncio.create_task(follow())
    await publish_during_the_replay()
    await eventually(
        lambda: asyncio.sleep(0, len(got)),
        until=lambda n: n >= len(stored) + len(live),
        what="every message delivered",
    )
    # Anything more (a duplicate) would have arrived with the rest; look once more.
    await alice_room.publish(b"last")
    await eventually(
        lambda: asyncio.sleep(0, got[-1:]), until=lambda t: t == [b"last"], what="last"
    )
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower

    assert got == [*stored, *live, b"last"]
    assert bob_room.undeliverable.total == 0
    # A replay after the live delivery sees every message again: none taken for a replay.
    again = await _collect(bob_room.history())
    assert [m.data for m in again] == [*stored, *live, b"last"]
    assert bob_room.undeliverable.total == 0


# -- 2. removal ----------------------------------------------------------------------------------
async def test_a_removed_member_is_kicked_cannot_resubscribe_and_cannot_decrypt_the_new_epoch(
    deployment: Deployment,
) -> None:
    alice = await deployment.member("alice")
    bob = await deployment.member("bob")
    carol = await deployment.member("carol")
    alice_room = await alice.create_room([bob.key, carol.key])
    bob_room = await bob.room(alice_room.room_id)
    carol_room = await carol.room(alice_room.room_id)
    at_bob, at_carol = Listener(bob_room), Listener(carol_room)
    await at_bob.ready(alice_room)
    await at_carol.ready(alice_room)
    await alice_room.publish(b"epoch 1, for everyone")
    await at_bob.receive(b"epoch 1, for everyone")
    (bob_epoch_1_key,) = bob_room.held_keys.values()
    reconnects, generation = bob.bus.reconnects, bob.bus.generation

    await alice_room.remove(bob.key)

    assert alice_room.state.epoch == 2
    assert bob.key not in alice_room.members
    await eventually(
        lambda: asyncio.sleep(0, (bob.bus.reconnects, bob.bus.generation)),
        until=lambda seen: seen != (reconnects, generation),
        what="bob's connection kicked",
    )
    # Bob subscribes afresh (his live subscription was re-sent on reconnect as well): the
    # server refuses it. (A reconnect that a lagging callout authorized with the old rooms
    # is kicked again by the callouts that saw the change: wait for the refusing one.)
    subject = naming.room_subject(alice_room.room_id)
    raw = Inbox()

    async def subscription_refused() -> str:
        await bob.bus.wait_connected(timeout=10)
        before = bob.bus.nc.last_error
        await bob.bus.subscribe(subject, raw)
        await bob.bus.nc.flush(timeout=5)
        after = bob.bus.nc.last_error
        return "" if after is before else str(after)

    refusal = await eventually(
        subscription_refused,
        until=lambda text: "permissions violation for subscription" in text.lower(),
        interval=0.5,
        what="bob's subscription refused",
    )
    assert subject in refusal

    async def sdk_refused() -> str:
        # Polled: a callout whose view has not yet caught up may admit him once more,
        # until its own kick for the change lands.
        try:
            await bob_room.wait_admitted(timeout=1)
        except RoomError as exc:
            return str(exc)
        return ""

    refused_by_sdk = await eventually(sdk_refused, until=bool, what="the SDK reports refusal")
    assert "still refuses" in refused_by_sdk
    secrets = [f"epoch 2 secret {i}".encode() for i in range(3)]
    for secret in secrets:
        await alice_room.publish(secret)
    await at_carol.receive(*secrets)
    await carol_room.refresh()
    assert carol_room.state.epoch == 2
    assert all(m.epoch == 2 for m in at_carol.messages if m.data in secrets)

    assert raw.received == []
    assert at_bob.data == [b"epoch 1, for everyone"]
    assert bob_room.undeliverable.total == 0
    # Nor can he fetch the new epoch's key: the API no longer serves him the room.
    with pytest.raises(ApiError) as refused:
        await bob_room.refresh()
    assert refused.value.status == 403

    # An epoch-2 envelope as stored (what a server or a former member could hand him).
    stored = [m for m in await _collect(alice_room.history()) if m.data == secrets[0]]
    assert len(stored) == 1
    assert stored[0].epoch == 2
    envelope = stored[0].envelope
    with pytest.raises(EnvelopeError):
        Opener(bob_room.room_id).open(
            envelope, room_key=bob_room.key_for, is_member=bob_room.is_member
        )
    with pytest.raises(EnvelopeError) as no_key:
        Opener(bob_room.room_id).open(
            envelope, room_key=bob_room.key_for, is_member=lambda *_: True
        )
    assert no_key.value.reason == "unknown_epoch"
    # Even trying the only key he ever had: the new epoch's key is a fresh one.
    with pytest.raises(EnvelopeError) as wrong_key:
        Opener(bob_room.room_id).open(
            envelope, room_key=lambda *_: bob_epoch_1_key, is_member=lambda *_: True
        )
    assert wrong_key.value.reason == "decrypt_failed"
    await at_bob.stop()
    await at_carol.stop()


# -- 3. KV writes that bypass the API ------------------------------------------------------------
async def test_a_member_written_straight_into_the_kv_makes_clients_refuse_the_room(
    deployment: Deployment,
) -> None:
    alice = await deployment.member("alice")
    bob = await deployment.member("bob")
    alice_room = await alice.create_room([bob.key])
    bob_room = await bob.room(alice_room.room_id)
    store = await deployment.store()
    mallory = KeyPair.generate(Prefix.USER)
    current = await store.get_room(alice_room.room_id)
    honest = current.value
    assert len(honest.chain) == 1

    await store.commit_room(
        current,
        msgspec.structs.replace(
            honest, members=tuple(sorted({*honest.members, mallory.public_key}))
        ),
    )

    with pytest.raises(RoomError, match="disagrees with the room's signed chain"):
        await bob_room.refresh()
    with pytest.raises(RoomError, match="disagrees with the room's signed chain"):
        await _room_of(alice, alice_room.room_id)
    assert mallory.public_key not in bob_room.members
    assert not bob_room.is_member(mallory.public_key, 1)


async def test_sealed_keys_written_straight_into_the_kv_are_never_used_and_their_messages_counted(
    deployment: Deployment,
) -> None:
    alice = await deployment.member("alice")  # the owner: the only rights-holder
    bob = await deployment.member("bob")  # a plain member: may not hand out keys
    carol = await deployment.member("carol")  # the victim
    alice_room = await alice.create_room([bob.key, carol.key])
    room_id = alice_room.room_id
    carol_room = await carol.room(room_id)
    at_carol = Listener(carol_room)
    await at_carol.ready(alice_room)
    await _admitted(bob, room_id)
    genuine_key = carol_room.key_for(1, carol_room.state.key_id)
    store = await deployment.store()
    subject = naming.room_subject(room_id)

    def forged_key(epoch: int, *, signer: KeyPair | None) -> tuple[SealedKeyRecord, bytes]:
        """A key sealed to carol, signed by ``signer`` or (``None``) "by alice" with junk."""
        key, key_id = new_room_key(), naming.new_key_id()
        sealed = seal_room_key(key, carol.key)
        signature = (
            sign_sealed_key(signer, room_id, epoch, key_id, carol.key, sealed)
            if signer is not None
            else os.urandom(64)
        )
        record = SealedKeyRecord(
            room_id=room_id,
            epoch=epoch,
            key_id=key_id,
            member=carol.key,
            sealed=sealed,
            signer=signer.public_key if signer is not None else alice.key,
            signature=signature,
        )
        return record, key

    async def publish_under(record: SealedKeyRecord, key: bytes, text: bytes) -> None:
        [envelope] = Sealer(bob.identity, room_id).seal_batch(
            [text], epoch=record.epoch, key_id=record.key_id, room_key=key
        )
        await bob.bus.publish(subject, envelope)

    # (1) Two extra keys for the current epoch, committed by the room record (listed before
    # the real one, so the record still agrees with the chain and refresh() succeeds).
    by_member, member_key = forged_key(1, signer=bob.identity)
    junk_signed, junk_key = forged_key(1, signer=None)
    current = await store.get_room(room_id)
    await store.commit_room(
        current,
        msgspec.structs.replace(
            current.value,
            epochs=(
                EpochRef(epoch=1, key_id=by_member.key_id),
                EpochRef(epoch=1, key_id=junk_signed.key_id),
                *current.value.epochs,
            ),
        ),
        sealed_keys=[by_member, junk_signed],
    )
    served = {k.key_id for k in await carol.api.sealed_keys(room_id)}
    assert {by_member.key_id, junk_signed.key_id} < served, "the API hands the forgeries out"

    await carol_room.refresh()

    assert dict(carol_room.held_keys) == {(1, carol_room.state.key_id): genuine_key}
    await publish_under(by_member, member_key, b"under a key a member forged")
    await publish_under(junk_signed, junk_key, b"under a key with a junk signature")
    assert await _counted(carol_room, 2) == {"unknown_epoch": 2}

    # (2) A whole new epoch whose key a member signed, in the record but not in the chain.
    next_epoch, next_key = forged_key(2, signer=bob.identity)
    current = await store.get_room(room_id)
    await store.commit_room(
        current,
        msgspec.structs.replace(
            current.value,
            epochs=(*current.value.epochs, EpochRef(epoch=2, key_id=next_epoch.key_id)),
        ),
        sealed_keys=[next_epoch],
    )
    with pytest.raises(RoomError, match="disagrees with the room's signed chain"):
        await carol_room.refresh()
    assert carol_room.state.epoch == 1
    assert (2, next_epoch.key_id) not in carol_room.held_keys
    await publish_under(next_epoch, next_key, b"under a forged epoch")
    counts = await _counted(carol_room, 3)
    assert counts == {"unknown_epoch": 2, "not_member": 1}

    await alice_room.publish(b"still genuine")
    await at_carol.receive(b"still genuine")
    assert at_carol.data == [b"still genuine"]
    assert carol_room.undeliverable.total == 3
    await at_carol.stop()


# -- 4. history ------------------------------------------------------------------------------------
async def test_history_after_a_reconnect_returns_every_message_once_in_stream_order(
    deployment: Deployment,
) -> None:
    alice = await deployment.member("alice")
    bob = await deployment.member("bob")
    alice_room = await alice.create_room([bob.key])
    bob_room = await bob.room(alice_room.room_id)
    published: dict[bytes, int] = {}
    batch = [f"alice batch {i}".encode() for i in range(30)]
    published.update(zip(batch, await alice_room.publish_many(batch), strict=True))
    for i in range(10):
        text = f"alice single {i}".encode()
        published[text] = await alice_room.publish(text)
        text = f"bob single {i}".encode()
        published[text] = await bob_room.publish(text)
    before = bob.bus.incarnation

    deployment.stack.stop_node(deployment.node_of(bob))

    # nats-py's own reconnect, or a brand-new connection when the first node it tried
    # refused it while the cluster re-formed: either is a new authorization.
    await eventually(
        lambda: asyncio.sleep(0, bob.bus.incarnation),
        until=lambda now: now != before,
        timeout=60,
        what="bob reconnected",
    )
    await bob.bus.wait_connected(timeout=30)
    await deployment.messages_leader()
    history = await _collect(bob_room.history())

    assert len(history) == len(published) == 50
    seqs = [m.stream_seq for m in history]
    assert seqs == sorted(published.values())
    assert len(set(seqs)) == len(seqs)
    assert {m.data: m.stream_seq for m in history} == published
    assert len({m.msg_id for m in history}) == len(history)
    assert all(m.sender == (bob.key if m.data.startswith(b"bob") else alice.key) for m in history)
    assert bob_room.undeliverable.total == 0


# -- 5. tampering, replay, forged sender --------------------------------------------------------
async def test_tampered_replayed_and_forged_sender_messages_are_counted_never_delivered(
    deployment: Deployment,
) -> None:
    alice = await deployment.member("alice")
    bob = await deployment.member("bob")  # the attacker: a member with the room key
    carol = await deployment.member("carol")
    alice_room = await alice.create_room([bob.key, carol.key])
    room_id = alice_room.room_id
    bob_room = await bob.room(room_id)
    carol_room = await carol.room(room_id)
    at_carol = Listener(carol_room)
    await at_carol.ready(alice_room)
    await _admitted(bob, room_id)
    await alice_room.publish(b"genuine 1")
    await at_carol.receive(b"genuine 1")
    [genuine] = [m.envelope for m in at_carol.messages if m.data == b"genuine 1"]
    subject = naming.room_subject(room_id)
    state = bob_room.state
    room_key = bob_room.key_for(state.epoch, state.key_id)

    flipped = bytearray(decode_envelope(genuine).ciphertext)
    flipped[0] ^= 0x01
    tampered = _reencode(genuine, ciphertext=bytes(flipped))
    [bobs] = Sealer(bob.identity, room_id).seal_batch(
        [b"from bob, relabelled as alice"],
        epoch=state.epoch,
        key_id=state.key_id,
        room_key=room_key,
    )
    relabelled = _reencode(bobs, sender=alice.key)
    impostor = Sealer(bob.identity, room_id)
    impostor._sender = alice.key  # encrypts as alice, but can only sign with bob's key
    impostor._sender_raw = decode_public(alice.key)[1]
    [signed_by_bob_as_alice] = impostor.seal_batch(
        [b"signed by bob as alice"], epoch=state.epoch, key_id=state.key_id, room_key=room_key
    )
    for forged in (tampered, genuine, relabelled, signed_by_bob_as_alice):
        await bob.bus.publish(subject, forged)

    counts = await _counted(carol_room, 4)
    await alice_room.publish(b"genuine 2")
    await at_carol.receive(b"genuine 2")

    # The replay fails the replay check; every other forgery fails the sender's signature.
    assert counts == {"bad_signature": 3, "replay": 1}
    assert at_carol.data == [b"genuine 1", b"genuine 2"]
    assert carol_room.undeliverable.counts == counts
    # A reader replaying the stream (where all of them are stored) refuses them alike.
    reader = await _room_of(carol, room_id)
    assert [m.data for m in _genuine(await _collect(reader.history()))] == at_carol.data
    assert reader.undeliverable.counts == counts
    await at_carol.stop()


# -- 6. blobs ------------------------------------------------------------------------------------
async def test_a_blob_round_trips_with_its_hash_and_one_differing_from_its_announcement_is_refused(
    deployment: Deployment,
) -> None:
    alice = await deployment.member("alice")
    bob = await deployment.member("bob")
    alice_room = await alice.create_room([bob.key])
    bob_room = await bob.room(alice_room.room_id)
    at_bob = Listener(bob_room)
    await at_bob.ready(alice_room)
    payload = os.urandom(200_000)

    ref = await alice.put_blob(alice_room, payload, name="report.bin")

    await eventually(
        lambda: asyncio.sleep(0, [BlobRef.decode(d) for d in at_bob.data]),
        until=lambda refs: ref in refs,
        what="the blob announced",
    )
    assert await bob.get_blob(bob_room, ref) == payload
    assert ref.size == len(payload)
    assert ref.name == "report.bin"

    # Announcements that do not match what is stored: another blob's bytes, a wrong hash.
    other = await alice.api.upload_blob(alice_room.room_id, os.urandom(1000))
    swapped = dataclasses.replace(ref, blob_id=other.blob_id)
    wrong_hash = dataclasses.replace(ref, sha256=hashlib.sha256(b"something else").hexdigest())
    for bad in (swapped, wrong_hash):
        await alice_room.publish(bad.encode())
    await eventually(
        lambda: asyncio.sleep(0, [BlobRef.decode(d) for d in at_bob.data]),
        until=lambda refs: swapped in refs and wrong_hash in refs,
        what="the bad announcements delivered",
    )
    for bad in (swapped, wrong_hash):
        with pytest.raises(BlobError, match="hash does not match"):
            await bob.get_blob(bob_room, bad)
    await at_bob.stop()


async def test_a_file_blob_streams_both_ways_and_a_refused_download_leaves_no_file(
    deployment: Deployment, tmp_path: Path
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    alice = await deployment.member("alice")
    bob = await deployment.member("bob")
    alice_room = await alice.create_room([bob.key])
    bob_room = await bob.room(alice_room.room_id)
    source = files / "big.bin"
    with source.open("wb") as out:
        for _ in range(48):
            out.write(os.urandom(64 * 1024 + 7))
    phases: list[str] = []

    ref = await alice.put_blob(
        alice_room, source, name=source.name, progress=lambda p, d, t: phases.append(p)
    )
    size = await bob.save_blob(
        bob_room, ref, files / "copy.bin", progress=lambda p, d, t: phases.append(p)
    )

    assert size == ref.size == source.stat().st_size
    assert (files / "copy.bin").read_bytes() == source.read_bytes()
    assert {"encrypt", "upload", "download"} <= set(phases)
    other = await alice.put_blob(alice_room, b"another blob")
    swapped = dataclasses.replace(ref, blob_id=other.blob_id)
    with pytest.raises(BlobError):
        await bob.save_blob(bob_room, swapped, files / "forged.bin")
    assert sorted(os.listdir(files)) == ["big.bin", "copy.bin"]


# -- 7. the CLI check ----------------------------------------------------------------------------
async def test_clientcheck_on_the_stack_exits_0_with_every_step_ok(
    deployment: Deployment,
) -> None:
    stack = deployment.stack
    write_stack_info(stack.layout.root, stack.info())

    code, out, err = await run_cli("clientcheck", "--dir", str(stack.layout.root), "--json")

    assert code == 0, (out, err)
    report = json.loads(out)
    assert report["passed"] is True
    assert len(report["steps"]) == 7
    assert all(step["ok"] for step in report["steps"]), report["steps"]


# -- 8. a node lost mid-stream -------------------------------------------------------------------
@dataclass
class Publisher:
    """Publishes one sealed message at a time, retrying the same bytes until acknowledged."""

    room: Room
    client: Client
    acked: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    """msg id -> (stream seq, plaintext), in the order acknowledged."""
    failed_attempts: int = 0
    duplicates: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _publish_once(self, message_id: str, envelope: bytes) -> nats.js.api.PubAck:
        try:
            return await self.client.bus.jetstream(timeout=2.0).publish(
                naming.room_subject(self.room.room_id),
                envelope,
                stream=naming.MESSAGES_STREAM,
                headers={"Nats-Msg-Id": message_id},
            )
        except Exception:
            self.failed_attempts += 1
            raise

    async def run(self) -> None:
        state = self.room.state
        key = self.room._require_key(state.epoch, state.key_id)
        for i in itertools.count():
            if self.stop.is_set():
                return
            text = f"m {i:05d}".encode()
            [(message_id, envelope)] = self.room._sealer.seal_batch_with_ids(
                [text], epoch=state.epoch, key_id=state.key_id, room_key=key
            )
            ack = await eventually(
                functools.partial(self._publish_once, message_id, envelope),
                until=lambda _: True,
                timeout=60,
                interval=0.1,
                what=f"publish {i} acknowledged",
            )
            self.duplicates += bool(ack.duplicate)
            self.acked[message_id] = (ack.seq, text)


async def test_a_node_killed_mid_stream_loses_no_acknowledged_message(
    deployment: Deployment,
) -> None:
    alice = await deployment.member("alice")
    bob = await deployment.member("bob")
    alice_room = await alice.create_room([bob.key])
    publisher = Publisher(alice_room, alice)
    running = asyncio.create_task(publisher.run())

    async def acked() -> int:
        if running.done():
            running.result()  # surface a publisher that gave up
        return len(publisher.acked)

    await eventually(acked, until=lambda n: n >= 50, what="50 messages acknowledged")
    leader = await deployment.messages_leader()
    deployment.stack.stop_node(leader, kill=True)
    killed_at = len(publisher.acked)
    started = time.monotonic()
    await eventually(
        acked, until=lambda n: n >= killed_at + 50, timeout=90, what="50 more after the kill"
    )
    publisher.stop.set()
    async with bounded(90):
        await running
    assert deployment.stack.pid(leader) is None

    await deployment.messages_leader()
    reader = await _room_of(bob, alice_room.room_id)
    history = await _collect(reader.history())

    by_id = Counter(m.msg_id for m in history)
    assert all(by_id[message_id] == 1 for message_id in publisher.acked), "lost or duplicated"
    assert len(history) == len(publisher.acked), "a message no publish acknowledged"
    assert [(m.stream_seq, m.data) for m in history] == list(publisher.acked.values())
    assert [m.data for m in history] == [f"m {i:05d}".encode() for i in range(len(history))]
    assert reader.undeliverable.total == 0
    print(  # context for a failure report (shown with -rP)
        f"killed {leader} after {killed_at} acks; {publisher.failed_attempts} failed attempts, "
        f"{publisher.duplicates} deduplicated retries, {time.monotonic() - started:.1f}s"
    )

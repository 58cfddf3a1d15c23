"""``unibus clientcheck``: a real authenticated client, end to end, against a deployment.

Two fresh identities, a room, encrypted messages both ways, a removal with rekey after
which the removed member can neither receive nor decrypt, and a blob round trip. Each
step is printed; the exit status is 0 only if every step held.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from unibus.cli._common import Subparsers, add_json_arg, print_json
from unibus.cli.rooms import add_client_args, open_client
from unibus.client.envelope import EnvelopeError
from unibus.client.room import Message, Room
from unibus.client.sdk import Client
from unibus.core import naming
from unibus.core.nkeys import KeyPair, Prefix

STEP_TIMEOUT = 20.0
_REFUSAL_BUDGET = 15.0


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser(
        "clientcheck",
        help="exercise a real client end to end (rooms, E2E messages, rekey, blobs)",
        description="Creates two fresh users with the admin identity, then checks encrypted "
        "publish/subscribe both ways, removal with rekey (the removed member can neither "
        "receive nor decrypt) and a blob round trip. Exit 0 only if every step held.",
    )
    add_client_args(parser)
    add_json_arg(parser)
    parser.set_defaults(handler=lambda args: asyncio.run(_run(args)))


async def _first(messages: AsyncIterator[Message], want: bytes) -> Message:
    async for message in messages:
        if message.data == want:
            return message
    raise AssertionError("the subscription ended")


async def _exchange(sender: Room, receiver: Room, text: bytes) -> None:
    listener = asyncio.create_task(_first(receiver.subscribe(), text))
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            while not listener.done():
                await sender.publish(text)
                await asyncio.wait({listener}, timeout=0.5)
            message = listener.result()
    finally:
        listener.cancel()
    if message.sender != sender.state.actor and message.sender not in sender.members:
        raise AssertionError("the message came from someone else")


async def _run(args: argparse.Namespace) -> int:
    results: list[dict[str, object]] = []
    clients: list[Client] = []

    async def step(name: str, action: Callable[[], Awaitable[object]]) -> bool:
        started = time.monotonic()
        try:
            async with asyncio.timeout(STEP_TIMEOUT * 2):
                await action()
            ok, detail = True, ""
        except Exception as exc:  # noqa: BLE001 - a failed step is reported, not raised
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        results.append(
            {
                "step": name,
                "ok": ok,
                "detail": detail,
                "seconds": round(time.monotonic() - started, 3),
            }
        )
        if not args.json:
            print(
                f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""), flush=True
            )
        return ok

    admin = await open_client(args)
    clients.append(admin)
    alice_key, bob_key = KeyPair.generate(Prefix.USER), KeyPair.generate(Prefix.USER)
    state: dict[str, object] = {}
    try:

        async def add_users() -> None:
            await admin.api.add_user(alice_key.public_key, f"check-alice-{int(time.time())}")
            await admin.api.add_user(bob_key.public_key, f"check-bob-{int(time.time())}")
            for key in (alice_key, bob_key):
                client = await Client.open(
                    identity=key,
                    nats_urls=admin.nats_urls,
                    api_urls=admin.api_urls,
                    ca_file=admin.ca_file,
                    name="unibus-clientcheck",
                )
                clients.append(client)

        async def create() -> None:
            alice, bob = clients[1], clients[2]
            room = await alice.create_room([bob_key.public_key])
            state["alice_room"] = room
            state["bob_room"] = await bob.room(room.room_id)

        def rooms() -> tuple[Room, Room]:
            return state["alice_room"], state["bob_room"]  # type: ignore[return-value]

        async def alice_to_bob() -> None:
            alice_room, bob_room = rooms()
            await _exchange(alice_room, bob_room, b"hello bob")

        async def bob_to_alice() -> None:
            alice_room, bob_room = rooms()
            await _exchange(bob_room, alice_room, b"hello alice")

        async def remove_bob() -> None:
            alice_room, _ = rooms()
            await alice_room.remove(bob_key.public_key)
            if bob_key.public_key in alice_room.members or alice_room.state.epoch != 2:
                raise AssertionError("the removal did not start epoch 2 without bob")

        async def bob_cannot_receive_or_decrypt() -> None:
            alice_room, bob_room = rooms()
            secret = b"after bob left"
            await alice_room.publish(secret)
            stored = [m async for m in alice_room.history() if m.data == secret]
            if not stored:
                raise AssertionError("alice cannot read her own epoch-2 message")
            try:
                bob_room.open_envelope(stored[-1].envelope)
            except EnvelopeError:
                pass
            else:
                raise AssertionError("bob decrypted a message of an epoch he was removed from")
            # The removal reaches bob's live connection through a kick: poll until the bus
            # refuses him the room's subject, within a bound.
            subject = naming.room_subject(bob_room.room_id)
            deadline = time.monotonic() + _REFUSAL_BUDGET
            while await clients[2].bus.may_subscribe(subject):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"bob may still subscribe to the room {_REFUSAL_BUDGET:g}s after removal"
                    )
                await asyncio.sleep(0.2)

        async def blob_round_trip() -> None:
            alice = clients[1]
            alice_room, _ = rooms()
            payload = bytes(range(256)) * 1024
            ref = await alice.put_blob(alice_room, payload, name="check.bin")
            if await alice.get_blob(alice_room, ref) != payload:
                raise AssertionError("the blob came back different")

        for name, action in (
            ("two fresh identities added by the admin", add_users),
            ("alice creates a room with bob", create),
            ("alice -> bob, encrypted", alice_to_bob),
            ("bob -> alice, encrypted", bob_to_alice),
            ("alice removes bob (epoch 2, new key)", remove_bob),
            ("bob can neither receive nor decrypt epoch 2", bob_cannot_receive_or_decrypt),
            ("blob round trip with hash check", blob_round_trip),
        ):
            if not await step(name, action):
                break
    finally:
        for client in clients:
            await client.close()
    passed = len(results) == 7 and all(r["ok"] for r in results)
    if args.json:
        print_json({"passed": passed, "steps": results})
    else:
        print("clientcheck passed" if passed else "clientcheck FAILED")
    return 0 if passed else 1

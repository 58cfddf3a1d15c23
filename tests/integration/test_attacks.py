"""Attacks a hostile member, a network relay or a KV writer made on a real stack (issue 10).

Each test is the attack as it was made from outside, and asserts what the victim can rely
on afterwards: nothing written, nothing admitted, nothing decrypted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats.js.errors
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from nats.aio.client import Client as NATS

from tests.integration.deployment import Deployment
from tests.integration.harness import bounded, run_cli
from unibus.client.api import ApiError
from unibus.client.connection import BusConnection, BusUnavailable
from unibus.core import naming
from unibus.core.certs import CertificateAuthority
from unibus.core.connect import NatsTarget, connect
from unibus.core.nkeys import KeyPair, Prefix, read_seed_file


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
    with pytest.raises(BusUnavailable):
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

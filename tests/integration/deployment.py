"""An SDK deployment for integration tests: a 3-node stack with its services, an admin,
members added through the API, and a listener that collects what a room delivers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest_asyncio

from tests.integration.harness import StackFactory, eventually
from unibus.client.api import ApiClient
from unibus.client.room import Message, Room
from unibus.client.sdk import Client
from unibus.core import naming
from unibus.core.kvstore import JetStreamStore
from unibus.core.nkeys import KeyPair, Prefix, read_seed_file
from unibus.stack.launcher import LocalStack

__all__ = ["PROBE", "Deployment", "Listener", "deployed", "deployment"]

PROBE = b"probe:"
"""Prefix of the messages that only prove a subscription is live (left out of assertions)."""
_probes = itertools.count()


@dataclass
class Deployment:
    """A started stack, its admin's API client, and every SDK client a test opened."""

    stack: LocalStack
    stacks: StackFactory
    admin: ApiClient
    clients: list[Client] = field(default_factory=list)

    async def member(self, handle: str, *, heads_file: Path | None = None) -> Client:
        """A new user added by the admin, connected once the callout admits it."""
        pair = KeyPair.generate(Prefix.USER)
        await self.admin.add_user(pair.public_key, handle)
        return await self.device(pair, heads_file=heads_file, name=f"unibus-test-{handle}")

    async def device(
        self, identity: KeyPair, *, heads_file: Path | None = None, name: str = "unibus-test"
    ) -> Client:
        """A fresh client of an existing user (``heads_file``: the device's room memory)."""

        async def attempt() -> Client:
            client = await Client.open(
                identity=identity,
                nats_urls=[self.stack.client_url(n) for n in self.stack.spec.node_names],
                api_urls=[self.stack.api_url(n) for n in self.stack.spec.node_names],
                ca_file=self.stack.layout.certs.client_ca_cert,
                name=name,
                heads_file=heads_file,
            )
            self.clients.append(client)
            return client

        return await eventually(attempt, until=lambda c: c.bus.is_connected, what="admitted")

    async def store(self) -> JetStreamStore:
        """The KV store, written directly (bypassing the API), as a compromised server could."""
        return await JetStreamStore.open(await self.stacks.connect(self.stack))

    async def messages_leader(self) -> str:
        """The node leading the messages stream, once it has a leader."""
        js = (await self.stacks.connect(self.stack)).jetstream(timeout=2.0)

        async def leader() -> str | None:
            info = await js.stream_info(naming.MESSAGES_STREAM)
            return info.cluster.leader if info.cluster else None

        found = await eventually(leader, until=bool, what="messages stream leader")
        assert found is not None
        return found

    def node_of(self, client: Client) -> str:
        """The node ``client``'s bus connection is connected to."""
        return self.stack.node_of(client.bus.nc)


@asynccontextmanager
async def deployed(
    stacks: StackFactory, environ: dict[str, str] | None = None
) -> AsyncIterator[Deployment]:
    """A 3-node stack with its services (``environ``: their UNIBUS_ settings)."""
    stack = await stacks.start(nodes=3, services=True, environ=environ)
    admin = ApiClient(
        [stack.api_url(n) for n in stack.spec.node_names],
        read_seed_file(stack.layout.identity("admin")),
        ca_file=stack.layout.certs.client_ca_cert,
    )
    found = Deployment(stack, stacks, admin)
    try:
        yield found
    finally:
        for client in found.clients:
            await client.close()
        await admin.aclose()


@pytest_asyncio.fixture
async def deployment(stacks: StackFactory) -> AsyncIterator[Deployment]:
    async with deployed(stacks) as found:
        yield found


class Listener:
    """Everything ``room.subscribe()`` delivers, collected by a background task."""

    def __init__(self, room: Room) -> None:
        self.room = room
        self.messages: list[Message] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for message in self.room.subscribe():
            self.messages.append(message)

    @property
    def data(self) -> list[bytes]:
        """What was delivered, in order, without the probes."""
        return [m.data for m in self.messages if not m.data.startswith(PROBE)]

    def _check_alive(self) -> None:
        if self._task.done():
            self._task.result()  # a subscription that failed: surface why
            raise AssertionError("the subscription ended")

    def got(self, data: bytes) -> bool:
        self._check_alive()
        return any(m.data == data for m in self.messages)

    async def ready(self, publisher: Room) -> None:
        """Publish probes from ``publisher`` until one arrives: the subscription is live."""

        def arrived() -> bool:
            self._check_alive()
            return any(m.data.startswith(PROBE) for m in self.messages)

        async def probe() -> bool:
            if not arrived():
                await publisher.publish(PROBE + str(next(_probes)).encode())
            return arrived()

        await eventually(probe, until=bool, interval=0.3, what="subscription live")

    async def receive(self, *wanted: bytes, timeout: float = 30.0) -> None:
        async def arrived() -> bool:
            return all(self.got(w) for w in wanted)

        await eventually(arrived, until=bool, timeout=timeout, what=f"{wanted!r} delivered")

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

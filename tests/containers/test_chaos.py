"""Chaos on the compose stack: stop a node, partition one, stop two (SPEC §9, §10).

One stack for the module; every test leaves it healthy again for the next.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats.errors
import pytest
from nats.js.errors import NoStreamResponseError

from tests.containers.harness import ComposeStack, docker, eventually
from unibus.client.api import ApiClient, ApiError
from unibus.core import naming
from unibus.core.connect import NatsTarget, connect
from unibus.core.nkeys import KeyPair, Prefix, read_seed_file

pytestmark = pytest.mark.timeout(600)
_MESSAGES = 150


def _target(
    stack: ComposeStack, identity: str, *, nodes: tuple[int, ...] = (0, 1, 2)
) -> NatsTarget:
    info = stack.info
    files = {"internal": info.internal_id_file, "admin": info.admin_seed_file}
    return NatsTarget(
        urls=tuple(info.nats_urls[i] for i in nodes),
        ca_file=Path(info.ca_file),
        identity_file=Path(files[identity]),
    )


async def _publish_through_a_node_loss(stack: ComposeStack) -> tuple[set[str], set[str]]:
    """Publish with acks while n2 stops; (acknowledged ids, ids stored in the stream)."""
    room = naming.ROOM_ID_ALPHABET[0] * naming.ROOM_ID_LENGTH
    subject = f"unibus.room.{room}.msg"
    nc = await connect(_target(stack, "internal"), name="chaos-publisher")
    acked: set[str] = set()
    stopper: asyncio.Task[None] | None = None
    try:
        js = nc.jetstream(timeout=2.0)
        for index in range(_MESSAGES):
            if index == _MESSAGES // 3:
                stopper = asyncio.create_task(asyncio.to_thread(stack.stop, "n2"))
            message_id = f"chaos-{index}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    await js.publish(subject, b"x", headers={"Nats-Msg-Id": message_id})
                    acked.add(message_id)
                    break
                except (TimeoutError, nats.errors.Error, NoStreamResponseError):
                    # Unacknowledged: may or may not be stored; retried with the same id.
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
        if stopper is not None:
            await stopper
        sub = await js.pull_subscribe(subject, durable=None, stream=naming.MESSAGES_STREAM)
        stored: set[str] = set()
        for _ in range(_MESSAGES):
            try:
                batch = await sub.fetch(100, timeout=3)
            except TimeoutError:
                break
            for msg in batch:
                stored.add((msg.headers or {}).get("Nats-Msg-Id", ""))
                await msg.ack()
        await sub.unsubscribe()
    finally:
        await nc.close()
    return acked, stored


def test_one_node_stopped_loses_no_acknowledged_message_and_the_api_answers(
    stack: ComposeStack,
) -> None:
    """With n2 stopped mid-stream every acknowledged publish is stored; APIs stay healthy."""
    stack.wait_healthy()
    try:
        acked, stored = asyncio.run(_publish_through_a_node_loss(stack))
        assert len(acked) == _MESSAGES
        assert acked <= stored
        for index in (0, 2):
            code, body = eventually(
                lambda i=index: stack.healthz(i),
                until=lambda r: r[0] == 200,
                what=f"controlplane n{index + 1} /healthz 200 with n2 down",
            )
            assert code == 200, body
    finally:
        stack.start("n2")
    stack.wait_healthy()


def test_a_node_cut_off_the_network_rejoins_and_the_cluster_heals(stack: ComposeStack) -> None:
    """docker network disconnect n3, then reconnect: routes and replicas come back."""
    stack.wait_healthy()
    n3 = stack.container("n3")
    disconnected = docker("network", "disconnect", stack.network, n3)
    assert disconnected.returncode == 0, disconnected.stderr
    try:
        eventually(
            stack.status,
            until=lambda s: any(n["name"] == "n1" and n["routes"] < 2 for n in s["nodes"]),
            timeout=60,
            interval=1.0,
            what="n1 notices the partition of n3",
        )
    finally:
        reconnected = docker("network", "connect", "--alias", "n3", stack.network, n3)
        assert reconnected.returncode == 0, reconnected.stderr
    stack.wait_healthy(timeout=180)


async def _signed_write(stack: ComposeStack, node: int) -> int:
    """Add a fresh user through one node's API; the status code (201, or the error's)."""
    admin = read_seed_file(Path(stack.info.admin_seed_file))
    key = KeyPair.generate(Prefix.USER).public_key
    async with ApiClient(
        [stack.info.api_urls[node]], admin, ca_file=Path(stack.info.ca_file), timeout=10
    ) as api:
        try:
            await api.add_user(key, f"chaos-{key[-6:].lower()}")
        except ApiError as exc:
            return exc.status
    return 201


async def _admin_connects(stack: ComposeStack, node: int) -> bool:
    """Whether a callout-authenticated user is admitted on one node."""
    try:
        nc = await connect(
            _target(stack, "admin", nodes=(node,)),
            name="chaos-client",
            allow_reconnect=False,
            max_reconnect_attempts=0,
        )
    except (nats.errors.Error, OSError, TimeoutError):
        return False
    await nc.close()
    return True


def test_two_nodes_stopped_fail_closed_and_recover(stack: ComposeStack) -> None:
    """Below quorum writes get 503 and the callout denies; both work again after."""
    stack.wait_healthy()
    assert asyncio.run(_signed_write(stack, 0)) == 201
    stack.stop("n2", "n3")
    try:
        eventually(
            lambda: asyncio.run(_signed_write(stack, 0)),
            until=lambda status: status == 503,
            timeout=60,
            what="a write through n1's API refused with 503 without quorum",
        )
        eventually(
            lambda: asyncio.run(_admin_connects(stack, 0)),
            until=lambda admitted: not admitted,
            timeout=60,
            what="the callout on n1 denies without quorum",
        )
    finally:
        stack.start("n2", "n3")
    eventually(
        lambda: asyncio.run(_signed_write(stack, 0)),
        until=lambda status: status == 201,
        timeout=180,
        interval=1.0,
        what="writes accepted again once n2 and n3 are back",
    )
    eventually(
        lambda: asyncio.run(_admin_connects(stack, 0)),
        until=bool,
        timeout=120,
        what="the callout admits again",
    )
    stack.wait_healthy(timeout=180)

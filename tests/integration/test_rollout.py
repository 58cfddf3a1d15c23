"""A rolling restart of a running cluster, through a user's eyes (issue 13).

While every node is restarted in turn, an SDK member keeps publishing and a fresh client
connects every 200 ms: nothing acknowledged is lost, no connect is refused, and every
asset is back at full replication at the end. A rollout asked of a degraded cluster does
nothing and says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.deployment import Deployment
from tests.integration.harness import (
    StackFactory,
    bounded,
    connect_once,
    probing,
    run_cli,
    running_up,
)
from unibus.client.room import Room
from unibus.core.connect import NatsTarget
from unibus.core.nkeys import KeyPair, Prefix, write_seed_file
from unibus.stack.drivers import LocalDriver
from unibus.stack.launcher import LocalStack
from unibus.stack.layout import StackLayout
from unibus.stack.rollout import RolloutRefusedError, rollout

PROBE_EVERY = 0.2


def _target(stack: LocalStack, seed_file: str) -> NatsTarget:
    """Every node's URL, as a plain client would name them, as ``seed_file``."""
    return NatsTarget(
        urls=tuple(stack.client_url(n) for n in stack.spec.node_names),
        ca_file=stack.layout.certs.client_ca_cert,
        identity_file=Path(seed_file),
    )


def _probing(
    stack: LocalStack, member: KeyPair
) -> contextlib.AbstractAsyncContextManager[list[tuple[float, BaseException | None]]]:
    path = stack.layout.root / f"probe-{member.public_key[:8]}.nk"
    write_seed_file(path, member.seed)
    return probing(
        lambda: connect_once(_target(stack, str(path)), refused_passes=True), every=PROBE_EVERY
    )


@contextlib.asynccontextmanager
async def _publishing(room: Room) -> AsyncIterator[list[bytes]]:
    """Publish a numbered message every 50 ms; yields those the stream acknowledged."""
    acknowledged: list[bytes] = []
    stop = asyncio.Event()

    async def publish() -> None:
        for i in range(100_000):
            if stop.is_set():
                return
            data = f"rolling {i}".encode()
            await room.publish(data)
            acknowledged.append(data)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(publish())
    try:
        yield acknowledged
    finally:
        stop.set()
        await task  # a publish that failed past the SDK's retries fails the test here


async def test_a_rollout_restarts_every_node_losing_nothing_and_refusing_no_connect(
    deployment: Deployment,
) -> None:
    stack = deployment.stack
    alice = await deployment.member("alice")
    probe_member = KeyPair.generate(Prefix.USER)
    await deployment.admin.add_user(probe_member.public_key, "probe")
    room = await alice.create_room()
    await room.wait_admitted()
    nc = await deployment.stacks.connect(stack)
    sys_nc = await deployment.stacks.connect(stack, "system")
    driver = LocalDriver(stack)
    before = {name: stack.pid(name) for name in stack.spec.node_names}

    async with (
        bounded(600),
        _probing(stack, probe_member) as outcomes,
        _publishing(room) as acked,
    ):
        report = await rollout(driver, nc, sys_nc, node_bound=180.0)
        await asyncio.sleep(1.0)

    assert sorted(r.node for r in report.nodes) == sorted(stack.spec.node_names)
    after = {name: stack.pid(name) for name in stack.spec.node_names}
    assert all(after[n] is not None and after[n] != before[n] for n in before), (before, after)
    assert report.after is not None
    assert report.after.healthy, report.after.problems()
    assert all(a.replicas == 3 and not a.degraded for a in report.after.assets)

    refused = [repr(e) for _, e in outcomes if e is not None]
    assert len(outcomes) > 50, "the connect probe barely ran"
    assert refused == [], f"connects failed during the rollout: {refused}"

    assert len(acked) > 50, "the publisher barely ran"
    async with bounded(120):
        stored = [m.data async for m in room.history()]
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:3]}"


async def test_a_rollout_of_a_degraded_cluster_is_refused_and_touches_nothing(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3, services=True)
    nc = await stacks.connect(stack, nodes=stack.spec.node_names[:2])
    sys_nc = await stacks.connect(stack, "system", nodes=stack.spec.node_names[:2])
    gone = stack.spec.node_names[2]
    stack.stop_node(gone, kill=True)
    running = {name: stack.pid(name) for name in stack.spec.node_names[:2]}

    with pytest.raises(RolloutRefusedError) as refused:
        await rollout(LocalDriver(stack), nc, sys_nc, node_bound=30.0, patience=2.0)

    assert "2 of 3 nodes answer" in str(refused.value)
    assert "unibus status" in str(refused.value)
    assert {name: stack.pid(name) for name in running} == running
    assert stack.pid(gone) is None


async def test_unibus_rollout_rolls_the_stack_a_running_unibus_up_holds(tmp_path: Path) -> None:
    root = tmp_path / "stack"
    layout = StackLayout.at(root)
    async with running_up(root) as up:
        before = {n: int(layout.node_pid(n).read_text()) for n in ("n1", "n2", "n3")}

        code, out, err = await run_cli("rollout", "--dir", str(root), "--json", timeout=600)

        assert code == 0, err
        report = json.loads(out)
        assert sorted(n["node"] for n in report["nodes"]) == ["n1", "n2", "n3"]
        assert report["after"]["healthy"] is True
        assert "waiting for full replication" in err  # progress reached the requester
        after = {n: int(layout.node_pid(n).read_text()) for n in ("n1", "n2", "n3")}
        assert all(after[n] != before[n] for n in before), (before, after)
        assert up.returncode is None, "unibus up stopped during the rollout"
        code, out, err = await run_cli("status", "--dir", str(root), "--json")
        assert code == 0, out or err
        assert json.loads(out)["healthy"] is True


async def test_unibus_rollout_without_a_running_stack_says_how_to_start_one(
    tmp_path: Path,
) -> None:
    root = tmp_path / "stack"
    root.mkdir()
    (root / "stack.json").write_text(
        '{"v":1,"nats_urls":[],"api_urls":[],"ca_file":"","admin_seed_file":"",'
        '"admin_key":"","internal_id_file":"","sys_id_file":"","replicas":3,"nodes":[]}'
    )

    code, _, err = await run_cli("rollout", "--dir", str(root))

    assert code == 1
    assert "no `unibus up` is running" in err
    assert "unibus up --dir" in err

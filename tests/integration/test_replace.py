"""Replacing a node whose disk was lost, through a user's eyes (issue 13).

A node brought back empty under its old name is rebuilt by its peers: while it happens an
SDK member keeps publishing and a fresh client connects every 200 ms; nothing
acknowledged is lost, no connect is refused, the node's store is new and holds every
asset again, and every asset is back at full replication. A replacement the cluster
cannot carry (a node that still answers, unasked to wipe; too few nodes left to rebuild
from) does nothing and says why.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from tests.integration.deployment import Deployment
from tests.integration.harness import (
    StackFactory,
    bounded,
    connect_once,
    probing,
    run_cli,
    running_up,
)
from unibus.core import naming
from unibus.core.connect import NatsTarget
from unibus.core.nkeys import KeyPair, Prefix, write_seed_file
from unibus.core.sysreq import server_ping
from unibus.stack.drivers import LocalDriver
from unibus.stack.launcher import LocalStack
from unibus.stack.layout import StackLayout
from unibus.stack.replace import ReplaceRefusedError, replace

pytestmark = pytest.mark.timeout(900)
PROBE_EVERY = 0.2
NODES = ("n1", "n2", "n3")


def _target(stack: LocalStack, seed_file: Path) -> NatsTarget:
    """Every node's URL, as a plain client would name them, as ``seed_file``."""
    return NatsTarget(
        urls=tuple(stack.client_url(n) for n in stack.spec.node_names),
        ca_file=stack.layout.certs.client_ca_cert,
        identity_file=Path(seed_file),
    )


async def _stream_states(sys_nc: NATS) -> dict[str, dict[str, tuple[int, int, int]]]:
    """Each node's own copy of each stream (asked of every server through the system
    account): messages, first and last sequence."""
    replies = await server_ping(sys_nc, "JSZ", expected=3, timeout=5.0, body=b'{"streams":true}')
    return {
        reply["server"]["name"]: {
            stream["name"]: (
                stream["state"]["messages"],
                stream["state"]["first_seq"],
                stream["state"]["last_seq"],
            )
            for account in reply["data"].get("account_details", [])
            for stream in account.get("stream_detail", [])
        }
        for reply in replies
    }


def _history_stream_dir(stack: LocalStack, node: str) -> Path:
    streams = stack.layout.node_store(node) / "jetstream"
    found = list(streams.glob(f"*/streams/{naming.MESSAGES_STREAM}"))
    assert len(found) == 1, f"{node}: {found}"
    return found[0]


async def test_a_node_whose_store_is_wiped_is_rebuilt_by_its_peers_losing_nothing(
    deployment: Deployment,
) -> None:
    stack = deployment.stack
    alice = await deployment.member("alice")
    room = await alice.create_room()
    await room.wait_admitted()
    before_replacement = [f"before {i}".encode() for i in range(20)]
    for data in before_replacement:
        await room.publish(data)
    probe = KeyPair.generate(Prefix.USER)
    await deployment.admin.add_user(probe.public_key, "probe")
    probe_seed = stack.layout.root / "probe.nk"
    write_seed_file(probe_seed, probe.seed)
    nc = await deployment.stacks.connect(stack)
    sys_nc = await deployment.stacks.connect(stack, "system")
    node = "n2"
    marker = stack.layout.node_store(node) / "from-before-the-wipe"
    marker.write_text("a file the lost disk held")
    acked: list[bytes] = []
    said: list[str] = []

    async def publish_meanwhile(done: asyncio.Event) -> None:
        for i in range(100_000):
            if done.is_set():
                return
            data = f"during {i}".encode()
            await room.publish(data)
            acked.append(data)
            await asyncio.sleep(0.05)

    async with (
        bounded(600),
        probing(
            lambda: connect_once(_target(stack, probe_seed), refused_passes=True),
            every=PROBE_EVERY,
        ) as outcomes,
    ):
        done = asyncio.Event()
        publisher = asyncio.create_task(publish_meanwhile(done))
        try:
            report = await replace(
                LocalDriver(stack),
                node,
                nc,
                sys_nc,
                wipe=True,
                node_bound=240.0,
                progress=said.append,
            )
        finally:
            done.set()
            await publisher

    others = [n for n in NODES if n != node]
    assert report.was_running
    assert report.wiped
    assert report.after.healthy, report.after.problems()
    assert all(a.replicas == 3 and not a.degraded for a in report.after.assets)
    assert not marker.exists(), "the node's old store survived the wipe"
    assert _history_stream_dir(stack, node).is_dir(), "the rebuilt node holds no history"
    assert any("discarding its JetStream state" in line for line in said), said

    refused = [repr(e) for _, e in outcomes if e is not None]
    assert len(outcomes) > 20, "the connect probe barely ran"
    assert refused == [], f"connects failed during the replacement: {refused}"
    assert len(acked) > 20, "the publisher barely ran"

    async with bounded(120):
        stored = [m.data async for m in room.history()]
    missing = set(before_replacement + acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:3]}"
    # And the rebuilt node holds, itself, what every other node holds.
    states = await _stream_states(sys_nc)
    assert sorted(states) == list(NODES)
    assert states[node] == states[others[0]] == states[others[1]], states


async def test_replacing_a_node_that_still_answers_without_wipe_is_refused_and_touches_nothing(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3, services=True)
    nc = await stacks.connect(stack)
    sys_nc = await stacks.connect(stack, "system")
    pids = {name: stack.pid(name) for name in NODES}

    with pytest.raises(ReplaceRefusedError) as refused:
        await replace(
            LocalDriver(stack), "n3", nc, sys_nc, wipe=False, node_bound=30.0, patience=2.0
        )

    assert "n3 answers: it is not lost" in str(refused.value)
    assert "--wipe" in str(refused.value)
    assert {name: stack.pid(name) for name in NODES} == pids


async def test_a_replacement_with_too_few_nodes_left_to_rebuild_from_is_refused(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3, services=True)
    nc = await stacks.connect(stack, nodes=("n1",))
    sys_nc = await stacks.connect(stack, "system", nodes=("n1",))
    stack.stop_node("n2", kill=True)
    stack.stop_node("n3", kill=True)

    with pytest.raises(ReplaceRefusedError) as refused:
        await replace(
            LocalDriver(stack), "n3", nc, sys_nc, wipe=True, node_bound=30.0, patience=2.0
        )

    assert "only 1 of the other 2 nodes answer" in str(refused.value)
    assert stack.pid("n3") is None
    assert stack.layout.node_store("n3").is_dir(), "a refused replacement wiped the store"


async def test_unibus_replace_on_a_local_stack_plans_without_yes_and_rebuilds_with_it(
    tmp_path: Path,
) -> None:
    root = tmp_path / "stack"
    layout = StackLayout.at(root)
    async with running_up(root) as up:
        pids = {n: int(layout.node_pid(n).read_text()) for n in NODES}

        code, out, err = await run_cli("replace", "n1", "--dir", str(root), "--wipe", "--json")
        assert code == 0, err
        assert json.loads(out)["dry_run"] is True
        assert {n: int(layout.node_pid(n).read_text()) for n in NODES} == pids, "a dry run acted"

        code, out, err = await run_cli(
            "replace", "n1", "--dir", str(root), "--wipe", "--yes", "--json", timeout=600
        )

        assert code == 0, err
        report = json.loads(out)
        assert report["node"] == "n1"
        assert report["wiped"] is True
        assert report["after"]["healthy"] is True
        assert "discarding its JetStream state" in err  # progress reached the requester
        assert int(layout.node_pid("n1").read_text()) != pids["n1"]
        assert up.returncode is None, "unibus up stopped during the replacement"
        code, out, err = await run_cli("status", "--dir", str(root), "--json")
        assert code == 0, err
        assert json.loads(out)["healthy"] is True

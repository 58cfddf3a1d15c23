"""`unibus rollout --compose` on the compose stack, with a member using it throughout (issue 13).

The rollout restarts every node container in turn (lame-duck stop, start, wait for full
replication and the node's services) while an SDK member publishes and a fresh client
connects every 200 ms: nothing acknowledged is lost, no connect is refused, and the
cluster ends healthy with every asset at R3. A degraded cluster is refused. And
`unibus replace --compose --wipe` gives a node a new, empty data volume, which its peers
fill: the cluster ends healthy and ``clientcheck`` passes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.containers.harness import REPO, ComposeStack, admitted_within, docker
from unibus.client.api import ApiClient
from unibus.client.sdk import Client
from unibus.core.connect import NatsTarget
from unibus.core.nkeys import KeyPair, Prefix, read_seed_file, write_seed_file

pytestmark = pytest.mark.timeout(900)
NODES = ("n1", "n2", "n3")


def _started_at(stack: ComposeStack, service: str) -> str:
    result = docker("inspect", "-f", "{{.State.StartedAt}}", stack.container(service))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


async def _roll_while_used(stack: ComposeStack, probe_seed: Path) -> dict[str, Any]:
    info = stack.info
    ca = Path(info.ca_file)
    admin = ApiClient(info.api_urls, read_seed_file(Path(info.admin_seed_file)), ca_file=ca)
    member = KeyPair.generate(Prefix.USER)
    prober = read_seed_file(probe_seed)
    async with admin:
        await admin.add_user(member.public_key, "rolling")
        await admin.add_user(prober.public_key, "probe")
    client = await Client.open(
        identity=member, nats_urls=info.nats_urls, api_urls=info.api_urls, ca_file=ca
    )
    acked: list[bytes] = []
    outcomes: list[BaseException | None] = []
    try:
        room = await client.create_room()
        await room.wait_admitted()
        rolling = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "unibus.cli",
            "rollout",
            "--compose",
            "--dir",
            str(stack.directory),
            "--compose-file",
            str(REPO / "compose.yaml"),
            "--project",
            stack.project,
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=stack.environ(),
        )
        done = asyncio.create_task(rolling.communicate())
        target = NatsTarget(urls=tuple(info.nats_urls), ca_file=ca, identity_file=probe_seed)

        async def probe_every_200ms() -> None:
            while not done.done():
                began = time.monotonic()
                outcomes.append(await admitted_within(target))
                await asyncio.sleep(max(0.0, 0.2 - (time.monotonic() - began)))

        probing = asyncio.create_task(probe_every_200ms())
        try:
            async with asyncio.timeout(780):
                index = 0
                while not done.done():
                    data = f"rolling {index}".encode()
                    await room.publish(data)
                    acked.append(data)
                    index += 1
                    await asyncio.sleep(0.05)
                out, err = await done
                await probing
        except TimeoutError:
            rolling.kill()
            raise
        stored = [m.data async for m in room.history()]
    finally:
        await client.close()
    return {
        "code": rolling.returncode,
        "out": out.decode(),
        "err": err.decode(),
        "acked": acked,
        "stored": stored,
        "outcomes": outcomes,
    }


def test_a_compose_rollout_restarts_every_node_losing_nothing_and_refusing_no_connect(
    stack: ComposeStack, tmp_path: Path
) -> None:
    stack.wait_healthy()
    before = {node: _started_at(stack, node) for node in NODES}
    probe_seed = tmp_path / "probe.nk"
    write_seed_file(probe_seed, KeyPair.generate(Prefix.USER).seed)

    result = asyncio.run(_roll_while_used(stack, probe_seed))

    assert result["code"] == 0, result["err"][-3000:]
    report = json.loads(result["out"])
    assert sorted(n["node"] for n in report["nodes"]) == list(NODES)
    assert report["after"]["healthy"] is True, report["after"]["problems"]
    after = {node: _started_at(stack, node) for node in NODES}
    assert all(after[n] != before[n] for n in NODES), (before, after)
    status = stack.wait_healthy()
    assert all(a["replicas"] == 3 and not a["degraded"] for a in status["assets"])

    refused = [repr(e) for e in result["outcomes"] if e is not None]
    assert len(result["outcomes"]) > 50, "the connect probe barely ran"
    assert refused == [], f"connects failed during the rollout: {refused[:5]}"
    assert len(result["acked"]) > 50, "the publisher barely ran"
    missing = set(result["acked"]) - set(result["stored"])
    assert not missing, f"{len(missing)} acknowledged messages lost"


def test_a_compose_rollout_of_a_degraded_cluster_is_refused(stack: ComposeStack) -> None:
    stack.wait_healthy()
    stack.stop("n3")
    try:
        result = stack.cli(
            "rollout",
            "--compose",
            "--dir",
            str(stack.directory),
            "--compose-file",
            str(REPO / "compose.yaml"),
            "--project",
            stack.project,
            timeout=120,
        )
        assert result.returncode == 1
        assert "refusing to roll a degraded cluster" in result.stderr
        running = docker(
            *("ps", "-q", "--filter", f"name=^{stack.project}-n[0-9]"),
            *("--filter", "status=running"),
        )
        assert len(running.stdout.split()) == 2, "the rollout touched a node"
    finally:
        stack.start("n3")
    stack.wait_healthy()


def _volume_created(stack: ComposeStack, key: str) -> str:
    result = docker("volume", "inspect", "-f", "{{.CreatedAt}}", f"{stack.project}_{key}")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_unibus_replace_compose_wipes_a_node_volume_and_its_peers_rebuild_it(
    stack: ComposeStack,
) -> None:
    stack.wait_healthy()
    before = _volume_created(stack, "n2-data")
    where = [
        "--compose",
        "--dir",
        str(stack.directory),
        "--compose-file",
        str(REPO / "compose.yaml"),
    ]
    where += ["--project", stack.project]

    dry = stack.cli("replace", "n2", *where, "--wipe", "--json", timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["dry_run"] is True
    assert _volume_created(stack, "n2-data") == before, "a dry run acted"

    result = stack.cli("replace", "n2", *where, "--wipe", "--yes", "--json", timeout=600)

    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["wiped"] is True
    assert report["after"]["healthy"] is True
    assert _volume_created(stack, "n2-data") != before, "n2's volume was not replaced"
    status = stack.wait_healthy()
    assert all(a["replicas"] == 3 and not a["degraded"] for a in status["assets"])
    check = stack.cli("clientcheck", "--dir", str(stack.directory), timeout=180)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]

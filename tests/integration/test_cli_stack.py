"""`unibus up`, `status` and `down` as an operator runs them, in child processes."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

from tests.integration.harness import StackFactory, eventually, free_port_block, run_cli
from unibus.client.profile import read_stack_info
from unibus.core.nkeys import KeyPair, Prefix
from unibus.core.provisioning import ASSETS
from unibus.stack.layout import StackLayout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_up_starts_three_routed_nodes_status_reports_them_and_down_stops_every_process(
    tmp_path: Path,
) -> None:
    root = tmp_path / "stack"
    base = free_port_block(40)
    up = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "unibus.cli",
        "up",
        "--dir",
        str(root),
        "--base-port",
        str(base),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    layout = StackLayout.at(root)
    try:

        async def stack_file_written() -> bool:
            if up.returncode is not None:
                output = (await up.stdout.read()).decode() if up.stdout else ""
                raise AssertionError(f"unibus up exited early:\n{output}")
            return layout.stack_file.exists()

        await eventually(stack_file_written, until=bool, timeout=120, what="stack.json")
        info = read_stack_info(root)

        code, out, err = await run_cli("status", "--dir", str(root), "--json")

        assert code == 0, err
        status = json.loads(out)
        assert status["healthy"] is True
        assert [n["name"] for n in status["nodes"]] == ["n1", "n2", "n3"]
        assert all(n["routes"] == 2 and n["route_tls"] for n in status["nodes"])
        assert all(n["meta_leader"] in ("n1", "n2", "n3") for n in status["nodes"])
        assert {a["name"] for a in status["assets"]} == {a.name for a in ASSETS}
        assert all(a["replicas"] == 3 and not a["degraded"] for a in status["assets"])
        assert info.nats_urls == [f"tls://127.0.0.1:{base + i}" for i in range(3)]
        for seed_file in (info.admin_seed_file, info.internal_id_file, info.sys_id_file):
            assert stat.S_IMODE(os.stat(seed_file).st_mode) == 0o600
        node_pids = [int(layout.node_pid(n).read_text()) for n in ("n1", "n2", "n3")]
        assert all(_alive(pid) for pid in node_pids)

        code, out, err = await run_cli("down", "--dir", str(root))

        assert code == 0, err
        async with asyncio.timeout(60):
            assert await up.wait() == 0
        assert not any(_alive(pid) for pid in node_pids)
    finally:
        if up.returncode is None:
            up.kill()
            await up.wait()
        await run_cli("down", "--dir", str(root))


async def test_status_of_a_missing_stack_says_how_to_start_one(tmp_path: Path) -> None:
    code, _, err = await run_cli("status", "--dir", str(tmp_path / "nowhere"))

    assert code == 1
    assert "unibus up" in err
    assert "Traceback" not in err


async def test_provision_creates_every_asset_and_the_first_admin_once(
    stacks: StackFactory, tmp_path: Path
) -> None:
    stack = await stacks.start(nodes=3, provision=False)
    target = [
        *(f"--nats-url={stack.client_url(n)}" for n in stack.spec.node_names),
        f"--ca={stack.layout.certs.client_ca_cert}",
        f"--identity={stack.layout.identity('internal')}",
    ]
    admin = KeyPair.generate(Prefix.USER).public_key
    admin_file = tmp_path / "admin.pub"
    admin_file.write_text(admin + "\n")

    code, out, err = await run_cli(
        "provision", *target, f"--first-admin-file={admin_file}", "--json"
    )
    assert code == 0, err
    first = json.loads(out)
    assert first["replicas"] == 3
    assert sorted(first["created"]) == sorted(a.name for a in ASSETS)
    assert first["first_admin_written"] is True

    code, out, err = await run_cli("provision", *target, f"--first-admin={admin}", "--json")
    assert code == 0, err
    again = json.loads(out)
    assert again["created"] == []
    assert again["first_admin_written"] is False

    # A seed where a public key belongs is refused (a throwaway one, never used anywhere).
    throwaway_seed = KeyPair.generate(Prefix.USER).seed
    code, _, err = await run_cli("provision", *target, f"--first-admin={throwaway_seed}")
    assert code == 1
    assert "never a seed" in err

"""The chaos check against a local stack: every invariant holds, and it always undoes (issue 13).

The engine runs against a three-node stack with its services, as `unibus up` runs it; the
CLI goes through a running `unibus up`, which holds the nodes. A check interrupted while
two nodes are down still leaves the cluster whole.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.integration.deployment import Deployment
from tests.integration.harness import bounded, run_cli, running_up
from unibus.core import naming
from unibus.stack.chaos import ChaosCheck
from unibus.stack.chaos import Deployment as ChaosTarget
from unibus.stack.drivers import LocalDriver
from unibus.stack.layout import StackLayout

pytestmark = pytest.mark.timeout(900)
NODES = ("n1", "n2", "n3")


async def test_a_chaos_check_of_a_healthy_stack_holds_every_invariant_and_leaves_it_whole(
    deployment: Deployment,
) -> None:
    stack = deployment.stack
    seen: list[str] = []
    check = ChaosCheck(
        LocalDriver(stack), ChaosTarget.from_stack_info(stack.info()), progress=seen.append
    )

    async with bounded(600):
        report = await check.run()

    failed = [
        f"{p.phase}: {i.name}: {i.figure}"
        for p in report.phases
        for i in p.invariants
        if not i.held
    ]
    assert failed == [], "\n".join(report.lines())
    assert report.ok
    assert [p.phase for p in report.phases] == ["stop-one", "cut-off", "stop-two", "restore"]
    assert all(stack.pid(n) is not None for n in NODES), "a node was left down"
    # What the check wrote is gone: its messages purged, its refused user absent.
    assert any("purged" in note for note in report.notes), report.notes
    subject = check.subject
    js = (await deployment.stacks.connect(stack)).jetstream(timeout=5.0)
    info = await js.stream_info(naming.MESSAGES_STREAM, subjects_filter=subject)
    assert not (info.state.subjects or {}).get(subject), "the check's messages were left"
    # And the cluster serves a member as before.
    alice = await deployment.member("after-chaos")
    room = await alice.create_room()
    await room.publish(b"still here")


async def _interrupted_at(
    args: list[str], marker: str, *, budget: float
) -> tuple[int, str, list[str]]:
    """Run the CLI; SIGINT it once ``marker`` appears on stderr. (status, stdout, stderr)."""
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "unibus.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert cli.stdout is not None
    assert cli.stderr is not None
    lines: list[str] = []
    out = asyncio.create_task(cli.stdout.read())
    try:
        async with asyncio.timeout(budget):
            sent = False
            while raw := await cli.stderr.readline():
                lines.append(raw.decode().rstrip("\n"))
                if not sent and marker in lines[-1]:
                    cli.send_signal(signal.SIGINT)
                    sent = True
            await cli.wait()
    finally:
        if cli.returncode is None:
            cli.kill()
            await cli.wait()
    assert cli.returncode is not None
    return cli.returncode, (await out).decode(), lines


async def test_unibus_chaoscheck_interrupted_during_stop_two_restores_the_stack(
    tmp_path: Path,
) -> None:
    root = tmp_path / "stack"
    layout = StackLayout.at(root)
    async with running_up(root) as up:
        pids = {n: int(layout.node_pid(n).read_text()) for n in NODES}

        code, out, err = await run_cli("chaoscheck", "--dir", str(root), "--json")
        assert code == 0, err
        assert json.loads(out)["dry_run"] is True
        assert {n: int(layout.node_pid(n).read_text()) for n in NODES} == pids, "a dry run acted"

        started = time.monotonic()
        code, out, err_lines = await _interrupted_at(
            ["chaoscheck", "--dir", str(root), "--yes", "--phase", "stop-two", "--json"],
            "stop two: killing",
            budget=420,
        )

        assert code == 130, "\n".join(err_lines[-30:])
        report = json.loads(out)
        assert report["interrupted"] is True
        assert report["ok"] is False
        restore = report["phases"][-1]
        assert restore["phase"] == "restore"
        assert restore["held"] is True, restore
        assert "started" in restore["action"], restore
        assert any("interrupted" in line for line in err_lines)
        assert up.returncode is None, "unibus up stopped during the check"
        code, out, err = await run_cli("status", "--dir", str(root), "--json")
        assert code == 0, err
        assert json.loads(out)["healthy"] is True
        assert time.monotonic() - started < 300

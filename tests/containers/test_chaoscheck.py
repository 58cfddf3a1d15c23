"""`unibus chaoscheck --compose` on the compose stack, as an operator runs it (issue 13).

The CLI kills, freezes and revives the stack's containers itself: every invariant holds and
the stack is left healthy, with no container paused or stopped. Interrupted (SIGINT) while
two nodes are down, it still undoes everything before it exits.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.containers.harness import REPO, ComposeStack, docker, eventually

pytestmark = pytest.mark.timeout(900)


def _chaoscheck(stack: ComposeStack, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "unibus.cli",
        "chaoscheck",
        "--compose",
        "--dir",
        str(stack.directory),
        "--compose-file",
        str(REPO / "compose.yaml"),
        "--project",
        stack.project,
        *args,
    ]


def _containers(stack: ComposeStack) -> dict[str, str]:
    """Each container of the project by name, with its state (running, paused, exited)."""
    project = f"label=com.docker.compose.project={stack.project}"
    found = docker("ps", "-a", "--filter", project, "--format", "{{.Names}} {{.State}}")
    assert found.returncode == 0, found.stderr
    pairs = (line.split() for line in found.stdout.splitlines() if line.strip())
    return {name: state for name, state in pairs if "stage" not in name and "provision" not in name}


NODE_CONTAINERS = 4
"""A node and, beside it, its callout, API and exporter."""
SERVICE_CONTAINERS = 3 * NODE_CONTAINERS


def _all_running(stack: ComposeStack) -> None:
    states = _containers(stack)
    assert len(states) == SERVICE_CONTAINERS, states
    assert set(states.values()) == {"running"}, states


def test_unibus_chaoscheck_on_the_compose_stack_holds_every_invariant_and_leaves_it_healthy(
    stack: ComposeStack,
) -> None:
    stack.wait_healthy()
    dry = subprocess.run(
        _chaoscheck(stack, "--json"),
        capture_output=True,
        text=True,
        timeout=60,
        env=stack.environ(),
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["dry_run"] is True

    started = time.monotonic()
    result = subprocess.run(
        _chaoscheck(stack, "--yes", "--json"),
        capture_output=True,
        text=True,
        timeout=840,
        env=stack.environ(),
        check=False,
    )

    report: dict[str, Any] = json.loads(result.stdout)
    failed = [
        f"{p['phase']}: {i['invariant']}: {i['figure']}"
        for p in report["phases"]
        for i in p["invariants"]
        if not i["held"]
    ]
    assert failed == [], result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
    assert report["ok"] is True
    assert [p["phase"] for p in report["phases"]] == ["stop-one", "cut-off", "stop-two", "restore"]
    assert time.monotonic() - started < 600
    _all_running(stack)
    status = stack.wait_healthy()
    assert all(a["replicas"] == 3 and not a["degraded"] for a in status["assets"])


def test_a_compose_chaoscheck_interrupted_during_stop_two_restores_the_cluster(
    stack: ComposeStack,
) -> None:
    stack.wait_healthy()
    cli = subprocess.Popen(
        _chaoscheck(stack, "--yes", "--phase", "stop-two", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=stack.environ(),
    )
    assert cli.stderr is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        for line in cli.stderr:
            lines.append(line.rstrip("\n"))
            if "stop two: killing" in line:
                break
            assert time.monotonic() < deadline, "stop two never began:\n" + "\n".join(lines)
        else:
            pytest.fail("the check ended before stop two:\n" + "\n".join(lines))
        # Interrupt once the two nodes and their services are down: there is damage to undo.
        eventually(
            lambda: _containers(stack),
            until=lambda states: list(states.values()).count("exited") == 2 * NODE_CONTAINERS,
            timeout=60,
            interval=0.2,
            what="two nodes killed with their callouts, APIs and exporters",
        )
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=420)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    lines += err.splitlines()

    assert cli.returncode == 130, "\n".join(lines[-40:])
    report = json.loads(out)
    assert report["interrupted"] is True
    assert report["ok"] is False
    restore = report["phases"][-1]
    assert restore["phase"] == "restore"
    assert restore["held"] is True, restore
    assert "started" in restore["action"], restore
    assert any("interrupted: undoing" in line for line in lines)
    _all_running(stack)
    stack.wait_healthy()

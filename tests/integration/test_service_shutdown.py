"""A service stops when told to, even while it cannot reach the cluster.

A callout or API started while every node is down keeps retrying its first connect; a
SIGTERM must still end it, with status 0, well inside the 10 s a container engine waits
before SIGKILL. With nothing yet to drain, it ends at once: never by the forced cancel
that ends a stop still running after ``SHUTDOWN_GRACE``.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.integration.harness import StackFactory, eventually
from unibus.core.process import SHUTDOWN_GRACE
from unibus.stack.topology import SERVICES


@pytest.mark.parametrize("service", SERVICES)
async def test_a_service_started_while_every_node_is_down_exits_0_on_sigterm(
    stacks: StackFactory, service: str
) -> None:
    stack = await stacks.start(nodes=3)
    for node in stack.spec.node_names:
        stack.stop_node(node, kill=True)
    stack.start_service(service, "n1")
    pid = stack.service_pid(service, "n1")
    assert pid is not None
    log = stack.layout.service_log(service, "n1")

    # Logged just before the first connect, which then retries for as long as no node answers.
    async def trying_to_connect() -> str:
        return log.read_text() if log.exists() else ""

    await eventually(
        trying_to_connect,
        until=lambda text: "metrics listening" in text,
        timeout=30,
        what=f"{service} retrying its first connect",
    )
    os.kill(pid, signal.SIGTERM)

    async def running() -> bool:
        return stack.service_pid(service, "n1") is not None

    await eventually(
        running,
        until=lambda alive: not alive,
        timeout=SHUTDOWN_GRACE + 4,
        what=f"{service} ending after SIGTERM",
    )
    assert stack.service_exit_status(service, "n1") == 0, log.read_text()[-2000:]
    assert "still not stopped; cancelling" not in log.read_text()

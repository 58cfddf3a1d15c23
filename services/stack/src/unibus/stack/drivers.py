"""How a node is stopped and started, wherever it runs: local processes, compose, ssh.

Each driver stops a node the planned way (lame duck: its clients and leaderships move
to the peers first), starts it with the current image and configuration, and says when
the callout and the API beside it are ready. The rollout (``unibus.stack.rollout``) and
the chaos check use them and never care which one they hold.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from unibus.core.errors import StackError
from unibus.stack.launcher import LocalStack
from unibus.stack.topology import SERVICES

__all__ = ["ComposeDriver", "ComposeNode", "LocalDriver"]

_COMMAND_TIMEOUT: Final = 180.0
"""A compose stop waits for the lame duck (up to the 60 s grace); a start pulls nothing."""


class LocalDriver:
    """The nodes of a :class:`LocalStack` this process started (``unibus up`` holds one)."""

    def __init__(self, stack: LocalStack) -> None:
        self._stack = stack

    @property
    def nodes(self) -> tuple[str, ...]:
        return self._stack.spec.node_names

    def steps(self, node: str) -> list[str]:
        return [
            f"lame-duck stop of nats-server {node} (SIGUSR2, then SIGTERM)",
            f"stop the authcallout and controlplane of {node}",
            f"render {node}'s config from the current settings and start it",
            f"start the authcallout and controlplane of {node}",
        ]

    async def prepare(self) -> None:
        """Nothing to stage: a local node reads its material where it was written."""

    async def stop(self, node: str) -> None:
        await asyncio.to_thread(self._stack.stop_node, node)
        for service in SERVICES:
            await asyncio.to_thread(self._stack.stop_service, service, node)

    async def start(self, node: str) -> None:
        self._stack.start_node(node)
        await self._stack.wait_ready(nodes=(node,))
        for service in SERVICES:
            self._stack.start_service(service, node)

    async def services_ready(self, node: str) -> bool:
        return await asyncio.to_thread(
            lambda: all(self._stack.service_ready(service, node) for service in SERVICES)
        )


@dataclass(frozen=True)
class ComposeNode:
    """One node in a compose project: its service names and how to reach its compose."""

    name: str
    compose: tuple[str, ...]
    """``docker compose`` with the options that select the project, as run where it is."""
    node_service: str
    services: tuple[str, ...]
    """The node's authcallout and controlplane services."""
    ssh: str | None = None
    """``user@host`` when the project lives on another machine."""
    stage_service: str = "stage"

    def argv(self, *args: str) -> list[str]:
        command = [*self.compose, *args]
        if self.ssh is None:
            return command
        return ["ssh", "-o", "BatchMode=yes", self.ssh, shlex.join(command)]


class ComposeDriver:
    """Nodes run by ``docker compose``, on this machine or on hosts reached over ssh."""

    def __init__(self, nodes: Sequence[ComposeNode]) -> None:
        self._nodes = {node.name: node for node in nodes}

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(self._nodes)

    def _commands(self, node: str) -> list[list[str]]:
        spec = self._nodes[node]
        return [
            spec.argv("stop", spec.node_service),
            spec.argv("stop", *spec.services),
            spec.argv("up", "-d", "--no-deps", spec.node_service, *spec.services),
        ]

    def steps(self, node: str) -> list[str]:
        return [shlex.join(command) for command in self._commands(node)]

    def prepare_steps(self) -> list[str]:
        return [shlex.join(command) for command in self._stage_commands()]

    def _stage_commands(self) -> list[list[str]]:
        # One staging per project: it copies the rendered material (configs, certificates)
        # into the volumes. Running nodes read their files only when they start, so each
        # picks up the new ones when its turn comes.
        seen: dict[tuple[tuple[str, ...], str | None], list[str]] = {}
        for spec in self._nodes.values():
            key = (spec.compose, spec.ssh)
            if key not in seen:
                seen[key] = spec.argv("run", "--rm", "--no-deps", spec.stage_service)
        return list(seen.values())

    async def prepare(self) -> None:
        for command in self._stage_commands():
            await _run(command)

    async def stop(self, node: str) -> None:
        stop_node, stop_services, _ = self._commands(node)
        await _run(stop_node)
        await _run(stop_services)

    async def start(self, node: str) -> None:
        await _run(self._commands(node)[2])

    async def services_ready(self, node: str) -> bool:
        spec = self._nodes[node]
        try:
            output = await _run(spec.argv("ps", "--format", "json", *spec.services))
        except StackError:
            return False
        healthy = set()
        for line in output.splitlines():
            if not line.strip().startswith("{"):
                continue
            entry = json.loads(line)
            if entry.get("State") == "running" and entry.get("Health") == "healthy":
                healthy.add(entry.get("Service"))
        return healthy >= set(spec.services)


async def _run(command: list[str], *, timeout: float = _COMMAND_TIMEOUT) -> str:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise StackError(f"{shlex.join(command)} did not finish within {timeout:g}s") from None
    if process.returncode != 0:
        raise StackError(
            f"{shlex.join(command)} failed (status {process.returncode}): "
            f"{err.decode(errors='replace').strip()[-500:]}"
        )
    return out.decode(errors="replace")

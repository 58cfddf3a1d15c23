"""How a node is stopped and started, wherever it runs: local processes, compose, ssh.

Each driver stops a node the planned way (lame duck: its clients and leaderships move
to the peers first), starts it with the current image and configuration, and says when
the callout and the API beside it are ready. The rollout (``unibus.stack.rollout``) and
the chaos check use them and never care which one they hold.

For the chaos check (``unibus.stack.chaos``) each driver also does what a planned stop
avoids, and undoes it: ``kill`` ends a node and its services abruptly (a crash),
``revive`` starts again whatever of a node is not running, as it was (no new config);
``isolate`` cuts a node off and ``heal`` joins it again. ``revive`` and ``heal`` are
idempotent, so a restore can always run them, whatever was done before it.

For a node replacement (``unibus.stack.replace``) each driver also ``wipe``s a stopped
node's JetStream state, as a lost disk or a new host leaves it: the node's store
directory locally, its data volume under compose. Nothing else of the node goes (its
configuration and certificates are staged again from the operator's material).

"Cut off" is the same everywhere: the node's nats-server, callout and API are frozen
(SIGSTOP locally, ``docker compose pause`` under compose, here or over ssh) and thawed.
Their sockets stay open and silent, which is what a partition looks like to the peers and
to clients on the majority's side, where the check stands: the peers elect without the
node, its connects and API go unanswered, and once thawed it must rejoin and catch up.

Not ``docker network disconnect``: it removes the containers' interfaces, and with them,
silently, every connection the node has, its own callout's and API's included (which a
real partition, between hosts, leaves alone). nats-py and nats-server notice a dead
connection only at their ping interval (two minutes), so after a heal the node's services
stayed unready for over six minutes on the compose stack: an artifact of the tool, not
of the cluster. (Moving the containers onto a network of their own instead keeps their
published ports working, and per-host deployments route through those.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from unibus.core.errors import StackError
from unibus.stack.launcher import LocalStack
from unibus.stack.topology import CONTAINER_SERVICES, SERVICES

__all__ = ["ChaosSteps", "ComposeDriver", "ComposeNode", "LocalDriver", "compose_nodes"]

_COMMAND_TIMEOUT: Final = 180.0
"""A compose stop waits for the lame duck (up to the 60 s grace); a start pulls nothing."""
CUT_OFF: Final = (
    "its nats-server, callout and API frozen: silent to its peers and to clients, as "
    "across a partition seen from the majority's side (where the check stands), so its "
    "connects and API go unanswered; thawed, it must rejoin and catch up"
)


@dataclass(frozen=True)
class ChaosSteps:
    """What the chaos check runs against one node, in words or commands (for its plan)."""

    kill: tuple[str, ...]
    revive: tuple[str, ...]
    isolate: tuple[str, ...]
    heal: tuple[str, ...]


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

    async def prepare(self, nodes: Sequence[str] = ()) -> None:
        """Nothing to stage: a local node reads its material where it was written."""

    def wipe_steps(self, node: str) -> list[str]:
        return [f"delete {self._stack.layout.node_store(node)} (its JetStream state)"]

    async def wipe(self, node: str) -> None:
        if self._stack.pid(node) is not None:
            raise StackError(f"{node} is running: stop it before its state is deleted")
        await asyncio.to_thread(shutil.rmtree, self._stack.layout.node_store(node), True)

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

    # -- chaos ------------------------------------------------------------------------------
    cut_off: Final = f"{CUT_OFF} (SIGSTOP, SIGCONT)"

    @staticmethod
    def chaos_steps(node: str) -> ChaosSteps:
        return ChaosSteps(
            kill=(f"SIGKILL nats-server {node}, its authcallout and controlplane",),
            revive=(f"start whatever of {node} is not running (same config)",),
            isolate=(f"SIGSTOP nats-server {node}, its authcallout and controlplane",),
            heal=(f"SIGCONT nats-server {node}, its authcallout and controlplane",),
        )

    def _pids(self, node: str) -> list[int]:
        pids = [self._stack.pid(node), *(self._stack.service_pid(s, node) for s in SERVICES)]
        return [pid for pid in pids if pid is not None]

    async def kill(self, node: str) -> None:
        await asyncio.to_thread(self._stack.stop_node, node, kill=True)
        for service in SERVICES:
            await asyncio.to_thread(self._stack.stop_service, service, node, kill=True)

    async def revive(self, node: str) -> None:
        if self._stack.pid(node) is None:
            self._stack.start_node(node)
            await self._stack.wait_ready(nodes=(node,))
        for service in SERVICES:
            if self._stack.service_pid(service, node) is None:
                self._stack.start_service(service, node)

    async def isolate(self, node: str) -> None:
        for pid in self._pids(node):
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile: nothing to freeze
                os.kill(pid, signal.SIGSTOP)

    async def heal(self, node: str) -> None:
        for pid in self._pids(node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@dataclass(frozen=True)
class ComposeNode:
    """One node in a compose project: its service names and how to reach its compose."""

    name: str
    compose: tuple[str, ...]
    """``docker compose`` with the options that select the project, as run where it is."""
    node_service: str
    services: tuple[str, ...]
    """The node's services: authcallout, controlplane and its exporter (each restarts with
    the node, so it serves the node's current certificate)."""
    ssh: str | None = None
    """``user@host`` when the project lives on another machine."""
    stage_service: str = "stage"
    data_volume: str = "nats-data"
    """The compose volume (its key in the file) holding the node's JetStream state."""

    @property
    def containers(self) -> tuple[str, ...]:
        """The compose services of the node, its own first."""
        return (self.node_service, *self.services)

    def argv(self, *args: str) -> list[str]:
        """``docker compose`` of the project with ``args``, where the project lives."""
        return self.host_argv(*self.compose, *args)

    @property
    def docker(self) -> str:
        """The docker command the project's compose runs as."""
        return self.compose[0]

    def host_argv(self, *command: str) -> list[str]:
        """``command`` run where the project lives (over ssh for a remote host)."""
        if self.ssh is None:
            return list(command)
        return ["ssh", "-o", "BatchMode=yes", self.ssh, shlex.join(command)]


def compose_nodes(compose: Sequence[str], nodes: Sequence[str]) -> list[ComposeNode]:
    """The nodes of the repository's ``compose.yaml`` (services ``nX``, ``authcallout-nX``,
    ``controlplane-nX``, ``natsexporter-nX``) in one project on this machine; ``compose``
    selects the project."""
    return [
        ComposeNode(
            name=node,
            compose=tuple(compose),
            node_service=node,
            services=tuple(f"{service}-{node}" for service in CONTAINER_SERVICES),
            data_volume=f"{node}-data",
        )
        for node in nodes
    ]


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

    def prepare_steps(self, nodes: Sequence[str] = ()) -> list[str]:
        return [shlex.join(command) for command in self._stage_commands(nodes)]

    def _stage_commands(self, nodes: Sequence[str] = ()) -> list[list[str]]:
        # One staging per project: it copies the rendered material (configs, certificates)
        # into the volumes. Running nodes read their files only when they start, so each
        # picks up the new ones when its turn comes.
        seen: dict[tuple[tuple[str, ...], str | None], list[str]] = {}
        for spec in self._nodes.values():
            if nodes and spec.name not in nodes:
                continue
            key = (spec.compose, spec.ssh)
            if key not in seen:
                seen[key] = spec.argv("run", "--rm", "--no-deps", spec.stage_service)
        return list(seen.values())

    async def prepare(self, nodes: Sequence[str] = ()) -> None:
        """Stage the material of every project, or only of the projects of ``nodes``."""
        for command in self._stage_commands(nodes):
            await _run(command)

    # -- reload -----------------------------------------------------------------------------
    def _reload_commands(self) -> list[list[str]]:
        # Staged first (the nodes read their files from the volumes), then every node
        # reloads: what a reload changes (the route secret) must change on all together.
        commands = self._stage_commands()
        commands += [
            spec.argv("kill", "-s", "SIGHUP", spec.node_service) for spec in self._nodes.values()
        ]
        return commands

    def reload_steps(self) -> list[str]:
        return [shlex.join(command) for command in self._reload_commands()]

    async def reload(self) -> None:
        """Stage the material, then make every node reload its config (SIGHUP)."""
        for command in self._reload_commands():
            await _run(command)

    # -- replacement ------------------------------------------------------------------------
    def wipe_steps(self, node: str) -> list[str]:
        spec = self._nodes[node]
        return [
            shlex.join(spec.argv("rm", "--stop", "--force", spec.node_service)),
            f"docker volume rm the project's {spec.data_volume!r} volume (its name from "
            f"`docker compose config`), on {spec.ssh or 'this machine'}",
        ]

    async def wipe(self, node: str) -> None:
        spec = self._nodes[node]
        # The container holds the volume: it goes first (the material volumes stay).
        await _run(spec.argv("rm", "--stop", "--force", spec.node_service))
        config = json.loads(await _run(spec.argv("config", "--format", "json")))
        volume = config.get("volumes", {}).get(spec.data_volume) or {}
        name = volume.get("name")
        if not isinstance(name, str) or not name:
            raise StackError(
                f"the compose project of {node} declares no volume {spec.data_volume!r}: "
                "is this the compose file `unibus compose init` or `deploy render` wrote?"
            )
        # --force: a volume already gone (a new host) is what we want, not an error.
        await _run(spec.host_argv(spec.docker, "volume", "rm", "--force", name))

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

    # -- chaos ------------------------------------------------------------------------------
    cut_off: Final = f"{CUT_OFF} (docker compose pause, unpause)"

    def chaos_steps(self, node: str) -> ChaosSteps:
        spec = self._nodes[node]
        return ChaosSteps(
            kill=(shlex.join(spec.argv("kill", *spec.containers)),),
            revive=(shlex.join(spec.argv("start", *spec.containers)),),
            isolate=(shlex.join(spec.argv("pause", *spec.containers)),),
            heal=(shlex.join(spec.argv("unpause", *spec.containers)),),
        )

    async def kill(self, node: str) -> None:
        spec = self._nodes[node]
        await _run(spec.argv("kill", *spec.containers))

    async def revive(self, node: str) -> None:
        spec = self._nodes[node]
        await _run(spec.argv("start", *spec.containers))

    async def _in_state(self, spec: ComposeNode, state: str) -> list[str]:
        """The node's services whose container is in ``state`` (compose's word)."""
        output = await _run(spec.argv("ps", "-a", "--format", "json", *spec.containers))
        entries: list[dict[str, object]] = []
        for line in output.splitlines():
            line = line.strip()
            # One object per line since compose 2.21; one array before (older hosts).
            if line.startswith("{"):
                entries.append(json.loads(line))
            elif line.startswith("["):
                entries.extend(json.loads(line))
        return [str(e.get("Service")) for e in entries if e.get("State") == state]

    async def isolate(self, node: str) -> None:
        spec = self._nodes[node]
        # Only what runs: compose refuses to pause a paused container, and so a repeat.
        running = await self._in_state(spec, "running")
        if running:
            await _run(spec.argv("pause", *running))

    async def heal(self, node: str) -> None:
        spec = self._nodes[node]
        paused = await self._in_state(spec, "paused")
        if paused:
            await _run(spec.argv("unpause", *paused))


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

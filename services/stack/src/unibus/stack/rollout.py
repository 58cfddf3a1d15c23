"""Rolling restarts and upgrades: one node at a time, never below quorum.

A three-node cluster survives one node down; a restart of all three within seconds (what
``docker compose up -d`` on every host back to back does) can take it below quorum. So a
rollout goes node by node, with a gate between them that the seeds called CRITICAL:

1. Refuse to begin unless the cluster is healthy (``ClusterState``): every node, a full
   mesh, a meta leader, every asset at full replication with its followers current.
2. For each node, the meta leader last: hand over the leaderships it holds (streams, then
   the meta leadership), stop it with a planned (lame-duck) stop, apply the new image or
   config and start it, then wait, within a bound, until the cluster is healthy again and
   the node's callout and API are ready. Only then go on to the next node.
3. If a node does not come back within the bound, stop there and say what was seen:
   the next node is never touched while one is missing.

How a node is stopped and started depends on where it runs: a :class:`NodeDriver` for
local processes, compose on this machine, or compose on a remote host over ssh.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from nats.aio.client import Client as NATS

from unibus.core.errors import StackError, UnibusError
from unibus.core.provisioning import ASSETS
from unibus.stack.clusterstate import ClusterState, observe
from unibus.stack.leadership import move_leaders, move_meta_leader

__all__ = [
    "DEFAULT_NODE_BOUND",
    "GATE_PATIENCE",
    "NodeDriver",
    "NodeResult",
    "RolloutRefusedError",
    "RolloutReport",
    "RolloutStalledError",
    "observe_problems",
    "order_nodes",
    "rollout",
    "settled_state",
    "wait_whole",
]

DEFAULT_NODE_BOUND: Final = 300.0
"""Seconds a node may take from its stop until the cluster is whole again."""
GATE_PATIENCE: Final = 15.0
"""Seconds the cluster may take to look healthy before a rollout refuses to begin: under
writes a follower is briefly behind now and then, which is not a degraded asset."""
_POLL: Final = 0.5
_HAND_OVER_BUDGET: Final = 60.0

Progress = Callable[[str], None]


class NodeDriver(Protocol):
    """Stops and starts one node of a deployment, with the services beside it."""

    @property
    def nodes(self) -> tuple[str, ...]: ...

    def steps(self, node: str) -> list[str]:
        """What restarting ``node`` runs, in words or commands (printed before acting)."""
        ...

    async def prepare(self, nodes: Sequence[str] = ()) -> None:
        """Put the current config where the nodes (all, or only ``nodes``) will read it."""
        ...

    async def stop(self, node: str) -> None:
        """A planned stop: lame duck, so the node's clients and leaderships move first."""
        ...

    async def start(self, node: str) -> None:
        """Start ``node`` and its services with the current image and config."""
        ...

    async def services_ready(self, node: str) -> bool:
        """The node's callout has a fresh view and its API answers ``/healthz``."""
        ...


class RolloutRefusedError(StackError):
    """The cluster was not healthy when the rollout was asked to begin: nothing was done."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(
            "refusing to roll a degraded cluster (a restart could drop it below quorum): "
            + "; ".join(problems)
            + ". Fix these first (`unibus status` shows them), then run the rollout again"
        )
        self.problems = tuple(problems)


class RolloutStalledError(StackError):
    """A node did not come back within the bound; the nodes after it were not touched."""

    def __init__(self, node: str, bound: float, seen: Sequence[str], done: Sequence[str]) -> None:
        rolled = ", ".join(done) if done else "none"
        super().__init__(
            f"{node} did not come back within {bound:g}s; stopped there (rolled before it: "
            f"{rolled}). Last seen: "
            + "; ".join(
                seen or ["the cluster looked healthy but the node's services were not ready"]
            )
            + ". Look at the node's logs, fix it, then run the rollout again"
        )
        self.node = node
        self.seen = tuple(seen)
        self.done = tuple(done)


@dataclass(frozen=True)
class NodeResult:
    node: str
    led: tuple[str, ...]
    """Assets the node led before it was stopped (handed over first)."""
    was_meta_leader: bool
    seconds: float
    """From the hand-over to the cluster whole again."""


@dataclass
class RolloutReport:
    nodes: list[NodeResult] = field(default_factory=list)
    after: ClusterState | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": [
                {
                    "node": r.node,
                    "led": list(r.led),
                    "was_meta_leader": r.was_meta_leader,
                    "seconds": round(r.seconds, 1),
                }
                for r in self.nodes
            ],
            "after": self.after.to_json() if self.after is not None else None,
        }


def order_nodes(nodes: Sequence[str], meta_leader: str | None) -> list[str]:
    """The meta leader last: the meta leadership moves once, not once per node.

    >>> order_nodes(["n1", "n2", "n3"], "n1")
    ['n2', 'n3', 'n1']
    """
    rest = [n for n in nodes if n != meta_leader]
    return rest + [n for n in nodes if n == meta_leader]


async def observe_problems(
    nc: NATS, sys_nc: NATS, expected: int
) -> tuple[ClusterState | None, list[str]]:
    """The cluster's state and its problems; no state if it did not answer (and why)."""
    try:
        state = await observe(nc, sys_nc, expected=expected)
    except (UnibusError, TimeoutError, OSError) as exc:
        return None, [f"the cluster did not answer ({type(exc).__name__}): an election?"]
    except Exception as exc:  # noqa: BLE001 - nats-py raises its own errors mid-election
        return None, [f"the cluster did not answer ({type(exc).__name__}): an election?"]
    return state, state.problems()


async def rollout(
    driver: NodeDriver,
    nc: NATS,
    sys_nc: NATS,
    *,
    node_bound: float = DEFAULT_NODE_BOUND,
    patience: float = GATE_PATIENCE,
    progress: Progress | None = None,
) -> RolloutReport:
    """Restart every node of ``driver``, one at a time, gated on a healthy cluster.

    ``nc`` is the internal identity (JetStream administration), ``sys_nc`` the system
    account; both should reach every node so they survive the one being restarted.

    The cluster is given ``patience`` seconds to look healthy before it is refused.

    Raises:
        RolloutRefusedError: the cluster was not healthy to begin with; nothing was done.
        RolloutStalledError: a node did not come back within ``node_bound`` seconds.
    """
    say = progress or (lambda _message: None)
    expected = len(driver.nodes)
    state, problems = await settled_state(
        nc, sys_nc, expected, judge=lambda found: found.problems(), patience=patience
    )
    if state is None or problems:
        raise RolloutRefusedError(problems)
    report = RolloutReport()
    say("the cluster is healthy; staging the current config")
    await driver.prepare()
    for node in order_nodes(driver.nodes, state.meta_leader):
        started = time.monotonic()
        led = tuple(state.leaderships(node))
        was_meta = state.meta_leader == node
        streams = [asset.stream for asset in ASSETS]
        meta = " and the meta leadership" if was_meta else ""
        say(f"{node}: handing over {len(led)} leadership(s){meta}")
        await move_leaders(nc, streams, away_from=node, budget=_HAND_OVER_BUDGET)
        if was_meta:
            await move_meta_leader(sys_nc, away_from=node, budget=_HAND_OVER_BUDGET)
        say(f"{node}: stopping (lame duck)")
        await driver.stop(node)
        say(f"{node}: starting with the current image and config")
        await driver.start(node)
        say(f"{node}: waiting for full replication and its services (at most {node_bound:g}s)")
        done = [r.node for r in report.nodes]
        state = await wait_whole(
            driver,
            node,
            nc,
            sys_nc,
            deadline=started + node_bound,
            stalled=functools.partial(RolloutStalledError, node, node_bound, done=done),
        )
        seconds = time.monotonic() - started
        report.nodes.append(NodeResult(node, led, was_meta, seconds))
        say(f"{node}: back, cluster whole after {seconds:.1f}s")
    report.after = state
    return report


async def settled_state(
    nc: NATS,
    sys_nc: NATS,
    expected: int,
    *,
    judge: Callable[[ClusterState], list[str]],
    patience: float,
) -> tuple[ClusterState | None, list[str]]:
    """The cluster once ``judge`` finds nothing wrong with it, or, after ``patience``
    seconds, as last seen with what ``judge`` found (no state if it did not answer)."""
    deadline = time.monotonic() + patience
    while True:
        state, problems = await observe_problems(nc, sys_nc, expected)
        if state is not None:
            problems = judge(state)
            if not problems:
                return state, []
        if time.monotonic() >= deadline:
            return state, problems
        await asyncio.sleep(_POLL)


async def wait_whole(
    driver: NodeDriver,
    node: str,
    nc: NATS,
    sys_nc: NATS,
    *,
    deadline: float,
    stalled: Callable[[list[str]], StackError],
) -> ClusterState:
    """Poll until the cluster is healthy and ``node``'s services are ready; at
    ``deadline`` (monotonic), raise ``stalled(what was last seen)``."""
    expected = len(driver.nodes)
    seen: list[str] = []
    while True:
        state, seen = await observe_problems(nc, sys_nc, expected)
        if state is not None and not seen:
            if await driver.services_ready(node):
                return state
            seen = [f"{node}: its callout or API is not ready"]
        if time.monotonic() >= deadline:
            raise stalled(seen)
        await asyncio.sleep(_POLL)

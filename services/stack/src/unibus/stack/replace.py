"""Replacing a node whose disk or host was lost: an empty node rebuilt from its peers.

Every asset is R3, so the two nodes left hold all of it. A node that comes back under
its old name with an empty store is, to JetStream, the same peer (a peer's id is derived
from its server name) that missed everything: the meta leader sends it the assignments,
each stream's leader a snapshot and what followed. Nothing has to be removed from the
cluster first, and it must not be: ``$JS.API.SERVER.REMOVE`` takes the name out of
every asset's peer set, and on three nodes there is no other peer to place the replicas
on, so the assets stay at two replicas even once the new node has joined.

``replace`` therefore:

1. refuses unless the two other nodes answer, with a meta leader and a leader and a
   current follower for every asset (rebuilding from fewer would rebuild nothing); a
   node that still answers is replaced only when asked to discard its state (``wipe``),
   and then only on a healthy cluster, after handing its leaderships over;
2. stops what is left of the node (a container that keeps failing on a broken store),
   discards its JetStream state if asked, stages its configuration and certificates
   again and starts it with its callout and API;
3. waits, within a bound, until every asset is back at full replication with its
   followers current and the node's services are ready, as a rollout does.

How a node is stopped, wiped and started depends on where it runs: the drivers of
``unibus.stack.drivers``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from nats.aio.client import Client as NATS

from unibus.core.errors import ConfigError, StackError
from unibus.core.provisioning import ASSETS
from unibus.stack.clusterstate import ClusterState
from unibus.stack.leadership import move_leaders, move_meta_leader
from unibus.stack.rollout import (
    DEFAULT_NODE_BOUND,
    GATE_PATIENCE,
    NodeDriver,
    settled_state,
    wait_whole,
)

__all__ = [
    "ReplaceDriver",
    "ReplaceRefusedError",
    "ReplaceReport",
    "ReplaceStalledError",
    "check_replaceable",
    "replace",
    "replace_refusals",
]

_HAND_OVER_BUDGET: Final = 60.0

Progress = Callable[[str], None]


class ReplaceDriver(NodeDriver, Protocol):
    """A :class:`NodeDriver` that can also discard a stopped node's JetStream state."""

    def wipe_steps(self, node: str) -> list[str]:
        """What discarding ``node``'s state runs, in words or commands."""
        ...

    async def wipe(self, node: str) -> None:
        """Discard the JetStream state of ``node``, which is stopped."""
        ...


class ReplaceRefusedError(StackError):
    """The cluster could not rebuild the node: nothing was done."""

    def __init__(self, node: str, problems: Sequence[str]) -> None:
        super().__init__(
            f"refusing to replace {node}: " + "; ".join(problems) + ". Nothing was done"
        )
        self.node = node
        self.problems = tuple(problems)


class ReplaceStalledError(StackError):
    """The node did not come back whole within the bound."""

    def __init__(self, node: str, bound: float, seen: Sequence[str]) -> None:
        super().__init__(
            f"{node} was started but the cluster was not whole within {bound:g}s. Last seen: "
            + "; ".join(seen or ["the cluster was healthy but the node's services not ready"])
            + f". Look at {node}'s logs; once it is fixed, `unibus status` shows it catching "
            "up (run the replacement again if its store is broken)"
        )
        self.node = node
        self.seen = tuple(seen)


@dataclass(frozen=True)
class ReplaceReport:
    node: str
    was_running: bool
    """The node answered before: it was handed over and stopped, then wiped."""
    wiped: bool
    seconds: float
    """From the stop to the cluster whole again."""
    after: ClusterState

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "was_running": self.was_running,
            "wiped": self.wiped,
            "seconds": round(self.seconds, 1),
            "after": self.after.to_json(),
        }


def replace_refusals(state: ClusterState, node: str, *, wipe: bool) -> list[str]:
    """Why ``node`` cannot be replaced in ``state`` (one line each); empty if it can."""
    if state.expected < 3:
        return [
            f"a cluster of {state.expected} node(s) has no peers to rebuild {node} from: "
            "restore it from a backup instead"
        ]
    answering = {n.name for n in state.nodes}
    if node in answering:
        if not wipe:
            return [
                f"{node} answers: it is not lost. `unibus rollout` restarts a node; pass "
                f"--wipe to discard {node}'s state and rebuild it from its peers"
            ]
        problems = state.problems()
        return [f"with {node} running, the cluster must be healthy first: {p}" for p in problems]
    found: list[str] = []
    others_answering = len(state.nodes)
    if others_answering < state.expected - 1:
        found.append(
            f"only {others_answering} of the other {state.expected - 1} nodes answer: the "
            "cluster has lost quorum, and nothing can be rebuilt from one node. Bring the "
            "other nodes back first, or restore from a backup"
        )
    for status in state.nodes:
        if status.meta_leader is None:
            found.append(f"{status.name}: sees no JetStream meta leader")
    needed = state.expected // 2  # followers besides the leader for a majority
    for asset in state.assets:
        if asset.missing or asset.unanswered or asset.leader is None:
            found.append(asset.summary())
        elif asset.leader not in answering:
            found.append(f"{asset.name}: led by {asset.leader}, which does not answer")
        elif asset.followers_current < needed:
            found.append(f"too few current replicas to rebuild from: {asset.summary()}")
    return found


async def check_replaceable(
    driver: NodeDriver,
    node: str,
    nc: NATS,
    sys_nc: NATS,
    *,
    wipe: bool,
    patience: float = GATE_PATIENCE,
) -> ClusterState:
    """The cluster as it is, if it can rebuild ``node``; a caller with work to do before
    the replacement (sending a new host its files) asks this first.

    Raises:
        ConfigError: ``node`` is not one of the deployment's nodes.
        ReplaceRefusedError: the cluster cannot rebuild it.
    """
    if node not in driver.nodes:
        raise ConfigError(f"no node {node!r} here: the nodes are {', '.join(driver.nodes)}")
    state, refusals = await settled_state(
        nc,
        sys_nc,
        len(driver.nodes),
        judge=lambda found: replace_refusals(found, node, wipe=wipe),
        patience=patience,
    )
    if state is None or refusals:
        raise ReplaceRefusedError(node, refusals)
    return state


async def replace(
    driver: ReplaceDriver,
    node: str,
    nc: NATS,
    sys_nc: NATS,
    *,
    wipe: bool,
    node_bound: float = DEFAULT_NODE_BOUND,
    patience: float = GATE_PATIENCE,
    progress: Progress | None = None,
) -> ReplaceReport:
    """Bring ``node`` back empty (its state discarded with ``wipe``) and rebuilt by its peers.

    ``nc`` is the internal identity, ``sys_nc`` the system account; both must reach the
    other nodes.

    Raises:
        ConfigError: ``node`` is not one of the deployment's nodes.
        ReplaceRefusedError: the cluster cannot rebuild it; nothing was done.
        ReplaceStalledError: the cluster was not whole within ``node_bound`` seconds.
    """
    say = progress or (lambda _message: None)
    state = await check_replaceable(driver, node, nc, sys_nc, wipe=wipe, patience=patience)
    started = time.monotonic()
    was_running = node in {n.name for n in state.nodes}
    if was_running:
        meta = " and the meta leadership" if state.meta_leader == node else ""
        say(f"{node}: handing over {len(state.leaderships(node))} leadership(s){meta}")
        await move_leaders(nc, [a.stream for a in ASSETS], away_from=node, budget=_HAND_OVER_BUDGET)
        if state.meta_leader == node:
            await move_meta_leader(sys_nc, away_from=node, budget=_HAND_OVER_BUDGET)
    say(f"{node}: stopping whatever of it runs")
    await driver.stop(node)
    if wipe:
        say(f"{node}: discarding its JetStream state")
        await driver.wipe(node)
    say(f"{node}: staging its configuration and certificates")
    await driver.prepare((node,))
    say(f"{node}: starting, empty: its peers send it every asset")
    await driver.start(node)
    say(f"{node}: waiting for full replication and its services (at most {node_bound:g}s)")
    after = await wait_whole(
        driver,
        node,
        nc,
        sys_nc,
        deadline=started + node_bound,
        stalled=lambda seen: ReplaceStalledError(node, node_bound, seen),
    )
    seconds = time.monotonic() - started
    say(f"{node}: rebuilt, cluster whole after {seconds:.1f}s")
    return ReplaceReport(node, was_running, wipe, seconds, after)

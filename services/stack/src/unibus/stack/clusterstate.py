"""The state of a whole deployment as an operator judges it: healthy, or what is wrong.

One predicate for every tool that must not act on a sick cluster (``unibus status``,
``unibus rollout``, ``unibus chaoscheck``): every node answering with a full route mesh
over mutual TLS, a JetStream meta leader and a supported nats-server version, and every
asset at full replication with its followers current. It is read from the servers
themselves (the system account for the nodes, the internal identity for the assets),
never from local settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from unibus.core.connect import NatsTarget, connect
from unibus.core.health import NodeStatus, node_statuses
from unibus.core.provisioning import ASSETS, AssetStatus, asset_status
from unibus.core.serverversion import version_problem

__all__ = ["CERTIFICATE_WARNING_DAYS", "ClusterState", "observe", "operator_connections"]

CERTIFICATE_WARNING_DAYS: Final = 30


@dataclass(frozen=True)
class ClusterState:
    expected: int
    """Nodes the deployment has (one per client URL it lists)."""
    nodes: tuple[NodeStatus, ...]
    assets: tuple[AssetStatus, ...]

    def problems(self) -> list[str]:
        """What is wrong, one line each, in words an operator can act on; empty if healthy."""
        found: list[str] = []
        answering = {n.name for n in self.nodes}
        if len(self.nodes) < self.expected:
            found.append(f"{len(self.nodes)} of {self.expected} nodes answer")
        for node in self.nodes:
            if node.routes < self.expected - 1:
                found.append(f"{node.name}: {node.routes} of {self.expected - 1} routes up")
            if self.expected > 1 and not node.route_tls:
                found.append(f"{node.name}: routes without mutual TLS")
            if node.meta_leader is None:
                found.append(f"{node.name}: sees no JetStream meta leader")
            if (old := version_problem(node.version, node=node.name)) is not None:
                found.append(old)
            days = node.certificate_days_left(time.time())
            if days is not None and days <= 0:
                found.append(
                    f"{node.name}: its certificate has expired: run `unibus certs renew`, "
                    "then `unibus rollout`"
                )
        for asset in self.assets:
            if asset.degraded:
                found.append(asset.summary())
            elif answering and asset.leader is not None and asset.leader not in answering:
                found.append(f"{asset.name}: led by {asset.leader}, which does not answer")
        return found

    def warnings(self, now: float | None = None) -> list[str]:
        """What needs doing soon but is not wrong yet: a certificate that expires within
        ``CERTIFICATE_WARNING_DAYS`` (``unibus certs renew`` then ``unibus rollout``)."""
        moment = time.time() if now is None else now
        found: list[str] = []
        for node in self.nodes:
            days = node.certificate_days_left(moment)
            if days is not None and 0 < days < CERTIFICATE_WARNING_DAYS:
                found.append(
                    f"{node.name}: its certificate expires in {days:.0f} day(s): run "
                    "`unibus certs renew`, then `unibus rollout`"
                )
        return found

    @property
    def healthy(self) -> bool:
        return not self.problems()

    @property
    def meta_leader(self) -> str | None:
        leaders = {n.meta_leader for n in self.nodes if n.meta_leader is not None}
        return leaders.pop() if len(leaders) == 1 else None

    def leaderships(self, node: str) -> list[str]:
        """The assets ``node`` leads."""
        return [a.name for a in self.assets if a.leader == node]

    def to_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "expected_nodes": self.expected,
            "problems": self.problems(),
            "warnings": self.warnings(),
            "nodes": [dataclasses.asdict(n) for n in self.nodes],
            "assets": [dataclasses.asdict(a) for a in self.assets],
        }


async def observe(nc: NATS, sys_nc: NATS, *, expected: int, timeout: float = 2.0) -> ClusterState:
    """Ask the servers: ``nc`` as the internal identity, ``sys_nc`` in the system account.

    An asset whose leader does not answer within ``timeout`` is reported as such (an
    election, or quorum lost), not as a failure to observe.
    """
    nodes = await node_statuses(sys_nc, expected=expected, timeout=timeout)
    js = nc.jetstream(timeout=timeout)
    assets: list[AssetStatus] = []
    for asset in ASSETS:
        try:
            assets.append(await asset_status(js, asset, cluster_size=expected))
        except nats.js.errors.NotFoundError:
            assets.append(AssetStatus.absent(asset))
        except (
            TimeoutError,
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.ServiceUnavailableError,
        ):
            # No leader answers (an election, or quorum lost): reported as such, beside
            # the nodes that do answer, rather than failing the whole observation.
            assets.append(AssetStatus.leaderless(asset))
    return ClusterState(expected=expected, nodes=tuple(nodes), assets=tuple(assets))


@contextlib.asynccontextmanager
async def operator_connections(
    internal: NatsTarget, system: NatsTarget, *, name: str
) -> AsyncIterator[tuple[NATS, NATS]]:
    """The two connections an operator tool acts through: the internal identity
    (JetStream administration) and the system account (the nodes, the meta leader)."""
    nc = await connect(internal, name=name)
    try:
        sys_nc = await connect(system, name=name)
        try:
            yield nc, sys_nc
        finally:
            await sys_nc.close()
    finally:
        await nc.close()

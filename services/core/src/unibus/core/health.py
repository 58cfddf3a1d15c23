"""The live state of a cluster: nodes (routes, JetStream meta leader) and assets.

Read from the servers themselves through the system identity — never echoed from local
settings — so a node that drifted from the intended posture shows as it really is.
"""

from __future__ import annotations

import contextlib
import datetime
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from unibus.core.provisioning import ASSETS, Asset, AssetStatus, asset_status
from unibus.core.sysreq import server_ping


@dataclass(frozen=True)
class NodeStatus:
    name: str
    server_id: str
    routes: int
    route_tls: bool
    """Routes require TLS *and* verify the peer's certificate (mutual TLS)."""
    pool_size: int
    meta_leader: str | None
    jetstream: bool
    tls_required: bool
    auth_required: bool
    version: str
    certificate_expires: float | None = None
    """When the earliest certificate the node serves (clients', routes') expires, as a
    Unix time; None when it serves none."""

    def certificate_days_left(self, now: float) -> float | None:
        if self.certificate_expires is None:
            return None
        return (self.certificate_expires - now) / 86_400


def certificate_expiry(varz: dict[str, Any]) -> float | None:
    """The earliest ``tls_cert_not_after`` of a node's client and route listeners (VARZ),
    as a Unix time; None when neither has TLS."""
    found = [
        value
        for value in (
            varz.get("tls_cert_not_after"),
            (varz.get("cluster") or {}).get("tls_cert_not_after"),
        )
        if isinstance(value, str) and value
    ]
    times = []
    for value in found:
        with contextlib.suppress(ValueError):
            times.append(datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    return min(times) if times else None


def _by_server(replies: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r.get("server", {}).get("name", "?"): r.get("data", {}) for r in replies}


async def node_statuses(sys_nc: NATS, *, expected: int, timeout: float = 2.0) -> list[NodeStatus]:
    """One entry per node that answered; missing nodes are simply absent."""
    routez = _by_server(await server_ping(sys_nc, "ROUTEZ", expected=expected, timeout=timeout))
    jsz = _by_server(await server_ping(sys_nc, "JSZ", expected=expected, timeout=timeout))
    varz = _by_server(await server_ping(sys_nc, "VARZ", expected=expected, timeout=timeout))
    nodes = []
    for name in sorted(varz):
        v, r, j = varz[name], routez.get(name, {}), jsz.get(name, {})
        cluster = v.get("cluster") or {}
        nodes.append(
            NodeStatus(
                name=name,
                server_id=str(v.get("server_id", "")),
                routes=int(r.get("num_routes", 0)),
                route_tls=bool(cluster.get("tls_required") and cluster.get("tls_verify")),
                pool_size=int(cluster.get("pool_size", 0)),
                meta_leader=(j.get("meta_cluster") or {}).get("leader"),
                jetstream=bool(v.get("jetstream")),
                tls_required=bool(v.get("tls_required")),
                auth_required=bool(v.get("auth_required")),
                version=str(v.get("version", "")),
                certificate_expires=certificate_expiry(v),
            )
        )
    return nodes


async def asset_statuses(
    js: JetStreamContext, *, cluster_size: int, assets: tuple[Asset, ...] = ASSETS
) -> list[AssetStatus]:
    """Status per asset; a missing asset is reported as such, never created."""
    found: list[AssetStatus] = []
    for asset in assets:
        try:
            found.append(await asset_status(js, asset, cluster_size=cluster_size))
        except nats.js.errors.NotFoundError:
            found.append(AssetStatus.absent(asset))
    return found

"""``/healthz``: posture read from the live server, replication of every asset.

Posture comes from the server's own VARZ through the system identity, never from local
settings, so a node that drifted shows as it is.
"""

from __future__ import annotations

from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from unibus.controlplane.settings import Settings
from unibus.core.errors import StoreError
from unibus.core.health import asset_statuses
from unibus.core.naming import CALLOUT_ACCOUNT
from unibus.core.store import Store
from unibus.core.sysreq import server_ping


async def _posture(sys_nc: NATS, node: str, cluster_size: int) -> dict[str, Any]:
    replies = await server_ping(sys_nc, "VARZ", expected=cluster_size, timeout=1.0)
    mine = [r for r in replies if (r.get("server") or {}).get("name") == node] or replies[:1]
    varz = mine[0].get("data", {}) if mine else {}
    cluster = varz.get("cluster") or {}
    # Room ACLs are what the callout issues: enforced when auth is required and a callout
    # instance is connected to answer (no instance means nobody is admitted at all).
    callouts = await server_ping(
        sys_nc,
        "CONNZ",
        expected=cluster_size,
        timeout=1.0,
        body=msgspec.json.encode({"acc": CALLOUT_ACCOUNT}),
    )
    callout_connections = sum(
        int((r.get("data") or {}).get("num_connections", 0)) for r in callouts
    )
    return {
        "server": varz.get("server_name"),
        "bus_auth": bool(varz.get("auth_required")),
        "acl": bool(varz.get("auth_required")) and callout_connections > 0,
        "callout_connections": callout_connections,
        "tls": bool(varz.get("tls_required")),
        "cluster": {
            "name": cluster.get("name"),
            "route_tls": bool(cluster.get("tls_required") and cluster.get("tls_verify")),
            "routes": len(cluster.get("urls") or []),
        },
    }


async def health_report(
    store: Store, nc: NATS, sys_nc: NATS, settings: Settings
) -> tuple[dict[str, Any], bool]:
    report: dict[str, Any] = {"node": settings.node}
    usable = True
    try:
        # Usable means decisions can be made (quorum confirmed), not merely "connected".
        await store.check_available()
    except StoreError as exc:
        usable = False
        report["store_error"] = type(exc).__name__
    try:
        report["posture"] = await _posture(sys_nc, settings.node, settings.cluster_size)
    except StoreError:
        report["posture"] = None
    try:
        statuses = await asset_statuses(
            nc.jetstream(timeout=settings.op_timeout), cluster_size=settings.cluster_size
        )
        report["assets"] = [
            {
                "name": s.name,
                "replicas": s.replicas,
                "leader": s.leader,
                "followers_current": s.followers_current,
                "followers": s.followers,
                "degraded": s.degraded,
                "missing": s.missing,
            }
            for s in statuses
        ]
        report["degraded"] = any(s.degraded for s in statuses)
    except Exception as exc:  # noqa: BLE001 - health reports, it does not fail
        report["assets"] = None
        report["assets_error"] = type(exc).__name__
    report["store"] = "usable" if usable else "unavailable"
    return report, usable

"""``/healthz``: posture read from the live server, replication of every asset.

Posture comes from the server's own VARZ through the system identity, never from local
settings, so a node that drifted shows as it is.

One report costs a VARZ and a CONNZ to every server, a stream info per asset and a quorum
barrier, so it is computed at most once per ``HEALTH_TTL`` and shared by every caller
meanwhile (``HealthCache``): a flood of unauthenticated calls costs the cluster no more than
one caller. Unauthenticated callers see ``public_view``: whether the node is usable, its
posture and each asset's replication, not the cluster's topology (leaders, peers, routes,
callout instances); administrators read the whole report at ``GET /v1/health``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
from nats.aio.client import Client as NATS

from unibus.controlplane.metrics import ApiMetrics
from unibus.controlplane.settings import Settings
from unibus.core.errors import StoreError
from unibus.core.health import asset_statuses, certificate_expiry
from unibus.core.naming import CALLOUT_ACCOUNT
from unibus.core.serverversion import version_problem
from unibus.core.store import Store
from unibus.core.sysreq import server_ping

__all__ = ["HEALTH_TTL", "HealthCache", "health_report", "public_view"]


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
    version = str(varz.get("version", ""))
    expires = certificate_expiry(varz)
    return {
        "certificate_expires": expires,
        "certificate_days_left": None
        if expires is None
        else round((expires - time.time()) / 86_400, 1),
        "server": varz.get("server_name"),
        "server_version": version,
        "server_supported": version_problem(version) is None,
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
    store: Store, nc: NATS, sys_nc: NATS, settings: Settings, *, metrics: ApiMetrics | None = None
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
        expires = report["posture"]["certificate_expires"]
        if metrics is not None and expires is not None:
            metrics.certificate_expiry.labels(listener="nats").set(expires)
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


HEALTH_TTL: Final = 1.0
"""Seconds one report is served for."""

Report = tuple[dict[str, Any], bool]


class HealthCache:
    """The newest report, computed at most once per ``ttl``; concurrent callers share one."""

    def __init__(
        self, compute: Callable[[], Awaitable[Report]], *, ttl: float = HEALTH_TTL
    ) -> None:
        self._compute = compute
        self._ttl = ttl
        self._report: Report | None = None
        self._at = 0.0
        self._running: asyncio.Task[Report] | None = None

    async def get(self) -> Report:
        if self._report is not None and time.monotonic() - self._at < self._ttl:
            return self._report
        if self._running is None:
            self._running = asyncio.create_task(self._refresh())
        # shield: one caller that gives up must not cancel the report for the others
        return await asyncio.shield(self._running)

    async def _refresh(self) -> Report:
        try:
            report = await self._compute()
            self._report, self._at = report, time.monotonic()
            return report
        finally:
            self._running = None


_PUBLIC_ASSET_FIELDS: Final = ("name", "replicas", "degraded", "missing")
_PUBLIC_POSTURE_FIELDS: Final = (
    "server",
    "bus_auth",
    "acl",
    "tls",
    "server_supported",
    "certificate_days_left",
)
"""The version itself is for administrators (GET /v1/health): anyone may learn only
whether the server is one unibus supports."""


def public_view(report: dict[str, Any]) -> dict[str, Any]:
    """What anyone may read: usable or not, the posture, replication; no topology."""
    view: dict[str, Any] = {
        key: report[key] for key in ("node", "store", "degraded") if key in report
    }
    posture = report.get("posture")
    if isinstance(posture, dict):
        cluster = posture.get("cluster") or {}
        view["posture"] = {key: posture.get(key) for key in _PUBLIC_POSTURE_FIELDS}
        view["posture"]["cluster"] = {"route_tls": bool(cluster.get("route_tls"))}
    else:
        view["posture"] = None
    assets = report.get("assets")
    view["assets"] = (
        None
        if assets is None
        else [{key: asset.get(key) for key in _PUBLIC_ASSET_FIELDS} for asset in assets]
    )
    return view

"""``/healthz`` (unsigned, the public view) and ``/v1/health`` (signed, the whole report).

Both read the app's one ``HealthCache``, so a flood of either costs the cluster one report
per second (see ``unibus.controlplane.health``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from unibus.controlplane.auth import Caller, require_admin
from unibus.controlplane.context import Context
from unibus.controlplane.health import HealthCache, public_view
from unibus.controlplane.wire import json_response

__all__ = ["full_health", "healthz"]


async def healthz(request: Request) -> Response:
    health: HealthCache = request.app.state.health
    report, healthy = await health.get()
    return json_response(public_view(report), 200 if healthy else 503)


async def full_health(request: Request, context: Context, caller: Caller) -> Response:
    require_admin(caller)
    health: HealthCache = request.app.state.health
    report, healthy = await health.get()
    return json_response(report, 200 if healthy else 503)

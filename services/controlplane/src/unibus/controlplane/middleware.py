"""Request metrics as ASGI middleware: requests by route and status, latency by route.

It wraps the whole Starlette app, so every answer is counted, the JSON errors and the
unmatched paths included.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from unibus.controlplane.metrics import ApiMetrics

__all__ = ["MetricsMiddleware"]


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Until a response starts the request counts as a 503: one cancelled before it was
        # answered (the client went away) was not served.
        status = {"code": 503}

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = _route_name(scope)
            self.metrics.requests.labels(route=route, status=str(status["code"])).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - started)


def _route_name(scope: Scope) -> str:
    # The route's name, never the raw path: room ids and keys in paths would give every
    # request a label value of its own.
    route = scope.get("route")
    name = getattr(route, "name", None)
    return str(name) if name else "unmatched"

"""The control-plane HTTP API (SPEC §6) assembled: routes, authentication, error mapping.

:func:`build_app` mounts every route of ``openapi.SIGNED_ROUTES`` behind request-signature
authentication, the two unsigned ones beside them, and the exception handlers through
which every error leaves as ``{"error": code, "message": text}``: no input yields a
traceback. The handlers live in ``routes``, the request metrics in ``middleware``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from unibus.controlplane.auth import authenticate
from unibus.controlplane.context import Context, Handler
from unibus.controlplane.errors import HttpError, from_library, not_found
from unibus.controlplane.health import HealthCache, health_report
from unibus.controlplane.middleware import MetricsMiddleware
from unibus.controlplane.openapi import SIGNED_ROUTES, openapi
from unibus.controlplane.quota import UploadBudget
from unibus.controlplane.routes.health import healthz
from unibus.controlplane.wire import error_response
from unibus.core.errors import UnibusError
from unibus.core.log import get_logger

__all__ = ["Context", "build_app", "routes"]

_log = get_logger("unibus.controlplane")


def _signed(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        context: Context = request.app.state.context
        # ``authenticate`` is looked up here at call time, not bound at import:
        # bench/api_signing.py swaps it in this module to measure the unsigned baseline.
        caller = await authenticate(request, context.store, skew=context.settings.skew)
        return await handler(request, context, caller)

    return endpoint


def routes() -> list[Route]:
    # Named explicitly: the route name is the ``route`` label of the request metrics.
    return [
        Route("/healthz", healthz, methods=["GET"], name="healthz"),
        Route("/openapi.json", openapi, methods=["GET"], name="openapi"),
        *(
            Route(
                doc.path,
                _signed(doc.handler),
                methods=[doc.method],
                name=f"{doc.method} {doc.path}",
            )
            for doc in SIGNED_ROUTES
        ),
    ]


def build_app(context: Context) -> Any:
    """The ASGI app serving ``context``: Starlette inside the request-metrics middleware.

    Typed ``Any``: Hypercorn's ``ASGIFramework`` and Starlette's ``ASGIApp`` describe the
    same protocol with types mypy cannot unify.
    """
    app = Starlette(routes=routes())
    app.state.context = context
    app.state.blob_budget = UploadBudget(context.settings.blob_budget)
    app.state.health = HealthCache(
        lambda: health_report(
            context.store, context.nc, context.sys_nc, context.settings, metrics=context.metrics
        )
    )

    async def api_error(request: Request, exc: Exception) -> Response:
        error = exc if isinstance(exc, HttpError) else HttpError(500, "internal_error", "failed")
        if error.code == "replay":
            context.metrics.replays.inc()
        return error_response(error)

    async def library_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, UnibusError)  # noqa: S101 - registered for UnibusError only
        return error_response(from_library(exc))

    async def unexpected(request: Request, exc: Exception) -> Response:
        # The caller gets a JSON error, never a traceback; the log keeps the details. Not a
        # 503: that says "not processed, send it again" (the SDK does), which is true only
        # of a store proven unavailable, not of a failure nobody understands.
        _log.error("unhandled error", error=type(exc).__name__)
        return error_response(
            HttpError(500, "internal_error", "the server could not complete the request")
        )

    async def not_found_handler(request: Request, exc: Exception) -> Response:
        return error_response(not_found("no such route"))

    async def method_handler(request: Request, exc: Exception) -> Response:
        return error_response(
            HttpError(405, "method_not_allowed", "method not allowed on this route")
        )

    app.add_exception_handler(HttpError, api_error)
    app.add_exception_handler(UnibusError, library_error)
    app.add_exception_handler(Exception, unexpected)
    app.add_exception_handler(404, not_found_handler)
    app.add_exception_handler(405, method_handler)
    return MetricsMiddleware(app, context.metrics)

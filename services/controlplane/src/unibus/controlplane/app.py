"""The control-plane HTTP API (SPEC §6): thin handlers over the Store and the room chain.

Handlers authenticate, decode a typed body, call one operation, encode the result.
Every error leaves as ``{"error": code, "message": text}`` through one handler; no
input yields a 500 or a traceback.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from unibus.controlplane import blobs, rooms
from unibus.controlplane.auth import Caller, authenticate, require_admin
from unibus.controlplane.errors import (
    ApiError,
    bad_request,
    from_library,
    not_found,
    over_quota,
    too_large,
    unauthorized,
)
from unibus.controlplane.health import HealthCache, health_report, public_view
from unibus.controlplane.metrics import ApiMetrics
from unibus.controlplane.openapi import RouteDoc, openapi_document
from unibus.controlplane.quota import UploadBudget
from unibus.controlplane.settings import Settings
from unibus.core import naming
from unibus.core.apimodels import (
    BlobView,
    ErrorView,
    NewRoom,
    NewUser,
    RoomChange,
    RoomId,
    RoomView,
    SealedKeyView,
    UserView,
)
from unibus.core.errors import (
    ConflictError,
    InvalidHandleError,
    NkeyError,
    NotFoundError,
    UnibusError,
)
from unibus.core.log import get_logger
from unibus.core.models import Status, UserRecord
from unibus.core.nkeys import canonical_user_key
from unibus.core.signing import RequestSignatureError, check_body
from unibus.core.store import Store

MAX_JSON_BODY = 1024 * 1024
_log = get_logger("unibus.controlplane")
_encoder = msgspec.json.Encoder()
T = TypeVar("T")


@dataclass
class Context:
    settings: Settings
    store: Store
    nc: NATS
    sys_nc: NATS
    metrics: ApiMetrics

    @property
    def room_cap(self) -> int:
        return self.settings.max_rooms


def _json(value: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status_code=status, media_type="application/json")


def _error(error: ApiError) -> Response:
    return _json(ErrorView(error=error.code, message=error.message), error.status)


_DRAIN_AT_LEAST = 1024 * 1024
"""Bytes of a refused body read and dropped so that the client can still read the 413."""
_NO_BODY_LIMIT = 64
"""What a route without a body still accepts: empty, ``{}`` or a little whitespace."""


async def _read_bounded(request: Request, limit: int, what: str) -> bytes:
    """The whole body, refused with 413 as soon as it is declared or has grown past ``limit``.

    A chunked body declares no length, so the count is kept while reading: nothing beyond
    ``limit`` (plus one chunk) is ever held, whatever the client sends.
    """
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise too_large(f"{what} is at most {limit} bytes")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise await _refuse_too_large(request, limit, what)
    return bytes(data)


async def _body(request: Request, caller: Caller, body_type: type[T]) -> T:
    data = await _read_bounded(request, MAX_JSON_BODY, "a JSON body")
    try:
        check_body(caller.request, data)
    except RequestSignatureError as exc:
        raise unauthorized(str(exc), code=f"signature_{exc.reason}") from None
    try:
        return msgspec.json.decode(data, type=body_type)
    except msgspec.ValidationError as exc:
        raise bad_request(f"invalid body: {exc}") from None
    except msgspec.DecodeError:
        raise bad_request("the body is not valid JSON") from None


async def _no_body(request: Request, caller: Caller) -> None:
    """Routes without a body accept an empty one (or ``{}``), still bound by the digest."""
    data = await _read_bounded(request, _NO_BODY_LIMIT, "the body of this route")
    try:
        check_body(caller.request, data)
    except RequestSignatureError as exc:
        raise unauthorized(str(exc), code=f"signature_{exc.reason}") from None
    if data.strip() not in (b"", b"{}"):
        raise bad_request("this route takes no body")


def _user_key(value: str) -> str:
    try:
        return canonical_user_key(value)
    except NkeyError:
        raise bad_request("not a user key (U… or 64 hex)") from None


def _user_view(user: UserRecord, *, full: bool) -> UserView:
    return UserView(
        key=user.key, handle=user.handle, status=user.status, role=user.role if full else None
    )


Handler = Callable[[Request, Context, Caller], Awaitable[Response]]


def _signed(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        context: Context = request.app.state.context
        caller = await authenticate(request, context.store, skew=context.settings.skew)
        return await handler(request, context, caller)

    return endpoint


# -- users ----------------------------------------------------------------------------------------
async def add_user(request: Request, context: Context, caller: Caller) -> Response:
    require_admin(caller)
    body = await _body(request, caller, NewUser)
    try:
        user = UserRecord.new(_user_key(body.key), body.handle, body.role)
    except InvalidHandleError as exc:
        raise bad_request(f"the handle {exc}") from None
    try:
        await context.store.add_user(user)
    except ConflictError:
        raise ApiError(409, "conflict", "user exists; a re-add never changes a role") from None
    return _json(_user_view(user, full=True), 201)


async def list_users(request: Request, context: Context, caller: Caller) -> Response:
    require_admin(caller)
    users = await context.store.list_users()
    return _json([_user_view(u, full=True) for u in users])


async def get_user(request: Request, context: Context, caller: Caller) -> Response:
    key = _user_key(request.path_params["key"])
    try:
        user = (await context.store.get_user(key)).value
    except NotFoundError:
        raise not_found("no such user") from None
    return _json(_user_view(user, full=caller.is_admin))


async def revoke_user(request: Request, context: Context, caller: Caller) -> Response:
    require_admin(caller)
    await _no_body(request, caller)
    key = _user_key(request.path_params["key"])
    try:
        user = (await context.store.set_user_status(key, Status.REVOKED)).value
    except NotFoundError:
        raise not_found("no such user") from None
    return _json(_user_view(user, full=True))


# -- rooms ----------------------------------------------------------------------------------------
async def new_room_id(request: Request, context: Context, caller: Caller) -> Response:
    await _no_body(request, caller)
    return _json(RoomId(room_id=naming.new_room_id()), 201)


async def create_room(request: Request, context: Context, caller: Caller) -> Response:
    body = await _body(request, caller, NewRoom)
    room = await rooms.create_room(context.store, caller.key, body, room_cap=context.room_cap)
    return _json(rooms.room_view(room), 201)


async def list_rooms(request: Request, context: Context, caller: Caller) -> Response:
    return _json(await context.store.rooms_of(caller.key))


async def get_room(request: Request, context: Context, caller: Caller) -> Response:
    room = await rooms.read_room(context.store, caller.key, request.path_params["room_id"])
    return _json(rooms.room_view(room))


async def _change(
    request: Request, context: Context, caller: Caller, kind: rooms.ChangeKind
) -> Response:
    body = await _body(request, caller, RoomChange)
    target = request.path_params.get("key")
    room = await rooms.change_room(
        context.store,
        caller.key,
        request.path_params["room_id"],
        body,
        kind,
        target=_user_key(target) if target is not None else None,
        room_cap=context.room_cap,
    )
    return _json(rooms.room_view(room))


async def add_member(request: Request, context: Context, caller: Caller) -> Response:
    return await _change(request, context, caller, rooms.ChangeKind.ADD)


async def remove_member(request: Request, context: Context, caller: Caller) -> Response:
    return await _change(request, context, caller, rooms.ChangeKind.REMOVE)


async def rekey(request: Request, context: Context, caller: Caller) -> Response:
    return await _change(request, context, caller, rooms.ChangeKind.REKEY)


async def leave_room(request: Request, context: Context, caller: Caller) -> Response:
    return await _change(request, context, caller, rooms.ChangeKind.LEAVE)


async def room_keys(request: Request, context: Context, caller: Caller) -> Response:
    keys = await rooms.sealed_keys(context.store, caller.key, request.path_params["room_id"])
    return _json(keys)


# -- blobs ----------------------------------------------------------------------------------------
def _blob_name(room_id: str, blob_id: str) -> str:
    if not naming.is_room_id(blob_id):
        raise bad_request("not a blob id")
    return f"{room_id}.{blob_id}"


async def _refuse_too_large(request: Request, limit: int, what: str = "a blob") -> ApiError:
    # A client still sending would see a reset instead of our answer: read (and drop) a
    # bounded amount of what it is sending first, then answer 413.
    drained = 0
    bound = max(2 * limit, _DRAIN_AT_LEAST)
    with contextlib.suppress(Exception):
        async for chunk in request.stream():
            drained += len(chunk)
            if drained > bound:
                break
    return too_large(f"{what} is at most {limit} bytes")


async def upload_blob(request: Request, context: Context, caller: Caller) -> Response:
    room = await rooms.read_room(context.store, caller.key, request.path_params["room_id"])
    limit = context.settings.max_blob_bytes
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise await _refuse_too_large(request, limit)
    budget: UploadBudget = request.app.state.blob_budget
    refusal = budget.refusal(caller.key, int(declared) if declared is not None else None)
    if refusal is not None:
        raise over_quota(refusal)
    blob_id = naming.new_room_id()
    name = _blob_name(room.value.room_id, blob_id)
    try:
        info = await blobs.put_blob(
            context.nc.jetstream(timeout=context.settings.op_timeout * 5),
            name,
            request.stream(),
            max_bytes=limit,
            expected_sha256=caller.request.content_sha256,
        )
    except blobs.BlobTooLarge:
        raise await _refuse_too_large(request, limit) from None
    except blobs.BlobDigestMismatch:
        raise unauthorized(
            "the body does not match its signed digest", "signature_bad_digest"
        ) from None
    budget.charge(caller.key, info.size)
    view = BlobView(room_id=room.value.room_id, blob_id=blob_id, size=info.size, sha256=info.sha256)
    return _json(view, 201)


async def download_blob(request: Request, context: Context, caller: Caller) -> Response:
    room = await rooms.read_room(context.store, caller.key, request.path_params["room_id"])
    name = _blob_name(room.value.room_id, request.path_params["blob_id"])
    try:
        info, chunks = await blobs.open_blob(
            context.nc.jetstream(timeout=context.settings.op_timeout * 5), name
        )
    except blobs.BlobNotFound:
        raise not_found("no such blob in this room") from None
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={"content-length": str(info.size), "x-unibus-blob-sha256": info.sha256},
    )


# -- unsigned -------------------------------------------------------------------------------------
async def healthz(request: Request) -> Response:
    health: HealthCache = request.app.state.health
    report, healthy = await health.get()
    return _json(public_view(report), 200 if healthy else 503)


async def full_health(request: Request, context: Context, caller: Caller) -> Response:
    require_admin(caller)
    health: HealthCache = request.app.state.health
    report, healthy = await health.get()
    return _json(report, 200 if healthy else 503)


async def openapi(request: Request) -> Response:
    return _json(openapi_document(SIGNED_ROUTES))


SIGNED_ROUTES: tuple[RouteDoc, ...] = (
    RouteDoc(
        "GET", "/v1/health", full_health, "The whole health report (admin)", None, dict[str, Any]
    ),
    RouteDoc("POST", "/v1/users", add_user, "Add a user (admin)", NewUser, UserView, 201),
    RouteDoc("GET", "/v1/users", list_users, "List users (admin)", None, list[UserView]),
    RouteDoc("GET", "/v1/users/{key}", get_user, "Look up a user's key and handle", None, UserView),
    RouteDoc(
        "POST", "/v1/users/{key}/revoke", revoke_user, "Revoke a user (admin)", None, UserView
    ),
    RouteDoc(
        "POST",
        "/v1/room-ids",
        new_room_id,
        "Get a fresh room id to sign a genesis with",
        None,
        RoomId,
        201,
    ),
    RouteDoc(
        "POST",
        "/v1/rooms",
        create_room,
        "Create a room from a signed genesis",
        NewRoom,
        RoomView,
        201,
    ),
    RouteDoc("GET", "/v1/rooms", list_rooms, "The caller's room ids", None, list[str]),
    RouteDoc(
        "GET",
        "/v1/rooms/{room_id}",
        get_room,
        "A room and its signed chain (members)",
        None,
        RoomView,
    ),
    RouteDoc(
        "POST",
        "/v1/rooms/{room_id}/members",
        add_member,
        "Add members (owner/room admin)",
        RoomChange,
        RoomView,
    ),
    RouteDoc(
        "POST",
        "/v1/rooms/{room_id}/members/{key}/remove",
        remove_member,
        "Remove a member with a complete rekey",
        RoomChange,
        RoomView,
    ),
    RouteDoc("POST", "/v1/rooms/{room_id}/rekey", rekey, "Start a new epoch", RoomChange, RoomView),
    RouteDoc(
        "POST",
        "/v1/rooms/{room_id}/leave",
        leave_room,
        "Leave a room (any member but the owner; hands out no key)",
        RoomChange,
        RoomView,
    ),
    RouteDoc(
        "GET",
        "/v1/rooms/{room_id}/keys",
        room_keys,
        "The caller's sealed keys, every epoch",
        None,
        list[SealedKeyView],
    ),
    RouteDoc(
        "POST",
        "/v1/rooms/{room_id}/blobs",
        upload_blob,
        "Upload an encrypted blob (streamed)",
        bytes,
        BlobView,
        201,
    ),
    RouteDoc(
        "GET",
        "/v1/rooms/{room_id}/blobs/{blob_id}",
        download_blob,
        "Download a blob (streamed)",
        None,
        bytes,
    ),
)


def routes() -> list[Route]:
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
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


class _Metrics:
    """ASGI middleware: requests by route and status, latency by route."""

    def __init__(self, app: Starlette, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 503}

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = _route_name(scope)
            self.metrics.requests.labels(route=route, status=str(status["code"])).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - started)


def _route_name(scope: Any) -> str:
    route = scope.get("route")
    name = getattr(route, "name", None)
    return str(name) if name else "unmatched"


def build_app(context: Context) -> Any:
    app = Starlette(routes=routes())
    app.state.context = context
    app.state.blob_budget = UploadBudget(context.settings.blob_budget)
    app.state.health = HealthCache(
        lambda: health_report(context.store, context.nc, context.sys_nc, context.settings)
    )

    async def api_error(request: Request, exc: Exception) -> Response:
        error = exc if isinstance(exc, ApiError) else ApiError(500, "internal_error", "failed")
        if error.code == "replay":
            context.metrics.replays.inc()
        return _error(error)

    async def library_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, UnibusError)  # noqa: S101 - registered for UnibusError only
        return _error(from_library(exc))

    async def unexpected(request: Request, exc: Exception) -> Response:
        # The caller gets a JSON error, never a traceback; the log keeps the details. Not a
        # 503: that says "not processed, send it again" (the SDK does), which is true only
        # of a store proven unavailable, not of a failure nobody understands.
        _log.error("unhandled error", error=type(exc).__name__)
        return _error(ApiError(500, "internal_error", "the server could not complete the request"))

    async def not_found_handler(request: Request, exc: Exception) -> Response:
        return _error(not_found("no such route"))

    async def method_handler(request: Request, exc: Exception) -> Response:
        return _error(ApiError(405, "method_not_allowed", "method not allowed on this route"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(UnibusError, library_error)
    app.add_exception_handler(Exception, unexpected)
    app.add_exception_handler(404, not_found_handler)
    app.add_exception_handler(405, method_handler)
    return _Metrics(app, context.metrics)

"""The signed routes as one table, and the OpenAPI document generated from it.

:data:`SIGNED_ROUTES` is both what ``app.build_app`` serves and what ``/openapi.json``
describes (with the msgspec wire models as schemas), so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from unibus.controlplane.routes.blobs import download_blob, upload_blob
from unibus.controlplane.routes.health import full_health
from unibus.controlplane.routes.rooms import (
    add_member,
    adopt_room,
    create_room,
    get_room,
    leave_room,
    list_rooms,
    new_room_id,
    rekey,
    remove_member,
    room_keys,
)
from unibus.controlplane.routes.users import (
    add_user,
    demote_user,
    get_user,
    list_users,
    promote_user,
    reinstate_user,
    revoke_user,
)
from unibus.controlplane.wire import json_response
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

__all__ = ["SECURITY_HEADERS", "SIGNED_ROUTES", "RouteDoc", "openapi", "openapi_document"]

_ERRORS = {
    "400": "bad input",
    "401": "bad signature, skewed timestamp, replayed request, or unknown/revoked caller",
    "403": "not allowed (not an admin, not a member, or not a rights-holder of the room)",
    "404": "no such user, room or blob",
    "409": "conflict: exists already, the record changed concurrently, or the change would "
    "leave the bus without an active admin (code last_admin)",
    "413": "body too large",
    "429": "a per-user quota is spent (blob bytes per hour); the message says when to retry",
    "500": "a failure the server did not expect; not retried, please report it",
    "503": "the store is unavailable; retry",
}
SECURITY_HEADERS = (
    "X-Unibus-Key",
    "X-Unibus-Timestamp",
    "X-Unibus-Nonce",
    "X-Unibus-Content-SHA256",
    "X-Unibus-Signature",
)


@dataclass(frozen=True)
class RouteDoc:
    """One signed route: what ``app`` mounts and what the document says about it."""

    method: str
    path: str
    handler: Callable[..., Awaitable[Any]]
    summary: str
    body: Any
    """The request body's wire type; ``None`` for none, ``bytes`` for a streamed one."""
    response: Any
    status: int = 200
    """The status of success."""


def _schema_ref(value: Any, types: list[Any]) -> dict[str, Any]:
    if value is bytes:
        return {"type": "string", "format": "binary"}
    types.append(value)
    return {"$ref": f"#/components/schemas/__{len(types) - 1}"}


def openapi_document(routes: Sequence[RouteDoc]) -> dict[str, Any]:
    types: list[Any] = [ErrorView]
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "security": [{"unibus-signature": []}],
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _path_params(route.path)
            ],
            "responses": {
                str(route.status): {
                    "description": "success",
                    "content": _content(_schema_ref(route.response, types), route.response),
                },
                **{
                    code: {
                        "description": text,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/__0"}}
                        },
                    }
                    for code, text in _ERRORS.items()
                },
            },
        }
        if route.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": _content(_schema_ref(route.body, types), route.body),
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    paths["/healthz"] = {
        "get": {
            "summary": "Node health, posture and replication (unsigned)",
            "responses": {
                "200": {"description": "usable"},
                "503": {"description": "store unusable"},
            },
        }
    }
    paths["/openapi.json"] = {
        "get": {
            "summary": "This document (unsigned)",
            "responses": {"200": {"description": "OpenAPI 3.1"}},
        }
    }
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    named = {f"__{i}": schema for i, schema in enumerate(schemas)}
    return {
        "openapi": "3.1.0",
        "info": {"title": "unibus control plane", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {**components, **named},
            "securitySchemes": {
                "unibus-signature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Unibus-Signature",
                    "description": "Ed25519 over the canonical request; also send "
                    + ", ".join(SECURITY_HEADERS[:-1])
                    + " (see unibus.core.signing)",
                }
            },
        },
    }


def _content(schema: dict[str, Any], value: Any) -> dict[str, Any]:
    media = "application/octet-stream" if value is bytes else "application/json"
    return {media: {"schema": schema}}


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


SIGNED_ROUTES: tuple[RouteDoc, ...] = (
    RouteDoc(
        "GET", "/v1/health", full_health, "The whole health report (admin)", None, dict[str, Any]
    ),
    RouteDoc("POST", "/v1/users", add_user, "Add a user (admin)", NewUser, UserView, 201),
    RouteDoc("GET", "/v1/users", list_users, "List users (admin)", None, list[UserView]),
    RouteDoc("GET", "/v1/users/{key}", get_user, "Look up a user's key and handle", None, UserView),
    RouteDoc(
        "POST",
        "/v1/users/{key}/revoke",
        revoke_user,
        "Revoke a user (admin; never the last active admin; its connections are closed)",
        None,
        UserView,
    ),
    RouteDoc(
        "POST",
        "/v1/users/{key}/reinstate",
        reinstate_user,
        "Reinstate a revoked user (admin; admitted again at its next connect)",
        None,
        UserView,
    ),
    RouteDoc(
        "POST",
        "/v1/users/{key}/promote",
        promote_user,
        "Make a user an admin (admin; its connections are closed to reconnect)",
        None,
        UserView,
    ),
    RouteDoc(
        "POST",
        "/v1/users/{key}/demote",
        demote_user,
        "Make an admin a member (admin; never the last active admin)",
        None,
        UserView,
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
        "/v1/rooms/{room_id}/adopt",
        adopt_room,
        "Adopt a room migrated from the legacy store: its signed genesis (legacy owner, or "
        "an admin if that owner is gone)",
        NewRoom,
        RoomView,
    ),
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
"""Every route that needs a signed request, in the order the document lists them."""


async def openapi(request: Request) -> Response:
    """``GET /openapi.json`` (unsigned)."""
    return json_response(openapi_document(SIGNED_ROUTES))

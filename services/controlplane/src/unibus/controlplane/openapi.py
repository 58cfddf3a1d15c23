"""The OpenAPI document, generated from the route table and the msgspec wire models."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from unibus.core.apimodels import ErrorView

_ERRORS = {
    "400": "bad input",
    "401": "bad signature, skewed timestamp, replayed request, or unknown/revoked caller",
    "403": "not allowed (not an admin, not a member, or not a rights-holder of the room)",
    "404": "no such user, room or blob",
    "409": "conflict: exists already, or the room changed concurrently",
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
    method: str
    path: str
    handler: Callable[..., Awaitable[Any]]
    summary: str
    body: Any
    response: Any
    status: int = 200


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

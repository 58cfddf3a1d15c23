"""The HTTP edge of a handler: bounded bodies checked against the signed digest, JSON out.

A handler reads its body through :func:`decode_body` (or :func:`expect_no_body`), which
never holds more than the route's limit and refuses a body that is not the one the caller
signed, and answers through :func:`json_response`. Every error leaves as
``{"error": code, "message": text}`` (:func:`error_response`).
"""

from __future__ import annotations

import contextlib
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from unibus.controlplane.auth import Caller
from unibus.controlplane.errors import HttpError, bad_request, too_large, unauthorized
from unibus.core import limits
from unibus.core.apimodels import ErrorView
from unibus.core.errors import NkeyError
from unibus.core.nkeys import canonical_user_key
from unibus.core.signing import RequestSignatureError, check_body

__all__ = [
    "MAX_JSON_BODY",
    "decode_body",
    "error_response",
    "expect_no_body",
    "json_response",
    "read_bounded",
    "refuse_too_large",
    "user_key",
]

MAX_JSON_BODY = limits.MAX_API_JSON_BODY
_DRAIN_AT_LEAST = 1024 * 1024
"""Bytes of a refused body read and dropped so that the client can still read the 413."""
_NO_BODY_LIMIT = 64
"""What a route without a body still accepts: empty, ``{}`` or a little whitespace."""

_encoder = msgspec.json.Encoder()
T = TypeVar("T")


def json_response(value: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status_code=status, media_type="application/json")


def error_response(error: HttpError) -> Response:
    return json_response(ErrorView(error=error.code, message=error.message), error.status)


async def refuse_too_large(request: Request, limit: int, what: str = "a blob") -> HttpError:
    """The 413 to raise, once a bounded part of what the client is still sending is drained."""
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


async def read_bounded(request: Request, limit: int, what: str) -> bytes:
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
            raise await refuse_too_large(request, limit, what)
    return bytes(data)


def _check_signed(caller: Caller, data: bytes) -> None:
    try:
        check_body(caller.request, data)
    except RequestSignatureError as exc:
        raise unauthorized(str(exc), code=f"signature_{exc.reason}") from None


async def decode_body(request: Request, caller: Caller, body_type: type[T]) -> T:
    """The JSON body as ``body_type``: 413 past the limit, 401 unsigned, 400 malformed."""
    data = await read_bounded(request, MAX_JSON_BODY, "a JSON body")
    # Checked before decoding: a body the caller did not sign is never parsed.
    _check_signed(caller, data)
    try:
        return msgspec.json.decode(data, type=body_type)
    except msgspec.ValidationError as exc:
        raise bad_request(f"invalid body: {exc}") from None
    except msgspec.DecodeError:
        raise bad_request("the body is not valid JSON") from None


async def expect_no_body(request: Request, caller: Caller) -> None:
    """Routes without a body accept an empty one (or ``{}``), still bound by the digest."""
    data = await read_bounded(request, _NO_BODY_LIMIT, "the body of this route")
    _check_signed(caller, data)
    if data.strip() not in (b"", b"{}"):
        raise bad_request("this route takes no body")


def user_key(value: str) -> str:
    """A user key from a path or a body, canonical ``U…``; 400 when it is none."""
    try:
        return canonical_user_key(value)
    except NkeyError:
        raise bad_request("not a user key (U… or 64 hex)") from None

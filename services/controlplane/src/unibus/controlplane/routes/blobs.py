"""``/v1/rooms/{room_id}/blobs``: encrypted blobs of a room, streamed both ways.

Only members reach a room's blobs. Uploads are bounded three times: the declared length,
the bytes actually streamed (``objectstore.put_blob``) and the per-user budget
(``quota``); the body must hash to the digest the caller signed before the blob becomes
visible.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from unibus.controlplane import objectstore, rooms
from unibus.controlplane.auth import Caller
from unibus.controlplane.context import Context
from unibus.controlplane.errors import bad_request, not_found, over_quota, unauthorized
from unibus.controlplane.quota import UploadBudget
from unibus.controlplane.wire import json_response, refuse_too_large
from unibus.core import naming
from unibus.core.apimodels import BlobView

__all__ = ["download_blob", "upload_blob"]


def _blob_name(room_id: str, blob_id: str) -> str:
    if not naming.is_room_id(blob_id):
        raise bad_request("not a blob id")
    return f"{room_id}.{blob_id}"


async def upload_blob(request: Request, context: Context, caller: Caller) -> Response:
    room = await rooms.read_room(context.store, caller.key, request.path_params["room_id"])
    limit = context.settings.max_blob_bytes
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise await refuse_too_large(request, limit)
    budget: UploadBudget = request.app.state.blob_budget
    refusal = budget.refusal(caller.key, int(declared) if declared is not None else None)
    if refusal is not None:
        raise over_quota(refusal)
    blob_id = naming.new_room_id()
    name = _blob_name(room.value.room_id, blob_id)
    try:
        info = await objectstore.put_blob(
            context.nc.jetstream(timeout=context.settings.op_timeout * 5),
            name,
            request.stream(),
            max_bytes=limit,
            expected_sha256=caller.request.content_sha256,
        )
    except objectstore.BlobTooLarge:
        raise await refuse_too_large(request, limit) from None
    except objectstore.BlobDigestMismatch:
        raise unauthorized(
            "the body does not match its signed digest", "signature_bad_digest"
        ) from None
    budget.charge(caller.key, info.size)
    view = BlobView(room_id=room.value.room_id, blob_id=blob_id, size=info.size, sha256=info.sha256)
    return json_response(view, 201)


async def download_blob(request: Request, context: Context, caller: Caller) -> Response:
    room = await rooms.read_room(context.store, caller.key, request.path_params["room_id"])
    name = _blob_name(room.value.room_id, request.path_params["blob_id"])
    try:
        info, chunks = await objectstore.open_blob(
            context.nc.jetstream(timeout=context.settings.op_timeout * 5), name
        )
    except objectstore.BlobNotFound:
        raise not_found("no such blob in this room") from None
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={"content-length": str(info.size), "x-unibus-blob-sha256": info.sha256},
    )

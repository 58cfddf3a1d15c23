"""``/v1/rooms`` and ``/v1/room-ids``: rooms and their signed changes, for members only.

The rules (who may change what, which sealed keys a change needs, the room cap) live in
``unibus.controlplane.rooms``; these handlers only decode, call and encode.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from unibus.controlplane import rooms
from unibus.controlplane.auth import Caller
from unibus.controlplane.context import Context
from unibus.controlplane.wire import decode_body, expect_no_body, json_response, user_key
from unibus.core import naming
from unibus.core.apimodels import NewRoom, RoomChange, RoomId

__all__ = [
    "add_member",
    "adopt_room",
    "create_room",
    "get_room",
    "leave_room",
    "list_rooms",
    "new_room_id",
    "rekey",
    "remove_member",
    "room_keys",
]


async def new_room_id(request: Request, context: Context, caller: Caller) -> Response:
    await expect_no_body(request, caller)
    return json_response(RoomId(room_id=naming.new_room_id()), 201)


async def create_room(request: Request, context: Context, caller: Caller) -> Response:
    body = await decode_body(request, caller, NewRoom)
    room = await rooms.create_room(context.store, caller.key, body, room_cap=context.room_cap)
    return json_response(rooms.room_view(room), 201)


async def adopt_room(request: Request, context: Context, caller: Caller) -> Response:
    body = await decode_body(request, caller, NewRoom)
    room = await rooms.adopt_room(
        context.store,
        caller.key,
        request.path_params["room_id"],
        body,
        caller_is_admin=caller.is_admin,
        room_cap=context.room_cap,
    )
    return json_response(rooms.room_view(room))


async def list_rooms(request: Request, context: Context, caller: Caller) -> Response:
    return json_response(await context.store.rooms_of(caller.key))


async def get_room(request: Request, context: Context, caller: Caller) -> Response:
    room = await rooms.read_room(
        context.store, caller.key, request.path_params["room_id"], caller_is_admin=caller.is_admin
    )
    return json_response(rooms.room_view(room))


async def _change(
    request: Request, context: Context, caller: Caller, kind: rooms.ChangeKind
) -> Response:
    body = await decode_body(request, caller, RoomChange)
    target = request.path_params.get("key")
    room = await rooms.change_room(
        context.store,
        caller.key,
        request.path_params["room_id"],
        body,
        kind,
        target=user_key(target) if target is not None else None,
        room_cap=context.room_cap,
    )
    return json_response(rooms.room_view(room))


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
    return json_response(keys)

"""``/v1/users``: the allowlist, written by administrators, looked up by any active user.

Revoke, reinstate, promote and demote follow ``unibus.core.userchanges``: a change that
already holds answers 200 with the record unchanged, and one that would leave the bus
without an active admin is refused with 409 ``last_admin``. The callout disconnects the
changed user's live connections by itself, having seen the record change.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from unibus.controlplane.auth import Caller, require_admin
from unibus.controlplane.context import Context
from unibus.controlplane.errors import HttpError, bad_request, not_found
from unibus.controlplane.wire import decode_body, expect_no_body, json_response, user_key
from unibus.core.apimodels import NewUser, UserView
from unibus.core.errors import ConflictError, InvalidHandleError, NotFoundError
from unibus.core.models import UserRecord
from unibus.core.userchanges import UserChange, change_user

__all__ = [
    "add_user",
    "demote_user",
    "get_user",
    "list_users",
    "promote_user",
    "reinstate_user",
    "revoke_user",
]


def _user_view(user: UserRecord, *, full: bool) -> UserView:
    # A member looking up a key learns enough to seal a room key to it, not who is admin.
    return UserView(
        key=user.key, handle=user.handle, status=user.status, role=user.role if full else None
    )


async def add_user(request: Request, context: Context, caller: Caller) -> Response:
    require_admin(caller)
    body = await decode_body(request, caller, NewUser)
    try:
        user = UserRecord.new(user_key(body.key), body.handle, body.role)
    except InvalidHandleError as exc:
        raise bad_request(f"the handle {exc}") from None
    try:
        await context.store.add_user(user)
    except ConflictError:
        raise HttpError(409, "conflict", "user exists; a re-add never changes a role") from None
    return json_response(_user_view(user, full=True), 201)


async def list_users(request: Request, context: Context, caller: Caller) -> Response:
    require_admin(caller)
    users = await context.store.list_users()
    return json_response([_user_view(u, full=True) for u in users])


async def get_user(request: Request, context: Context, caller: Caller) -> Response:
    key = user_key(request.path_params["key"])
    try:
        user = (await context.store.get_user(key)).value
    except NotFoundError:
        raise not_found("no such user") from None
    return json_response(_user_view(user, full=caller.is_admin))


async def revoke_user(request: Request, context: Context, caller: Caller) -> Response:
    return await _change(request, context, caller, UserChange.REVOKE)


async def reinstate_user(request: Request, context: Context, caller: Caller) -> Response:
    return await _change(request, context, caller, UserChange.REINSTATE)


async def promote_user(request: Request, context: Context, caller: Caller) -> Response:
    return await _change(request, context, caller, UserChange.PROMOTE)


async def demote_user(request: Request, context: Context, caller: Caller) -> Response:
    return await _change(request, context, caller, UserChange.DEMOTE)


async def _change(
    request: Request, context: Context, caller: Caller, change: UserChange
) -> Response:
    require_admin(caller)
    await expect_no_body(request, caller)
    key = user_key(request.path_params["key"])
    try:
        result = await change_user(context.store, key, change)
    except NotFoundError:
        raise not_found("no such user") from None
    return json_response(_user_view(result.after.value, full=True))

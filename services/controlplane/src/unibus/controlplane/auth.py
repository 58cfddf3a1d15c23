"""Who is calling: signed-request verification, anti-replay, and the allowlist check.

Order matters: the signature is checked first (no store work for garbage), then the
caller must be an active user, and only then is the nonce claimed — so unknown keys
cannot fill the nonce bucket.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.requests import Request

from unibus.controlplane.authz import Decision, check_user
from unibus.controlplane.errors import HttpError, unauthorized, unavailable
from unibus.core.errors import ConflictError, StoreError
from unibus.core.models import Role, UserRecord
from unibus.core.signing import RequestSignatureError, VerifiedRequest, verify_request
from unibus.core.store import Store

__all__ = ["Caller", "authenticate", "require_admin"]


@dataclass(frozen=True)
class Caller:
    user: UserRecord
    request: VerifiedRequest

    @property
    def key(self) -> str:
        return self.user.key

    @property
    def is_admin(self) -> bool:
        return self.user.role is Role.ADMIN


async def authenticate(request: Request, store: Store, *, skew: float) -> Caller:
    try:
        # The raw path and query, exactly as the client signed them (not re-decoded).
        raw_path = bytes(request.scope.get("raw_path") or request.url.path.encode())
        raw_query = bytes(request.scope.get("query_string") or b"")
        verified = verify_request(
            request.method,
            raw_path.decode("ascii", errors="replace"),
            raw_query.decode("ascii", errors="replace"),
            request.headers,
            now=time.time(),
            skew=skew,
        )
    except RequestSignatureError as exc:
        raise unauthorized(str(exc), code=f"signature_{exc.reason}") from None
    decision, user = await check_user(store, verified.caller)
    if decision is Decision.STORE_UNAVAILABLE:
        raise unavailable("cannot check the caller right now; retry")
    if not decision.admits or user is None:
        raise unauthorized("the caller is not an active user", code=f"caller_{decision.value}")
    try:
        await store.claim_nonce(verified.caller, verified.nonce)
    except ConflictError:
        raise unauthorized("this request was already received (replay)", code="replay") from None
    except StoreError:
        raise unavailable("cannot record the request nonce; retry") from None
    return Caller(user=user, request=verified)


def require_admin(caller: Caller) -> None:
    if not caller.is_admin:
        raise HttpError(403, "forbidden", "administrators only")

"""The fail-closed user check every authorization decision goes through.

It never raises and never admits on doubt: any error reading the store is the decision
``store_unavailable``, which denies. The reason codes are the callout's stable codes.
"""

from __future__ import annotations

import enum

from unibus.core.errors import NkeyError, NotFoundError
from unibus.core.models import UserRecord
from unibus.core.nkeys import canonical_user_key
from unibus.core.store import Store

__all__ = ["Decision", "check_user"]


class Decision(enum.StrEnum):
    ALLOWED = "allowed"
    UNKNOWN_KEY = "unknown_key"
    REVOKED = "revoked"
    BAD_REQUEST = "bad_request"
    STORE_UNAVAILABLE = "store_unavailable"

    @property
    def admits(self) -> bool:
        return self is Decision.ALLOWED


async def check_user(store: Store, key: str) -> tuple[Decision, UserRecord | None]:
    """Decide whether ``key`` belongs to an active user, failing closed on any doubt."""
    try:
        canonical = canonical_user_key(key)
    except NkeyError:
        return Decision.BAD_REQUEST, None
    try:
        user = (await store.authorize_user(canonical)).value
    except NotFoundError:
        return Decision.UNKNOWN_KEY, None
    except Exception:  # noqa: BLE001 - fail closed: whatever went wrong, deny
        return Decision.STORE_UNAVAILABLE, None
    if not user.is_active:
        return Decision.REVOKED, user
    return Decision.ALLOWED, user

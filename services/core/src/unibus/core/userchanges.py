"""Changing a user after it was added: promote, demote, revoke, reinstate (SPEC §6).

The rules, the same for the API and the CLI:

* Role and status are independent. ``promote``/``demote`` set the role, ``revoke``/
  ``reinstate`` the status; a revoked user keeps its role (a reinstated admin is an admin
  again) and its role may still be changed, which grants nothing while it is revoked.
* A change that already holds changes nothing and succeeds (``ChangeResult.changed`` is
  False), as a repeated revocation always did: a retry after a lost answer must not turn
  into an error, and the caller learns the state it asked for holds.
* The bus is never left without an active admin: a demotion or revocation of the last
  active admin is refused with ``LastAdminError``, whoever asks for it, themself included.
* Every write is a compare-and-set on the user's record, retried from a fresh read when
  another writer got there first, so two concurrent changes both land (a promotion and a
  revocation of one user end as a revoked admin) and no update is lost.

Why a witness: "at least one active admin" spans several records, and a compare-and-set
on one record does not see the others. Two admins demoting each other at once would each
see the other still admin, and both writes would land. So a change that takes an active
admin away first rewrites, unchanged and by compare-and-set, one *other* active admin's
record (``UserUpdates.touch_user``), then writes its own. Two such changes conflict on a
record whenever each depends on what the other changes, and one of them starts over and
sees the new state. An unchanged rewrite kicks nobody: the callout acts only on records
whose content changed.

Kicks need nothing here: the callout follows ``UNIBUS_users`` and disconnects every live
connection of a user whose record changed (``unibus.authcallout.kicks``), so a promoted
or demoted user reconnects with what the new record grants; a reinstated key has no live
connection and is admitted again at its next connect.

A backend without compare-and-set user writes (the legacy SQLite store, a local file with
one writer) gets the status changes with the same rules, checked before the write, and
refuses role changes with ``UnsupportedError``.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import msgspec

from unibus.core.errors import ConflictError, LastAdminError, NotFoundError, UnsupportedError
from unibus.core.models import Role, Status, UserRecord, Versioned
from unibus.core.retry import pause_after_conflict
from unibus.core.store import Store, UserUpdates

__all__ = [
    "CAS_ATTEMPTS",
    "ChangeResult",
    "UserChange",
    "change_user",
    "changed_record",
    "check_leaves_an_admin",
    "is_active_admin",
    "takes_an_admin",
]

CAS_ATTEMPTS: Final = 8
"""Fresh reads one change makes before giving up on a record that keeps changing."""


class UserChange(enum.StrEnum):
    PROMOTE = "promote"
    DEMOTE = "demote"
    REVOKE = "revoke"
    REINSTATE = "reinstate"

    @property
    def past(self) -> str:
        """The change done, as a report says it (``promoted``): every verb ends in "e"."""
        return f"{self.value}d"

    @property
    def already(self) -> str:
        """What already holds when the change is a no-op (``admin``, ``revoked``)."""
        return _ALREADY[self]


_ALREADY: Final = {
    UserChange.PROMOTE: Role.ADMIN.value,
    UserChange.DEMOTE: Role.MEMBER.value,
    UserChange.REVOKE: Status.REVOKED.value,
    UserChange.REINSTATE: Status.ACTIVE.value,
}


@dataclass(frozen=True, slots=True)
class ChangeResult:
    """The record as the change found it and as it left it (the same one for a no-op)."""

    before: Versioned[UserRecord]
    after: Versioned[UserRecord]

    @property
    def changed(self) -> bool:
        return self.after.revision != self.before.revision


def is_active_admin(user: UserRecord) -> bool:
    return user.role is Role.ADMIN and user.is_active


def takes_an_admin(before: UserRecord, after: UserRecord) -> bool:
    """Whether the write from ``before`` to ``after`` leaves one active admin fewer."""
    return is_active_admin(before) and not is_active_admin(after)


def changed_record(user: UserRecord, change: UserChange, *, now: float) -> UserRecord | None:
    """``user`` after ``change``, stamped ``now``; None when the change already holds."""
    role, status = user.role, user.status
    if change is UserChange.PROMOTE:
        role = Role.ADMIN
    elif change is UserChange.DEMOTE:
        role = Role.MEMBER
    elif change is UserChange.REVOKE:
        status = Status.REVOKED
    else:
        status = Status.ACTIVE
    if (role, status) == (user.role, user.status):
        return None
    return msgspec.structs.replace(user, role=role, status=status, updated_at=now)


def check_leaves_an_admin(users: Iterable[UserRecord], key: str, change: UserChange) -> None:
    """``LastAdminError`` unless an active admin other than ``key`` is among ``users``."""
    if not any(is_active_admin(user) and user.key != key for user in users):
        raise _last_admin(key, change)


def _last_admin(key: str, change: UserChange) -> LastAdminError:
    return LastAdminError(
        f"cannot {change.value} user {key}: it is the last active admin, and the bus must "
        "keep one (promote another user first)"
    )


async def change_user(store: Store, key: str, change: UserChange) -> ChangeResult:
    """Apply ``change`` to the user ``key`` under this module's rules.

    Raises ``NotFoundError`` (no such user), ``LastAdminError``, ``ConflictError`` (the
    record kept changing for ``CAS_ATTEMPTS`` reads), ``UnsupportedError`` (a role change
    on a backend that cannot write one) and the store's availability errors.
    """
    if isinstance(store, UserUpdates):
        return await _compare_and_set(store, key, change)
    return await _status_only(store, key, change)


async def _compare_and_set(store: UserUpdates, key: str, change: UserChange) -> ChangeResult:
    for attempt in range(CAS_ATTEMPTS):
        before = await store.get_user(key)
        after = changed_record(before.value, change, now=time.time())
        if after is None:
            return ChangeResult(before, before)
        try:
            if takes_an_admin(before.value, after):
                await _confirm_another_admin(store, key, change)
            written = await store.update_user(before, after)
        except LastAdminError:
            raise
        except ConflictError:
            # Another writer came first: decide again on what it left, once it is there.
            await pause_after_conflict(attempt)
            continue
        return ChangeResult(before, written)
    raise ConflictError(f"user {key} kept changing; try again")


async def _confirm_another_admin(store: UserUpdates, key: str, change: UserChange) -> None:
    """Touch one other active admin's record (the witness); ``LastAdminError`` if none.

    ``ConflictError`` when the witness changed between its read and its touch: the caller
    starts over from fresh reads.
    """
    others = sorted(u.key for u in await store.list_users() if u.key != key and is_active_admin(u))
    for other in others:
        try:
            current = await store.get_user(other)
        except NotFoundError:
            continue
        if is_active_admin(current.value):
            await store.touch_user(current)
            return
    raise _last_admin(key, change)


async def _status_only(store: Store, key: str, change: UserChange) -> ChangeResult:
    before = await store.get_user(key)
    after = changed_record(before.value, change, now=time.time())
    if after is None:
        return ChangeResult(before, before)
    if after.role is not before.value.role:
        raise UnsupportedError(
            f"this store cannot {change.value} a user (it cannot change a role); "
            "change roles in the live bus"
        )
    if takes_an_admin(before.value, after):
        check_leaves_an_admin(await store.list_users(), key, change)
    return ChangeResult(before, await store.set_user_status(key, after.status))

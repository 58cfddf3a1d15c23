"""Promote, demote, revoke, reinstate: the rules and the compare-and-set, without a bus.

The store here keeps user records in memory with one revision counter, as a KV stream
does, and refuses a compare-and-set on a stale revision, as JetStream does; the real one
is held to the same behaviour in tests/integration/test_user_changes.py. Interleavings
are made two ways: a write injected at a chosen step, and many seeded schedules that
yield to the event loop a random number of times at every store call.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable
from typing import cast

import msgspec
import pytest

from unibus.core.errors import ConflictError, LastAdminError, NotFoundError, UnsupportedError
from unibus.core.models import Role, Status, UserRecord, Versioned
from unibus.core.nkeys import KeyPair, Prefix
from unibus.core.store import Store, UserUpdates
from unibus.core.userchanges import (
    CAS_ATTEMPTS,
    ChangeResult,
    UserChange,
    change_user,
    changed_record,
    is_active_admin,
)

Hook = Callable[[str, str], Awaitable[None]]
"""Called with (operation, key) before the store does it: a concurrent writer's turn."""


class MemoryUsers:
    """``UserUpdates`` in memory, with the KV's revisions and compare-and-set."""

    def __init__(
        self, *users: UserRecord, rng: random.Random | None = None, round_trip: float = 0.0
    ) -> None:
        self._revisions = itertools.count(1)
        self.records = {user.key: Versioned(user, next(self._revisions)) for user in users}
        self.writes: list[tuple[str, str]] = []
        """(operation, key) of every write that landed, in order."""
        self.hook: Hook | None = None
        self._rng = rng
        self._round_trip = round_trip
        """Seconds every call takes, the same for all, as on a bus at rest."""

    async def _turn(self, operation: str, key: str) -> None:
        if self._round_trip:
            await asyncio.sleep(self._round_trip)
        if self._rng is not None:
            for _ in range(self._rng.randint(0, 3)):
                await asyncio.sleep(0)  # lets another change run: an interleaving point
        if self.hook is not None:
            await self.hook(operation, key)

    def put(self, user: UserRecord) -> None:
        """A write by someone else, outside the rules (what a hook does)."""
        self.records[user.key] = Versioned(user, next(self._revisions))
        self.writes.append(("put", user.key))

    async def get_user(self, key: str) -> Versioned[UserRecord]:
        await self._turn("get", key)
        try:
            return self.records[key]
        except KeyError:
            raise NotFoundError(f"no user {key}") from None

    async def list_users(self) -> list[UserRecord]:
        await self._turn("list", "")
        return [found.value for found in self.records.values()]

    async def update_user(
        self, previous: Versioned[UserRecord], updated: UserRecord
    ) -> Versioned[UserRecord]:
        return await self._compare_and_set("update", previous, updated)

    async def touch_user(self, current: Versioned[UserRecord]) -> Versioned[UserRecord]:
        return await self._compare_and_set("touch", current, current.value)

    async def _compare_and_set(
        self, operation: str, previous: Versioned[UserRecord], updated: UserRecord
    ) -> Versioned[UserRecord]:
        await self._turn(operation, updated.key)
        current = self.records.get(updated.key)
        if current is None or current.revision != previous.revision:
            raise ConflictError(f"user {updated.key} changed since it was read")
        written = Versioned(updated, next(self._revisions))
        self.records[updated.key] = written
        self.writes.append((operation, updated.key))
        return written

    def user(self, key: str) -> UserRecord:
        return self.records[key].value

    def active_admins(self) -> set[str]:
        return {key for key, found in self.records.items() if is_active_admin(found.value)}


class StatusOnlyUsers:
    """A backend like the legacy SQLite store: it flips a status but has no role write."""

    def __init__(self, *users: UserRecord) -> None:
        self.inner = MemoryUsers(*users)

    async def get_user(self, key: str) -> Versioned[UserRecord]:
        return await self.inner.get_user(key)

    async def list_users(self) -> list[UserRecord]:
        return await self.inner.list_users()

    async def set_user_status(self, key: str, status: Status) -> Versioned[UserRecord]:
        current = await self.inner.get_user(key)
        updated = msgspec.structs.replace(current.value, status=status)
        return await self.inner.update_user(current, updated)


def _user(role: Role = Role.MEMBER, status: Status = Status.ACTIVE) -> UserRecord:
    return UserRecord(
        key=KeyPair.generate(Prefix.USER).public_key,
        handle="h",
        role=role,
        status=status,
        created_at=1.0,
        updated_at=1.0,
    )


def _admin(status: Status = Status.ACTIVE) -> UserRecord:
    return _user(Role.ADMIN, status)


def _store(users: MemoryUsers | StatusOnlyUsers) -> Store:
    return cast(Store, users)


# -- what each change does -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "before", "after"),
    [
        (UserChange.PROMOTE, (Role.MEMBER, Status.ACTIVE), (Role.ADMIN, Status.ACTIVE)),
        (UserChange.DEMOTE, (Role.ADMIN, Status.ACTIVE), (Role.MEMBER, Status.ACTIVE)),
        (UserChange.REVOKE, (Role.MEMBER, Status.ACTIVE), (Role.MEMBER, Status.REVOKED)),
        (UserChange.REINSTATE, (Role.ADMIN, Status.REVOKED), (Role.ADMIN, Status.ACTIVE)),
        (UserChange.PROMOTE, (Role.MEMBER, Status.REVOKED), (Role.ADMIN, Status.REVOKED)),
        (UserChange.DEMOTE, (Role.ADMIN, Status.REVOKED), (Role.MEMBER, Status.REVOKED)),
    ],
)
async def test_each_change_sets_its_role_or_status_and_keeps_the_other(
    change: UserChange, before: tuple[Role, Status], after: tuple[Role, Status]
) -> None:
    target = _user(*before)
    users = MemoryUsers(_admin(), target)

    result = await change_user(_store(users), target.key, change)

    assert result.changed
    assert (result.after.value.role, result.after.value.status) == after
    assert users.records[target.key] == result.after
    assert result.before.value == target


def test_a_changed_record_keeps_key_handle_and_creation_and_is_stamped_now() -> None:
    user = _user()

    changed = changed_record(user, UserChange.PROMOTE, now=42.0)

    assert changed is not None
    assert (changed.key, changed.handle, changed.created_at) == (user.key, "h", 1.0)
    assert changed.updated_at == 42.0


@pytest.mark.parametrize(
    ("change", "role", "status"),
    [
        (UserChange.PROMOTE, Role.ADMIN, Status.ACTIVE),
        (UserChange.DEMOTE, Role.MEMBER, Status.ACTIVE),
        (UserChange.REVOKE, Role.MEMBER, Status.REVOKED),
        (UserChange.REINSTATE, Role.MEMBER, Status.ACTIVE),
    ],
)
async def test_a_change_that_already_holds_succeeds_and_writes_nothing(
    change: UserChange, role: Role, status: Status
) -> None:
    target = _user(role, status)
    users = MemoryUsers(_admin(), target)
    stored = users.records[target.key]

    result = await change_user(_store(users), target.key, change)

    assert not result.changed
    assert result == ChangeResult(stored, stored)
    assert users.writes == []


def test_reports_name_the_change_done_and_what_already_held() -> None:
    assert [(c.past, c.already) for c in UserChange] == [
        ("promoted", "admin"),
        ("demoted", "member"),
        ("revoked", "revoked"),
        ("reinstated", "active"),
    ]


async def test_an_unknown_user_is_not_found_and_nothing_is_written() -> None:
    users = MemoryUsers(_admin())

    with pytest.raises(NotFoundError):
        await change_user(_store(users), _user().key, UserChange.PROMOTE)
    assert users.writes == []


# -- never without an admin ------------------------------------------------------------------------
@pytest.mark.parametrize("change", [UserChange.DEMOTE, UserChange.REVOKE])
async def test_the_last_active_admin_can_be_neither_demoted_nor_revoked(
    change: UserChange,
) -> None:
    admin = _admin()
    users = MemoryUsers(admin, _user(), _admin(Status.REVOKED))

    with pytest.raises(LastAdminError, match="last active admin") as refused:
        await change_user(_store(users), admin.key, change)

    assert "promote another user first" in str(refused.value)
    assert users.writes == []
    assert users.user(admin.key) == admin


@pytest.mark.parametrize("change", [UserChange.DEMOTE, UserChange.REVOKE])
async def test_with_another_active_admin_an_admin_may_be_demoted_or_revoked(
    change: UserChange,
) -> None:
    first, second = _admin(), _admin()
    users = MemoryUsers(first, second)

    result = await change_user(_store(users), first.key, change)

    assert result.changed
    assert users.active_admins() == {second.key}


async def test_taking_an_admin_away_first_touches_another_admin_without_changing_it() -> None:
    first, second = _admin(), _admin()
    users = MemoryUsers(first, second)
    witness_before = users.records[second.key]

    await change_user(_store(users), first.key, UserChange.DEMOTE)

    assert users.writes == [("touch", second.key), ("update", first.key)]
    assert users.user(second.key) == second
    assert users.records[second.key].revision > witness_before.revision


@pytest.mark.parametrize(
    ("change", "target"),
    [
        (UserChange.PROMOTE, _user()),
        (UserChange.REINSTATE, _admin(Status.REVOKED)),
        (UserChange.REVOKE, _user()),
        (UserChange.DEMOTE, _admin(Status.REVOKED)),
    ],
)
async def test_a_change_that_takes_no_active_admin_away_touches_nobody_else(
    change: UserChange, target: UserRecord
) -> None:
    # Demoting a revoked admin is allowed even with no other admin: it takes none away.
    users = MemoryUsers(target) if change is UserChange.DEMOTE else MemoryUsers(_admin(), target)

    await change_user(_store(users), target.key, change)

    assert users.writes == [("update", target.key)]


# -- compare-and-set -------------------------------------------------------------------------------
async def test_a_write_landing_between_read_and_write_is_kept_and_the_change_reapplied() -> None:
    target = _user()
    users = MemoryUsers(_admin(), target)

    async def revoke_meanwhile(operation: str, key: str) -> None:
        if operation == "update" and users.user(target.key).is_active:
            users.put(msgspec.structs.replace(users.user(target.key), status=Status.REVOKED))

    users.hook = revoke_meanwhile

    result = await change_user(_store(users), target.key, UserChange.PROMOTE)

    assert result.changed
    assert result.before.value.status is Status.REVOKED  # the attempt that won read the revocation
    final = users.user(target.key)
    assert (final.role, final.status) == (Role.ADMIN, Status.REVOKED)


async def test_a_witness_demoted_meanwhile_makes_the_change_start_over_and_refuse() -> None:
    first, second = _admin(), _admin()
    users = MemoryUsers(first, second)

    async def demote_the_witness(operation: str, key: str) -> None:
        if operation == "touch" and users.user(second.key).role is Role.ADMIN:
            users.put(msgspec.structs.replace(users.user(second.key), role=Role.MEMBER))

    users.hook = demote_the_witness

    with pytest.raises(LastAdminError):
        await change_user(_store(users), first.key, UserChange.DEMOTE)

    assert users.active_admins() == {first.key}


async def test_a_record_that_keeps_changing_ends_in_a_conflict_after_bounded_reads() -> None:
    target = _user()
    users = MemoryUsers(_admin(), target)
    reads = 0

    async def always_meanwhile(operation: str, key: str) -> None:
        nonlocal reads
        if operation == "get" and key == target.key:
            reads += 1
        if operation == "update":
            users.put(msgspec.structs.replace(users.user(key), handle=f"h{reads}"))

    users.hook = always_meanwhile

    with pytest.raises(ConflictError, match="kept changing") as refused:
        await change_user(_store(users), target.key, UserChange.PROMOTE)

    assert not isinstance(refused.value, LastAdminError)
    assert reads == CAS_ATTEMPTS
    assert users.user(target.key).role is Role.MEMBER


@pytest.mark.parametrize("seed", range(200))
async def test_concurrent_promotion_and_revocation_of_one_user_both_land(seed: int) -> None:
    target = _user()
    users = MemoryUsers(_admin(), target, rng=random.Random(seed))

    results = await asyncio.gather(
        change_user(_store(users), target.key, UserChange.PROMOTE),
        change_user(_store(users), target.key, UserChange.REVOKE),
    )

    assert all(result.changed for result in results)
    final = users.user(target.key)
    assert (final.role, final.status) == (Role.ADMIN, Status.REVOKED)


async def test_two_admins_revoked_at_once_each_the_others_witness_both_land() -> None:
    # Each revocation touches the other admin as its witness (the lowest key that is not
    # its own), so each conflicts with the other. With retries that wait alike and calls
    # that take alike, they met again on every attempt and both ran out of them.
    first, second, third = sorted((_admin() for _ in range(3)), key=lambda user: user.key)
    users = MemoryUsers(first, second, third, round_trip=0.002)

    results = await asyncio.gather(
        change_user(_store(users), first.key, UserChange.REVOKE),
        change_user(_store(users), second.key, UserChange.REVOKE),
    )

    assert all(result.changed for result in results)
    assert users.active_admins() == {third.key}


@pytest.mark.parametrize("seed", range(20))
async def test_members_promoted_and_revoked_at_once_through_two_nodes_all_land(
    seed: int,
) -> None:
    # What two control planes do when told at once: every revocation of a member
    # promoted first takes an admin away and touches a witness, often one of the others.
    members = [_user() for _ in range(4)]
    users = MemoryUsers(_admin(), *members, rng=random.Random(seed), round_trip=0.002)

    results = await asyncio.gather(
        *(change_user(_store(users), m.key, UserChange.PROMOTE) for m in members),
        *(change_user(_store(users), m.key, UserChange.REVOKE) for m in members),
    )

    assert all(result.changed for result in results)
    for member in members:
        final = users.user(member.key)
        assert (final.role, final.status) == (Role.ADMIN, Status.REVOKED)


@pytest.mark.parametrize("seed", range(300))
async def test_admins_taking_each_other_away_at_once_never_leave_the_bus_without_one(
    seed: int,
) -> None:
    rng = random.Random(seed)
    admins = [_admin() for _ in range(rng.randint(2, 3))]
    users = MemoryUsers(*admins, _user(), rng=rng)
    changes = [
        (admin.key, rng.choice([UserChange.DEMOTE, UserChange.REVOKE]))
        for admin in admins
        for _ in range(rng.randint(1, 2))
    ]

    outcomes = await asyncio.gather(
        *(change_user(_store(users), key, change) for key, change in changes),
        return_exceptions=True,
    )

    assert users.active_admins(), f"no admin left after {changes} -> {outcomes}"
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(o, ConflictError) for o in refused), refused
    # Every admin taken away was taken by a change that reported it.
    removed = {r.before.value.key for r in outcomes if isinstance(r, ChangeResult) and r.changed}
    assert removed == {admin.key for admin in admins} - users.active_admins()


# -- a backend without compare-and-set user writes -------------------------------------------------
async def test_without_compare_and_set_writes_status_changes_keep_the_rules() -> None:
    admin, ada = _admin(), _user()
    users = StatusOnlyUsers(admin, ada)
    assert not isinstance(users, UserUpdates)

    revoked = await change_user(_store(users), ada.key, UserChange.REVOKE)
    reinstated = await change_user(_store(users), ada.key, UserChange.REINSTATE)
    again = await change_user(_store(users), ada.key, UserChange.REINSTATE)

    assert revoked.after.value.status is Status.REVOKED
    assert reinstated.after.value.status is Status.ACTIVE
    assert not again.changed
    with pytest.raises(LastAdminError):
        await change_user(_store(users), admin.key, UserChange.REVOKE)
    assert users.inner.user(admin.key).is_active


@pytest.mark.parametrize("change", [UserChange.PROMOTE, UserChange.DEMOTE])
async def test_without_compare_and_set_writes_a_role_change_is_unsupported(
    change: UserChange,
) -> None:
    users = StatusOnlyUsers(_admin(), _admin(), _user())
    target = next(
        key
        for key, found in users.inner.records.items()
        if found.value.role is (Role.MEMBER if change is UserChange.PROMOTE else Role.ADMIN)
    )

    with pytest.raises(UnsupportedError, match="cannot change a role"):
        await change_user(_store(users), target, change)
    assert users.inner.writes == []

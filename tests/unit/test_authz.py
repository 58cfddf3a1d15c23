"""check_user: the fail-closed user check behind every authorization decision (SPEC §5).

The unit tier never talks to NATS, so the Store here is a small in-memory fake; only
``authorize_user`` (the quorum-confirmed read) has behaviour, which is all ``check_user``
uses.
"""

from __future__ import annotations

from typing import cast

import pytest

from unibus.controlplane.authz import Decision, check_user
from unibus.core.errors import (
    AssetMissingError,
    NotFoundError,
    StoreUnavailableError,
)
from unibus.core.models import RecordError, Role, Status, UserRecord, Versioned
from unibus.core.nkeys import KeyPair, Prefix, user_key_ed25519
from unibus.core.store import Store


class FakeStore:
    """Users by canonical key; optionally fails every read with ``failure``."""

    def __init__(self, *users: UserRecord, failure: BaseException | None = None) -> None:
        self.users = {user.key: user for user in users}
        self.failure = failure
        self.lookups: list[str] = []

    async def authorize_user(self, key: str) -> Versioned[UserRecord]:
        self.lookups.append(key)
        if self.failure is not None:
            raise self.failure
        try:
            return Versioned(self.users[key], 1)
        except KeyError:
            raise NotFoundError(f"no user {key}") from None


def _store(*users: UserRecord, failure: BaseException | None = None) -> tuple[Store, FakeStore]:
    fake = FakeStore(*users, failure=failure)
    return cast(Store, fake), fake


def _user(status: Status = Status.ACTIVE, role: Role = Role.MEMBER) -> UserRecord:
    return UserRecord(
        key=KeyPair.generate(Prefix.USER).public_key,
        handle="ada",
        role=role,
        status=status,
        created_at=0.0,
        updated_at=0.0,
    )


async def test_active_user_is_allowed() -> None:
    user = _user()
    store, fake = _store(user)
    decision, found = await check_user(store, user.key)
    assert decision is Decision.ALLOWED
    assert decision.admits
    assert found == user
    assert fake.lookups == [user.key]


async def test_active_admin_is_allowed() -> None:
    user = _user(role=Role.ADMIN)
    store, _ = _store(user)
    assert await check_user(store, user.key) == (Decision.ALLOWED, user)


async def test_unknown_key_is_denied_as_unknown_key() -> None:
    store, _ = _store(_user())
    stranger = KeyPair.generate(Prefix.USER).public_key
    decision, found = await check_user(store, stranger)
    assert decision is Decision.UNKNOWN_KEY
    assert not decision.admits
    assert found is None


async def test_revoked_user_is_denied_as_revoked_with_its_record() -> None:
    user = _user(Status.REVOKED)
    store, _ = _store(user)
    decision, found = await check_user(store, user.key)
    assert decision is Decision.REVOKED
    assert not decision.admits
    assert found == user


MALFORMED_KEYS = [
    pytest.param("", id="empty"),
    pytest.param("not-a-key", id="text"),
    pytest.param("U" + "A" * 55, id="bad-checksum"),
    pytest.param("ab" * 31, id="62-hex"),
    pytest.param("ab" * 33, id="66-hex"),
    pytest.param("zz" * 32, id="64-non-hex"),
    pytest.param(KeyPair.generate(Prefix.ACCOUNT).public_key, id="account-key"),
    pytest.param(KeyPair.generate(Prefix.SERVER).public_key, id="server-key"),
    pytest.param(KeyPair.generate(Prefix.USER).seed, id="user-seed"),
    pytest.param(KeyPair.generate(Prefix.USER).public_key[:-1], id="truncated"),
    pytest.param(KeyPair.generate(Prefix.USER).public_key + "A", id="too-long"),
    pytest.param("U" + "é" * 55, id="non-ascii"),
]


@pytest.mark.parametrize("key", MALFORMED_KEYS)
async def test_malformed_key_is_bad_request_without_a_store_read(key: str) -> None:
    store, fake = _store(_user())
    decision, found = await check_user(store, key)
    assert decision is Decision.BAD_REQUEST
    assert not decision.admits
    assert found is None
    assert fake.lookups == []


async def test_non_string_key_is_bad_request() -> None:
    store, fake = _store(_user())
    decision, _ = await check_user(store, cast(str, None))
    assert decision is Decision.BAD_REQUEST
    assert fake.lookups == []


async def test_store_unavailable_error_denies_as_store_unavailable() -> None:
    user = _user()
    store, _ = _store(user, failure=StoreUnavailableError("timed out"))
    decision, found = await check_user(store, user.key)
    assert decision is Decision.STORE_UNAVAILABLE
    assert not decision.admits
    assert found is None


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(RuntimeError("boom"), id="runtime-error"),
        pytest.param(TimeoutError(), id="timeout"),
        pytest.param(ConnectionResetError(), id="connection-reset"),
        pytest.param(KeyError("x"), id="key-error"),
        pytest.param(AssetMissingError("UNIBUS_users"), id="asset-missing"),
        pytest.param(RecordError("stored UserRecord has schema v2"), id="newer-record"),
    ],
)
async def test_unexpected_store_exception_fails_closed(failure: Exception) -> None:
    user = _user()
    store, _ = _store(user, failure=failure)
    decision, found = await check_user(store, user.key)
    assert decision is Decision.STORE_UNAVAILABLE
    assert not decision.admits
    assert found is None


async def test_legacy_hex_key_is_canonicalised_before_lookup() -> None:
    user = _user()
    store, fake = _store(user)
    legacy = user_key_ed25519(user.key).hex()
    assert len(legacy) == 64
    decision, found = await check_user(store, legacy)
    assert decision is Decision.ALLOWED
    assert found == user
    assert fake.lookups == [user.key]


@pytest.mark.parametrize("spelling", ["upper", "padded"])
async def test_legacy_hex_key_in_other_spellings_is_canonicalised(spelling: str) -> None:
    user = _user()
    store, fake = _store(user)
    legacy = user_key_ed25519(user.key).hex()
    key = legacy.upper() if spelling == "upper" else f"  {legacy}\n"
    assert await check_user(store, key) == (Decision.ALLOWED, user)
    assert fake.lookups == [user.key]


async def test_legacy_hex_key_of_an_unknown_user_is_unknown_key() -> None:
    store, fake = _store(_user())
    stranger = KeyPair.generate(Prefix.USER).public_key
    decision, _ = await check_user(store, user_key_ed25519(stranger).hex())
    assert decision is Decision.UNKNOWN_KEY
    assert fake.lookups == [stranger]


async def test_legacy_hex_key_of_a_revoked_user_is_revoked() -> None:
    user = _user(Status.REVOKED)
    store, _ = _store(user)
    decision, _ = await check_user(store, user_key_ed25519(user.key).hex())
    assert decision is Decision.REVOKED


def test_only_allowed_admits() -> None:
    assert [d for d in Decision if d.admits] == [Decision.ALLOWED]


def test_decision_values_are_the_stable_reason_codes() -> None:
    assert {d.value for d in Decision} == {
        "allowed",
        "unknown_key",
        "revoked",
        "bad_request",
        "store_unavailable",
    }

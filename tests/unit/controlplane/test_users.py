"""``/v1/users``: administrators write the allowlist; any active user may look up a key."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.controlplane.harness import Api, error_of
from unibus.core.limits import MAX_HANDLE_LEN
from unibus.core.models import Role, Status
from unibus.core.nkeys import KeyPair, Prefix, user_key_ed25519


def _new_key() -> str:
    return KeyPair.generate(Prefix.USER).public_key


async def test_an_admin_adds_a_user_who_is_active_with_the_given_role(api: Api) -> None:
    key = _new_key()

    response = await api.call(
        api.admin, "POST", "/v1/users", {"key": key, "handle": "ada", "role": "admin"}
    )

    assert response.status_code == 201
    assert response.json() == {"key": key, "handle": "ada", "status": "active", "role": "admin"}
    stored = (await api.store.get_user(key)).value
    assert (stored.handle, stored.role, stored.status) == ("ada", Role.ADMIN, Status.ACTIVE)


async def test_a_user_added_without_a_role_is_a_member(api: Api) -> None:
    key = _new_key()

    response = await api.call(api.admin, "POST", "/v1/users", {"key": key, "handle": "ada"})

    assert response.json()["role"] == "member"


async def test_a_hex_user_key_is_stored_in_its_canonical_form(api: Api) -> None:
    pair = KeyPair.generate(Prefix.USER)

    response = await api.call(
        api.admin,
        "POST",
        "/v1/users",
        {"key": user_key_ed25519(pair.public_key).hex(), "handle": "ada"},
    )

    assert response.status_code == 201
    assert response.json()["key"] == pair.public_key


async def test_re_adding_a_key_is_a_conflict_that_never_changes_its_role(api: Api) -> None:
    ada = await api.user("ada")

    response = await api.call(
        api.admin, "POST", "/v1/users", {"key": ada.public_key, "handle": "x", "role": "admin"}
    )

    assert response.status_code == 409
    assert error_of(response) == "conflict"
    assert (await api.store.get_user(ada.public_key)).value.role is Role.MEMBER


async def test_an_admin_lists_users_with_their_roles(api: Api) -> None:
    ada = await api.user("ada")

    response = await api.call(api.admin, "GET", "/v1/users")

    listed = {u["key"]: u for u in response.json()}
    assert response.status_code == 200
    assert listed[ada.public_key]["role"] == "member"
    assert listed[api.admin.public_key]["role"] == "admin"


async def test_an_admin_revokes_a_user(api: Api) -> None:
    ada = await api.user("ada")

    response = await api.call(api.admin, "POST", f"/v1/users/{ada.public_key}/revoke")

    assert response.status_code == 200
    assert response.json()["status"] == "revoked"
    assert (await api.store.get_user(ada.public_key)).value.status is Status.REVOKED


async def test_an_admin_reinstates_a_revoked_user_who_keeps_its_role(api: Api) -> None:
    ada = await api.user("ada")
    await api.call(api.admin, "POST", f"/v1/users/{ada.public_key}/revoke")

    response = await api.call(api.admin, "POST", f"/v1/users/{ada.public_key}/reinstate")

    assert response.status_code == 200
    assert response.json() == {
        "key": ada.public_key,
        "handle": "ada",
        "status": "active",
        "role": "member",
    }
    assert (await api.store.get_user(ada.public_key)).value.is_active


@pytest.mark.parametrize("verb", ["reinstate", "revoke"])
async def test_a_change_that_already_holds_answers_200_and_writes_nothing(
    api: Api, verb: str
) -> None:
    ada = await api.user("ada")
    if verb == "revoke":
        await api.call(api.admin, "POST", f"/v1/users/{ada.public_key}/revoke")
    before = await api.store.get_user(ada.public_key)

    response = await api.call(api.admin, "POST", f"/v1/users/{ada.public_key}/{verb}")

    assert response.status_code == 200
    assert response.json()["status"] == before.value.status.value
    assert await api.store.get_user(ada.public_key) == before


async def test_the_last_active_admin_cannot_revoke_themself_409_last_admin(api: Api) -> None:
    await api.user("ada")

    response = await api.call(api.admin, "POST", f"/v1/users/{api.admin.public_key}/revoke")

    assert response.status_code == 409
    assert error_of(response) == "last_admin"
    assert "last active admin" in response.json()["message"]
    assert (await api.store.get_user(api.admin.public_key)).value.is_active


async def test_with_a_second_admin_the_first_may_be_revoked(api: Api) -> None:
    second = await api.user("second", Role.ADMIN)

    response = await api.call(second, "POST", f"/v1/users/{api.admin.public_key}/revoke")

    assert response.status_code == 200
    assert response.json()["status"] == "revoked"


@pytest.mark.parametrize("verb", ["promote", "demote"])
async def test_a_store_that_cannot_write_a_role_answers_501_and_changes_nothing(
    api: Api, verb: str
) -> None:
    # The unit tier's store is the legacy SQLite one; the live store changes roles
    # (tests/integration/test_user_changes.py).
    ada = await api.user("ada", Role.ADMIN if verb == "demote" else Role.MEMBER)
    before = await api.store.get_user(ada.public_key)

    response = await api.call(api.admin, "POST", f"/v1/users/{ada.public_key}/{verb}")

    assert response.status_code == 501
    assert error_of(response) == "not_implemented"
    assert await api.store.get_user(ada.public_key) == before


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/users", {"key": "NEW", "handle": "x"}),
        ("GET", "/v1/users", None),
        ("POST", "/v1/users/TARGET/revoke", None),
        ("POST", "/v1/users/TARGET/reinstate", None),
        ("POST", "/v1/users/TARGET/promote", None),
        ("POST", "/v1/users/TARGET/demote", None),
        ("GET", "/v1/health", None),
    ],
)
async def test_a_member_is_forbidden_the_admin_routes_and_changes_nothing(
    api: Api, method: str, path: str, body: dict[str, Any] | None
) -> None:
    ada = await api.user("ada")
    bob = await api.user("bob")
    newcomer = _new_key()
    if body is not None:
        body = {**body, "key": newcomer}

    response = await api.call(ada, method, path.replace("TARGET", bob.public_key), body)

    assert response.status_code == 403
    assert error_of(response) == "forbidden"
    assert (await api.store.get_user(bob.public_key)).value.status is Status.ACTIVE
    assert (await api.store.get_user(bob.public_key)).value.role is Role.MEMBER
    assert newcomer not in {u.key for u in await api.store.list_users()}


async def test_a_member_looks_up_a_users_key_and_handle_but_not_its_role(api: Api) -> None:
    ada = await api.user("ada")
    bob = await api.user("bob")

    response = await api.call(ada, "GET", f"/v1/users/{bob.public_key}")

    assert response.status_code == 200
    assert response.json() == {
        "key": bob.public_key,
        "handle": "bob",
        "status": "active",
        "role": None,
    }


async def test_an_admin_looking_up_a_user_sees_its_role(api: Api) -> None:
    bob = await api.user("bob")

    response = await api.call(api.admin, "GET", f"/v1/users/{bob.public_key}")

    assert response.json()["role"] == "member"


_USER_PATHS = [
    ("GET", "/v1/users/{key}"),
    *(
        ("POST", f"/v1/users/{{key}}/{verb}")
        for verb in ("revoke", "reinstate", "promote", "demote")
    ),
]


@pytest.mark.parametrize(("method", "path"), _USER_PATHS)
async def test_an_unknown_user_is_404(api: Api, method: str, path: str) -> None:
    response = await api.call(api.admin, method, path.format(key=_new_key()))

    assert response.status_code == 404
    assert error_of(response) == "not_found"


@pytest.mark.parametrize(("method", "path"), _USER_PATHS)
async def test_a_path_key_that_is_no_user_key_is_400(api: Api, method: str, path: str) -> None:
    response = await api.call(api.admin, method, path.format(key="not-a-key"))

    assert response.status_code == 400
    assert error_of(response) == "bad_request"


# -- handles --------------------------------------------------------------------------------------
async def test_a_handle_is_stored_without_surrounding_whitespace(api: Api) -> None:
    key = _new_key()

    response = await api.call(api.admin, "POST", "/v1/users", {"key": key, "handle": "  ada \t"})

    assert response.json()["handle"] == "ada"
    assert (await api.store.get_user(key)).value.handle == "ada"


async def test_a_handle_of_the_maximum_length_is_accepted(api: Api) -> None:
    response = await api.call(
        api.admin, "POST", "/v1/users", {"key": _new_key(), "handle": "h" * MAX_HANDLE_LEN}
    )

    assert response.status_code == 201


@pytest.mark.parametrize(
    ("handle", "why"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("ada\nroot", "printable"),
        ("a\x00", "printable"),
        ("h" * (MAX_HANDLE_LEN + 1), f"at most {MAX_HANDLE_LEN}"),
    ],
)
async def test_a_bad_handle_is_400_and_adds_nobody(api: Api, handle: str, why: str) -> None:
    key = _new_key()

    response = await api.call(api.admin, "POST", "/v1/users", {"key": key, "handle": handle})

    assert response.status_code == 400
    assert error_of(response) == "bad_request"
    assert why in response.json()["message"]
    assert key not in {u.key for u in await api.store.list_users()}


# -- bodies ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[]", "invalid body"),
        (b'{"handle": "ada"}', "invalid body"),
        (b'{"key": "KEY"}', "invalid body"),
        (b'{"key": "KEY", "handle": 7}', "invalid body"),
        (b'{"key": "KEY", "handle": "ada", "role": "root"}', "invalid body"),
        (b'{"key": "KEY", "handle": "ada", "admin": true}', "invalid body"),
        (b'{"key": "nope", "handle": "ada"}', "not a user key"),
    ],
)
async def test_a_malformed_user_body_is_400_with_the_reason(
    api: Api, body: bytes, why: str
) -> None:
    response = await api.call(
        api.admin, "POST", "/v1/users", body.replace(b"KEY", _new_key().encode())
    )

    assert response.status_code == 400
    assert error_of(response) == "bad_request"
    assert why in response.json()["message"]


async def test_a_json_body_over_one_mib_is_413(api: Api) -> None:
    body = b'{"key": "x", "handle": "' + b"h" * (1024 * 1024) + b'"}'

    response = await api.call(api.admin, "POST", "/v1/users", body)

    assert response.status_code == 413
    assert error_of(response) == "too_large"


@pytest.mark.parametrize("body", [b"", b"{}", b" {} \n"])
async def test_a_route_without_a_body_accepts_an_empty_one(api: Api, body: bytes) -> None:
    ada = await api.user("ada")

    response = await api.call(api.admin, "POST", f"/v1/users/{ada.public_key}/revoke", body)

    assert response.status_code == 200


async def test_a_route_without_a_body_refuses_one(api: Api) -> None:
    ada = await api.user("ada")

    response = await api.call(
        api.admin, "POST", f"/v1/users/{ada.public_key}/revoke", {"why": "spam"}
    )

    assert response.status_code == 400
    assert error_of(response) == "bad_request"
    assert (await api.store.get_user(ada.public_key)).value.status is Status.ACTIVE

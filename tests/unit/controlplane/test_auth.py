"""Who may call: the signature, the clock window, the allowlist and the single-use nonce.

``auth.authenticate`` checks in that order, so a forged or stale request and an unknown
key cost no nonce: they cannot fill the nonce store, and cannot burn a nonce that a
genuine request still has to use.
"""

from __future__ import annotations

import time

import pytest

from tests.unit.controlplane.harness import Api, ApiFactory, error_of, signed_headers
from unibus.controlplane.openapi import SIGNED_ROUTES, RouteDoc
from unibus.core import envnames
from unibus.core.errors import NotFoundError, StoreUnavailableError
from unibus.core.models import Role, Status, UserRecord
from unibus.core.nkeys import KeyPair, Prefix
from unibus.core.signing import HEADER_KEY, HEADER_SIGNATURE, SIGNED_HEADERS
from unibus.core.store import Store

NONCE = "n" * 32


class _Failing:
    """The wrapped store, except that ``operation`` raises ``error``."""

    def __init__(self, inner: Store, operation: str, error: Exception) -> None:
        self._inner = inner
        self._operation = operation
        self._error = error

    def __getattr__(self, name: str) -> object:
        if name != self._operation:
            return getattr(self._inner, name)

        async def fail(*args: object, **kwargs: object) -> None:
            raise self._error

        return fail


def _concrete(path: str) -> str:
    key = KeyPair.generate(Prefix.USER).public_key
    return path.replace("{key}", key).replace("{room_id}", "r1").replace("{blob_id}", "b1")


@pytest.mark.parametrize("route", SIGNED_ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_every_signed_route_refuses_a_request_without_a_signature(
    api: Api, route: RouteDoc
) -> None:
    response = await api.send(route.method, _concrete(route.path))

    assert response.status_code == 401
    assert error_of(response) == "signature_missing_header"


@pytest.mark.parametrize("header", SIGNED_HEADERS)
async def test_a_request_missing_any_signature_header_is_refused(api: Api, header: str) -> None:
    headers = signed_headers(api.admin, "GET", "/v1/users")
    del headers[header]

    response = await api.send("GET", "/v1/users", headers=headers)

    assert response.status_code == 401
    assert error_of(response) == "signature_missing_header"


async def test_a_signature_by_another_key_is_refused(api: Api) -> None:
    headers = signed_headers(KeyPair.generate(Prefix.USER), "GET", "/v1/users")
    headers[HEADER_KEY] = api.admin.public_key

    response = await api.send("GET", "/v1/users", headers=headers)

    assert response.status_code == 401
    assert error_of(response) == "signature_bad_signature"


async def test_a_request_sent_to_another_path_than_the_signed_one_is_refused(api: Api) -> None:
    headers = signed_headers(api.admin, "GET", "/v1/rooms")

    response = await api.send("GET", "/v1/users", headers=headers)

    assert response.status_code == 401
    assert error_of(response) == "signature_bad_signature"


async def test_a_body_other_than_the_signed_one_is_refused_and_writes_nothing(api: Api) -> None:
    newcomer = KeyPair.generate(Prefix.USER).public_key
    body = f'{{"key": "{newcomer}", "handle": "x"}}'.encode()
    headers = signed_headers(api.admin, "POST", "/v1/users", body)

    response = await api.send("POST", "/v1/users", body.replace(b'"x"', b'"y"'), headers)

    assert response.status_code == 401
    assert error_of(response) == "signature_bad_digest"
    with pytest.raises(NotFoundError):
        await api.store.get_user(newcomer)


@pytest.mark.parametrize("offset", [-61.0, 61.0, -3600.0])
async def test_a_timestamp_outside_the_skew_window_is_refused(api: Api, offset: float) -> None:
    response = await api.call(api.admin, "GET", "/v1/rooms", now=time.time() + offset)

    assert response.status_code == 401
    assert error_of(response) == "signature_skew"


@pytest.mark.parametrize("offset", [-50.0, 50.0])
async def test_a_timestamp_inside_the_skew_window_is_accepted(api: Api, offset: float) -> None:
    response = await api.call(api.admin, "GET", "/v1/rooms", now=time.time() + offset)

    assert response.status_code == 200


async def test_the_skew_window_is_the_configured_one(make_api: ApiFactory) -> None:
    api = await make_api(env={envnames.API_SKEW: "5"})

    response = await api.call(api.admin, "GET", "/v1/rooms", now=time.time() - 30)

    assert error_of(response) == "signature_skew"


async def test_a_replayed_request_is_refused_and_counted(api: Api) -> None:
    headers = signed_headers(api.admin, "GET", "/v1/rooms")

    first = await api.send("GET", "/v1/rooms", headers=headers)
    again = await api.send("GET", "/v1/rooms", headers=headers)

    assert first.status_code == 200
    assert again.status_code == 401
    assert error_of(again) == "replay"
    assert api.replays() == 1


async def test_a_nonce_is_single_use_across_routes(api: Api) -> None:
    first = await api.call(api.admin, "GET", "/v1/rooms", nonce=NONCE)
    other_route = await api.call(api.admin, "GET", "/v1/users", nonce=NONCE)

    assert first.status_code == 200
    assert other_route.status_code == 401
    assert error_of(other_route) == "replay"


async def test_the_same_nonce_from_two_callers_is_no_replay(api: Api) -> None:
    ada = await api.user("ada")

    by_admin = await api.call(api.admin, "GET", "/v1/rooms", nonce=NONCE)
    by_ada = await api.call(ada, "GET", "/v1/rooms", nonce=NONCE)

    assert (by_admin.status_code, by_ada.status_code) == (200, 200)


async def test_a_forged_request_does_not_use_up_its_nonce(api: Api) -> None:
    forged = signed_headers(api.admin, "GET", "/v1/rooms", nonce=NONCE)
    forged[HEADER_SIGNATURE] = signed_headers(api.admin, "GET", "/v1/users")[HEADER_SIGNATURE]
    refused = await api.send("GET", "/v1/rooms", headers=forged)

    genuine = await api.call(api.admin, "GET", "/v1/rooms", nonce=NONCE)

    assert error_of(refused) == "signature_bad_signature"
    assert genuine.status_code == 200


async def test_an_unknown_caller_is_refused_without_recording_its_nonce(api: Api) -> None:
    stranger = KeyPair.generate(Prefix.USER)
    headers = signed_headers(stranger, "GET", "/v1/rooms")

    refused = await api.send("GET", "/v1/rooms", headers=headers)
    await api.store.add_user(UserRecord.new(stranger.public_key, "late", Role.MEMBER))
    admitted = await api.send("GET", "/v1/rooms", headers=headers)

    assert refused.status_code == 401
    assert error_of(refused) == "caller_unknown_key"
    assert admitted.status_code == 200  # the refused attempt had not claimed the nonce


async def test_a_revoked_caller_is_refused(api: Api) -> None:
    ada = await api.user("ada")
    await api.store.set_user_status(ada.public_key, Status.REVOKED)

    response = await api.call(ada, "GET", "/v1/rooms")

    assert response.status_code == 401
    assert error_of(response) == "caller_revoked"


@pytest.mark.parametrize("operation", ["authorize_user", "claim_nonce"])
async def test_a_caller_or_nonce_that_cannot_be_checked_gets_503(
    make_api: ApiFactory, operation: str
) -> None:
    api = await make_api(
        wrap=lambda store: _Failing(store, operation, StoreUnavailableError("no quorum"))
    )

    response = await api.call(api.admin, "GET", "/v1/rooms")

    assert response.status_code == 503
    assert error_of(response) == "store_unavailable"


async def test_any_failure_reading_the_caller_denies_rather_than_admits(
    make_api: ApiFactory,
) -> None:
    api = await make_api(wrap=lambda store: _Failing(store, "authorize_user", RuntimeError("?")))

    response = await api.call(api.admin, "GET", "/v1/users")

    assert response.status_code == 503
    assert error_of(response) == "store_unavailable"

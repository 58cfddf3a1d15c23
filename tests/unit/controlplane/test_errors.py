"""Every failure leaves as ``{"error": code, "message": text}`` with the status it means.

``errors.from_library`` is the one place library errors become statuses; ``app.build_app``
maps routing failures and anything unexpected, never with a traceback.
"""

from __future__ import annotations

import pytest

from tests.unit.controlplane.harness import Api, ApiFactory, error_of
from unibus.controlplane.errors import HttpError, from_library
from unibus.core.errors import (
    AssetMissingError,
    ConflictError,
    IdentityError,
    InvalidNameError,
    LastAdminError,
    NotFoundError,
    StoreError,
    StoreUnavailableError,
    UnibusError,
    UnsupportedError,
)
from unibus.core.models import RecordError
from unibus.core.roomchain import ChainError
from unibus.core.store import Store


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (NotFoundError("gone"), 404, "not_found"),
        (ConflictError("raced"), 409, "conflict"),
        (LastAdminError("the last one"), 409, "last_admin"),
        (UnsupportedError("cannot"), 501, "not_implemented"),
        (ChainError("not_allowed", "no"), 403, "chain_not_allowed"),
        (ChainError("bad_link", "no"), 400, "chain_bad_link"),
        (ChainError("bad_signature", "no"), 400, "chain_bad_signature"),
        (InvalidNameError("bad"), 400, "bad_request"),
        (IdentityError("bad"), 400, "bad_request"),
        (StoreUnavailableError("no quorum"), 503, "store_unavailable"),
        (AssetMissingError("UNIBUS_users"), 503, "store_unavailable"),
        (RecordError("undecodable"), 503, "store_unavailable"),
        (StoreError("other"), 503, "store_unavailable"),
        (UnibusError("unknown"), 503, "store_unavailable"),
    ],
)
def test_a_library_error_maps_to_its_status_and_code(
    error: UnibusError, status: int, code: str
) -> None:
    mapped = from_library(error)

    assert (mapped.status, mapped.code) == (status, code)


@pytest.mark.parametrize(
    "error",
    [
        StoreUnavailableError("nats: timeout talking to n2 at 10.0.0.2"),
        AssetMissingError("UNIBUS_users"),
        RecordError("value b'\\x00secret' does not decode"),
    ],
)
def test_a_store_failure_tells_the_caller_to_retry_without_its_details(
    error: UnibusError,
) -> None:
    mapped = from_library(error)

    assert str(error) not in mapped.message
    assert "retry" in mapped.message


async def test_an_unknown_route_is_a_json_404(api: Api) -> None:
    response = await api.send("GET", "/nowhere")

    assert response.status_code == 404
    assert error_of(response) == "not_found"


async def test_a_wrong_method_is_a_json_405(api: Api) -> None:
    response = await api.send("DELETE", "/v1/rooms")

    assert response.status_code == 405
    assert error_of(response) == "method_not_allowed"


class _Broken:
    """The wrapped store, except that listing users fails with ``error``."""

    def __init__(self, inner: Store, error: Exception) -> None:
        self._inner = inner
        self._error = error

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def list_users(self) -> None:
        raise self._error


async def test_a_library_error_in_a_handler_leaves_through_the_mapping(
    make_api: ApiFactory,
) -> None:
    api = await make_api(wrap=lambda store: _Broken(store, StoreUnavailableError("no quorum")))

    response = await api.call(api.admin, "GET", "/v1/users")

    assert response.status_code == 503
    assert error_of(response) == "store_unavailable"


async def test_an_unexpected_error_is_a_500_without_a_traceback_and_not_a_retryable_503(
    make_api: ApiFactory,
) -> None:
    api = await make_api(
        wrap=lambda store: _Broken(store, KeyError("secret detail")), raise_app_exceptions=False
    )

    response = await api.call(api.admin, "GET", "/v1/users")

    assert response.status_code == 500
    assert error_of(response) == "internal_error"
    assert "secret detail" not in response.text
    assert "Traceback" not in response.text


def test_an_api_error_carries_its_status_code_and_message() -> None:
    error = HttpError(418, "teapot", "short and stout")

    assert (error.status, error.code, error.message, str(error)) == (
        418,
        "teapot",
        "short and stout",
        "short and stout",
    )

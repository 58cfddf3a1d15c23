"""The API client's failover loop, driven through its transport seam (no sockets)."""

from __future__ import annotations

import time

import httpx
import pytest

from unibus.client import ApiClient, ApiError, ApiUnavailableError, ClientError
from unibus.core.nkeys import KeyPair, Prefix
from unibus.core.signing import HEADER_NONCE, verify_request

URLS = ["https://n1:8470", "https://n2:8470", "https://n3:8470"]


class Script:
    """Answers each request with the next scripted outcome and records what it was sent."""

    def __init__(self, *outcomes: int | type[Exception]) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        outcome = self.outcomes.pop(0) if self.outcomes else 503
        if isinstance(outcome, type):
            raise outcome("scripted", request=request)  # type: ignore[call-arg]
        if outcome == 200:
            return httpx.Response(200, json=[])
        return httpx.Response(outcome, json={"error": "store_unavailable", "message": "scripted"})


def _client(script: Script, *, retry_budget: float = 15.0) -> ApiClient:
    identity = KeyPair.generate(Prefix.USER)
    return ApiClient(
        URLS, identity, retry_budget=retry_budget, transport=httpx.MockTransport(script)
    )


async def test_a_call_moves_to_the_next_node_when_one_is_unreachable_or_answers_503() -> None:
    script = Script(httpx.ConnectError, 503, 200)
    async with _client(script) as api:
        assert await api.list_users() == []
    assert [str(r.url.host) for r in script.requests] == ["n1", "n2", "n3"]


async def test_every_attempt_is_signed_afresh_with_a_nonce_of_its_own() -> None:
    script = Script(httpx.ConnectError, 503, 200)
    async with _client(script) as api:
        await api.list_users()
    nonces = [r.headers[HEADER_NONCE] for r in script.requests]
    assert len(set(nonces)) == len(nonces) == 3
    for request in script.requests:
        verified = verify_request(
            request.method,
            request.url.path,
            request.url.query.decode(),
            request.headers,
            now=time.time(),
        )
        assert verified.nonce == request.headers[HEADER_NONCE]


async def test_an_error_that_proves_the_request_was_processed_is_not_retried() -> None:
    script = Script(409, 200)
    async with _client(script) as api:
        with pytest.raises(ApiError) as raised:
            await api.list_users()
    assert raised.value.status == 409
    assert raised.value.code == "store_unavailable"
    assert len(script.requests) == 1


async def test_no_node_answering_within_the_budget_raises_api_unavailable() -> None:
    script = Script(*([httpx.ConnectError] * 100))
    async with _client(script, retry_budget=0.3) as api:
        with pytest.raises(ApiUnavailableError) as raised:
            await api.list_users()
    assert raised.value.status == 0
    assert raised.value.code == "unreachable"
    assert isinstance(raised.value, ClientError)
    # every round tried every node before pausing
    assert len(script.requests) % len(URLS) == 0


async def test_503_from_every_node_past_the_budget_surfaces_the_503() -> None:
    script = Script()
    async with _client(script, retry_budget=0.3) as api:
        with pytest.raises(ApiError) as raised:
            await api.list_users()
    assert raised.value.status == 503
    assert not isinstance(raised.value, ApiUnavailableError)

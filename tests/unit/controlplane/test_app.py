"""The assembled app: the unsigned routes, the route table, and the request metrics."""

from __future__ import annotations

from tests.unit.controlplane.harness import Api
from unibus.controlplane.openapi import SIGNED_ROUTES
from unibus.core import naming


def _requests(api: Api, route: str, status: str) -> float:
    value = api.metrics.registry.get_sample_value(
        "unibus_api_requests_total", {"route": route, "status": status}
    )
    return value or 0.0


async def test_the_openapi_document_is_served_unsigned_and_lists_every_route(api: Api) -> None:
    response = await api.send("GET", "/openapi.json")

    document = response.json()
    operations = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert response.status_code == 200
    assert {(r.method, r.path) for r in SIGNED_ROUTES} <= operations
    assert len(operations) == len(SIGNED_ROUTES) + 2  # with /healthz and /openapi.json


async def test_requests_are_counted_by_route_template_never_by_raw_path(api: Api) -> None:
    room_id = naming.new_room_id()

    await api.call(api.admin, "GET", f"/v1/rooms/{room_id}")
    await api.call(api.admin, "GET", "/v1/rooms")
    await api.send("GET", "/openapi.json")

    assert _requests(api, "GET /v1/rooms/{room_id}", "403") == 1
    assert _requests(api, "GET /v1/rooms", "200") == 1
    assert _requests(api, "openapi", "200") == 1
    labels = {
        sample.labels.get("route")
        for metric in api.metrics.registry.collect()
        for sample in metric.samples
    }
    assert not any(room_id in str(label) for label in labels)


async def test_an_unknown_path_is_counted_as_unmatched(api: Api) -> None:
    await api.send("GET", "/no/such/path")

    assert _requests(api, "unmatched", "404") == 1


async def test_refused_signatures_are_counted_under_their_route(api: Api) -> None:
    await api.send("GET", "/v1/users")

    assert _requests(api, "GET /v1/users", "401") == 1

"""The blob routes' checks that come before the object store (which needs NATS: integration).

Membership, the declared size and the upload budget are all decided before a byte reaches
JetStream; the app's NATS connection here fails any test that gets that far.
"""

from __future__ import annotations

from tests.unit.controlplane.harness import Api, ApiFactory, error_of, new_room
from unibus.core import envnames


async def test_a_non_member_can_neither_upload_nor_download(api: Api) -> None:
    owner = await api.user("owner")
    eve = await api.user("eve")
    room_id = await new_room(api, owner)

    upload = await api.call(eve, "POST", f"/v1/rooms/{room_id}/blobs", b"x")
    download = await api.call(eve, "GET", f"/v1/rooms/{room_id}/blobs/{room_id}")

    assert (upload.status_code, download.status_code) == (403, 403)
    assert error_of(upload) == error_of(download) == "forbidden"


async def test_a_blob_declared_larger_than_the_limit_is_413_before_it_is_stored(
    make_api: ApiFactory,
) -> None:
    api = await make_api(env={envnames.MAX_BLOB_BYTES: "16"})
    owner = await api.user("owner")
    room_id = await new_room(api, owner)

    response = await api.call(owner, "POST", f"/v1/rooms/{room_id}/blobs", bytes(17))

    assert response.status_code == 413
    assert error_of(response) == "too_large"


async def test_an_upload_past_the_users_budget_is_429_with_when_to_retry(
    make_api: ApiFactory,
) -> None:
    api = await make_api(env={envnames.BLOB_BUDGET_BYTES: "10"})
    owner = await api.user("owner")
    room_id = await new_room(api, owner)

    response = await api.call(owner, "POST", f"/v1/rooms/{room_id}/blobs", bytes(11))

    assert response.status_code == 429
    assert error_of(response) == "quota"
    assert "try again in" in response.json()["message"]


async def test_a_malformed_blob_id_is_400(api: Api) -> None:
    owner = await api.user("owner")
    room_id = await new_room(api, owner)

    response = await api.call(owner, "GET", f"/v1/rooms/{room_id}/blobs/NOT-A-BLOB")

    assert response.status_code == 400
    assert error_of(response) == "bad_request"

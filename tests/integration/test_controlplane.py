"""The control-plane API on a real 3-node cluster, through the signed client."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
import pytest_asyncio

from tests.integration.harness import StackFactory, eventually, vm_hwm_kib
from unibus.client.api import ApiClient, ApiError
from unibus.client.changes import genesis, successor
from unibus.controlplane.openapi import SIGNED_ROUTES
from unibus.core.models import Role
from unibus.core.nkeys import KeyPair, Prefix, read_seed_file
from unibus.core.signing import body_digest, sign_request
from unibus.stack.launcher import LocalStack


@dataclass
class Api:
    stack: LocalStack
    admin: ApiClient
    admin_key: KeyPair
    clients: list[ApiClient] = field(default_factory=list)

    def client(self, who: KeyPair, *, nodes: tuple[str, ...] = ()) -> ApiClient:
        urls = [self.stack.api_url(n) for n in (nodes or self.stack.spec.node_names)]
        client = ApiClient(urls, who, ca_file=self.stack.layout.certs.client_ca_cert)
        self.clients.append(client)
        return client

    async def member(self, handle: str, role: Role = Role.MEMBER) -> tuple[KeyPair, ApiClient]:
        pair = KeyPair.generate(Prefix.USER)
        await self.admin.add_user(pair.public_key, handle, role)
        return pair, self.client(pair)


@pytest_asyncio.fixture
async def api(stacks: StackFactory) -> AsyncIterator[Api]:
    stack = await stacks.start(nodes=3, services=True)
    admin_key = read_seed_file(stack.layout.identity("admin"))
    admin = ApiClient(
        [stack.api_url(n) for n in stack.spec.node_names],
        admin_key,
        ca_file=stack.layout.certs.client_ca_cert,
    )
    found = Api(stack, admin, admin_key, clients=[admin])
    try:
        yield found
    finally:
        for client in found.clients:
            await client.aclose()


def _sealed(*members: str) -> dict[str, bytes]:
    # The API treats sealed keys as opaque bytes; real sealing is the SDK's.
    return {m: f"sealed-for-{m[:8]}".encode() for m in members}


async def _room(api: Api, owner: KeyPair, client: ApiClient, *members: str) -> str:
    room_id = await client.new_room_id()
    everyone = {owner.public_key, *members}
    body = genesis(owner, room_id, members=members, sealed_by_member=_sealed(*everyone))
    created = await client.create_room(body)
    return created.room_id


async def _expect(status: int, code_prefix: str, call: object) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.status == status, caught.value
    assert caught.value.code.startswith(code_prefix), caught.value
    return caught.value


# -- users ----------------------------------------------------------------------------------------
async def test_admin_adds_lists_gets_and_revokes_users(api: Api) -> None:
    ada, _ = await api.member("ada")

    listed = {u.key: u for u in await api.admin.list_users()}
    assert listed[ada.public_key].handle == "ada"
    assert listed[ada.public_key].role is Role.MEMBER
    assert (await api.admin.get_user(ada.public_key)).status == "active"

    revoked = await api.admin.revoke_user(ada.public_key)

    assert revoked.status == "revoked"
    assert (await api.admin.get_user(ada.public_key)).status == "revoked"


async def test_re_adding_an_existing_key_is_a_conflict_that_never_changes_its_role(
    api: Api,
) -> None:
    ada, _ = await api.member("ada")

    await _expect(409, "conflict", api.admin.add_user(ada.public_key, "ada2", Role.ADMIN))

    assert (await api.admin.get_user(ada.public_key)).role is Role.MEMBER


async def test_members_cannot_use_admin_routes_but_may_look_up_a_users_key(api: Api) -> None:
    _, ada_api = await api.member("ada")
    bob, _ = await api.member("bob")

    await _expect(403, "forbidden", ada_api.add_user(KeyPair.generate(Prefix.USER).public_key, "x"))
    await _expect(403, "forbidden", ada_api.list_users())
    await _expect(403, "forbidden", ada_api.revoke_user(bob.public_key))
    seen = await ada_api.get_user(bob.public_key)

    assert (seen.key, seen.handle, seen.role) == (bob.public_key, "bob", None)


async def test_a_revoked_or_unknown_caller_is_refused(api: Api) -> None:
    ada, ada_api = await api.member("ada")
    stranger = api.client(KeyPair.generate(Prefix.USER))

    await _expect(401, "caller_unknown_key", stranger.my_rooms())
    await api.admin.revoke_user(ada.public_key)
    await _expect(401, "caller_revoked", ada_api.my_rooms())


# -- rooms ----------------------------------------------------------------------------------------
async def test_room_lifecycle_create_add_remove_with_rekey_and_keys(api: Api) -> None:
    owner, owner_api = await api.member("owner")
    ada, ada_api = await api.member("ada")
    bob, bob_api = await api.member("bob")
    room_id = await _room(api, owner, owner_api)
    assert await owner_api.my_rooms() == [room_id]

    room = await owner_api.get_room(room_id)
    _, add = successor(
        room.chain[-1],
        owner,
        members={*room.members, ada.public_key, bob.public_key},
        new_epoch=False,
        sealed_by_member=_sealed(ada.public_key, bob.public_key),
    )
    grown = await owner_api.add_members(room_id, add)
    assert set(grown.members) == {owner.public_key, ada.public_key, bob.public_key}
    assert grown.epoch == 1

    _, removal = successor(
        grown.chain[-1],
        owner,
        members={owner.public_key, ada.public_key},
        new_epoch=True,
        sealed_by_member=_sealed(owner.public_key, ada.public_key),
    )
    shrunk = await owner_api.remove_member(room_id, bob.public_key, removal)

    assert shrunk.epoch == 2
    assert bob.public_key not in shrunk.members
    ada_keys = await ada_api.sealed_keys(room_id)
    assert [(k.epoch, k.member) for k in ada_keys] == [(1, ada.public_key), (2, ada.public_key)]
    await _expect(403, "forbidden", bob_api.get_room(room_id))
    await _expect(403, "forbidden", bob_api.sealed_keys(room_id))
    assert await ada_api.my_rooms() == [room_id]
    assert await bob_api.my_rooms() == []


async def test_a_non_member_can_neither_read_a_room_nor_its_blobs(api: Api) -> None:
    owner, owner_api = await api.member("owner")
    _, eve_api = await api.member("eve")
    room_id = await _room(api, owner, owner_api)
    blob = await owner_api.upload_blob(room_id, b"secret bytes")

    await _expect(403, "forbidden", eve_api.get_room(room_id))
    await _expect(403, "forbidden", eve_api.download_blob(room_id, blob.blob_id))
    await _expect(403, "forbidden", eve_api.upload_blob(room_id, b"x"))


async def test_a_removal_without_a_complete_rekey_is_refused_and_changes_nothing(
    api: Api,
) -> None:
    owner, owner_api = await api.member("owner")
    ada, _ = await api.member("ada")
    bob, _ = await api.member("bob")
    room_id = await _room(api, owner, owner_api, ada.public_key, bob.public_key)
    before = await owner_api.get_room(room_id)
    remaining = {owner.public_key, ada.public_key}
    _, missing_ada = successor(
        before.chain[-1],
        owner,
        members=remaining,
        new_epoch=True,
        sealed_by_member=_sealed(owner.public_key),
    )
    _, same_epoch = successor(before.chain[-1], owner, members=remaining, new_epoch=False)

    await _expect(
        400, "incomplete_rekey", owner_api.remove_member(room_id, bob.public_key, missing_ada)
    )
    await _expect(
        400, "chain_rekey_required", owner_api.remove_member(room_id, bob.public_key, same_epoch)
    )

    after = await owner_api.get_room(room_id)
    assert (after.revision, after.members, after.epoch) == (before.revision, before.members, 1)


async def test_only_the_owner_or_a_room_admin_may_change_a_room(api: Api) -> None:
    owner, owner_api = await api.member("owner")
    ada, ada_api = await api.member("ada")
    bob, _ = await api.member("bob")
    room_id = await _room(api, owner, owner_api, ada.public_key)
    room = await ada_api.get_room(room_id)
    _, by_member = successor(
        room.chain[-1],
        ada,
        members={*room.members, bob.public_key},
        new_epoch=False,
        sealed_by_member=_sealed(bob.public_key),
    )

    await _expect(403, "chain_not_allowed", ada_api.add_members(room_id, by_member))


async def test_two_concurrent_rekeys_exactly_one_wins_the_other_gets_409(api: Api) -> None:
    owner, owner_api = await api.member("owner")
    ada, _ = await api.member("ada")
    room_id = await _room(api, owner, owner_api, ada.public_key)
    room = await owner_api.get_room(room_id)
    everyone = set(room.members)
    changes = [
        successor(
            room.chain[-1],
            owner,
            members=everyone,
            new_epoch=True,
            sealed_by_member=_sealed(*everyone),
        )[1]
        for _ in range(2)
    ]
    second_client = api.client(owner, nodes=("n2",))

    results = await asyncio.gather(
        owner_api.rekey(room_id, changes[0]),
        second_client.rekey(room_id, changes[1]),
        return_exceptions=True,
    )

    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, ApiError)]
    assert len(wins) == 1
    assert len(losses) == 1
    assert losses[0].status in (400, 409)  # 409 on the commit race, 400 if it saw the winner
    assert (await owner_api.get_room(room_id)).epoch == 2


# -- signatures and replay ------------------------------------------------------------------------
async def _send(api: Api, request: httpx.Request) -> httpx.Response:
    async with httpx.AsyncClient(verify=_ca(api)) as http:
        return await http.send(request)


def _ca(api: Api) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(api.stack.layout.certs.client_ca_cert))


async def test_a_replayed_request_is_refused(api: Api) -> None:
    request = api.admin.signed("GET", f"{api.stack.api_url('n1')}/v1/rooms")

    first = await _send(api, request)
    again = await _send(api, request)

    assert first.status_code == 200
    assert again.status_code == 401
    assert again.json()["error"] == "replay"


async def test_a_skewed_timestamp_is_refused(api: Api) -> None:
    url = f"{api.stack.api_url('n1')}/v1/rooms"
    headers = sign_request(
        api.admin_key, "GET", "/v1/rooms", "", body_digest(b""), now=time.time() - 3600
    )
    response = await _send(api, httpx.Request("GET", url, headers=headers))

    assert response.status_code == 401
    assert response.json()["error"] == "signature_skew"


async def test_a_tampered_body_or_path_is_refused(api: Api) -> None:
    base = api.stack.api_url("n1")
    body = json.dumps({"key": KeyPair.generate(Prefix.USER).public_key, "handle": "x"}).encode()
    signed = api.admin.signed("POST", f"{base}/v1/users", content=body)
    tampered_body = httpx.Request(
        "POST",
        f"{base}/v1/users",
        headers=dict(signed.headers),
        content=body.replace(b'"x"', b'"y"'),
    )
    signed_path = api.admin.signed("GET", f"{base}/v1/rooms")
    tampered_path = httpx.Request("GET", f"{base}/v1/users", headers=dict(signed_path.headers))

    body_response = await _send(api, tampered_body)
    path_response = await _send(api, tampered_path)

    assert body_response.status_code == 401
    assert body_response.json()["error"] == "signature_bad_digest"
    assert path_response.status_code == 401
    assert path_response.json()["error"] == "signature_bad_signature"


async def test_errors_are_json_with_a_code_and_never_a_traceback(api: Api) -> None:
    base = api.stack.api_url("n1")
    for request in (
        httpx.Request("GET", f"{base}/v1/rooms"),
        httpx.Request("GET", f"{base}/nowhere"),
        httpx.Request("DELETE", f"{base}/v1/rooms"),
        api.admin.signed("POST", f"{base}/v1/users", content=b"{not json"),
        api.admin.signed("POST", f"{base}/v1/users", content=b'{"key":"nope","handle":"x"}'),
        api.admin.signed("GET", f"{base}/v1/rooms/NOT-A-ROOM"),
    ):
        response = await _send(api, request)
        payload = response.json()
        assert 400 <= response.status_code < 500, (request.url, response.text)
        assert set(payload) == {"error", "message"}
        assert "Traceback" not in response.text


# -- blobs ----------------------------------------------------------------------------------------
async def test_a_blob_round_trips_with_its_sha256(api: Api) -> None:
    owner, owner_api = await api.member("owner")
    room_id = await _room(api, owner, owner_api)
    data = bytes(range(256)) * 4096

    blob = await owner_api.upload_blob(room_id, data)

    assert blob.size == len(data)
    assert blob.sha256 == body_digest(data)
    assert await owner_api.download_blob(room_id, blob.blob_id) == data


async def test_an_oversized_blob_is_refused_with_413(api: Api, stacks: StackFactory) -> None:
    owner, owner_api = await api.member("owner")
    room_id = await _room(api, owner, owner_api)
    limit = 64 * 1024 * 1024

    await _expect(413, "too_large", owner_api.upload_blob(room_id, bytes(limit + 1)))


# -- health and failure ---------------------------------------------------------------------------
async def test_healthz_reports_posture_from_the_live_server_and_replication(api: Api) -> None:
    async with httpx.AsyncClient(verify=_ca(api)) as http:
        response = await http.get(f"{api.stack.api_url('n2')}/healthz")

    report = response.json()
    assert response.status_code == 200
    assert report["node"] == "n2"
    assert report["posture"]["bus_auth"] is True
    assert report["posture"]["acl"] is True
    assert report["posture"]["tls"] is True
    assert report["posture"]["cluster"]["route_tls"] is True
    assert {a["replicas"] for a in report["assets"]} == {3}
    assert report["degraded"] is False


async def test_without_quorum_the_api_answers_503_and_writes_nothing(api: Api) -> None:
    near = api.client(api.admin_key, nodes=("n1",))
    users_before = {u.key for u in await api.admin.list_users()}
    for name in ("n2", "n3"):
        api.stack.stop_node(name)

    async def health() -> int:
        async with httpx.AsyncClient(verify=_ca(api)) as http:
            return (await http.get(f"{api.stack.api_url('n1')}/healthz")).status_code

    await eventually(health, until=lambda code: code == 503, timeout=30, what="503 health")
    newcomer = KeyPair.generate(Prefix.USER).public_key
    error = await _expect(503, "", near.add_user(newcomer, "newcomer"))
    assert "Traceback" not in error.message

    for name in ("n2", "n3"):
        api.stack.start_node(name)

    async def users() -> set[str]:
        return {u.key for u in await near.list_users()}

    after = await eventually(
        users, until=lambda keys: keys >= users_before, timeout=60, what="store back"
    )
    assert newcomer not in after


async def test_openapi_document_describes_every_route_and_error(api: Api) -> None:
    async with httpx.AsyncClient(verify=_ca(api)) as http:
        document = (await http.get(f"{api.stack.api_url('n3')}/openapi.json")).json()

    assert document["openapi"].startswith("3.")
    operations = [(p, m) for p, ops in document["paths"].items() for m in ops]
    assert ("/v1/rooms/{room_id}/rekey", "post") in operations
    assert ("/v1/health", "get") in operations
    assert len(operations) == len(SIGNED_ROUTES) + 2  # with /healthz and /openapi.json
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            if path.startswith("/v1/"):
                assert {"400", "401", "403", "404", "409", "503"} <= set(op["responses"]), (
                    path,
                    method,
                )


# -- crashes, memory, posture ---------------------------------------------------------------------
async def test_a_64_mib_blob_round_trip_keeps_the_services_memory_growth_under_16_mib(
    api: Api,
) -> None:
    owner, _ = await api.member("owner")
    near = api.client(owner, nodes=("n1",))
    room_id = await _room(api, owner, near)
    await near.upload_blob(room_id, b"warm-up")
    pid = api.stack.service_pid("controlplane", "n1")
    assert pid is not None
    before = await asyncio.to_thread(vm_hwm_kib, pid)
    data = bytes(range(256)) * (64 * 4096)

    blob = await near.upload_blob(room_id, data)
    received = 0
    async for chunk in near.stream_blob(room_id, blob.blob_id):
        received += len(chunk)

    growth = (await asyncio.to_thread(vm_hwm_kib, pid)) - before
    assert received == len(data) == blob.size
    assert growth < 16 * 1024, f"controlplane grew by {growth} KiB"


async def test_a_service_killed_mid_removal_leaves_the_room_wholly_before_or_after(
    api: Api,
) -> None:
    owner, _ = await api.member("owner")
    ada, ada_api = await api.member("ada")
    bob, _ = await api.member("bob")
    near = api.client(owner, nodes=("n1",))
    outcomes = set()
    for delay_ms in (0, 2, 5, 10, 20, 40):
        room_id = await _room(api, owner, near, ada.public_key, bob.public_key)
        before = await near.get_room(room_id)
        _, removal = successor(
            before.chain[-1],
            owner,
            members={owner.public_key, ada.public_key},
            new_epoch=True,
            sealed_by_member=_sealed(owner.public_key, ada.public_key),
        )
        attempt = asyncio.create_task(near.remove_member(room_id, bob.public_key, removal))
        await asyncio.sleep(delay_ms / 1000)
        api.stack.stop_service("controlplane", "n1", kill=True)
        await asyncio.gather(attempt, return_exceptions=True)
        api.stack.start_service("controlplane", "n1")
        await api.stack.wait_services_ready()

        after = await ada_api.get_room(room_id)
        keys = await ada_api.sealed_keys(room_id)
        if after.revision == before.revision:
            outcomes.add("before")
            assert (after.members, after.epoch) == (before.members, 1)
            assert [k.epoch for k in keys] == [1]
        else:
            outcomes.add("after")
            assert set(after.members) == {owner.public_key, ada.public_key}
            assert after.epoch == 2
            assert [k.epoch for k in keys] == [1, 2]
    assert outcomes  # every attempt ended in one of the two whole states


async def test_healthz_reports_the_live_posture_when_it_differs_from_the_settings(
    api: Api,
) -> None:
    """The API is configured for room ACLs, which only a connected callout enforces: with
    every callout stopped, n2's /healthz says so from the servers themselves. (A clustered
    server without client TLS or auth is no longer a live difference to report: the posture
    validator refuses to start one.)"""
    for node in api.stack.spec.node_names:
        api.stack.stop_service("authcallout", node)

    async def posture() -> dict[str, object]:
        async with httpx.AsyncClient(verify=_ca(api)) as http:
            report = (await http.get(f"{api.stack.api_url('n2')}/healthz")).json()
        return dict(report.get("posture") or {})

    try:
        live = await eventually(
            posture,
            until=lambda p: p.get("server") == "n2" and p.get("acl") is False,
            timeout=30,
            what="n2's posture read live: no callout, so no ACL",
        )
        assert live["bus_auth"] is True
        assert live["tls"] is True
        assert live["server_supported"] is True  # nats-server 2.15.1, above the floor
    finally:
        for node in api.stack.spec.node_names:
            api.stack.start_service("authcallout", node)

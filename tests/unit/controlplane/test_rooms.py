"""``/v1/rooms``: signed room changes, membership-only reads, and the per-user room cap."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from tests.unit.controlplane.harness import (
    Api,
    ApiFactory,
    error_of,
    identity_files,
    new_room,
    sealed_for,
    settings_from_env,
)
from unibus.authcallout.settings import Settings as CalloutSettings
from unibus.client.changes import adoption, genesis, successor
from unibus.controlplane.rooms import MAX_SEALED_BYTES
from unibus.core import envnames, naming
from unibus.core.apimodels import NewRoom, RoomView
from unibus.core.errors import ConflictError
from unibus.core.limits import MAX_ROOMS_ENV, read_max_rooms
from unibus.core.models import EpochRef, RoomRecord, Status
from unibus.core.nkeys import KeyPair, Prefix
from unibus.core.roomchain import LEGACY_KEY_ID
from unibus.core.settings import EnvReader
from unibus.core.store import Store


async def _room(api: Api, who: KeyPair, room_id: str) -> RoomView:
    response = await api.call(who, "GET", f"/v1/rooms/{room_id}")
    assert response.status_code == 200, response.text
    return msgspec.json.decode(response.content, type=RoomView)


async def _invite(api: Api, owner: KeyPair, room_id: str, *invitees: str) -> int:
    """Add ``invitees`` as ``owner``; the status code."""
    room = await _room(api, owner, room_id)
    _, change = successor(
        room.chain[-1],
        owner,
        members={*room.members, *invitees},
        new_epoch=False,
        sealed_by_member=sealed_for(*invitees),
    )
    response = await api.call(owner, "POST", f"/v1/rooms/{room_id}/members", change)
    return response.status_code


# -- create and read ------------------------------------------------------------------------------
async def test_a_fresh_room_id_is_a_valid_room_id(api: Api) -> None:
    response = await api.call(api.admin, "POST", "/v1/room-ids")

    assert response.status_code == 201
    assert naming.is_room_id(response.json()["room_id"])


async def test_a_created_room_is_readable_and_listed_by_each_member(api: Api) -> None:
    owner = await api.user("owner")
    ada = await api.user("ada")

    room_id = await new_room(api, owner, ada.public_key)

    for who in (owner, ada):
        room = await _room(api, who, room_id)
        assert (room.owner, room.epoch, room.revision > 0) == (owner.public_key, 1, True)
        assert sorted(room.members) == sorted([owner.public_key, ada.public_key])
        listed = await api.call(who, "GET", "/v1/rooms")
        assert listed.json() == [room_id]


async def test_a_member_reads_only_its_own_sealed_keys(api: Api) -> None:
    owner = await api.user("owner")
    ada = await api.user("ada")
    room_id = await new_room(api, owner, ada.public_key)

    response = await api.call(ada, "GET", f"/v1/rooms/{room_id}/keys")

    assert response.status_code == 200
    assert [(k["member"], k["epoch"]) for k in response.json()] == [(ada.public_key, 1)]


@pytest.mark.parametrize("suffix", ["", "/keys"])
async def test_a_non_member_learns_nothing_of_a_room_not_even_that_it_exists(
    api: Api, suffix: str
) -> None:
    owner = await api.user("owner")
    eve = await api.user("eve")
    room_id = await new_room(api, owner)

    existing = await api.call(eve, "GET", f"/v1/rooms/{room_id}{suffix}")
    missing = await api.call(eve, "GET", f"/v1/rooms/{naming.new_room_id()}{suffix}")

    assert (existing.status_code, missing.status_code) == (403, 403)
    assert existing.json() == missing.json()


async def test_a_malformed_room_id_is_400(api: Api) -> None:
    response = await api.call(api.admin, "GET", "/v1/rooms/NOT-A-ROOM")

    assert response.status_code == 400
    assert error_of(response) == "bad_request"


async def test_a_genesis_signed_by_someone_else_is_forbidden(api: Api) -> None:
    owner = await api.user("owner")
    mallory = await api.user("mallory")
    body = genesis(owner, naming.new_room_id(), sealed_by_member=sealed_for(owner.public_key))

    response = await api.call(mallory, "POST", "/v1/rooms", body)

    assert response.status_code == 403
    assert error_of(response) == "forbidden"
    assert await api.store.rooms_of(owner.public_key) == []


async def test_a_room_without_a_sealed_key_for_every_member_is_refused(api: Api) -> None:
    owner = await api.user("owner")
    ada = await api.user("ada")
    body = genesis(
        owner,
        naming.new_room_id(),
        members=[ada.public_key],
        sealed_by_member=sealed_for(owner.public_key),
    )

    response = await api.call(owner, "POST", "/v1/rooms", body)

    assert response.status_code == 400
    assert error_of(response) == "incomplete_rekey"
    assert await api.store.rooms_of(owner.public_key) == []


async def test_an_oversized_sealed_key_is_refused(api: Api) -> None:
    owner = await api.user("owner")
    body = genesis(
        owner,
        naming.new_room_id(),
        sealed_by_member={owner.public_key: b"k" * (MAX_SEALED_BYTES + 1)},
    )

    response = await api.call(owner, "POST", "/v1/rooms", body)

    assert response.status_code == 400
    assert error_of(response) == "bad_request"


@pytest.mark.parametrize("who", ["stranger", "revoked"])
async def test_a_room_may_hold_only_active_allowlisted_users(api: Api, who: str) -> None:
    owner = await api.user("owner")
    if who == "stranger":
        member = KeyPair.generate(Prefix.USER).public_key
    else:
        member = (await api.user("gone")).public_key
        await api.store.set_user_status(member, Status.REVOKED)
    body = genesis(
        owner,
        naming.new_room_id(),
        members=[member],
        sealed_by_member=sealed_for(owner.public_key, member),
    )

    response = await api.call(owner, "POST", "/v1/rooms", body)

    assert response.status_code == 400
    assert error_of(response) == "bad_request"


# -- invite, remove, rekey, leave -----------------------------------------------------------------
async def test_the_owner_invites_a_user_who_then_reads_the_room_and_its_key(api: Api) -> None:
    owner = await api.user("owner")
    ada = await api.user("ada")
    room_id = await new_room(api, owner)

    status = await _invite(api, owner, room_id, ada.public_key)

    assert status == 200
    assert ada.public_key in (await _room(api, ada, room_id)).members
    keys = await api.call(ada, "GET", f"/v1/rooms/{room_id}/keys")
    assert [k["member"] for k in keys.json()] == [ada.public_key]


async def test_a_plain_member_may_not_invite(api: Api) -> None:
    owner = await api.user("owner")
    ada = await api.user("ada")
    bob = await api.user("bob")
    room_id = await new_room(api, owner, ada.public_key)

    status = await _invite(api, ada, room_id, bob.public_key)

    assert status == 403
    assert bob.public_key not in (await _room(api, owner, room_id)).members


async def test_a_change_on_an_outdated_state_is_refused(api: Api) -> None:
    owner = await api.user("owner")
    ada = await api.user("ada")
    bob = await api.user("bob")
    room_id = await new_room(api, owner)
    stale = (await _room(api, owner, room_id)).chain[-1]
    assert await _invite(api, owner, room_id, ada.public_key) == 200
    _, late = successor(
        stale,
        owner,
        members={owner.public_key, bob.public_key},
        new_epoch=False,
        sealed_by_member=sealed_for(bob.public_key),
    )

    response = await api.call(owner, "POST", f"/v1/rooms/{room_id}/members", late)

    assert response.status_code == 400
    assert error_of(response) == "chain_bad_link"


async def test_a_removal_without_a_complete_rekey_is_refused_and_changes_nothing(
    api: Api,
) -> None:
    owner = await api.user("owner")
    ada = await api.user("ada")
    bob = await api.user("bob")
    room_id = await new_room(api, owner, ada.public_key, bob.public_key)
    before = await _room(api, owner, room_id)
    remaining = {owner.public_key, ada.public_key}
    _, without_ada = successor(
        before.chain[-1],
        owner,
        members=remaining,
        new_epoch=True,
        sealed_by_member=sealed_for(owner.public_key),
    )
    _, same_epoch = successor(before.chain[-1], owner, members=remaining, new_epoch=False)
    path = f"/v1/rooms/{room_id}/members/{bob.public_key}/remove"

    incomplete = await api.call(owner, "POST", path, without_ada)
    no_rekey = await api.call(owner, "POST", path, same_epoch)

    assert (incomplete.status_code, error_of(incomplete)) == (400, "incomplete_rekey")
    assert (no_rekey.status_code, error_of(no_rekey)) == (400, "chain_rekey_required")
    assert (await _room(api, owner, room_id)).revision == before.revision


async def test_a_removed_member_loses_the_room_and_gets_no_new_key(api: Api) -> None:
    owner = await api.user("owner")
    ada = await api.user("ada")
    bob = await api.user("bob")
    room_id = await new_room(api, owner, ada.public_key, bob.public_key)
    before = await _room(api, owner, room_id)
    remaining = (owner.public_key, ada.public_key)
    _, removal = successor(
        before.chain[-1],
        owner,
        members=remaining,
        new_epoch=True,
        sealed_by_member=sealed_for(*remaining),
    )

    response = await api.call(
        owner, "POST", f"/v1/rooms/{room_id}/members/{bob.public_key}/remove", removal
    )

    assert response.status_code == 200
    assert response.json()["epoch"] == 2
    assert (await api.call(bob, "GET", f"/v1/rooms/{room_id}")).status_code == 403
    ada_keys = (await api.call(ada, "GET", f"/v1/rooms/{room_id}/keys")).json()
    assert [k["epoch"] for k in ada_keys] == [1, 2]


async def test_a_rekey_that_changes_the_members_is_refused(api: Api) -> None:
    owner = await api.user("owner")
    ada = await api.user("ada")
    room_id = await new_room(api, owner)
    room = await _room(api, owner, room_id)
    everyone = (owner.public_key, ada.public_key)
    _, grows = successor(
        room.chain[-1],
        owner,
        members=everyone,
        new_epoch=True,
        sealed_by_member=sealed_for(*everyone),
    )

    response = await api.call(owner, "POST", f"/v1/rooms/{room_id}/rekey", grows)

    assert response.status_code == 400
    assert error_of(response) == "bad_request"


async def test_a_member_leaves_without_handing_out_a_key(api: Api) -> None:
    owner = await api.user("owner")
    ada = await api.user("ada")
    room_id = await new_room(api, owner, ada.public_key)
    room = await _room(api, ada, room_id)
    _, leave = successor(room.chain[-1], ada, members={owner.public_key}, new_epoch=True)

    response = await api.call(ada, "POST", f"/v1/rooms/{room_id}/leave", leave)

    assert response.status_code == 200
    assert response.json()["members"] == [owner.public_key]
    assert (await api.call(ada, "GET", "/v1/rooms")).json() == []


async def test_a_commit_that_lost_a_race_is_409(make_api: ApiFactory) -> None:
    class _Racing:
        def __init__(self, inner: Store) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

        async def commit_room(self, *args: object, **kwargs: object) -> None:
            raise ConflictError("the room changed concurrently")

    api = await make_api(wrap=_Racing)
    owner = await api.user("owner")
    ada = await api.user("ada")
    room_id = await new_room(api, owner)

    status = await _invite(api, owner, room_id, ada.public_key)

    assert status == 409


# -- the room cap ---------------------------------------------------------------------------------
async def test_the_api_refuses_a_room_past_unibus_max_rooms(make_api: ApiFactory) -> None:
    api = await make_api(env={MAX_ROOMS_ENV: "2"})
    owner = await api.user("owner")
    for _ in range(2):
        await new_room(api, owner)
    body = genesis(owner, naming.new_room_id(), sealed_by_member=sealed_for(owner.public_key))

    response = await api.call(owner, "POST", "/v1/rooms", body)

    assert response.status_code == 409
    assert error_of(response) == "room_cap"
    assert "at most 2 rooms" in response.json()["message"]
    assert len(await api.store.rooms_of(owner.public_key)) == 2


async def test_the_api_refuses_to_invite_a_user_already_at_unibus_max_rooms(
    make_api: ApiFactory,
) -> None:
    api = await make_api(env={MAX_ROOMS_ENV: "2"})
    owner = await api.user("owner")
    ada = await api.user("ada")
    for _ in range(2):
        await new_room(api, await api.user("other"), ada.public_key)
    room_id = await new_room(api, owner)

    status = await _invite(api, owner, room_id, ada.public_key)

    assert status == 409
    assert ada.public_key not in (await _room(api, owner, room_id)).members
    assert len(await api.store.rooms_of(ada.public_key)) == 2


def test_the_api_and_the_callout_read_the_same_room_cap(tmp_path: Path) -> None:
    env = {MAX_ROOMS_ENV: "7"}
    callout_files = identity_files(
        tmp_path,
        envnames.CALLOUT_SEED_FILE,
        envnames.ISSUER_SEED_FILE,
        envnames.XKEY_SEED_FILE,
        envnames.INTERNAL_SEED_FILE,
        envnames.SYSTEM_SEED_FILE,
    )

    api = settings_from_env(tmp_path, env)
    callout = CalloutSettings.from_env(
        {envnames.NATS_URLS: "nats://127.0.0.1:4222", **callout_files, **env}
    )

    assert api.max_rooms == callout.max_rooms == read_max_rooms(EnvReader(env)) == 7


# -- adopting a room migrated from the legacy store ----------------------------------------------
async def _legacy_room(api: Api, owner: KeyPair, *members: KeyPair, epochs: int = 2) -> str:
    """A room as the migration writes it: members and legacy epochs, no signed chain."""
    room_id = naming.new_room_id()
    everyone = tuple(sorted({owner.public_key, *(m.public_key for m in members)}))
    record = RoomRecord(
        room_id=room_id,
        owner=owner.public_key,
        members=everyone,
        epochs=tuple(EpochRef(epoch=e, key_id=LEGACY_KEY_ID) for e in range(1, epochs + 1)),
        created_at=1.0,
        updated_at=1.0,
    )
    await api.store.create_room(record, members=[], sealed_keys=[])
    return room_id


def _adoption(adopter: KeyPair, room_id: str, *members: str, legacy_epochs: int = 2) -> NewRoom:
    everyone = {adopter.public_key, *members}
    return adoption(
        adopter,
        room_id,
        legacy_epochs=legacy_epochs,
        members=everyone,
        sealed_by_member=sealed_for(*everyone),
    )


async def test_the_legacy_owner_adopts_the_members_still_active_in_the_epoch_after(
    api: Api,
) -> None:
    owner, bob, gone = await api.user("owner"), await api.user("bob"), await api.user("gone")
    room_id = await _legacy_room(api, owner, bob, gone)
    await api.store.set_user_status(gone.public_key, Status.REVOKED)

    response = await api.call(
        owner, "POST", f"/v1/rooms/{room_id}/adopt", _adoption(owner, room_id, bob.public_key)
    )

    assert response.status_code == 200, response.text
    view = msgspec.json.decode(response.content, type=RoomView)
    assert view.members == sorted([owner.public_key, bob.public_key])
    assert (view.epoch, len(view.chain)) == (3, 1)
    assert gone.public_key not in view.members


@pytest.mark.parametrize(
    ("who", "members", "legacy_epochs", "status", "code"),
    [
        ("bob", ("owner",), 2, 403, "forbidden"),  # a member who is not the owner
        ("admin", ("owner", "bob"), 2, 403, "forbidden"),  # an admin while the owner is active
        ("owner", (), 2, 400, "bad_adoption"),  # leaves a migrated member out
        ("owner", ("bob", "stranger"), 2, 400, "bad_adoption"),  # brings someone in
        ("owner", ("bob",), 1, 400, "bad_adoption"),  # claims other legacy epochs
    ],
)
async def test_an_adoption_by_anyone_else_or_of_other_members_or_epochs_is_refused(
    api: Api, who: str, members: tuple[str, ...], legacy_epochs: int, status: int, code: str
) -> None:
    users = {"owner": await api.user("owner"), "bob": await api.user("bob")}
    users["stranger"] = await api.user("stranger")
    users["admin"] = api.admin
    room_id = await _legacy_room(api, users["owner"], users["bob"])
    adopter = users[who]
    body = _adoption(
        adopter, room_id, *(users[m].public_key for m in members), legacy_epochs=legacy_epochs
    )

    response = await api.call(adopter, "POST", f"/v1/rooms/{room_id}/adopt", body)

    assert (response.status_code, error_of(response)) == (status, code), response.text
    assert not (await api.store.get_room(room_id)).value.chain, "a refused adoption wrote"


async def test_an_admin_adopts_once_the_legacy_owner_is_revoked_and_twice_is_a_conflict(
    api: Api,
) -> None:
    owner, bob = await api.user("owner"), await api.user("bob")
    room_id = await _legacy_room(api, owner, bob)
    await api.store.set_user_status(owner.public_key, Status.REVOKED)
    # It may read the room it is about to adopt, though not a member.
    assert (await _room(api, api.admin, room_id)).owner == owner.public_key
    body = _adoption(api.admin, room_id, bob.public_key)

    first = await api.call(api.admin, "POST", f"/v1/rooms/{room_id}/adopt", body)
    again = await api.call(api.admin, "POST", f"/v1/rooms/{room_id}/adopt", body)

    assert first.status_code == 200, first.text
    view = msgspec.json.decode(first.content, type=RoomView)
    assert view.owner == api.admin.public_key
    assert view.members == sorted([api.admin.public_key, bob.public_key])
    assert (again.status_code, error_of(again)) == (409, "already_adopted")

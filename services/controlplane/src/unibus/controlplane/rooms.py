"""Room operations: every change is a signed state, checked, then committed by compare-and-set.

The API never invents a member list or an epoch: it verifies the caller's signed state
against the room's latest one (``roomchain.check_transition``), checks that the sealed
keys the state needs are all present and signed by the caller, then writes keys and
statements (inert) and compare-and-sets the room record. Either the new record commits
or nothing visible changed; two concurrent changes: exactly one wins.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence

import msgspec

from unibus.controlplane.errors import HttpError, bad_request, forbidden
from unibus.core import limits, naming
from unibus.core.apimodels import NewRoom, RoomChange, RoomView, SealedKey, SealedKeyView
from unibus.core.errors import NotFoundError
from unibus.core.models import (
    EpochRef,
    MemberRecord,
    RoomRecord,
    SealedKeyRecord,
    Versioned,
)
from unibus.core.roomchain import RoomState, check_sealed_key, check_transition, verify_chain
from unibus.core.store import Store

__all__ = [
    "MAX_SEALED_BYTES",
    "ChangeKind",
    "adopt_room",
    "change_room",
    "create_room",
    "read_room",
    "room_view",
    "sealed_keys",
]

MAX_SEALED_BYTES = limits.MAX_SEALED_KEY_BYTES
"""A sealed 32-byte key is ~80 bytes; anything far larger is not a sealed key."""


class ChangeKind(enum.StrEnum):
    ADD = "add"
    REMOVE = "remove"
    REKEY = "rekey"
    LEAVE = "leave"


def room_view(room: Versioned[RoomRecord]) -> RoomView:
    record = room.value
    return RoomView(
        room_id=record.room_id,
        owner=record.owner,
        members=list(record.members),
        epoch=record.epoch,
        key_id=record.key_id,
        chain=list(record.chain),
        revision=room.revision,
    )


def _latest_states(record: RoomRecord) -> list[RoomState]:
    # The stored chain was verified link by link when committed; verifying it again here
    # means a record altered behind the API's back cannot be extended.
    return verify_chain(record.chain, room_id=record.room_id)


def _sealed_records(
    caller: str, room_id: str, states: Sequence[RoomState], keys: Sequence[SealedKey]
) -> list[SealedKeyRecord]:
    records = []
    for key in keys:
        if len(key.sealed) > MAX_SEALED_BYTES:
            raise bad_request(f"a sealed key is at most {MAX_SEALED_BYTES} bytes")
        check_sealed_key(
            states,
            room_id=room_id,
            epoch=key.epoch,
            key_id=key.key_id,
            member=key.member,
            sealed=key.sealed,
            signer=caller,
            signature=key.signature,
        )
        records.append(
            SealedKeyRecord(
                room_id=room_id,
                epoch=key.epoch,
                key_id=key.key_id,
                member=key.member,
                sealed=key.sealed,
                signer=caller,
                signature=key.signature,
            )
        )
    return records


def _require_keys_for(
    needed: set[str], state: RoomState, keys: Sequence[SealedKey], what: str
) -> None:
    given = [(k.member, k.epoch, k.key_id) for k in keys]
    if len(given) != len(set(given)):
        raise bad_request("a member's sealed key is listed twice")
    for member, epoch, key_id in given:
        if (epoch, key_id) != (state.epoch, state.key_id):
            raise bad_request("sealed keys must be for the new state's epoch and key id")
        if member not in needed:
            raise bad_request("a sealed key is for someone who does not need one")
    missing = needed - {member for member, _, _ in given}
    if missing:
        raise bad_request(
            f"{what} needs a sealed key for every one of {len(needed)} member(s); "
            f"{len(missing)} missing",
            code="incomplete_rekey",
        )


async def _require_active(store: Store, keys: Sequence[str]) -> None:
    for key in keys:
        try:
            user = (await store.get_user(key)).value
        except NotFoundError:
            raise bad_request("every member must be an allowlisted user") from None
        if not user.is_active:
            raise bad_request("a revoked user cannot be added to a room")


async def _require_room_capacity(store: Store, keys: Sequence[str], cap: int) -> None:
    for key in keys:
        if len(await store.rooms_of(key)) >= cap:
            raise HttpError(409, "room_cap", f"a user can be in at most {cap} rooms")


async def create_room(
    store: Store, caller: str, body: NewRoom, *, room_cap: int
) -> Versioned[RoomRecord]:
    state = check_transition(None, body.genesis)
    if state.actor != caller:
        raise forbidden("the genesis must be signed by the caller")
    _require_keys_for(set(state.members), state, body.sealed_keys, "a new room")
    await _require_active(store, state.members)
    await _require_room_capacity(store, state.members, room_cap)
    now = time.time()
    record = RoomRecord(
        room_id=state.room_id,
        owner=state.owner,
        members=state.members,
        epochs=(EpochRef(epoch=state.epoch, key_id=state.key_id),),
        created_at=now,
        updated_at=now,
        chain=(body.genesis,),
    )
    return await store.create_room(
        record,
        members=[_statement(state, member, body.genesis.signature) for member in state.members],
        sealed_keys=_sealed_records(caller, state.room_id, [state], body.sealed_keys),
    )


def _statement(state: RoomState, member: str, signature: bytes) -> MemberRecord:
    return MemberRecord(
        room_id=state.room_id,
        member=member,
        added_by=state.actor,
        epoch=state.epoch,
        added_at=state.issued_at,
        signature=signature,
    )


async def change_room(
    store: Store,
    caller: str,
    room_id: str,
    body: RoomChange,
    kind: ChangeKind,
    *,
    target: str | None = None,
    room_cap: int,
) -> Versioned[RoomRecord]:
    current = await read_room(store, caller, room_id)
    states = _latest_states(current.value)
    before = states[-1]
    state = check_transition(current.value.chain[-1], body.state)
    if state.actor != caller:
        raise forbidden("a room change must be signed by the caller")
    added = sorted(set(state.members) - set(before.members))
    removed = sorted(set(before.members) - set(state.members))
    new_epoch = state.epoch != before.epoch
    if kind is ChangeKind.ADD and (not added or removed):
        raise bad_request("adding members: the new state must only add members")
    if kind is ChangeKind.REMOVE and (removed != [target] or added):
        raise bad_request("removing a member: the new state must remove exactly that member")
    if kind is ChangeKind.REKEY and (added or removed or not new_epoch):
        raise bad_request("a rekey keeps the members and starts a new epoch")
    if kind is ChangeKind.LEAVE and (removed != [caller] or added):
        raise bad_request("leaving: the new state must remove exactly the caller")
    if kind is not ChangeKind.LEAVE and caller in removed:
        raise bad_request("to remove yourself, leave the room")
    # A leave hands out no key: the epoch it starts has none, so the leaver knows nothing
    # that follows; the next rekey (any member may make it) is the first with a key again.
    needed = set() if kind is ChangeKind.LEAVE else set(state.members) if new_epoch else set(added)
    _require_keys_for(needed, state, body.sealed_keys, f"this {kind.value}")
    await _require_active(store, added)
    await _require_room_capacity(store, added, room_cap)
    record = current.value
    updated = msgspec.structs.replace(
        record,
        members=state.members,
        epochs=record.epochs
        + ((EpochRef(epoch=state.epoch, key_id=state.key_id),) if new_epoch else ()),
        chain=(*record.chain, body.state),
        updated_at=time.time(),
    )
    return await store.commit_room(
        current,
        updated,
        members=[_statement(state, member, body.state.signature) for member in added],
        sealed_keys=_sealed_records(caller, room_id, [*states, state], body.sealed_keys),
    )


async def _is_active(store: Store, key: str) -> bool:
    try:
        return (await store.get_user(key)).value.is_active
    except NotFoundError:
        return False


async def adopt_room(
    store: Store, caller: str, room_id: str, body: NewRoom, *, caller_is_admin: bool, room_cap: int
) -> Versioned[RoomRecord]:
    """Give a room migrated from the legacy store (no signed chain) its signed genesis.

    The legacy owner adopts it; an administrator may instead only when that owner is no
    longer an active user (someone must be able to bring the room back). The genesis must
    adopt exactly the migrated members who are still active (and the adopter), start the
    epoch after the legacy ones with a key sealed to each, and be signed by the caller,
    who becomes the room's owner in the chain. Everything else is refused; a room adopted
    already is a conflict.
    """
    if not naming.is_room_id(room_id):
        raise bad_request("not a room id")
    try:
        current = await store.get_room(room_id)
    except NotFoundError:
        raise forbidden("not a room you may adopt") from None
    record = current.value
    legacy_owner_active = await _is_active(store, record.owner)
    may_adopt = caller == record.owner or (caller_is_admin and not legacy_owner_active)
    if not may_adopt:
        # The same answer whether the room exists or not, to anyone who may not adopt it.
        raise forbidden("not a room you may adopt")
    if record.chain:
        raise HttpError(409, "already_adopted", "the room has a signed chain already")
    state = check_transition(None, body.genesis)
    if state.actor != caller:
        raise forbidden("the genesis must be signed by the caller")
    if state.room_id != room_id:
        raise bad_request("the genesis is for another room")
    if state.legacy_epochs != record.epoch:
        raise bad_request(
            f"the room had {record.epoch} legacy epoch(s); the genesis must adopt exactly those",
            code="bad_adoption",
        )
    active = [m for m in record.members if await _is_active(store, m)]
    expected = sorted({*active, caller})
    if list(state.members) != expected:
        raise bad_request(
            "the genesis must adopt the room's migrated members who are still active, and "
            f"the adopter: {len(expected)} member(s)",
            code="bad_adoption",
        )
    _require_keys_for(set(state.members), state, body.sealed_keys, "an adoption")
    added = sorted(set(state.members) - set(record.members))
    await _require_room_capacity(store, added, room_cap)
    updated = msgspec.structs.replace(
        record,
        owner=state.owner,
        members=state.members,
        epochs=(*record.epochs, EpochRef(epoch=state.epoch, key_id=state.key_id)),
        chain=(body.genesis,),
        updated_at=time.time(),
    )
    return await store.commit_room(
        current,
        updated,
        members=[_statement(state, member, body.genesis.signature) for member in state.members],
        sealed_keys=_sealed_records(caller, room_id, [state], body.sealed_keys),
    )


async def read_room(
    store: Store, caller: str, room_id: str, *, caller_is_admin: bool = False
) -> Versioned[RoomRecord]:
    """The room, for its members only (others learn nothing, not even that it exists).

    And for an administrator, a legacy room whose owner is gone: the one who may adopt it
    must see what it adopts.
    """
    if not naming.is_room_id(room_id):
        raise bad_request("not a room id")
    try:
        room = await store.get_room(room_id)
    except NotFoundError:
        raise forbidden("not a member of this room") from None
    if caller in room.value.members:
        return room
    if caller_is_admin and not room.value.chain and not await _is_active(store, room.value.owner):
        return room
    raise forbidden("not a member of this room")


async def sealed_keys(store: Store, caller: str, room_id: str) -> list[SealedKeyView]:
    await read_room(store, caller, room_id)
    return [
        SealedKeyView(
            room_id=k.room_id,
            epoch=k.epoch,
            key_id=k.key_id,
            member=k.member,
            sealed=k.sealed,
            signer=k.signer,
            signature=k.signature,
        )
        for k in await store.sealed_keys(room_id, caller)
    ]

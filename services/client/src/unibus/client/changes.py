"""Building signed room changes on the client: the next state and its sealed keys.

The room key itself (and sealing it to each member) is the caller's business; this module
only makes the signed statements the control plane and every other member verify.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from unibus.core.apimodels import NewRoom, RoomChange, SealedKey
from unibus.core.naming import new_key_id
from unibus.core.nkeys import KeyPair
from unibus.core.roomchain import (
    RoomState,
    SignedState,
    decode_state,
    sign_sealed_key,
    sign_state,
    state_digest,
)

__all__ = [
    "adoption",
    "genesis",
    "successor",
]


def _sealed(
    actor: KeyPair, state: RoomState, sealed_by_member: Mapping[str, bytes]
) -> list[SealedKey]:
    return [
        SealedKey(
            member=member,
            epoch=state.epoch,
            key_id=state.key_id,
            sealed=sealed,
            signature=sign_sealed_key(
                actor, state.room_id, state.epoch, state.key_id, member, sealed
            ),
        )
        for member, sealed in sorted(sealed_by_member.items())
    ]


def genesis(
    owner: KeyPair,
    room_id: str,
    *,
    members: Iterable[str] = (),
    admins: Iterable[str] = (),
    sealed_by_member: Mapping[str, bytes],
) -> NewRoom:
    """A new room's first state (epoch 1), signed by its owner, with every member's key."""
    state = RoomState(
        room_id=room_id,
        seq=1,
        epoch=1,
        key_id=new_key_id(),
        owner=owner.public_key,
        admins=tuple(sorted(set(admins))),
        members=tuple(sorted({owner.public_key, *members})),
        actor=owner.public_key,
        issued_at=time.time(),
    )
    return NewRoom(
        genesis=sign_state(state, owner), sealed_keys=_sealed(owner, state, sealed_by_member)
    )


def adoption(
    adopter: KeyPair,
    room_id: str,
    *,
    legacy_epochs: int,
    members: Iterable[str],
    sealed_by_member: Mapping[str, bytes],
) -> NewRoom:
    """The genesis that adopts a room migrated from the legacy store: the ``legacy_epochs``
    it had come first, this state starts the next with a fresh key sealed to each member;
    the adopter signs it and owns the room from then on."""
    state = RoomState(
        room_id=room_id,
        seq=1,
        epoch=legacy_epochs + 1,
        key_id=new_key_id(),
        owner=adopter.public_key,
        members=tuple(sorted({adopter.public_key, *members})),
        actor=adopter.public_key,
        issued_at=time.time(),
        legacy_epochs=legacy_epochs,
    )
    return NewRoom(
        genesis=sign_state(state, adopter), sealed_keys=_sealed(adopter, state, sealed_by_member)
    )


def successor(
    previous: SignedState,
    actor: KeyPair,
    *,
    members: Iterable[str],
    new_epoch: bool,
    admins: Iterable[str] | None = None,
    sealed_by_member: Mapping[str, bytes] = {},
) -> tuple[RoomState, RoomChange]:
    """The state after ``previous``: new member set, optionally a new epoch with a new key id."""
    before = decode_state(previous)
    state = RoomState(
        room_id=before.room_id,
        seq=before.seq + 1,
        epoch=before.epoch + 1 if new_epoch else before.epoch,
        key_id=new_key_id() if new_epoch else before.key_id,
        owner=before.owner,
        admins=tuple(sorted(set(before.admins if admins is None else admins))),
        members=tuple(sorted(set(members))),
        actor=actor.public_key,
        issued_at=time.time(),
        prev=state_digest(previous),
    )
    change = RoomChange(
        state=sign_state(state, actor), sealed_keys=_sealed(actor, state, sealed_by_member)
    )
    return state, change

"""Signed room state: the chain that keeps servers from injecting members or keys.

Servers are trusted for routing, not for confidentiality or authorship (SPEC §1, §7).
So every change to a room's members or epoch is a ``RoomState`` signed by the member
who made it, linked to the previous state by hash, starting from a genesis signed by
the owner. The control plane checks each new state before committing it; clients check
the whole chain before they trust a member list or a key. A state written straight into
the KV cannot carry a valid signature of a rights-holder, so clients reject it.

Who may act: the owner, and the room admins the chain itself names (never the server's
global admin list, which a KV write could change). Two more moves are anyone's, so that no
member can be held in a room: a member other than the owner may **leave** (a state that
removes only its actor and starts a new epoch), and right after a leave any remaining
member may **rekey** (same members, the next epoch). The leaver hands out no key: the
epoch its leave starts has none, and the rekey after it is the first with a key again, so
nobody who left holds a key to what follows.

Epoch rules: removing anyone starts a new epoch with a new key id (a removed member must
not read what follows); adding members keeps the epoch or starts a new one; a rekey
starts a new epoch with the same members.

Sealed keys are signed too: ``sealed_key_message`` binds room, epoch, key id, member and
the sealed bytes; the signer must have been a rights-holder in a state of that epoch and
key id that lists the member.

Rooms migrated from the legacy store (the Go membershipd) had epochs but no signed states.
Such a room is *adopted*: its owner signs a genesis that names how many legacy epochs came
before (``legacy_epochs``) and starts the next epoch with a fresh key; from then on the
chain is an ordinary one. Nothing before the adoption is vouched for by a signature: the
adoption genesis is where a member's trust in the room begins, as a new room's genesis is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

import msgspec

from unibus.core.errors import IdentityError, InvalidNameError, NkeyError
from unibus.core.naming import check_room_id
from unibus.core.nkeys import KeyPair, Prefix, decode_public, verify

STATE_VERSION: Final = 1
MAX_MEMBERS: Final = 1024
LEGACY_KEY_ID: Final = "legacy"
"""The key id of every epoch migrated from the legacy store, which had none."""
MAX_LEGACY_EPOCHS: Final = 1_000_000
"""Far above any legacy room's epoch; only a bound for a malformed state."""
_STATE_DOMAIN: Final = b"unibus-room-state-v1\n"
_SEALED_DOMAIN: Final = b"unibus-sealed-key-v1\n"


class ChainError(IdentityError):
    """A room state or sealed key that does not verify; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RoomState(msgspec.Struct, frozen=True, kw_only=True):
    v: int = STATE_VERSION
    room_id: str
    seq: int
    epoch: int
    key_id: str
    owner: str
    admins: tuple[str, ...] = ()
    members: tuple[str, ...]
    actor: str
    issued_at: float
    prev: str = ""
    """Hex SHA-256 of the previous state's encoded bytes; empty for the genesis."""
    legacy_epochs: int = 0
    """Epochs the room had in the legacy store before its owner adopted it (0 for a room
    created here). The genesis starts at the epoch after them; no later state changes it.
    An older client decodes a state without knowing this field, so it refuses an adoption
    genesis (its epoch is not 1): it fails closed."""

    def may_act(self, key: str) -> bool:
        return key == self.owner or key in self.admins


class SignedState(msgspec.Struct, frozen=True):
    state: bytes
    """The canonical encoding of a ``RoomState``; what the signature covers."""
    signature: bytes


_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder(RoomState)


def encode_state(state: RoomState) -> bytes:
    return _encoder.encode(state)


def state_digest(signed: SignedState) -> str:
    return hashlib.sha256(signed.state).hexdigest()


def sign_state(state: RoomState, signer: KeyPair) -> SignedState:
    if signer.public_key != state.actor:
        raise ValueError("a room state is signed by its actor")
    encoded = encode_state(state)
    return SignedState(state=encoded, signature=signer.sign(_STATE_DOMAIN + encoded))


def decode_state(signed: SignedState) -> RoomState:
    """Decode and check the signature and the state's own consistency (not its history)."""
    try:
        state = _decoder.decode(signed.state)
    except (msgspec.DecodeError, UnicodeDecodeError):
        # msgspec checks UTF-8 inside strings with Python's codec, which raises its own error.
        raise ChainError("malformed", "room state does not decode") from None
    if state.v != STATE_VERSION:
        raise ChainError("malformed", f"room state version {state.v} is not supported")
    _check_shape(state)
    try:
        valid = verify(state.actor, _STATE_DOMAIN + signed.state, signed.signature)
    except NkeyError:
        valid = False
    if not valid:
        raise ChainError("bad_signature", "room state signature does not verify")
    return state


def _check_key(key: str, what: str) -> None:
    try:
        decode_public(key, Prefix.USER)
    except NkeyError:
        raise ChainError("malformed", f"{what} is not a user key") from None


def _check_shape(state: RoomState) -> None:
    try:
        check_room_id(state.room_id)
    except InvalidNameError:
        raise ChainError("malformed", "room state has a malformed room id") from None
    if state.seq < 1 or state.epoch < 1 or not state.key_id:
        raise ChainError("malformed", "room state has a bad seq, epoch or key id")
    if not 0 <= state.legacy_epochs <= MAX_LEGACY_EPOCHS or state.epoch <= state.legacy_epochs:
        raise ChainError("malformed", "room state has a bad count of legacy epochs")
    if len(state.members) > MAX_MEMBERS or len(state.admins) > MAX_MEMBERS:
        raise ChainError("malformed", f"a room has at most {MAX_MEMBERS} members")
    if list(state.members) != sorted(set(state.members)):
        raise ChainError("malformed", "room members must be sorted and distinct")
    for key in (state.owner, state.actor, *state.members, *state.admins):
        _check_key(key, "a member, owner, admin or actor")
    if state.owner not in state.members:
        raise ChainError("malformed", "the owner must be a member")
    if not set(state.admins) <= set(state.members):
        raise ChainError("malformed", "room admins must be members")


def check_transition(previous: SignedState | None, signed: SignedState) -> RoomState:
    """Verify ``signed`` as the successor of ``previous`` (``None``: as a genesis)."""
    state = decode_state(signed)
    if previous is None:
        if state.seq != 1 or state.epoch != state.legacy_epochs + 1 or state.prev:
            raise ChainError(
                "bad_genesis",
                "a genesis has seq 1, no previous, and epoch 1 (or the epoch after the "
                "legacy ones it adopts)",
            )
        if state.actor != state.owner:
            raise ChainError("not_allowed", "a room's genesis is signed by its owner")
        return state
    before = decode_state(previous)
    if state.room_id != before.room_id:
        raise ChainError("bad_link", "a state cannot move to another room")
    if state.seq != before.seq + 1 or state.prev != state_digest(previous):
        raise ChainError("bad_link", "a state must follow the room's latest state")
    if state.owner != before.owner:
        raise ChainError("not_allowed", "a room's owner cannot change")
    if state.legacy_epochs != before.legacy_epochs:
        raise ChainError("bad_link", "a room's legacy epochs are fixed by its genesis")
    new_epoch = state.epoch == before.epoch + 1 and state.key_id != before.key_id
    allowed = (
        before.may_act(state.actor)
        or _is_leave(before, state, new_epoch=new_epoch)
        or _is_rekey_after_leave(before, state, new_epoch=new_epoch)
    )
    if not allowed:
        raise ChainError(
            "not_allowed",
            "only the owner or a room admin may change a room (a member may only leave)",
        )
    removed = set(before.members) - set(state.members)
    same_epoch = state.epoch == before.epoch and state.key_id == before.key_id
    if removed and not new_epoch:
        raise ChainError("rekey_required", "removing a member must start a new epoch")
    if not (new_epoch or same_epoch):
        raise ChainError("bad_epoch", "the epoch may only stay or advance by one with a new key")
    return state


def is_leave(state: RoomState) -> bool:
    """Whether ``state`` is a member's leave: its actor is no longer a member."""
    return state.actor not in state.members


def _is_leave(before: RoomState, state: RoomState, *, new_epoch: bool) -> bool:
    actor = state.actor
    return (
        new_epoch
        and actor in before.members
        and actor != before.owner
        and set(state.members) == set(before.members) - {actor}
        and set(state.admins) == set(before.admins) - {actor}
    )


def _is_rekey_after_leave(before: RoomState, state: RoomState, *, new_epoch: bool) -> bool:
    return (
        new_epoch
        and is_leave(before)
        and state.actor in before.members
        and state.members == before.members
        and state.admins == before.admins
    )


def verify_chain(chain: Sequence[SignedState], *, room_id: str | None = None) -> list[RoomState]:
    """Verify a whole chain from its genesis; returns every state, the latest last."""
    if not chain:
        raise ChainError("bad_genesis", "a room has at least its genesis state")
    states = []
    previous: SignedState | None = None
    for signed in chain:
        states.append(check_transition(previous, signed))
        previous = signed
    if room_id is not None and states[0].room_id != room_id:
        raise ChainError("bad_link", "the chain belongs to another room")
    return states


# -- sealed keys ----------------------------------------------------------------------------------
def sealed_key_message(room_id: str, epoch: int, key_id: str, member: str, sealed: bytes) -> bytes:
    digest = hashlib.sha256(sealed).hexdigest()
    return _SEALED_DOMAIN + f"{room_id}\n{epoch}\n{key_id}\n{member}\n{digest}".encode()


def sign_sealed_key(
    signer: KeyPair, room_id: str, epoch: int, key_id: str, member: str, sealed: bytes
) -> bytes:
    return signer.sign(sealed_key_message(room_id, epoch, key_id, member, sealed))


def check_sealed_key(
    states: Sequence[RoomState],
    *,
    room_id: str,
    epoch: int,
    key_id: str,
    member: str,
    sealed: bytes,
    signer: str,
    signature: bytes,
) -> None:
    """Accept a sealed key signed by a rights-holder of a state of its epoch listing the
    member, or by the member who made that state (the rekey after a leave). A leaver is not
    a member of its own leave state, so it can hand out no key to the epoch it starts."""
    try:
        valid = verify(
            signer, sealed_key_message(room_id, epoch, key_id, member, sealed), signature
        )
    except NkeyError:
        valid = False
    if not valid:
        raise ChainError("bad_signature", "sealed key signature does not verify")
    for state in states:
        if (
            state.room_id == room_id
            and state.epoch == epoch
            and state.key_id == key_id
            and member in state.members
            and (state.may_act(signer) or (signer == state.actor and signer in state.members))
        ):
            return
    raise ChainError("not_allowed", "the sealed key's signer could not hand out that key")

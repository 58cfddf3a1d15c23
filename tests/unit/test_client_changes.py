"""The client builders of signed room changes produce what the chain checks accept."""

from __future__ import annotations

import msgspec
import pytest

from unibus.client.changes import genesis, successor
from unibus.core.apimodels import NewRoom, RoomChange, SealedKey
from unibus.core.naming import new_room_id
from unibus.core.nkeys import KeyPair, Prefix
from unibus.core.roomchain import (
    ChainError,
    RoomState,
    SignedState,
    check_sealed_key,
    check_transition,
    decode_state,
    sign_sealed_key,
    state_digest,
    verify_chain,
)

OWNER = KeyPair.generate(Prefix.USER)
ADMIN = KeyPair.generate(Prefix.USER)
ALICE = KeyPair.generate(Prefix.USER)
BOB = KeyPair.generate(Prefix.USER)


def sealed_for(*keys: KeyPair, tag: bytes = b"") -> dict[str, bytes]:
    """Stand-in sealed boxes: distinct bytes per member (sealing is not under test here)."""
    return {k.public_key: b"sealed:" + tag + k.public_key.encode() for k in keys}


def assert_sealed_keys_verify(
    states: list[RoomState], keys: list[SealedKey], signer: KeyPair, room_id: str
) -> None:
    for key in keys:
        check_sealed_key(
            states,
            room_id=room_id,
            epoch=key.epoch,
            key_id=key.key_id,
            member=key.member,
            sealed=key.sealed,
            signer=signer.public_key,
            signature=key.signature,
        )


def new_room() -> tuple[str, NewRoom]:
    room_id = new_room_id()
    made = genesis(
        OWNER,
        room_id,
        members=[ALICE.public_key, ADMIN.public_key],
        admins=[ADMIN.public_key],
        sealed_by_member=sealed_for(OWNER, ADMIN, ALICE),
    )
    return room_id, made


def test_genesis_is_accepted_as_a_genesis() -> None:
    room_id, made = new_room()
    state = check_transition(None, made.genesis)
    assert state.room_id == room_id
    assert (state.seq, state.epoch, state.prev) == (1, 1, "")
    assert state.owner == state.actor == OWNER.public_key
    assert state.admins == (ADMIN.public_key,)
    assert state.members == tuple(sorted([OWNER.public_key, ADMIN.public_key, ALICE.public_key]))


def test_genesis_always_lists_the_owner_once() -> None:
    room_id = new_room_id()
    alone = genesis(OWNER, room_id, sealed_by_member=sealed_for(OWNER))
    assert check_transition(None, alone.genesis).members == (OWNER.public_key,)
    twice = genesis(
        OWNER,
        room_id,
        members=[OWNER.public_key, ALICE.public_key, ALICE.public_key],
        sealed_by_member=sealed_for(OWNER, ALICE),
    )
    assert check_transition(None, twice.genesis).members == tuple(
        sorted([OWNER.public_key, ALICE.public_key])
    )


def test_genesis_sealed_keys_are_for_its_epoch_sorted_and_verify() -> None:
    room_id, made = new_room()
    state = check_transition(None, made.genesis)
    assert [k.member for k in made.sealed_keys] == sorted(sealed_for(OWNER, ADMIN, ALICE))
    assert {(k.epoch, k.key_id) for k in made.sealed_keys} == {(1, state.key_id)}
    assert {k.member: k.sealed for k in made.sealed_keys} == sealed_for(OWNER, ADMIN, ALICE)
    assert_sealed_keys_verify([state], made.sealed_keys, OWNER, room_id)


def test_genesis_gives_each_room_a_fresh_key_id() -> None:
    _, first = new_room()
    _, second = new_room()
    assert decode_state(first.genesis).key_id != decode_state(second.genesis).key_id


def test_genesis_survives_the_wire() -> None:
    _, made = new_room()
    again = msgspec.json.decode(msgspec.json.encode(made), type=NewRoom)
    assert again == made
    check_transition(None, again.genesis)


def test_successor_adding_a_member_keeps_the_epoch_and_key_id() -> None:
    room_id, made = new_room()
    before = decode_state(made.genesis)
    members = [*before.members, BOB.public_key]
    state, change = successor(
        made.genesis, OWNER, members=members, new_epoch=False, sealed_by_member=sealed_for(BOB)
    )
    assert check_transition(made.genesis, change.state) == state
    assert (state.seq, state.epoch, state.key_id) == (2, 1, before.key_id)
    assert state.prev == state_digest(made.genesis)
    assert state.members == tuple(sorted(members))
    assert state.admins == before.admins
    assert [(k.member, k.epoch, k.key_id) for k in change.sealed_keys] == [
        (BOB.public_key, 1, before.key_id)
    ]
    assert_sealed_keys_verify([before, state], change.sealed_keys, OWNER, room_id)


def test_successor_with_a_new_epoch_gets_a_new_key_id() -> None:
    room_id, made = new_room()
    before = decode_state(made.genesis)
    state, change = successor(
        made.genesis,
        OWNER,
        members=before.members,
        new_epoch=True,
        sealed_by_member=sealed_for(OWNER, ADMIN, ALICE, tag=b"e2"),
    )
    assert check_transition(made.genesis, change.state) == state
    assert state.epoch == 2
    assert state.key_id != before.key_id
    assert {(k.epoch, k.key_id) for k in change.sealed_keys} == {(2, state.key_id)}
    assert_sealed_keys_verify([before, state], change.sealed_keys, OWNER, room_id)


def test_successor_removing_a_member_with_a_new_epoch_is_accepted() -> None:
    room_id, made = new_room()
    remaining = [OWNER.public_key, ADMIN.public_key]
    state, change = successor(
        made.genesis,
        ADMIN,
        members=remaining,
        new_epoch=True,
        sealed_by_member=sealed_for(OWNER, ADMIN, tag=b"e2"),
    )
    assert check_transition(made.genesis, change.state) == state
    assert state.members == tuple(sorted(remaining))
    assert state.actor == ADMIN.public_key
    states = [decode_state(made.genesis), state]
    assert_sealed_keys_verify(states, change.sealed_keys, ADMIN, room_id)
    # Alice's key for the new epoch, even signed by the admin, is refused.
    with pytest.raises(ChainError) as caught:
        check_sealed_key(
            states,
            room_id=room_id,
            epoch=2,
            key_id=state.key_id,
            member=ALICE.public_key,
            sealed=b"x",
            signer=ADMIN.public_key,
            signature=sign_sealed_key(ADMIN, room_id, 2, state.key_id, ALICE.public_key, b"x"),
        )
    assert caught.value.reason == "not_allowed"


def test_successor_removing_a_member_without_a_new_epoch_is_refused_by_the_check() -> None:
    _, made = new_room()
    _, change = successor(
        made.genesis, OWNER, members=[OWNER.public_key, ADMIN.public_key], new_epoch=False
    )
    with pytest.raises(ChainError) as caught:
        check_transition(made.genesis, change.state)
    assert caught.value.reason == "rekey_required"


def test_successor_keeps_admins_unless_given() -> None:
    _, made = new_room()
    before = decode_state(made.genesis)
    kept, _ = successor(made.genesis, OWNER, members=before.members, new_epoch=False)
    assert kept.admins == (ADMIN.public_key,)
    dropped, change = successor(
        made.genesis, OWNER, members=before.members, new_epoch=False, admins=[]
    )
    assert dropped.admins == ()
    assert check_transition(made.genesis, change.state) == dropped
    promoted, change = successor(
        made.genesis,
        OWNER,
        members=before.members,
        new_epoch=False,
        admins=[ALICE.public_key, ADMIN.public_key, ALICE.public_key],
    )
    assert promoted.admins == tuple(sorted([ALICE.public_key, ADMIN.public_key]))
    assert check_transition(made.genesis, change.state) == promoted


def test_successor_by_a_plain_member_is_refused_by_the_check() -> None:
    _, made = new_room()
    before = decode_state(made.genesis)
    _, change = successor(
        made.genesis, ALICE, members=[*before.members, BOB.public_key], new_epoch=False
    )
    with pytest.raises(ChainError) as caught:
        check_transition(made.genesis, change.state)
    assert caught.value.reason == "not_allowed"


def test_successor_without_sealed_keys_has_none() -> None:
    _, made = new_room()
    before = decode_state(made.genesis)
    _, change = successor(made.genesis, OWNER, members=before.members, new_epoch=False)
    assert change.sealed_keys == []


def test_successor_refuses_a_forged_previous_state() -> None:
    _, made = new_room()
    forged = SignedState(state=made.genesis.state, signature=bytes(64))
    with pytest.raises(ChainError) as caught:
        successor(forged, OWNER, members=[OWNER.public_key], new_epoch=True)
    assert caught.value.reason == "bad_signature"


def test_a_history_built_with_the_builders_verifies_and_every_key_checks() -> None:
    room_id, made = new_room()
    chain = [made.genesis]
    keys: list[tuple[KeyPair, SealedKey]] = [(OWNER, k) for k in made.sealed_keys]
    steps: list[tuple[KeyPair, list[KeyPair], bool]] = [
        (OWNER, [OWNER, ADMIN, ALICE, BOB], False),  # add Bob
        (ADMIN, [OWNER, ADMIN, BOB], True),  # remove Alice
        (OWNER, [OWNER, ADMIN, BOB], True),  # rekey
        (ADMIN, [OWNER, ADMIN, ALICE, BOB], False),  # add Alice back
    ]
    for number, (actor, people, new_epoch) in enumerate(steps):
        before = decode_state(chain[-1])
        needs = people if new_epoch else [p for p in people if p.public_key not in before.members]
        _, change = successor(
            chain[-1],
            actor,
            members=[p.public_key for p in people],
            new_epoch=new_epoch,
            sealed_by_member=sealed_for(*needs, tag=str(number).encode()),
        )
        chain.append(change.state)
        keys.extend((actor, k) for k in change.sealed_keys)
        assert msgspec.json.decode(msgspec.json.encode(change), type=RoomChange) == change
    states = verify_chain(chain, room_id=room_id)
    assert [(s.seq, s.epoch) for s in states] == [(1, 1), (2, 1), (3, 2), (4, 3), (5, 3)]
    assert len({s.key_id for s in states}) == 3
    for signer, key in keys:
        assert_sealed_keys_verify(states, [key], signer, room_id)

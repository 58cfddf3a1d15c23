"""A device's room memory refuses a chain older than, or forking from, what it verified."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from unibus.client.changes import genesis, successor
from unibus.client.heads import HeadMemory, HeadMemoryError, state_digest
from unibus.core.naming import new_room_id
from unibus.core.nkeys import KeyPair, Prefix
from unibus.core.roomchain import RoomState, SignedState, sign_state, verify_chain
from unibus.core.roomchain import state_digest as signed_digest

OWNER = KeyPair.generate(Prefix.USER)
DAVE = KeyPair.generate(Prefix.USER)
MEL = KeyPair.generate(Prefix.USER)


def _sealed(*keys: KeyPair) -> dict[str, bytes]:
    return {k.public_key: b"sealed:" + k.public_key.encode() for k in keys}


def _chain(room_id: str) -> list[SignedState]:
    """Genesis with Dave and Mel, then Mel removed (epoch 2)."""
    first = genesis(
        OWNER,
        room_id,
        members=[DAVE.public_key, MEL.public_key],
        sealed_by_member=_sealed(OWNER, DAVE, MEL),
    ).genesis
    _, removal = successor(
        first,
        OWNER,
        members=[OWNER.public_key, DAVE.public_key],
        new_epoch=True,
        sealed_by_member=_sealed(OWNER, DAVE),
    )
    return [first, removal.state]


def _states(room_id: str, signed: list[SignedState]) -> list[RoomState]:
    return verify_chain(signed, room_id=room_id)


def test_a_chain_that_ends_before_the_remembered_head_is_a_rollback() -> None:
    room_id = new_room_id()
    states = _states(room_id, _chain(room_id))
    heads = HeadMemory()
    heads.remember(room_id, states)
    assert heads.check(room_id, states) is None
    problem = heads.check(room_id, states[:1])
    assert problem is not None
    assert "rollback" in problem


def test_a_chain_that_differs_at_the_remembered_head_is_a_fork() -> None:
    room_id = new_room_id()
    signed = _chain(room_id)
    heads = HeadMemory()
    heads.remember(room_id, _states(room_id, signed))
    # Another state 2, validly signed by the owner: Mel kept, Dave removed.
    _, other = successor(
        signed[0],
        OWNER,
        members=[OWNER.public_key, MEL.public_key],
        new_epoch=True,
        sealed_by_member=_sealed(OWNER, MEL),
    )
    problem = heads.check(room_id, _states(room_id, [signed[0], other.state]))
    assert problem is not None
    assert "differs" in problem


def test_a_longer_chain_through_the_head_is_accepted_and_becomes_the_head() -> None:
    room_id = new_room_id()
    states = _states(room_id, _chain(room_id))
    heads = HeadMemory()
    heads.remember(room_id, states[:1])
    assert heads.check(room_id, states) is None
    heads.remember(room_id, states)
    head = heads.head(room_id)
    assert head is not None
    assert (head.seq, head.epoch) == (states[-1].seq, 2)


def test_the_digest_is_the_one_the_next_state_links_to() -> None:
    room_id = new_room_id()
    signed = _chain(room_id)
    states = _states(room_id, signed)
    assert state_digest(states[0]) == signed_digest(signed[0]) == states[1].prev
    assert sign_state(states[0], OWNER).state == signed[0].state


def test_an_epoch_shown_by_signed_traffic_is_remembered_until_the_chain_reaches_it() -> None:
    room_id = new_room_id()
    states = _states(room_id, _chain(room_id))
    heads = HeadMemory()
    heads.remember(room_id, states[:1])
    heads.saw_epoch(room_id, 2)
    assert heads.newest_epoch(room_id) == 2
    heads.saw_epoch(room_id, 1)  # older: changes nothing
    assert heads.newest_epoch(room_id) == 2
    heads.remember(room_id, states[:1])  # the same old chain again: the evidence stays
    assert heads.newest_epoch(room_id) == 2
    heads.remember(room_id, states)
    head = heads.head(room_id)
    assert head is not None
    assert head.epoch_seen == 0


def test_the_memory_survives_the_process_in_a_private_file(tmp_path: Path) -> None:
    room_id = new_room_id()
    states = _states(room_id, _chain(room_id))
    path = tmp_path / "device" / "me.nk.rooms.json"
    HeadMemory(path).remember(room_id, states)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    fresh = HeadMemory(path)
    assert fresh.check(room_id, states[:1]) is not None


@pytest.mark.parametrize("content", [b"{not json", b'{"v": 99, "rooms": {}}'])
def test_an_unreadable_memory_is_an_error_not_a_fresh_start(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "me.nk.rooms.json"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(HeadMemoryError, match="room memory"):
        HeadMemory(path)

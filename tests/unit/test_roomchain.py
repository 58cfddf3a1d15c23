"""The signed room-state chain (SPEC §7 "Key authenticity"): genesis, successors, whole
chains and sealed keys, each refusal with its stable ``reason``.

States are built here by hand (not with the client builders) so that every field can be
set to something wrong; the signing domain is restated below as a known answer, so the
tests that sign by hand do not borrow the module's own constant.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence

import msgspec
import pytest

from unibus.core.errors import IdentityError
from unibus.core.naming import new_key_id, new_room_id
from unibus.core.nkeys import KeyPair, Prefix, encode_public
from unibus.core.roomchain import (
    MAX_MEMBERS,
    STATE_VERSION,
    ChainError,
    RoomState,
    SignedState,
    check_sealed_key,
    check_transition,
    decode_state,
    encode_state,
    sealed_key_message,
    sign_sealed_key,
    sign_state,
    state_digest,
    verify_chain,
)
from unibus.core.xkeys import CurveKeyPair

STATE_DOMAIN = b"unibus-room-state-v1\n"
SEALED_DOMAIN = b"unibus-sealed-key-v1\n"

OWNER = KeyPair.generate(Prefix.USER)
ADMIN = KeyPair.generate(Prefix.USER)
ALICE = KeyPair.generate(Prefix.USER)
BOB = KeyPair.generate(Prefix.USER)
CAROL = KeyPair.generate(Prefix.USER)
OUTSIDER = KeyPair.generate(Prefix.USER)
ACCOUNT = KeyPair.generate(Prefix.ACCOUNT)

ROOM = new_room_id()
OTHER_ROOM = new_room_id()
KEY_ID = new_key_id()


def members(*keys: KeyPair | str) -> tuple[str, ...]:
    return tuple(sorted({k if isinstance(k, str) else k.public_key for k in keys}))


def genesis_state(**changes: object) -> RoomState:
    """Owner, one room admin and Alice, at epoch 1; ``changes`` override any field."""
    state = RoomState(
        room_id=ROOM,
        seq=1,
        epoch=1,
        key_id=KEY_ID,
        owner=OWNER.public_key,
        admins=(ADMIN.public_key,),
        members=members(OWNER, ADMIN, ALICE),
        actor=OWNER.public_key,
        issued_at=1_700_000_000.0,
    )
    return msgspec.structs.replace(state, **changes)


def sign_by(state: RoomState, signer: KeyPair) -> SignedState:
    """Sign ``state`` with ``signer`` whatever its ``actor`` says (``sign_state`` refuses)."""
    encoded = encode_state(state)
    return SignedState(state=encoded, signature=signer.sign(STATE_DOMAIN + encoded))


def genesis(**changes: object) -> SignedState:
    return sign_state(genesis_state(**changes), OWNER)


def after(previous: SignedState, actor: KeyPair, **changes: object) -> RoomState:
    """The honest successor of ``previous`` made by ``actor``, then ``changes`` applied."""
    before = decode_state(previous)
    state = msgspec.structs.replace(
        before,
        seq=before.seq + 1,
        actor=actor.public_key,
        issued_at=before.issued_at + 1,
        prev=state_digest(previous),
    )
    return msgspec.structs.replace(state, **changes)


def step(previous: SignedState, actor: KeyPair, **changes: object) -> SignedState:
    return sign_state(after(previous, actor, **changes), actor)


def refused(reason: str, call: Callable[[], object], match: str | None = None) -> ChainError:
    with pytest.raises(ChainError, match=match) as caught:
        call()
    assert caught.value.reason == reason, caught.value
    return caught.value


def history() -> list[SignedState]:
    """genesis → add Bob → remove Alice (new epoch) → admin adds Carol → rekey by owner."""
    s1 = genesis()
    s2 = step(s1, OWNER, members=members(OWNER, ADMIN, ALICE, BOB))
    s3 = step(s2, OWNER, members=members(OWNER, ADMIN, BOB), epoch=2, key_id=new_key_id())
    s4 = step(s3, ADMIN, members=members(OWNER, ADMIN, BOB, CAROL))
    s5 = step(s4, OWNER, epoch=3, key_id=new_key_id())
    return [s1, s2, s3, s4, s5]


# -- encoding and signing ---------------------------------------------------------------------
def test_signed_state_is_the_actor_signature_over_the_domain_and_sorted_json() -> None:
    state = genesis_state()
    signed = sign_state(state, OWNER)
    assert signed.state == msgspec.json.encode(msgspec.to_builtins(state), order="sorted")
    assert OWNER.verify(STATE_DOMAIN + signed.state, signed.signature)
    assert not OWNER.verify(signed.state, signed.signature)


def test_state_digest_is_the_hex_sha256_of_the_state_bytes() -> None:
    signed = genesis()
    assert state_digest(signed) == hashlib.sha256(signed.state).hexdigest()


def test_sign_state_refuses_a_signer_who_is_not_the_actor() -> None:
    with pytest.raises(ValueError, match="actor"):
        sign_state(genesis_state(), ADMIN)


def test_chain_error_is_an_identity_error() -> None:
    assert issubclass(ChainError, IdentityError)


def test_decode_state_returns_the_signed_state() -> None:
    state = genesis_state()
    assert decode_state(sign_state(state, OWNER)) == state
    assert state.v == STATE_VERSION


# -- genesis ----------------------------------------------------------------------------------
def test_genesis_by_the_owner_verifies() -> None:
    state = check_transition(None, genesis())
    assert state == genesis_state()
    assert state.may_act(OWNER.public_key)
    assert state.may_act(ADMIN.public_key)
    assert not state.may_act(ALICE.public_key)


def test_genesis_of_a_lone_owner_without_admins_verifies() -> None:
    state = check_transition(None, genesis(admins=(), members=members(OWNER)))
    assert state.members == (OWNER.public_key,)


def test_genesis_by_a_non_owner_is_refused() -> None:
    state = genesis_state(actor=ADMIN.public_key)
    refused("not_allowed", lambda: check_transition(None, sign_state(state, ADMIN)))


def test_genesis_claiming_another_owner_is_refused() -> None:
    # Alice signs a genesis naming herself actor but the real owner as owner.
    state = genesis_state(actor=ALICE.public_key)
    refused("not_allowed", lambda: check_transition(None, sign_state(state, ALICE)))


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"seq": 2}, id="seq-2"),
        pytest.param({"epoch": 2}, id="epoch-2"),
        pytest.param({"prev": "00" * 32}, id="non-empty-prev"),
    ],
)
def test_genesis_must_start_the_chain(changes: dict[str, object]) -> None:
    refused("bad_genesis", lambda: check_transition(None, genesis(**changes)))


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"seq": 0}, id="seq-0"),
        pytest.param({"seq": -1}, id="seq-negative"),
        pytest.param({"epoch": 0}, id="epoch-0"),
        pytest.param({"key_id": ""}, id="empty-key-id"),
    ],
)
def test_genesis_with_a_bad_seq_epoch_or_key_id_is_malformed(changes: dict[str, object]) -> None:
    refused("malformed", lambda: check_transition(None, genesis(**changes)), "seq, epoch or key")


def test_genesis_whose_owner_is_not_a_member_is_refused() -> None:
    signed = genesis(members=members(ADMIN, ALICE))
    refused("malformed", lambda: check_transition(None, signed), "owner must be a member")


def test_genesis_whose_admins_are_not_members_is_refused() -> None:
    signed = genesis(admins=(BOB.public_key,))
    refused("malformed", lambda: check_transition(None, signed), "admins must be members")


@pytest.mark.parametrize(
    "listed",
    [
        pytest.param("reversed", id="unsorted"),
        pytest.param("duplicate", id="duplicate"),
    ],
)
def test_genesis_members_must_be_sorted_and_distinct(listed: str) -> None:
    keys = members(OWNER, ADMIN, ALICE)
    bad = tuple(reversed(keys)) if listed == "reversed" else (*keys, keys[-1])
    refused("malformed", lambda: check_transition(None, genesis(members=bad)), "sorted")


@pytest.mark.parametrize(
    "room_id",
    [
        pytest.param("", id="empty"),
        pytest.param(ROOM.upper(), id="upper-case"),
        pytest.param(ROOM[:-1], id="too-short"),
        pytest.param(ROOM + "a", id="too-long"),
        pytest.param(ROOM[:-1] + ".", id="dot"),
        pytest.param(ROOM[:-1] + "\n", id="newline"),
    ],
)
def test_genesis_with_a_bad_room_id_is_refused(room_id: str) -> None:
    refused("malformed", lambda: check_transition(None, genesis(room_id=room_id)), "room id")


def _bad_keys() -> list[object]:
    user = KeyPair.generate(Prefix.USER).public_key
    return [
        pytest.param(ACCOUNT.public_key, id="account-key"),
        pytest.param(KeyPair.generate(Prefix.SERVER).public_key, id="server-key"),
        pytest.param(KeyPair.generate(Prefix.USER).seed, id="user-seed"),
        pytest.param("not-a-key", id="garbage"),
        pytest.param("", id="empty"),
        pytest.param(user.lower(), id="lower-case"),
        pytest.param(user[:-1] + ("A" if user[-1] != "A" else "B"), id="bad-checksum"),
        pytest.param(user + "A", id="too-long"),
        pytest.param(" " + user, id="leading-space"),
        pytest.param(hashlib.sha256(b"k").hexdigest(), id="hex"),
    ]


@pytest.mark.parametrize("bad", _bad_keys())
@pytest.mark.parametrize("where", ["member", "admin", "owner"])
def test_genesis_with_a_non_user_key_is_refused(bad: str, where: str) -> None:
    honest = members(OWNER, ADMIN, ALICE)
    if where == "member":
        state = genesis_state(members=tuple(sorted((*honest, bad))))
    elif where == "admin":
        state = genesis_state(admins=(bad,), members=tuple(sorted((*honest, bad))))
    else:
        state = genesis_state(owner=bad, members=tuple(sorted((*honest, bad))))
    refused("malformed", lambda: check_transition(None, sign_state(state, OWNER)), "user key")


def test_genesis_with_an_account_key_as_owner_and_actor_is_refused() -> None:
    state = genesis_state(
        owner=ACCOUNT.public_key,
        actor=ACCOUNT.public_key,
        admins=(),
        members=members(ACCOUNT, ALICE),
    )
    refused("malformed", lambda: check_transition(None, sign_state(state, ACCOUNT)), "user key")


@pytest.mark.parametrize("bad", _bad_keys())
def test_state_with_a_non_user_actor_is_refused(bad: str) -> None:
    signed = sign_by(genesis_state(actor=bad), OWNER)
    refused("malformed", lambda: check_transition(None, signed), "user key")


def _user_keys(count: int) -> tuple[str, ...]:
    rng = random.Random(count)
    return tuple(encode_public(Prefix.USER, rng.randbytes(32)) for _ in range(count))


def test_genesis_with_exactly_the_maximum_of_members_verifies() -> None:
    keys = tuple(sorted({OWNER.public_key, *_user_keys(MAX_MEMBERS - 1)}))
    assert len(keys) == MAX_MEMBERS
    state = check_transition(None, genesis(admins=(), members=keys))
    assert len(state.members) == MAX_MEMBERS


def test_genesis_with_too_many_members_is_refused() -> None:
    keys = tuple(sorted({OWNER.public_key, *_user_keys(MAX_MEMBERS)}))
    assert len(keys) == MAX_MEMBERS + 1
    signed = genesis(admins=(), members=keys)
    refused("malformed", lambda: check_transition(None, signed), f"at most {MAX_MEMBERS}")


def test_genesis_with_too_many_admins_is_refused() -> None:
    keys = _user_keys(MAX_MEMBERS)
    admins = (*keys, keys[0])
    members_ = tuple(sorted({OWNER.public_key, *keys}))[:MAX_MEMBERS]
    signed = genesis(admins=admins, members=members_)
    refused("malformed", lambda: check_transition(None, signed), f"at most {MAX_MEMBERS}")


@pytest.mark.parametrize("version", [0, 2, 99])
def test_genesis_of_an_unknown_version_is_refused(version: int) -> None:
    signed = genesis(v=version)
    refused("malformed", lambda: check_transition(None, signed), f"version {version} ")


def test_every_single_byte_flip_of_the_state_is_refused() -> None:
    signed = genesis()
    for index in range(len(signed.state)):
        for mask in (0x01, 0x20, 0x80):
            tampered = bytearray(signed.state)
            tampered[index] ^= mask
            forged = SignedState(state=bytes(tampered), signature=signed.signature)
            with pytest.raises(ChainError) as caught:
                check_transition(None, forged)
            assert caught.value.reason in {"malformed", "bad_signature"}, (index, mask)


def test_state_with_a_field_edited_after_signing_fails_its_signature() -> None:
    signed = genesis()
    edited = genesis_state(members=members(OWNER, ADMIN, ALICE, OUTSIDER))
    forged = SignedState(state=encode_state(edited), signature=signed.signature)
    refused("bad_signature", lambda: check_transition(None, forged))


def test_state_re_encoded_with_other_whitespace_fails_its_signature() -> None:
    signed = genesis()
    spaced = signed.state.replace(b",", b", ")
    assert msgspec.json.decode(spaced, type=RoomState) == decode_state(signed)
    forged = SignedState(state=spaced, signature=signed.signature)
    refused("bad_signature", lambda: check_transition(None, forged))


@pytest.mark.parametrize("signer", [ADMIN, ALICE, OUTSIDER], ids=["admin", "member", "outsider"])
def test_genesis_signed_by_another_key_than_its_actor_is_refused(signer: KeyPair) -> None:
    forged = sign_by(genesis_state(), signer)
    refused("bad_signature", lambda: check_transition(None, forged))


def test_genesis_signed_without_the_domain_is_refused() -> None:
    encoded = encode_state(genesis_state())
    forged = SignedState(state=encoded, signature=OWNER.sign(encoded))
    refused("bad_signature", lambda: check_transition(None, forged))


def test_signature_in_the_sealed_key_domain_is_refused() -> None:
    encoded = encode_state(genesis_state())
    forged = SignedState(state=encoded, signature=OWNER.sign(SEALED_DOMAIN + encoded))
    refused("bad_signature", lambda: check_transition(None, forged))


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda s: b"", id="empty"),
        pytest.param(lambda s: s[:-1], id="truncated"),
        pytest.param(lambda s: s[:32], id="half"),
        pytest.param(lambda s: s + b"\x00", id="extended"),
        pytest.param(lambda s: bytes(64), id="zeros"),
        pytest.param(lambda s: b"\xff" * 64, id="ones"),
        pytest.param(lambda s: bytes([s[0] ^ 1]) + s[1:], id="first-bit"),
        pytest.param(lambda s: s[:-1] + bytes([s[-1] ^ 0x80]), id="last-bit"),
        pytest.param(lambda s: random.Random(7).randbytes(64), id="random"),
    ],
)
def test_genesis_with_a_broken_signature_is_refused(mangle: Callable[[bytes], bytes]) -> None:
    signed = genesis()
    forged = SignedState(state=signed.state, signature=mangle(signed.signature))
    refused("bad_signature", lambda: check_transition(None, forged))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        # Invalid UTF-8 inside a string once escaped as UnicodeDecodeError, not ChainError.
        pytest.param(b'{"actor":"\xd5BL"}', id="not-utf8-in-a-string"),
        pytest.param(b'{"key_id":"\xed\xa0\x80"}', id="surrogate-in-a-string"),
        pytest.param(b'{"key_id":"\\ud800"}', id="escaped-lone-surrogate"),
        pytest.param(b"[]", id="array"),
        pytest.param(b"{}", id="empty-object"),
        pytest.param(b"null", id="null"),
        pytest.param(b'{"room_id": 5}', id="wrong-type"),
        pytest.param(b"{" * 10_000, id="deep"),
    ],
)
def test_undecodable_state_is_refused(raw: bytes) -> None:
    signed = SignedState(state=raw, signature=OWNER.sign(STATE_DOMAIN + raw))
    refused("malformed", lambda: check_transition(None, signed), "does not decode")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", "1"),
        ("seq", True),
        ("seq", 1.5),
        ("epoch", None),
        ("members", "U"),
        ("admins", {}),
        ("issued_at", "now"),
    ],
)
def test_state_with_a_wrongly_typed_field_is_refused(field: str, value: object) -> None:
    fields = msgspec.to_builtins(genesis_state())
    fields[field] = value
    raw = msgspec.json.encode(fields, order="sorted")
    signed = SignedState(state=raw, signature=OWNER.sign(STATE_DOMAIN + raw))
    refused("malformed", lambda: check_transition(None, signed), "does not decode")


# -- successors -------------------------------------------------------------------------------
def test_adding_a_member_in_the_same_epoch_is_accepted() -> None:
    s1 = genesis()
    state = check_transition(s1, step(s1, OWNER, members=members(OWNER, ADMIN, ALICE, BOB)))
    assert state.members == members(OWNER, ADMIN, ALICE, BOB)
    assert (state.seq, state.epoch, state.key_id) == (2, 1, KEY_ID)


def test_adding_a_member_with_a_new_epoch_is_accepted() -> None:
    s1 = genesis()
    key_id = new_key_id()
    s2 = step(s1, OWNER, members=members(OWNER, ADMIN, ALICE, BOB), epoch=2, key_id=key_id)
    state = check_transition(s1, s2)
    assert (state.epoch, state.key_id) == (2, key_id)


def test_adding_an_admin_in_the_same_epoch_is_accepted() -> None:
    s1 = genesis()
    s2 = step(s1, OWNER, admins=members(ADMIN, ALICE))
    assert check_transition(s1, s2).admins == members(ADMIN, ALICE)


def test_demoting_an_admin_in_the_same_epoch_is_accepted() -> None:
    s1 = genesis()
    assert check_transition(s1, step(s1, OWNER, admins=())).admins == ()


@pytest.mark.parametrize("actor", [OWNER, ADMIN], ids=["owner", "admin"])
def test_removing_a_member_with_a_new_epoch_and_key_id_is_accepted(actor: KeyPair) -> None:
    s1 = genesis()
    key_id = new_key_id()
    s2 = step(s1, actor, members=members(OWNER, ADMIN), epoch=2, key_id=key_id)
    state = check_transition(s1, s2)
    assert state.members == members(OWNER, ADMIN)
    assert (state.epoch, state.key_id) == (2, key_id)


def test_removing_a_member_in_the_same_epoch_is_refused() -> None:
    s1 = genesis()
    s2 = step(s1, OWNER, members=members(OWNER, ADMIN))
    refused("rekey_required", lambda: check_transition(s1, s2))


def test_removing_a_member_with_a_new_epoch_but_the_same_key_id_is_refused() -> None:
    s1 = genesis()
    s2 = step(s1, OWNER, members=members(OWNER, ADMIN), epoch=2)
    refused("rekey_required", lambda: check_transition(s1, s2))


def test_removing_a_member_with_a_new_key_id_but_the_same_epoch_is_refused() -> None:
    s1 = genesis()
    s2 = step(s1, OWNER, members=members(OWNER, ADMIN), key_id=new_key_id())
    refused("rekey_required", lambda: check_transition(s1, s2))


def test_swapping_a_member_for_another_in_the_same_epoch_is_refused() -> None:
    s1 = genesis()
    s2 = step(s1, OWNER, members=members(OWNER, ADMIN, BOB))
    refused("rekey_required", lambda: check_transition(s1, s2))


def test_removing_an_admin_from_the_room_in_a_new_epoch_is_accepted() -> None:
    s1 = genesis()
    s2 = step(s1, OWNER, admins=(), members=members(OWNER, ALICE), epoch=2, key_id=new_key_id())
    assert check_transition(s1, s2).admins == ()


def test_removing_a_member_but_keeping_them_admin_is_malformed() -> None:
    s1 = genesis()
    s2 = step(s1, OWNER, members=members(OWNER, ALICE), epoch=2, key_id=new_key_id())
    refused("malformed", lambda: check_transition(s1, s2), "admins must be members")


def test_removing_the_owner_is_malformed() -> None:
    s1 = genesis()
    s2 = step(s1, ADMIN, members=members(ADMIN, ALICE), epoch=2, key_id=new_key_id())
    refused("malformed", lambda: check_transition(s1, s2), "owner must be a member")


@pytest.mark.parametrize("actor", [OWNER, ADMIN], ids=["owner", "admin"])
def test_rekey_with_the_same_members_is_accepted(actor: KeyPair) -> None:
    s1 = genesis()
    key_id = new_key_id()
    state = check_transition(s1, step(s1, actor, epoch=2, key_id=key_id))
    assert state.members == decode_state(s1).members
    assert (state.epoch, state.key_id) == (2, key_id)


def test_rekey_without_a_new_key_id_is_refused() -> None:
    s1 = genesis()
    refused("bad_epoch", lambda: check_transition(s1, step(s1, OWNER, epoch=2)))


def test_new_key_id_in_the_same_epoch_is_refused() -> None:
    s1 = genesis()
    refused("bad_epoch", lambda: check_transition(s1, step(s1, OWNER, key_id=new_key_id())))


@pytest.mark.parametrize("jump", [2, 3, 1000])
def test_epoch_jumping_by_more_than_one_is_refused(jump: int) -> None:
    s1 = genesis()
    s2 = step(s1, OWNER, epoch=1 + jump, key_id=new_key_id())
    refused("bad_epoch", lambda: check_transition(s1, s2))


def test_epoch_going_back_is_refused() -> None:
    s1 = genesis()
    s2 = step(s1, OWNER, epoch=2, key_id=new_key_id())
    s3 = step(s2, OWNER, epoch=1, key_id=KEY_ID)
    refused("bad_epoch", lambda: check_transition(s2, s3))


def test_epoch_going_back_with_a_removal_is_refused() -> None:
    s1 = genesis()
    s2 = step(s1, OWNER, epoch=2, key_id=new_key_id())
    s3 = step(s2, OWNER, members=members(OWNER, ADMIN), epoch=1, key_id=new_key_id())
    refused("rekey_required", lambda: check_transition(s2, s3))


@pytest.mark.parametrize(
    "actor",
    [ALICE, OUTSIDER],
    ids=["member", "outsider"],
)
def test_a_non_rights_holder_may_not_change_the_room(actor: KeyPair) -> None:
    s1 = genesis()
    changes: list[dict[str, object]] = [
        {"members": members(OWNER, ADMIN, ALICE, actor)},
        {"epoch": 2, "key_id": new_key_id()},
        {"members": members(OWNER, ADMIN, actor), "epoch": 2, "key_id": new_key_id()},
    ]
    for change in changes:
        s2 = step(s1, actor, **change)
        refused("not_allowed", lambda: check_transition(s1, s2))  # noqa: B023


def test_a_member_making_themselves_admin_is_refused() -> None:
    s1 = genesis()
    s2 = step(s1, ALICE, admins=members(ADMIN, ALICE))
    refused("not_allowed", lambda: check_transition(s1, s2))


def test_an_outsider_adding_themselves_as_admin_is_refused() -> None:
    s1 = genesis()
    s2 = step(
        s1,
        OUTSIDER,
        admins=members(ADMIN, OUTSIDER),
        members=members(OWNER, ADMIN, ALICE, OUTSIDER),
    )
    refused("not_allowed", lambda: check_transition(s1, s2))


def test_an_admin_promoted_in_this_state_may_act_only_from_the_next() -> None:
    s1 = genesis()
    promoted = step(s1, OWNER, admins=members(ADMIN, ALICE))
    assert check_transition(s1, promoted).may_act(ALICE.public_key)
    # Alice's first act as an admin follows the state that promoted her.
    s3 = step(promoted, ALICE, members=members(OWNER, ADMIN, ALICE, BOB))
    assert check_transition(promoted, s3).actor == ALICE.public_key
    # She cannot promote herself and act in one state, even with the same content.
    same = step(s1, ALICE, admins=members(ADMIN, ALICE))
    refused("not_allowed", lambda: check_transition(s1, same))


def test_a_demoted_admin_may_no_longer_act() -> None:
    s1 = genesis()
    s2 = step(s1, OWNER, admins=())
    s3 = step(s2, ADMIN, members=members(OWNER, ADMIN, ALICE, BOB))
    refused("not_allowed", lambda: check_transition(s2, s3))


def test_a_removed_admin_may_no_longer_act() -> None:
    s1 = genesis()
    s2 = step(s1, OWNER, admins=(), members=members(OWNER, ALICE), epoch=2, key_id=new_key_id())
    s3 = step(s2, ADMIN, members=members(OWNER, ADMIN, ALICE))
    refused("not_allowed", lambda: check_transition(s2, s3))


@pytest.mark.parametrize("actor", [OWNER, ADMIN], ids=["owner", "admin"])
def test_changing_the_owner_is_refused(actor: KeyPair) -> None:
    s1 = genesis()
    s2 = step(s1, actor, owner=ADMIN.public_key)
    refused("not_allowed", lambda: check_transition(s1, s2))


def test_changing_the_room_id_is_refused() -> None:
    s1 = genesis()
    s2 = step(s1, OWNER, room_id=OTHER_ROOM)
    refused("bad_link", lambda: check_transition(s1, s2))


@pytest.mark.parametrize(
    "prev",
    [
        pytest.param("", id="empty"),
        pytest.param("00" * 32, id="zeros"),
        pytest.param(hashlib.sha256(b"other").hexdigest(), id="other-digest"),
        pytest.param("PREV", id="garbage"),
    ],
)
def test_successor_with_a_wrong_prev_digest_is_refused(prev: str) -> None:
    s1 = genesis()
    refused("bad_link", lambda: check_transition(s1, step(s1, OWNER, prev=prev)))


def test_successor_linking_to_the_upper_case_digest_is_refused() -> None:
    s1 = genesis()
    s2 = step(s1, OWNER, prev=state_digest(s1).upper())
    refused("bad_link", lambda: check_transition(s1, s2))


@pytest.mark.parametrize("seq", [1, 3, 10])
def test_successor_with_a_skipped_or_repeated_seq_is_refused(seq: int) -> None:
    s1 = genesis()
    refused("bad_link", lambda: check_transition(s1, step(s1, OWNER, seq=seq)))


def test_replaying_an_older_state_is_refused() -> None:
    chain = history()
    for older in chain:
        refused("bad_link", lambda: check_transition(chain[-1], older))  # noqa: B023


def test_a_genesis_is_not_a_successor() -> None:
    s1 = genesis()
    refused("bad_link", lambda: check_transition(s1, genesis()))


def test_a_successor_is_not_a_genesis() -> None:
    s1 = genesis()
    refused("bad_genesis", lambda: check_transition(None, step(s1, OWNER)))


def test_a_state_linked_to_another_rooms_chain_is_refused() -> None:
    other = genesis(room_id=OTHER_ROOM)
    s1 = genesis()
    s2 = step(other, OWNER, room_id=ROOM)
    refused("bad_link", lambda: check_transition(s1, s2))


def test_a_forked_successor_is_checked_against_its_own_previous() -> None:
    # Two honest successors of one state are each valid; the store's compare-and-set picks.
    s1 = genesis()
    left = step(s1, OWNER, members=members(OWNER, ADMIN, ALICE, BOB))
    right = step(s1, ADMIN, members=members(OWNER, ADMIN, ALICE, CAROL))
    check_transition(s1, left)
    check_transition(s1, right)
    refused("bad_link", lambda: check_transition(left, right))


def test_a_forged_previous_state_is_refused() -> None:
    s1 = genesis()
    s2 = step(s1, OWNER, members=members(OWNER, ADMIN, ALICE, BOB))
    forged_previous = SignedState(state=s1.state, signature=bytes(64))
    refused("bad_signature", lambda: check_transition(forged_previous, s2))


def test_a_successor_with_a_bad_signature_is_refused() -> None:
    s1 = genesis()
    state = after(s1, OWNER, members=members(OWNER, ADMIN, ALICE, BOB))
    refused("bad_signature", lambda: check_transition(s1, sign_by(state, ADMIN)))


# -- whole chains -----------------------------------------------------------------------------
def test_verify_chain_returns_every_state_latest_last() -> None:
    chain = history()
    states = verify_chain(chain, room_id=ROOM)
    assert states == [decode_state(signed) for signed in chain]
    assert [s.seq for s in states] == [1, 2, 3, 4, 5]
    assert [s.epoch for s in states] == [1, 1, 2, 2, 3]
    assert states[-1].members == members(OWNER, ADMIN, BOB, CAROL)


def test_verify_chain_accepts_a_lone_genesis() -> None:
    assert verify_chain([genesis()]) == [genesis_state()]


def test_verify_chain_accepts_a_tuple() -> None:
    assert len(verify_chain(tuple(history()))) == 5


def test_verify_chain_refuses_an_empty_chain() -> None:
    refused("bad_genesis", lambda: verify_chain([]))


def test_verify_chain_refuses_a_chain_without_its_genesis() -> None:
    refused("bad_genesis", lambda: verify_chain(history()[1:]))


def test_verify_chain_refuses_a_chain_with_a_state_left_out() -> None:
    chain = history()
    refused("bad_link", lambda: verify_chain([*chain[:2], *chain[3:]]))


def test_verify_chain_refuses_reordered_states() -> None:
    chain = history()
    chain[2], chain[3] = chain[3], chain[2]
    refused("bad_link", lambda: verify_chain(chain))


def test_verify_chain_refuses_a_duplicated_state() -> None:
    chain = history()
    refused("bad_link", lambda: verify_chain([*chain[:3], chain[2], *chain[3:]]))


def test_verify_chain_refuses_a_middle_state_edited_after_signing() -> None:
    chain = history()
    edited = msgspec.structs.replace(
        decode_state(chain[2]), members=members(OWNER, ADMIN, BOB, OUTSIDER)
    )
    chain[2] = SignedState(state=encode_state(edited), signature=chain[2].signature)
    refused("bad_signature", lambda: verify_chain(chain))


def test_verify_chain_refuses_a_middle_state_re_signed_by_a_non_rights_holder() -> None:
    chain = history()
    # Same content, but as if Alice had made the change: the digest differs, so even the
    # honest states after it no longer link.
    forged = msgspec.structs.replace(decode_state(chain[1]), actor=ALICE.public_key)
    chain[1] = sign_state(forged, ALICE)
    refused("not_allowed", lambda: verify_chain(chain[:2]))
    refused("not_allowed", lambda: verify_chain(chain))


def test_verify_chain_refuses_a_middle_state_replaced_and_relinked_by_an_outsider() -> None:
    # An attacker holding only their own key rewrites state 2 and re-links the rest with
    # their signature: the first forged state already fails.
    chain = history()
    forged: list[SignedState] = chain[:1]
    for signed in chain[1:]:
        state = msgspec.structs.replace(
            decode_state(signed), actor=OUTSIDER.public_key, prev=state_digest(forged[-1])
        )
        forged.append(sign_state(state, OUTSIDER))
    refused("not_allowed", lambda: verify_chain(forged))


def test_verify_chain_refuses_a_chain_of_another_room_when_the_room_is_given() -> None:
    s1 = genesis(room_id=OTHER_ROOM)
    chain = [s1, step(s1, OWNER, members=members(OWNER, ADMIN, ALICE, BOB))]
    assert len(verify_chain(chain)) == 2
    assert len(verify_chain(chain, room_id=OTHER_ROOM)) == 2
    refused("bad_link", lambda: verify_chain(chain, room_id=ROOM))
    refused("bad_link", lambda: verify_chain(chain[:1], room_id=ROOM))


def test_verify_chain_refuses_an_injected_member_in_a_later_state() -> None:
    chain = history()
    latest = decode_state(chain[-1])
    injected = msgspec.structs.replace(latest, members=members(*latest.members, OUTSIDER))
    chain[-1] = SignedState(state=encode_state(injected), signature=chain[-1].signature)
    refused("bad_signature", lambda: verify_chain(chain))


def test_verify_chain_refuses_a_state_appended_by_a_non_rights_holder() -> None:
    # A KV write can append a well-formed state, but only signed by a key it holds.
    chain = history()
    latest = decode_state(chain[-1])
    appended = step(chain[-1], OUTSIDER, members=members(*latest.members, OUTSIDER))
    refused("not_allowed", lambda: verify_chain([*chain, appended]))


def test_verify_chain_refuses_an_injected_key_id() -> None:
    chain = history()
    injected = msgspec.structs.replace(decode_state(chain[-1]), key_id=new_key_id())
    chain[-1] = SignedState(state=encode_state(injected), signature=chain[-1].signature)
    refused("bad_signature", lambda: verify_chain(chain))


# -- sealed keys ------------------------------------------------------------------------------
SEALED = b"\x01" * 80


def sealed_check(
    states: Sequence[RoomState],
    *,
    signer: KeyPair | str,
    member: KeyPair,
    epoch: int,
    key_id: str,
    sealed: bytes = SEALED,
    signature: bytes | None = None,
    room_id: str = ROOM,
) -> None:
    signer_key = signer if isinstance(signer, str) else signer.public_key
    if signature is None:
        assert isinstance(signer, KeyPair)
        signature = sign_sealed_key(signer, room_id, epoch, key_id, member.public_key, sealed)
    check_sealed_key(
        states,
        room_id=room_id,
        epoch=epoch,
        key_id=key_id,
        member=member.public_key,
        sealed=sealed,
        signer=signer_key,
        signature=signature,
    )


def test_sealed_key_message_binds_every_field_in_its_domain() -> None:
    message = sealed_key_message(ROOM, 3, "kid", ALICE.public_key, SEALED)
    digest = hashlib.sha256(SEALED).hexdigest()
    assert message == SEALED_DOMAIN + f"{ROOM}\n3\nkid\n{ALICE.public_key}\n{digest}".encode()
    signature = sign_sealed_key(OWNER, ROOM, 3, "kid", ALICE.public_key, SEALED)
    assert OWNER.verify(message, signature)


@pytest.mark.parametrize(
    ("signer", "member"),
    [(OWNER, ALICE), (OWNER, OWNER), (ADMIN, ALICE), (ADMIN, OWNER), (ADMIN, ADMIN)],
    ids=["owner-alice", "owner-self", "admin-alice", "admin-owner", "admin-self"],
)
def test_sealed_key_by_a_rights_holder_for_a_member_of_the_epoch_verifies(
    signer: KeyPair, member: KeyPair
) -> None:
    states = verify_chain([genesis()])
    sealed_check(states, signer=signer, member=member, epoch=1, key_id=KEY_ID)


def test_sealed_keys_across_a_history_verify_for_their_own_epoch() -> None:
    states = verify_chain(history())
    by_epoch = {s.epoch: s.key_id for s in states}
    sealed_check(states, signer=OWNER, member=ALICE, epoch=1, key_id=by_epoch[1])
    sealed_check(states, signer=OWNER, member=BOB, epoch=1, key_id=by_epoch[1])
    sealed_check(states, signer=ADMIN, member=CAROL, epoch=2, key_id=by_epoch[2])
    sealed_check(states, signer=OWNER, member=CAROL, epoch=3, key_id=by_epoch[3])


@pytest.mark.parametrize("signer", [ALICE, OUTSIDER], ids=["member", "outsider"])
def test_sealed_key_by_a_non_rights_holder_is_refused(signer: KeyPair) -> None:
    states = verify_chain([genesis()])
    refused(
        "not_allowed",
        lambda: sealed_check(states, signer=signer, member=ALICE, epoch=1, key_id=KEY_ID),
    )


def test_sealed_key_signed_by_an_account_key_is_refused() -> None:
    states = verify_chain([genesis()])
    refused(
        "not_allowed",
        lambda: sealed_check(states, signer=ACCOUNT, member=ALICE, epoch=1, key_id=KEY_ID),
    )


def test_sealed_key_for_someone_never_a_member_is_refused() -> None:
    states = verify_chain(history())
    refused(
        "not_allowed",
        lambda: sealed_check(states, signer=OWNER, member=OUTSIDER, epoch=1, key_id=KEY_ID),
    )


def test_sealed_key_for_a_removed_member_in_the_new_epoch_is_refused() -> None:
    states = verify_chain(history())
    epoch2 = next(s.key_id for s in states if s.epoch == 2)
    sealed_check(states, signer=OWNER, member=ALICE, epoch=1, key_id=KEY_ID)
    refused(
        "not_allowed",
        lambda: sealed_check(states, signer=OWNER, member=ALICE, epoch=2, key_id=epoch2),
    )


def test_sealed_key_for_a_member_added_in_a_later_epoch_is_refused_for_earlier_ones() -> None:
    states = verify_chain(history())
    refused(
        "not_allowed",
        lambda: sealed_check(states, signer=OWNER, member=CAROL, epoch=1, key_id=KEY_ID),
    )


def test_sealed_key_needs_one_state_where_the_signer_may_act_and_the_member_is_listed() -> None:
    # Epoch 1: the admin is demoted, then Bob is added. No state of the epoch has both the
    # admin as admin and Bob as member, so the former admin cannot hand Bob a key.
    s1 = genesis()
    s2 = step(s1, OWNER, admins=())
    s3 = step(s2, OWNER, members=members(OWNER, ADMIN, ALICE, BOB))
    states = verify_chain([s1, s2, s3])
    sealed_check(states, signer=ADMIN, member=ALICE, epoch=1, key_id=KEY_ID)
    sealed_check(states, signer=OWNER, member=BOB, epoch=1, key_id=KEY_ID)
    refused(
        "not_allowed",
        lambda: sealed_check(states, signer=ADMIN, member=BOB, epoch=1, key_id=KEY_ID),
    )


def test_sealed_key_by_a_removed_admin_for_the_new_epoch_is_refused() -> None:
    s1 = genesis()
    key_id = new_key_id()
    s2 = step(s1, OWNER, admins=(), members=members(OWNER, ALICE), epoch=2, key_id=key_id)
    states = verify_chain([s1, s2])
    refused(
        "not_allowed",
        lambda: sealed_check(states, signer=ADMIN, member=ALICE, epoch=2, key_id=key_id),
    )


def test_sealed_key_with_a_wrong_key_id_is_refused() -> None:
    states = verify_chain([genesis()])
    other = new_key_id()
    # Signed for the wrong key id: no state of that key id.
    refused(
        "not_allowed",
        lambda: sealed_check(states, signer=OWNER, member=ALICE, epoch=1, key_id=other),
    )
    # Signed for the right key id, presented under another.
    signature = sign_sealed_key(OWNER, ROOM, 1, KEY_ID, ALICE.public_key, SEALED)
    refused(
        "bad_signature",
        lambda: sealed_check(
            states, signer=OWNER, member=ALICE, epoch=1, key_id=other, signature=signature
        ),
    )


def test_sealed_key_with_a_wrong_epoch_is_refused() -> None:
    states = verify_chain([genesis()])
    refused(
        "not_allowed",
        lambda: sealed_check(states, signer=OWNER, member=ALICE, epoch=2, key_id=KEY_ID),
    )
    signature = sign_sealed_key(OWNER, ROOM, 1, KEY_ID, ALICE.public_key, SEALED)
    refused(
        "bad_signature",
        lambda: sealed_check(
            states, signer=OWNER, member=ALICE, epoch=2, key_id=KEY_ID, signature=signature
        ),
    )


def test_sealed_key_with_an_earlier_epochs_key_id_is_refused() -> None:
    states = verify_chain(history())
    epoch2 = next(s.key_id for s in states if s.epoch == 2)
    refused(
        "not_allowed",
        lambda: sealed_check(states, signer=OWNER, member=BOB, epoch=2, key_id=KEY_ID),
    )
    refused(
        "not_allowed",
        lambda: sealed_check(states, signer=OWNER, member=BOB, epoch=1, key_id=epoch2),
    )


def test_sealed_key_for_another_room_is_refused() -> None:
    states = verify_chain([genesis()])
    refused(
        "not_allowed",
        lambda: sealed_check(
            states, signer=OWNER, member=ALICE, epoch=1, key_id=KEY_ID, room_id=OTHER_ROOM
        ),
    )
    signature = sign_sealed_key(OWNER, OTHER_ROOM, 1, KEY_ID, ALICE.public_key, SEALED)
    refused(
        "bad_signature",
        lambda: sealed_check(
            states, signer=OWNER, member=ALICE, epoch=1, key_id=KEY_ID, signature=signature
        ),
    )


def test_sealed_key_with_tampered_bytes_is_refused() -> None:
    states = verify_chain([genesis()])
    signature = sign_sealed_key(OWNER, ROOM, 1, KEY_ID, ALICE.public_key, SEALED)
    for tampered in (SEALED[:-1], SEALED + b"\x00", b"\x02" + SEALED[1:], b""):
        refused(
            "bad_signature",
            lambda: sealed_check(
                states,
                signer=OWNER,
                member=ALICE,
                epoch=1,
                key_id=KEY_ID,
                sealed=tampered,  # noqa: B023
                signature=signature,
            ),
        )


def test_sealed_key_signed_for_alice_presented_as_bobs_is_refused() -> None:
    s1 = genesis(members=members(OWNER, ADMIN, ALICE, BOB))
    states = verify_chain([s1])
    signature = sign_sealed_key(OWNER, ROOM, 1, KEY_ID, ALICE.public_key, SEALED)
    refused(
        "bad_signature",
        lambda: sealed_check(
            states, signer=OWNER, member=BOB, epoch=1, key_id=KEY_ID, signature=signature
        ),
    )


def test_sealed_key_signed_by_an_outsider_in_the_owners_name_is_refused() -> None:
    states = verify_chain([genesis()])
    signature = sign_sealed_key(OUTSIDER, ROOM, 1, KEY_ID, ALICE.public_key, SEALED)
    refused(
        "bad_signature",
        lambda: sealed_check(
            states,
            signer=OWNER.public_key,
            member=ALICE,
            epoch=1,
            key_id=KEY_ID,
            signature=signature,
        ),
    )


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(b"", id="empty"),
        pytest.param(bytes(64), id="zeros"),
        pytest.param(b"\x00" * 63, id="short"),
    ],
)
def test_sealed_key_with_a_broken_signature_is_refused(signature: bytes) -> None:
    states = verify_chain([genesis()])
    refused(
        "bad_signature",
        lambda: sealed_check(
            states, signer=OWNER, member=ALICE, epoch=1, key_id=KEY_ID, signature=signature
        ),
    )


@pytest.mark.parametrize(
    "signer",
    [
        pytest.param("", id="empty"),
        pytest.param("not-a-key", id="garbage"),
        pytest.param(OWNER.seed, id="seed"),
        pytest.param(OWNER.public_key.lower(), id="lower-case"),
        pytest.param(ALICE.public_key[:-1], id="truncated"),
    ],
)
def test_sealed_key_with_a_garbage_signer_key_is_refused(signer: str) -> None:
    states = verify_chain([genesis()])
    signature = sign_sealed_key(OWNER, ROOM, 1, KEY_ID, ALICE.public_key, SEALED)
    refused(
        "bad_signature",
        lambda: sealed_check(
            states, signer=signer, member=ALICE, epoch=1, key_id=KEY_ID, signature=signature
        ),
    )


def test_sealed_key_with_a_curve_signer_key_is_refused() -> None:
    states = verify_chain([genesis()])
    signature = sign_sealed_key(OWNER, ROOM, 1, KEY_ID, ALICE.public_key, SEALED)
    refused(
        "bad_signature",
        lambda: sealed_check(
            states,
            signer=CurveKeyPair.generate().public_key,
            member=ALICE,
            epoch=1,
            key_id=KEY_ID,
            signature=signature,
        ),
    )


def test_sealed_key_with_no_states_is_refused() -> None:
    refused(
        "not_allowed",
        lambda: sealed_check([], signer=OWNER, member=ALICE, epoch=1, key_id=KEY_ID),
    )


# -- leaving ---------------------------------------------------------------------------------------
def _left(s1: SignedState) -> SignedState:
    """Alice leaves the genesis room: only herself removed, a new epoch."""
    return step(s1, ALICE, members=members(OWNER, ADMIN), epoch=2, key_id=new_key_id())


def test_a_member_may_leave_removing_only_itself_into_a_new_epoch() -> None:
    s1 = genesis()
    left = check_transition(s1, _left(s1))
    assert left.actor == ALICE.public_key
    assert ALICE.public_key not in left.members


def test_an_admin_leaving_gives_up_its_admin_right_with_its_membership() -> None:
    s1 = genesis()
    kept = step(s1, ADMIN, members=members(OWNER, ALICE), epoch=2, key_id=new_key_id())
    refused("malformed", lambda: check_transition(s1, kept))  # an admin must be a member
    gone = step(s1, ADMIN, members=members(OWNER, ALICE), admins=(), epoch=2, key_id=new_key_id())
    assert check_transition(s1, gone).admins == ()


@pytest.mark.parametrize(
    "change",
    [
        {"members": members(OWNER, ADMIN)},  # the same epoch: the leaver would keep the key
        {"members": members(OWNER), "admins": (), "epoch": 2, "key_id": new_key_id()},
        {"members": members(OWNER, ADMIN, BOB), "epoch": 2, "key_id": new_key_id()},
    ],
    ids=["same-epoch", "takes-another-along", "adds-someone"],
)
def test_a_leave_may_do_nothing_but_leave(change: dict[str, object]) -> None:
    s1 = genesis()
    with pytest.raises(ChainError):
        check_transition(s1, step(s1, ALICE, **change))


def test_the_owner_cannot_leave_its_room() -> None:
    s1 = genesis()
    s2 = step(s1, OWNER, members=members(ADMIN, ALICE), epoch=2, key_id=new_key_id())
    refused("malformed", lambda: check_transition(s1, s2))


def test_after_a_leave_any_member_may_rekey_and_hand_out_the_new_key() -> None:
    key_id = new_key_id()
    s1b = genesis(members=members(OWNER, ADMIN, ALICE, BOB))
    s2b = step(s1b, ALICE, members=members(OWNER, ADMIN, BOB), epoch=2, key_id=new_key_id())
    s3b = step(s2b, BOB, epoch=3, key_id=key_id)
    states = verify_chain([s1b, s2b, s3b])
    assert states[-1].actor == BOB.public_key  # Bob is neither owner nor admin
    sealed = b"sealed for the owner"
    check_sealed_key(
        states,
        room_id=ROOM,
        epoch=3,
        key_id=key_id,
        member=OWNER.public_key,
        sealed=sealed,
        signer=BOB.public_key,
        signature=sign_sealed_key(BOB, ROOM, 3, key_id, OWNER.public_key, sealed),
    )


def test_a_rekey_by_a_member_is_refused_unless_a_leave_came_just_before() -> None:
    s1b = genesis(members=members(OWNER, ADMIN, ALICE, BOB))
    s2b = step(s1b, ALICE, members=members(OWNER, ADMIN, BOB), epoch=2, key_id=new_key_id())
    s3b = step(s2b, OWNER, epoch=3, key_id=new_key_id())
    s4b = step(s3b, BOB, epoch=4, key_id=new_key_id())
    refused("not_allowed", lambda: check_transition(s3b, s4b))
    grows = step(s2b, BOB, members=members(OWNER, ADMIN, BOB, CAROL), epoch=3, key_id=new_key_id())
    refused("not_allowed", lambda: check_transition(s2b, grows))


def test_the_leaver_can_hand_out_no_key_to_the_epoch_its_leave_starts() -> None:
    s1 = genesis()
    s2 = _left(s1)
    states = verify_chain([s1, s2])
    left = states[-1]
    sealed = b"a key alice would know"
    refused(
        "not_allowed",
        lambda: check_sealed_key(
            states,
            room_id=ROOM,
            epoch=left.epoch,
            key_id=left.key_id,
            member=OWNER.public_key,
            sealed=sealed,
            signer=ALICE.public_key,
            signature=sign_sealed_key(
                ALICE, ROOM, left.epoch, left.key_id, OWNER.public_key, sealed
            ),
        ),
    )


# -- adopting a room migrated from the legacy store ----------------------------------------------
def test_an_adoption_genesis_starts_at_the_epoch_after_the_legacy_ones() -> None:
    adopted = genesis(legacy_epochs=3, epoch=4)

    (state,) = verify_chain([adopted], room_id=ROOM)

    assert (state.epoch, state.legacy_epochs) == (4, 3)


@pytest.mark.parametrize(("legacy_epochs", "epoch"), [(3, 3), (3, 5), (0, 2), (2, 1)])
def test_a_genesis_whose_epoch_is_not_the_one_after_its_legacy_epochs_is_refused(
    legacy_epochs: int, epoch: int
) -> None:
    reason = "malformed" if epoch <= legacy_epochs else "bad_genesis"
    refused(
        reason, lambda: check_transition(None, genesis(legacy_epochs=legacy_epochs, epoch=epoch))
    )


def test_no_later_state_may_change_the_legacy_epochs_its_genesis_fixed() -> None:
    adopted = genesis(legacy_epochs=3, epoch=4)
    refused("bad_link", lambda: check_transition(adopted, step(adopted, OWNER, legacy_epochs=2)))
    # an ordinary change keeps them, and the chain goes on
    added = step(adopted, OWNER, members=members(OWNER, ADMIN, ALICE, BOB))
    assert check_transition(adopted, added).legacy_epochs == 3


def test_an_adoption_genesis_is_signed_by_its_owner_like_any_genesis() -> None:
    forged = sign_by(genesis_state(legacy_epochs=2, epoch=3, actor=ALICE.public_key), ALICE)
    refused("not_allowed", lambda: check_transition(None, forged))


def test_a_negative_count_of_legacy_epochs_is_malformed() -> None:
    refused("malformed", lambda: decode_state(genesis(legacy_epochs=-1)))

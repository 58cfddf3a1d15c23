"""Versioned KV records: round trips, refusing newer schemas and garbage (SPEC §4)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from unibus.core.errors import InvalidHandleError, StoreError
from unibus.core.models import (
    SCHEMA_VERSION,
    EpochRef,
    MemberRecord,
    NonceRecord,
    RecordError,
    Role,
    RoomIndexEntry,
    RoomRecord,
    SealedKeyRecord,
    Status,
    UserRecord,
    Versioned,
    check_handle,
    decode,
    encode,
)

USER = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
OTHER = "UAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABET7"
ROOM = "r0abcdefghijklmnopq9"

SAMPLES: dict[type[Any], Any] = {
    UserRecord: UserRecord(
        key=USER,
        handle="ada",
        role=Role.ADMIN,
        status=Status.ACTIVE,
        created_at=1.5,
        updated_at=2.5,
    ),
    RoomRecord: RoomRecord(
        room_id=ROOM,
        owner=USER,
        members=(USER, OTHER),
        epochs=(EpochRef(epoch=1, key_id="aaaa"), EpochRef(epoch=2, key_id="bbbb")),
        created_at=10.0,
        updated_at=11.0,
    ),
    MemberRecord: MemberRecord(
        room_id=ROOM,
        member=OTHER,
        added_by=USER,
        epoch=2,
        added_at=11.0,
        signature=bytes(range(64)),
    ),
    SealedKeyRecord: SealedKeyRecord(
        room_id=ROOM,
        epoch=2,
        key_id="bbbb",
        member=OTHER,
        sealed=b"\x00\xffsealed\x80",
        signer=USER,
        signature=b"\x01" * 64,
    ),
    RoomIndexEntry: RoomIndexEntry(room_id=ROOM, member=OTHER),
    NonceRecord: NonceRecord(caller=USER, created_at=3.25),
}
RECORD_TYPES = list(SAMPLES)


def _as_dict(record: Any) -> dict[str, Any]:
    loaded = json.loads(encode(record))
    assert isinstance(loaded, dict)
    return loaded


@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=lambda t: t.__name__)
def test_encode_decode_round_trips_every_record_type(record_type: type[Any]) -> None:
    record = SAMPLES[record_type]
    assert decode(record_type, encode(record)) == record


@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=lambda t: t.__name__)
def test_encoded_record_is_json_carrying_the_schema_version(record_type: type[Any]) -> None:
    assert _as_dict(SAMPLES[record_type])["v"] == SCHEMA_VERSION


def test_bytes_fields_travel_as_base64_and_survive_round_trip() -> None:
    record = SAMPLES[SealedKeyRecord]
    assert _as_dict(record)["sealed"] == "AP9zZWFsZWSA"
    assert decode(SealedKeyRecord, encode(record)).sealed == b"\x00\xffsealed\x80"


def test_decoded_enums_are_the_enum_members() -> None:
    user = decode(UserRecord, encode(SAMPLES[UserRecord]))
    assert user.role is Role.ADMIN
    assert user.status is Status.ACTIVE
    assert user.is_active


def test_revoked_user_is_not_active() -> None:
    raw = _as_dict(SAMPLES[UserRecord]) | {"status": "revoked"}
    user = decode(UserRecord, json.dumps(raw).encode())
    assert user.status is Status.REVOKED
    assert not user.is_active


def test_decode_accepts_a_record_without_v_as_current_version() -> None:
    raw = _as_dict(SAMPLES[NonceRecord])
    del raw["v"]
    assert decode(NonceRecord, json.dumps(raw).encode()).v == SCHEMA_VERSION


@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=lambda t: t.__name__)
def test_decode_refuses_a_newer_schema_version(record_type: type[Any]) -> None:
    raw = _as_dict(SAMPLES[record_type]) | {"v": SCHEMA_VERSION + 1}
    with pytest.raises(RecordError, match="newer"):
        decode(record_type, json.dumps(raw).encode())


def test_decode_refuses_a_huge_schema_version() -> None:
    raw = json.dumps(_as_dict(SAMPLES[UserRecord]) | {"v": 10**30}).encode()
    with pytest.raises(RecordError):
        decode(UserRecord, raw)


def test_record_error_is_a_store_error() -> None:
    assert issubclass(RecordError, StoreError)


GARBAGE = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\xff\xfe\x00garbage", id="binary"),
    pytest.param(b"{", id="truncated"),
    pytest.param(b"null", id="null"),
    pytest.param(b"[]", id="array"),
    pytest.param(b'"a string"', id="string"),
    pytest.param(b"42", id="number"),
    pytest.param(b"{}", id="empty-object"),
    pytest.param(b'{"v": 1}', id="only-version"),
    pytest.param(b"\xef\xbb\xbf{}", id="bom"),
]


@pytest.mark.parametrize("data", GARBAGE)
@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=lambda t: t.__name__)
def test_decode_refuses_garbage_bytes_with_record_error(
    record_type: type[Any], data: bytes
) -> None:
    with pytest.raises(RecordError):
        decode(record_type, data)


WRONG_TYPES: list[tuple[type[Any], str, Any]] = [
    (UserRecord, "v", "1"),
    (UserRecord, "v", 1.0),
    (UserRecord, "v", True),
    (UserRecord, "v", None),
    (UserRecord, "key", 5),
    (UserRecord, "role", "superuser"),
    (UserRecord, "role", "ADMIN"),
    (UserRecord, "status", "suspended"),
    (UserRecord, "status", None),
    (UserRecord, "created_at", "yesterday"),
    (RoomRecord, "members", "U..."),
    (RoomRecord, "members", [1, 2]),
    (RoomRecord, "epochs", [{"epoch": "1", "key_id": "k"}]),
    (RoomRecord, "epochs", [{"epoch": 1}]),
    (RoomRecord, "epochs", {"epoch": 1, "key_id": "k"}),
    (MemberRecord, "epoch", 1.5),
    (MemberRecord, "signature", "not base64!"),
    (SealedKeyRecord, "sealed", 123),
    (SealedKeyRecord, "sealed", "%%%"),
    (RoomIndexEntry, "room_id", ["x"]),
    (NonceRecord, "created_at", {"t": 1}),
]


@pytest.mark.parametrize(
    ("record_type", "field", "value"),
    WRONG_TYPES,
    ids=[f"{t.__name__}.{f}={v!r}" for t, f, v in WRONG_TYPES],
)
def test_decode_refuses_wrong_field_types_with_record_error(
    record_type: type[Any], field: str, value: Any
) -> None:
    raw = _as_dict(SAMPLES[record_type]) | {field: value}
    with pytest.raises(RecordError):
        decode(record_type, json.dumps(raw).encode())


@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=lambda t: t.__name__)
def test_decode_refuses_a_record_missing_a_required_field(record_type: type[Any]) -> None:
    raw = _as_dict(SAMPLES[record_type])
    required = next(k for k in raw if k not in ("v", "signature"))
    del raw[required]
    with pytest.raises(RecordError, match=record_type.__name__):
        decode(record_type, json.dumps(raw).encode())


def test_decode_refuses_a_room_without_any_epoch() -> None:
    # A room always has its first epoch; one without would make .epoch raise IndexError
    # far from the read instead of a RecordError at it.
    raw = _as_dict(SAMPLES[RoomRecord]) | {"epochs": []}
    with pytest.raises(RecordError):
        decode(RoomRecord, json.dumps(raw).encode())


@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=lambda t: t.__name__)
def test_decode_tolerates_unknown_extra_fields_of_the_same_version(record_type: type[Any]) -> None:
    raw = _as_dict(SAMPLES[record_type]) | {"future_field": {"nested": [1, 2]}, "note": "x"}
    assert decode(record_type, json.dumps(raw).encode()) == SAMPLES[record_type]


def test_decode_tolerates_unknown_fields_inside_an_epoch_ref() -> None:
    raw = _as_dict(SAMPLES[RoomRecord])
    raw["epochs"][0]["rotated_by"] = USER
    assert decode(RoomRecord, json.dumps(raw).encode()) == SAMPLES[RoomRecord]


def test_decode_does_not_confuse_record_types() -> None:
    with pytest.raises(RecordError):
        decode(UserRecord, encode(SAMPLES[RoomRecord]))


def test_room_record_epoch_and_key_id_are_the_latest_committed() -> None:
    room = SAMPLES[RoomRecord]
    assert room.epoch == 2
    assert room.key_id == "bbbb"


def test_room_record_with_one_epoch() -> None:
    room = RoomRecord(
        room_id=ROOM,
        owner=USER,
        members=(USER,),
        epochs=(EpochRef(epoch=1, key_id="first"),),
        created_at=0.0,
        updated_at=0.0,
    )
    assert (room.epoch, room.key_id) == (1, "first")


def test_committed_key_id_names_the_key_set_each_epoch_committed() -> None:
    room = SAMPLES[RoomRecord]
    assert room.committed_key_id(1) == "aaaa"
    assert room.committed_key_id(2) == "bbbb"


@pytest.mark.parametrize("epoch", [0, 3, -1, 99])
def test_committed_key_id_is_none_for_an_uncommitted_epoch(epoch: int) -> None:
    assert SAMPLES[RoomRecord].committed_key_id(epoch) is None


def test_records_are_frozen() -> None:
    user = SAMPLES[UserRecord]
    with pytest.raises(AttributeError):
        user.handle = "eve"


def test_versioned_carries_value_and_revision() -> None:
    versioned = Versioned(SAMPLES[NonceRecord], 7)
    assert versioned.value is SAMPLES[NonceRecord]
    assert versioned.revision == 7


def test_a_new_user_is_active_with_its_handle_trimmed_and_both_times_equal() -> None:
    user = UserRecord.new("U" + "A" * 55, "  Ada  ", Role.ADMIN, now=12.5)

    assert (user.handle, user.role, user.status) == ("Ada", Role.ADMIN, Status.ACTIVE)
    assert user.created_at == user.updated_at == 12.5


@pytest.mark.parametrize(
    ("handle", "reason"),
    [("   ", "must not be empty"), ("a\tb", "printable"), ("x" * 65, "at most 64")],
)
def test_one_handle_rule_for_every_writer(handle: str, reason: str) -> None:
    """The API, the CLI and the first-admin bootstrap all build users through ``new``."""
    with pytest.raises(InvalidHandleError, match=reason):
        UserRecord.new("U" + "A" * 55, handle, Role.MEMBER)
    assert check_handle("é" * 64) == "é" * 64

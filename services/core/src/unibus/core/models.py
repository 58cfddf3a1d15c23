"""Versioned records kept in the KV buckets (SPEC §4).

Every record carries ``v``, the schema version it was written with. Readers refuse a
version newer than they understand rather than guess at fields they cannot see: for an
authorization decision, guessing could admit someone.

Records are JSON on the wire (``nats kv get`` stays readable for an operator); bytes
fields travel as base64.

>>> raw = encode(UserRecord(key="U...", handle="ada", role=Role.ADMIN, status=Status.ACTIVE,
...                         created_at=0.0, updated_at=0.0))
>>> decode(UserRecord, raw).handle
'ada'
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar, cast

import msgspec

from unibus.core.errors import InvalidHandleError, StoreError
from unibus.core.limits import MAX_HANDLE_LEN
from unibus.core.roomchain import SignedState

SCHEMA_VERSION = 1


class RecordError(StoreError):
    """A stored value that does not decode as the record it should be."""


class Role(enum.StrEnum):
    ADMIN = "admin"
    MEMBER = "member"


class Status(enum.StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


class _Record(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    v: int = SCHEMA_VERSION


class UserRecord(_Record, frozen=True, kw_only=True):
    """One allowlisted user, keyed by its canonical ``U…`` key in ``UNIBUS_users``."""

    key: str
    handle: str
    role: Role
    status: Status
    created_at: float
    updated_at: float

    @classmethod
    def new(cls, key: str, handle: str, role: Role, *, now: float | None = None) -> UserRecord:
        """An active user as first written: the handle checked (``InvalidHandleError``)."""
        stamp = time.time() if now is None else now
        return cls(
            key=key,
            handle=check_handle(handle),
            role=role,
            status=Status.ACTIVE,
            created_at=stamp,
            updated_at=stamp,
        )

    @property
    def is_active(self) -> bool:
        return self.status is Status.ACTIVE


def check_handle(handle: str) -> str:
    """A handle as stored: surrounding whitespace dropped; non-empty, printable, bounded."""
    text = handle.strip()
    if not text:
        raise InvalidHandleError("must not be empty")
    if not text.isprintable():
        raise InvalidHandleError("must contain only printable characters (no control characters)")
    if len(text) > MAX_HANDLE_LEN:
        raise InvalidHandleError(
            f"is {len(text)} characters long; at most {MAX_HANDLE_LEN} are allowed"
        )
    return text


class EpochRef(msgspec.Struct, frozen=True, kw_only=True):
    """Which set of sealed keys an epoch committed (see ``naming.sealed_key_key``)."""

    epoch: int
    key_id: str


class RoomRecord(_Record, frozen=True, kw_only=True):
    """The single source of truth for a room's members and current epoch.

    Updated only by compare-and-set on its KV revision; sealed keys and member
    statements written before it are inert until the room record names them.
    """

    room_id: str
    owner: str
    members: tuple[str, ...]
    epochs: Annotated[tuple[EpochRef, ...], msgspec.Meta(min_length=1)]
    """Every committed epoch, oldest first; a room always has at least its first."""
    created_at: float
    updated_at: float
    chain: tuple[SignedState, ...] = ()
    """The signed states (``unibus.core.roomchain``) that justify ``members`` and ``epochs``."""

    @property
    def epoch(self) -> int:
        return self.epochs[-1].epoch

    @property
    def key_id(self) -> str:
        return self.epochs[-1].key_id

    def committed_key_id(self, epoch: int) -> str | None:
        for ref in self.epochs:
            if ref.epoch == epoch:
                return ref.key_id
        return None


class MemberRecord(_Record, frozen=True, kw_only=True):
    """The signed statement that added a member, in ``UNIBUS_members``."""

    room_id: str
    member: str
    added_by: str
    epoch: int
    added_at: float
    signature: bytes = b""


class SealedKeyRecord(_Record, frozen=True, kw_only=True):
    """One member's room key for one epoch, sealed to that member's key, signed by its maker."""

    room_id: str
    epoch: int
    key_id: str
    member: str
    sealed: bytes
    signer: str
    signature: bytes = b""


class RoomIndexEntry(_Record, frozen=True, kw_only=True):
    """Reverse index entry (member → room); derived from room records and repairable."""

    room_id: str
    member: str


class NonceRecord(_Record, frozen=True, kw_only=True):
    """A signed request's nonce, accepted once."""

    caller: str
    created_at: float


R = TypeVar("R", bound=_Record)


@dataclass(frozen=True, slots=True)
class Versioned(Generic[R]):
    """A record together with the KV revision it was read at (for compare-and-set)."""

    value: R
    revision: int


_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def encode(record: _Record) -> bytes:
    return _encoder.encode(record)


def decode(record_type: type[R], data: bytes) -> R:
    """Decode one stored value; ``RecordError`` if it is not a supported ``record_type``."""
    decoder = _decoders.get(record_type)
    if decoder is None:
        decoder = _decoders[record_type] = msgspec.json.Decoder(record_type)
    try:
        record = decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise RecordError(f"stored {record_type.__name__} does not decode: {exc}") from None
    if record.v > SCHEMA_VERSION:
        raise RecordError(
            f"stored {record_type.__name__} has schema v{record.v}, newer than this "
            f"unibus (v{SCHEMA_VERSION}); upgrade this service"
        )
    return cast(R, record)

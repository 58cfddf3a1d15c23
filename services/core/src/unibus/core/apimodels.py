"""Wire models of the control-plane API, shared by the server and its clients.

JSON via msgspec; ``bytes`` fields travel as base64. Each body carries no version of its
own: the API is versioned by its path prefix (``/v1``).
"""

from __future__ import annotations

import msgspec

from unibus.core.models import Role, Status
from unibus.core.roomchain import SignedState


class _Wire(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class NewUser(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    key: str
    handle: str
    role: Role = Role.MEMBER


class UserView(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What any active user may see of another: enough to seal a room key to it."""

    key: str
    handle: str
    status: Status
    role: Role | None = None
    """Shown to administrators only."""


class SealedKey(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One member's room key for one epoch, as submitted; the signer is the caller."""

    member: str
    epoch: int
    key_id: str
    sealed: bytes
    signature: bytes


class NewRoom(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    genesis: SignedState
    sealed_keys: list[SealedKey]


class RoomChange(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The next signed state, and the sealed keys it needs (see roomchain)."""

    state: SignedState
    sealed_keys: list[SealedKey] = msgspec.field(default_factory=list)


class RoomView(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    room_id: str
    owner: str
    members: list[str]
    epoch: int
    key_id: str
    chain: list[SignedState]
    revision: int


class RoomId(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    room_id: str


class SealedKeyView(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    room_id: str
    epoch: int
    key_id: str
    member: str
    sealed: bytes
    signer: str
    signature: bytes


class BlobView(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    room_id: str
    blob_id: str
    size: int
    sha256: str


class ErrorView(_Wire, frozen=True, kw_only=True, forbid_unknown_fields=True):
    error: str
    message: str

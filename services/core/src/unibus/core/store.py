"""The ``Store``: what every backend (replicated KV, legacy SQLite) must do alike.

Data layout rules every backend keeps (SPEC §4):

* the room record is the single source of truth for a room's members and epochs, and is
  changed only by compare-and-set on its revision;
* sealed keys and member statements are written *before* the room record that names
  them, and are inert until it does, so a removal with rekey is atomic: the new room
  record commits, or nothing visible changed;
* the member → rooms index is derived from room records and can be rebuilt;
* reads are bounded; an authorization read that cannot be answered raises
  ``StoreUnavailableError`` and the caller denies.

Errors: ``NotFoundError``, ``ConflictError``, ``StoreUnavailableError``,
``AssetMissingError`` (all ``StoreError``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from unibus.core.models import (
    MemberRecord,
    RoomRecord,
    SealedKeyRecord,
    Status,
    UserRecord,
    Versioned,
)


@dataclass(frozen=True, slots=True)
class IndexRepair:
    """What ``repair_index`` changed."""

    added: int
    removed: int


@runtime_checkable
class UserUpdates(Protocol):
    """Compare-and-set writes of user records: what role changes need of a backend.

    Beside ``Store`` rather than in it while the legacy ``SQLiteStore`` lacks these two
    writes; ``unibus.core.userchanges`` tells the backends apart by this protocol.
    """

    async def get_user(self, key: str) -> Versioned[UserRecord]: ...

    async def list_users(self) -> list[UserRecord]: ...

    async def update_user(
        self, previous: Versioned[UserRecord], updated: UserRecord
    ) -> Versioned[UserRecord]:
        """Write ``updated`` only if the record is still at ``previous``'s revision.

        ``ConflictError`` if it changed since ``previous`` was read.
        """
        ...

    async def touch_user(self, current: Versioned[UserRecord]) -> Versioned[UserRecord]:
        """Rewrite the record unchanged, by compare-and-set on ``current``'s revision.

        Succeeds only if the record was still ``current`` when the write committed, and
        makes every compare-and-set by a writer who read it before fail (``ConflictError``
        otherwise): how a change proves a record it depends on but does not change.
        """
        ...


class Store(Protocol):
    # -- users --------------------------------------------------------------------------------
    async def add_user(self, user: UserRecord) -> Versioned[UserRecord]:
        """Create-only: ``ConflictError`` if the key exists (a re-add never changes a role)."""
        ...

    async def get_user(self, key: str) -> Versioned[UserRecord]:
        """The current record, read from the leader (never a possibly stale replica)."""
        ...

    async def authorize_user(self, key: str) -> Versioned[UserRecord]:
        """The current record for an authorization decision.

        Stronger than ``get_user``: confirms that the data is not from a leader cut off
        from the majority, so a revocation committed elsewhere cannot be missed.
        ``StoreUnavailableError`` when that cannot be confirmed within the bound.
        """
        ...

    async def check_available(self) -> None:
        """Succeed only if authorization decisions can be made now (quorum confirmed)."""
        ...

    async def list_users(self) -> list[UserRecord]: ...

    async def set_user_status(self, key: str, status: Status) -> Versioned[UserRecord]:
        """Flip a user's status by compare-and-set; there is no hard delete.

        No rule is checked here: the API and the CLI go through
        ``unibus.core.userchanges.change_user``, which never revokes the last active admin.
        """
        ...

    async def has_admin(self) -> bool: ...

    # -- rooms --------------------------------------------------------------------------------
    async def create_room(
        self,
        room: RoomRecord,
        *,
        members: Sequence[MemberRecord],
        sealed_keys: Sequence[SealedKeyRecord],
    ) -> Versioned[RoomRecord]:
        """Write statements and keys, then the room record create-only, then the index."""
        ...

    async def get_room(self, room_id: str) -> Versioned[RoomRecord]: ...

    async def commit_room(
        self,
        previous: Versioned[RoomRecord],
        updated: RoomRecord,
        *,
        members: Sequence[MemberRecord] = (),
        sealed_keys: Sequence[SealedKeyRecord] = (),
    ) -> Versioned[RoomRecord]:
        """Write statements and keys, then compare-and-set the room record.

        ``ConflictError`` if the room changed since ``previous`` was read; the keys and
        statements written for the losing attempt stay inert.
        """
        ...

    async def list_rooms(self) -> list[RoomRecord]: ...

    async def rooms_of(self, user_key: str) -> list[str]:
        """Room ids from the derived reverse index (for listing, not for authorization)."""
        ...

    async def member_records(self, room_id: str) -> list[MemberRecord]:
        """The statements of the room's *current* members."""
        ...

    async def sealed_keys(self, room_id: str, member: str) -> list[SealedKeyRecord]:
        """The member's sealed keys for every committed epoch it belonged to."""
        ...

    async def repair_index(self) -> IndexRepair:
        """Rebuild the reverse index from the room records."""
        ...

    # -- anti-replay ---------------------------------------------------------------------------
    async def claim_nonce(self, caller: str, nonce: str) -> None:
        """Accept a request nonce once: ``ConflictError`` on a replay."""
        ...

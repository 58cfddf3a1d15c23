"""What a device remembers of each room's chain, so no server can roll a room back on it.

Any verified prefix of a room's chain is validly signed, so a KV writer that saved an old
room record can put it back after a removal, and a client that judged the chain alone
would accept it and publish under the old epoch, whose key the removed member holds.
Two kinds of memory close that (SPEC §1: servers are not trusted for confidentiality):

* the **head**: the newest state this device verified (its seq, epoch and hash). A chain
  that ends before it, or differs at it, is refused;
* the **epoch seen**: the newest epoch that signed traffic of the room's members showed to
  exist (a live message, or the newest stored one), though the chain served does not
  reach it yet. Nobody publishes under an older epoch while that is so.

With a ``path`` both outlive the process (a JSON file, 0600, replaced atomically), so a
fresh client on the same device inherits them. A device that has never seen a room, and
sees no traffic newer than the chain it is served, must trust that chain on first use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import msgspec

from unibus.client.errors import HeadMemoryError
from unibus.core.files import PrivateFileError, read_private, write_private
from unibus.core.log import get_logger
from unibus.core.roomchain import RoomState, encode_state

__all__ = ["Head", "HeadMemory", "HeadMemoryError", "state_digest"]

_log = get_logger("unibus.client")
HEADS_VERSION: Final = 1
_MAX_FILE: Final = 8 * 1024 * 1024


class Head(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    epoch: int
    digest: str
    """Hex SHA-256 of the state's canonical encoding."""
    epoch_seen: int = 0
    """The newest epoch signed traffic showed, if newer than ``epoch``; else 0."""


class _File(msgspec.Struct, frozen=True, kw_only=True):
    v: int = HEADS_VERSION
    rooms: dict[str, Head] = {}


def state_digest(state: RoomState) -> str:
    """The same digest as ``roomchain.state_digest`` of the signed state (its ``prev`` link)."""
    return hashlib.sha256(encode_state(state)).hexdigest()


class HeadMemory:
    """Per room: the newest verified head and the newest epoch seen in signed traffic."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._rooms: dict[str, Head] = {}
        if path is not None and path.exists():
            self._rooms = dict(self._load(path).rooms)

    @staticmethod
    def _load(path: Path) -> _File:
        try:
            found = msgspec.json.decode(read_private(path, max_size=_MAX_FILE), type=_File)
        except (PrivateFileError, msgspec.DecodeError) as exc:
            # Starting empty would forget every head: exactly the rollback this prevents.
            raise HeadMemoryError(
                f"the room memory {path} cannot be read ({exc}); fix or remove it "
                "(removing it means trusting the next chain served on first use)"
            ) from None
        if found.v != HEADS_VERSION:
            raise HeadMemoryError(
                f"the room memory {path} has version {found.v}, not {HEADS_VERSION}"
            )
        return found

    def head(self, room_id: str) -> Head | None:
        return self._rooms.get(room_id)

    def check(self, room_id: str, states: Sequence[RoomState]) -> str | None:
        """Why ``states`` must be refused, or None: it ends before the remembered head
        (a rollback) or differs at it (a fork)."""
        head = self._rooms.get(room_id)
        if head is None:
            return None
        if not states:
            return (
                f"the server presented room {room_id} without the signed history this device "
                f"verified before (up to state {head.seq}): a rollback; not trusting it"
            )
        if states[-1].seq < head.seq:
            return (
                f"the server presented room {room_id} at state {states[-1].seq} "
                f"(epoch {states[-1].epoch}), older than state {head.seq} (epoch {head.epoch}) "
                "that this device verified before: a rollback; not trusting it"
            )
        at = next((s for s in states if s.seq == head.seq), None)
        if at is None or state_digest(at) != head.digest:
            return (
                f"the server presented a history of room {room_id} that differs from the "
                f"one this device verified at state {head.seq}; not trusting it"
            )
        return None

    def remember(self, room_id: str, states: Sequence[RoomState]) -> None:
        """Record the newest of ``states`` (already verified and checked)."""
        latest = states[-1]
        old = self._rooms.get(room_id)
        seen = old.epoch_seen if old is not None and old.epoch_seen > latest.epoch else 0
        head = Head(
            seq=latest.seq, epoch=latest.epoch, digest=state_digest(latest), epoch_seen=seen
        )
        if head != old:
            self._rooms[room_id] = head
            self._save()

    def saw_epoch(self, room_id: str, epoch: int) -> None:
        """Signed traffic of a member showed ``epoch`` to exist."""
        head = self._rooms.get(room_id)
        if head is None or epoch <= max(head.epoch, head.epoch_seen):
            return
        _log.warning("room traffic shows a newer epoch than its chain", room=room_id, epoch=epoch)
        self._rooms[room_id] = msgspec.structs.replace(head, epoch_seen=epoch)
        self._save()

    def newest_epoch(self, room_id: str) -> int:
        head = self._rooms.get(room_id)
        return 0 if head is None else max(head.epoch, head.epoch_seen)

    def _save(self) -> None:
        if self._path is None:
            return
        data = msgspec.json.encode(_File(rooms=dict(sorted(self._rooms.items()))))
        write_private(self._path, data, overwrite=True)

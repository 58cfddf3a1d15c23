"""Caps that more than one process enforces, each read from one place.

The control plane refuses a change that would put a user past a cap, and the callout
grants within the same cap; were they read separately, they could disagree (the API once
hard-coded a room cap the callout read from the environment).
"""

from __future__ import annotations

from typing import Final

from unibus.core import envnames, naming
from unibus.core.settings import EnvReader

__all__ = [
    "ASSET_BYTES",
    "DEFAULT_MAX_ROOMS",
    "HISTORY_MAX_PER_ROOM",
    "MAX_ENVELOPE_BYTES",
    "MAX_HANDLE_LEN",
    "MAX_ROOMS_ENV",
    "read_max_rooms",
]

MAX_ROOMS_ENV: Final = envnames.MAX_ROOMS
DEFAULT_MAX_ROOMS: Final = 256
"""Rooms per user: at the cap the user JWT is ~340 KB, well under the 1 MB payload limit."""
_MAX_ROOMS_CEILING: Final = 1024


def read_max_rooms(env: EnvReader) -> int:
    """``UNIBUS_MAX_ROOMS``: the API refuses an invite past it, the callout grants up to it."""
    return env.integer(
        MAX_ROOMS_ENV, default=DEFAULT_MAX_ROOMS, minimum=1, maximum=_MAX_ROOMS_CEILING
    )


MAX_HANDLE_LEN: Final = 64
"""Characters of a user's handle (its display name), after surrounding whitespace."""
MAX_ENVELOPE_BYTES: Final = 1 << 20
"""One encrypted room message as stored (the SDK refuses to send more; the stream too)."""
HISTORY_MAX_PER_ROOM: Final = 100_000
"""Messages the history keeps per room: a member flooding a room evicts that room's oldest."""

_MIB: Final = 1024 * 1024
ASSET_BYTES: Final = {
    naming.USERS_BUCKET: 64 * _MIB,
    naming.ROOMS_BUCKET: 512 * _MIB,
    naming.MEMBERS_BUCKET: 256 * _MIB,
    naming.ROOMS_BY_MEMBER_BUCKET: 64 * _MIB,
    naming.ROOM_KEYS_BUCKET: 1024 * _MIB,
    naming.NONCES_BUCKET: 256 * _MIB,
    naming.MESSAGES_STREAM: 4096 * _MIB,
    naming.BLOBS_BUCKET: 2048 * _MIB,
}
"""The storage each asset may use, reserved for it when it is created: 8 GiB of a node's
default 10 GiB store (``max_file_store``). A full history or object store therefore never
takes the room of the buckets that authorization writes to (nonces, the callout's
barriers), so it cannot make the callout deny everyone."""

"""Every cap, size and time-to-live of unibus, each stated in one place.

The control plane refuses a change that would put a user past a cap, the callout grants
within the same cap, and the SDK refuses to send what the servers would refuse; were
these read separately, they could disagree (the API once hard-coded a room cap the
callout read from the environment). Settings that an operator may change read their
defaults from here.
"""

from __future__ import annotations

from typing import Final

from unibus.core import envnames, naming
from unibus.core.settings import EnvReader

__all__ = [
    "ASSET_BYTES",
    "DEFAULT_BLOB_BUDGET_BYTES",
    "DEFAULT_JWT_TTL",
    "DEFAULT_MAX_BLOB_BYTES",
    "DEFAULT_MAX_ROOMS",
    "HISTORY_DUPLICATE_WINDOW",
    "HISTORY_MAX_AGE",
    "HISTORY_MAX_PER_ROOM",
    "MAX_API_JSON_BODY",
    "MAX_API_SKEW",
    "MAX_CALLOUT_REQUEST_BYTES",
    "MAX_ENVELOPE_BYTES",
    "MAX_HANDLE_LEN",
    "MAX_ROOMS_ENV",
    "MAX_SEALED_KEY_BYTES",
    "NONCE_CLOCK_DRIFT",
    "NONCE_TTL",
    "read_history_max_age",
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
HISTORY_MAX_AGE: Final = 30 * 86_400.0
"""Seconds the history keeps a message by default (SPEC §4); ``UNIBUS_HISTORY_DAYS`` at
provisioning, ``unibus retention`` on a live cluster."""
MAX_HISTORY_DAYS: Final = 3650


def read_history_max_age(env: EnvReader) -> float:
    """``UNIBUS_HISTORY_DAYS`` (1..3650, default 30) in seconds: how long the history
    stream keeps a message when provisioning creates it."""
    days = env.number(
        envnames.HISTORY_DAYS,
        default=HISTORY_MAX_AGE / 86_400,
        minimum=1,
        maximum=MAX_HISTORY_DAYS,
    )
    return days * 86_400


HISTORY_DUPLICATE_WINDOW: Final = 120.0
"""Seconds within which the history stores a message id once (the SDK's publish retries
fall well inside it)."""
MAX_SEALED_KEY_BYTES: Final = 1024
"""One sealed room key as the API stores it (a sealed box is 80 bytes; the rest is slack
for a future algorithm, not room for arbitrary data)."""
DEFAULT_MAX_BLOB_BYTES: Final = 64 * 1024 * 1024
"""One blob upload (``UNIBUS_MAX_BLOB_BYTES``)."""
DEFAULT_BLOB_BUDGET_BYTES: Final = 1024 * 1024 * 1024
"""Blob bytes one user may upload through one API node per hour (``UNIBUS_BLOB_BUDGET_BYTES``)."""
MAX_API_JSON_BODY: Final = 1024 * 1024
"""One JSON request body of the API."""
MAX_CALLOUT_REQUEST_BYTES: Final = 64 * 1024
"""One authorization request as the servers send it to the callout."""
NONCE_TTL: Final = 600.0
"""Seconds the API remembers a request nonce: the ``max_age`` of the nonces bucket, set
when it is provisioned, one for the whole cluster."""
NONCE_CLOCK_DRIFT: Final = 20.0
"""Seconds by which the clocks of the API nodes, and of the servers that age the nonces,
may disagree."""
MAX_API_SKEW: Final = (NONCE_TTL - NONCE_CLOCK_DRIFT) / 2
"""The largest ``UNIBUS_API_SKEW`` (290 s). A request is accepted while its timestamp is
within ±skew of a node's clock, so its first and a replayed use can be twice the skew (plus
drift) apart: the nonce must be remembered that long, or the replay finds it expired."""
DEFAULT_JWT_TTL: Final = 300.0
"""Seconds a user JWT the callout issues stays valid (``UNIBUS_JWT_TTL``)."""

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

"""Caps that more than one process enforces, each read from one place.

The control plane refuses a change that would put a user past a cap, and the callout
grants within the same cap; were they read separately, they could disagree (the API once
hard-coded a room cap the callout read from the environment).
"""

from __future__ import annotations

from typing import Final

from unibus.core.settings import EnvReader

__all__ = ["DEFAULT_MAX_ROOMS", "MAX_ROOMS_ENV", "read_max_rooms"]

MAX_ROOMS_ENV: Final = "UNIBUS_MAX_ROOMS"
DEFAULT_MAX_ROOMS: Final = 256
"""Rooms per user: at the cap the user JWT is ~340 KB, well under the 1 MB payload limit."""
_MAX_ROOMS_CEILING: Final = 1024


def read_max_rooms(env: EnvReader) -> int:
    """``UNIBUS_MAX_ROOMS``: the API refuses an invite past it, the callout grants up to it."""
    return env.integer(
        MAX_ROOMS_ENV, default=DEFAULT_MAX_ROOMS, minimum=1, maximum=_MAX_ROOMS_CEILING
    )

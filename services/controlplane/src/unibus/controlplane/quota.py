"""How many blob bytes one user may upload through one API node per window.

The object store has its own limit (``unibus.core.limits.ASSET_BYTES``); this keeps one
member from filling it for everyone. The count is per node and in memory: with three nodes
a user may upload up to three times the budget per window, and a restart forgets it. A
user may overshoot by at most one blob (an upload is charged when it has been stored).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from unibus.core import limits

__all__ = ["DEFAULT_BLOB_BUDGET", "UploadBudget"]

DEFAULT_BLOB_BUDGET: Final = limits.DEFAULT_BLOB_BUDGET_BYTES
"""Bytes per user, per node and per hour."""
_WINDOW: Final = 3600.0
_MAX_USERS: Final = 100_000


@dataclass
class _Spent:
    since: float
    spent: int


class UploadBudget:
    def __init__(
        self,
        limit: int,
        *,
        window: float = _WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._users: dict[str, _Spent] = {}

    def _current(self, user: str) -> _Spent:
        now = self._clock()
        spent = self._users.get(user)
        if spent is None or now - spent.since >= self.window:
            if len(self._users) >= _MAX_USERS:
                self._forget_expired(now)
            spent = self._users[user] = _Spent(since=now, spent=0)
        return spent

    def _forget_expired(self, now: float) -> None:
        for user in [u for u, s in self._users.items() if now - s.since >= self.window]:
            del self._users[user]

    def refusal(self, user: str, declared: int | None) -> str | None:
        """Why an upload of ``declared`` bytes (None: unknown) must wait, or None."""
        spent = self._current(user)
        left = self.limit - spent.spent
        if left > 0 and (declared is None or declared <= left):
            return None
        wait = max(1, int(spent.since + self.window - self._clock()))
        return (
            f"blob quota: {self.limit} bytes per user per hour on this node, "
            f"{max(left, 0)} left; try again in {wait} s"
        )

    def charge(self, user: str, size: int) -> None:
        self._current(user).spent += size

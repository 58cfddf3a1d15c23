"""The bootstrap retry: short attempts until success or an overall budget is spent.

On a cold cluster a JetStream request published before the node has met the meta
leader is simply dropped; one long call then blocks until it times out. Many short
attempts land as soon as the meta layer settles (the seeds' third bootstrap defect).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from unibus.core.errors import ProvisioningError
from unibus.core.log import get_logger

T = TypeVar("T")
DEFAULT_BUDGET = 120.0
DEFAULT_ATTEMPT_TIMEOUT = 3.0
_log = get_logger("unibus.retry")
_CONFLICT_PAUSE = 0.01
_jitter = random.Random()  # noqa: S311 -- spreads retries; nothing secret is drawn


def conflict_pause(attempt: int, *, rng: random.Random | None = None) -> float:
    """Seconds to wait after a compare-and-set's ``attempt``-th conflict (from 0).

    10 ms, doubling (1.27 s over seven on average), and drawn at random between half and
    one and a half of that. Never zero: the write that won may still be committing on
    the stream, and a read at once would find the record the loser lost on. Drawn, so two
    writers do not wait alike: changes that conflict on each other (two revocations that
    each touch the other as their witness) and wait alike retry in lockstep and conflict
    again on every attempt until both give up, which CI saw as a 409.
    """
    nominal: float = _CONFLICT_PAUSE * 2.0**attempt
    return nominal * (0.5 + (rng or _jitter).random())


async def pause_after_conflict(attempt: int) -> None:
    """Wait ``conflict_pause(attempt)`` before trying a compare-and-set again."""
    await asyncio.sleep(conflict_pause(attempt))


async def retry_until(
    what: str,
    operation: Callable[[], Awaitable[T]],
    *,
    budget: float = DEFAULT_BUDGET,
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
    pause: float = 0.25,
    give_up_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Run ``operation`` until it succeeds, each attempt bounded by ``attempt_timeout``.

    Exceptions listed in ``give_up_on`` end the retry at once (errors no retry can fix).

    Raises:
        ProvisioningError: the budget was spent; the message carries the last failure.
    """
    started = time.monotonic()
    deadline = started + budget
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.05, min(attempt_timeout, remaining))):
                return await operation()
        except give_up_on:
            raise
        except Exception as exc:  # noqa: BLE001
            # Anything the server or the client library raises while the cluster forms is
            # a reason to try again; the budget bounds how long we believe that.
            last = f"{type(exc).__name__}: {exc}"
        elapsed = time.monotonic() - started
        if time.monotonic() + pause >= deadline:
            raise ProvisioningError(
                f"{what}: gave up after {attempt} attempts in {elapsed:.1f}s (last: {last}); "
                "check that a majority of nodes is up and routed (`unibus status`)"
            )
        _log.info("retrying", what=what, attempt=attempt, elapsed=round(elapsed, 1), error=last)
        await asyncio.sleep(pause)

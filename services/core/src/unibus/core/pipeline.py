"""Many awaited calls with a bounded number in flight: all of them succeed, or the whole fails.

One acknowledged JetStream write costs a round trip to a quorum; writing thousands of
independent records one after the other spends almost all of its time waiting. Callers
pipeline only writes that no ordering rule relates to each other (see each call site).

>>> # await pipelined((partial(bucket.put, k, v) for k, v in records), window=64)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any


async def pipelined(
    calls: Iterable[Callable[[], Coroutine[Any, Any, object]]], *, window: int
) -> int:
    """Run every call, at most ``window`` at once, in order of start; return how many ran.

    Returns only once every call has returned. The first failure cancels the calls still
    in flight, starts no further one, and is raised as itself (not as an
    ``ExceptionGroup``) so that callers keep catching the errors they know; calls that
    had already returned stay done, so what a failed run leaves behind is exactly what an
    interrupted sequential run could leave.
    """
    if window < 1:
        raise ValueError("window must be at least 1")
    gate = asyncio.Semaphore(window)
    started = 0
    try:
        async with asyncio.TaskGroup() as group:
            for call in calls:
                # A failure cancels this wait (TaskGroup cancels its parent), so nothing
                # further starts once one call has failed.
                await gate.acquire()
                task = group.create_task(call())
                task.add_done_callback(lambda _: gate.release())
                started += 1
    except ExceptionGroup as failed:
        errors = _leaves(failed)
        first = errors[0]
        if len(errors) > 1:
            first.add_note(f"{len(errors) - 1} more call(s) in flight failed as well")
        raise first from None
    return started


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    found: list[Exception] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found += _leaves(exc)
        else:
            found.append(exc)
    return found

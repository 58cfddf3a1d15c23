"""``pipelined``: bounded concurrency, all-or-nothing, the first failure raised as itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import pytest

from unibus.core.errors import StoreUnavailableError
from unibus.core.pipeline import pipelined


class _Probe:
    """Calls that record how many ran at once, and which started and finished."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.started: list[int] = []
        self.finished: list[int] = []
        self.cancelled: list[int] = []

    async def call(self, n: int, *, fail: bool = False, pause: float = 0.001) -> int:
        self.started.append(n)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(pause)
            if fail:
                raise StoreUnavailableError(f"call {n} failed")
        except asyncio.CancelledError:
            self.cancelled.append(n)
            raise
        finally:
            self.in_flight -= 1
        self.finished.append(n)
        return n

    def calls(self, count: int, **kwargs: Any) -> list[Callable[[], Coroutine[Any, Any, object]]]:
        return [partial(self.call, n, **kwargs) for n in range(count)]


async def test_every_call_runs_with_at_most_window_in_flight() -> None:
    probe = _Probe()

    ran = await pipelined(probe.calls(500), window=64)

    assert ran == 500
    assert sorted(probe.finished) == list(range(500))
    assert probe.started == list(range(500))  # started in the caller's order
    assert probe.peak == 64


async def test_calls_are_consumed_lazily_so_a_generator_is_never_drained_ahead() -> None:
    probe = _Probe()
    produced = 0

    def produce() -> Any:
        nonlocal produced
        for n in range(100):
            produced += 1
            assert produced - len(probe.finished) <= 9  # window + the one being offered
            yield partial(probe.call, n)

    assert await pipelined(produce(), window=8) == 100


async def test_the_first_failure_is_raised_as_itself_and_stops_the_rest() -> None:
    """A failed write must fail the whole operation: nothing may report success."""
    probe = _Probe()
    calls = probe.calls(1000)
    calls[10] = partial(probe.call, 10, fail=True)

    with pytest.raises(StoreUnavailableError, match="call 10 failed"):
        await pipelined(calls, window=16)

    assert len(probe.started) < 100  # nothing new started once the failure was seen
    assert probe.in_flight == 0  # and nothing is left running behind the caller's back


async def test_concurrent_failures_surface_one_error_that_counts_the_others() -> None:
    probe = _Probe()

    with pytest.raises(StoreUnavailableError) as failed:
        await pipelined(probe.calls(4, fail=True, pause=0.01), window=4)

    assert any("3 more call(s)" in note for note in failed.value.__notes__)


async def test_cancelling_the_caller_cancels_every_call_in_flight() -> None:
    probe = _Probe()
    task = asyncio.create_task(pipelined(probe.calls(100, pause=10.0), window=8))
    await asyncio.sleep(0.05)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert sorted(probe.cancelled) == list(range(8))
    assert probe.in_flight == 0


async def test_nothing_to_do_and_a_bad_window() -> None:
    assert await pipelined([], window=1) == 0
    with pytest.raises(ValueError, match="window"):
        await pipelined([], window=0)

"""retry_until: short attempts until success or the bootstrap budget is spent (SPEC §4);
conflict_pause: how long a compare-and-set waits before it reads again."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from unibus.core.errors import ConfigError, ProvisioningError
from unibus.core.retry import conflict_pause, retry_until

BUDGET = 0.3
PAUSE = 0.01


class Flaky:
    """Fails ``failures`` times with ``error``, then returns ``result``."""

    def __init__(self, failures: int, error: Exception, result: str = "done") -> None:
        self.failures = failures
        self.error = error
        self.result = result
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.result


async def test_returns_the_result_of_a_first_successful_attempt() -> None:
    op = Flaky(0, RuntimeError("unused"), result="bucket")
    assert await retry_until("open bucket", op, budget=BUDGET, pause=PAUSE) == "bucket"
    assert op.calls == 1


async def test_succeeds_after_failures() -> None:
    op = Flaky(3, ConnectionError("no responders"))
    assert await retry_until("open bucket", op, budget=BUDGET, pause=PAUSE) == "done"
    assert op.calls == 4


async def test_retries_any_exception_type_while_the_cluster_forms() -> None:
    errors: list[Exception] = [TimeoutError(), OSError("refused"), ValueError("odd reply")]

    async def op() -> int:
        if errors:
            raise errors.pop(0)
        return 7

    assert await retry_until("create stream", op, budget=BUDGET, pause=PAUSE) == 7
    assert errors == []


async def test_give_up_on_stops_immediately() -> None:
    op = Flaky(5, ConfigError("bad replicas"))
    with pytest.raises(ConfigError, match="bad replicas"):
        await retry_until(
            "create stream", op, budget=BUDGET, pause=PAUSE, give_up_on=(ConfigError,)
        )
    assert op.calls == 1


async def test_give_up_on_matches_subclasses() -> None:
    op = Flaky(5, ConnectionRefusedError("refused"))
    with pytest.raises(ConnectionRefusedError):
        await retry_until("connect", op, budget=BUDGET, pause=PAUSE, give_up_on=(OSError,))
    assert op.calls == 1


async def test_errors_not_in_give_up_on_are_still_retried() -> None:
    op = Flaky(2, RuntimeError("not yet"))
    result = await retry_until(
        "create stream", op, budget=BUDGET, pause=PAUSE, give_up_on=(ConfigError,)
    )
    assert result == "done"
    assert op.calls == 3


async def test_budget_exhaustion_raises_provisioning_error_with_the_last_error() -> None:
    raised: list[str] = []

    async def op() -> None:
        raised.append(f"failure {len(raised)}")
        raise RuntimeError(raised[-1])

    started = time.monotonic()
    with pytest.raises(ProvisioningError) as excinfo:
        await retry_until("open UNIBUS_users", op, budget=BUDGET, pause=PAUSE)
    elapsed = time.monotonic() - started
    message = str(excinfo.value)
    assert len(raised) > 1
    assert "open UNIBUS_users" in message
    assert f"last: RuntimeError: {raised[-1]})" in message
    assert elapsed < BUDGET + 1.0


async def test_budget_exhaustion_reports_the_number_of_attempts() -> None:
    op = Flaky(10_000, RuntimeError("down"))
    with pytest.raises(ProvisioningError) as excinfo:
        await retry_until("open bucket", op, budget=BUDGET, pause=PAUSE)
    assert op.calls > 1
    assert f"after {op.calls} attempts" in str(excinfo.value)


async def test_a_hanging_attempt_is_cut_short_and_retried() -> None:
    calls = 0
    never = asyncio.Event()

    async def op() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await never.wait()
        return "answered"

    started = time.monotonic()
    result = await retry_until("meta leader", op, budget=5.0, attempt_timeout=0.05, pause=PAUSE)
    assert result == "answered"
    assert calls == 2
    assert time.monotonic() - started < 2.0


async def test_hanging_attempts_exhaust_the_budget_as_timeouts() -> None:
    never = asyncio.Event()

    async def op() -> None:
        await never.wait()

    with pytest.raises(ProvisioningError, match="TimeoutError"):
        await retry_until("meta leader", op, budget=BUDGET, attempt_timeout=0.05, pause=PAUSE)


async def test_a_zero_budget_still_makes_one_attempt() -> None:
    op = Flaky(0, RuntimeError("unused"))
    assert await retry_until("quick", op, budget=0.0, pause=PAUSE) == "done"
    assert op.calls == 1


async def test_cancellation_is_not_swallowed() -> None:
    started = asyncio.Event()

    async def op() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(retry_until("cancel me", op, budget=5.0, pause=PAUSE))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("attempt", range(8))
def test_a_conflict_pause_doubles_per_attempt_within_half_and_one_and_a_half_of_nominal(
    attempt: int,
) -> None:
    nominal = 0.01 * 2**attempt
    rng = random.Random(attempt)

    pauses = [conflict_pause(attempt, rng=rng) for _ in range(200)]

    assert all(nominal / 2 <= pause <= nominal * 1.5 for pause in pauses)


def test_two_writers_that_conflicted_alike_do_not_wait_alike() -> None:
    first, second = random.Random(1), random.Random(2)

    waits = [(conflict_pause(n, rng=first), conflict_pause(n, rng=second)) for n in range(8)]

    assert all(mine != theirs for mine, theirs in waits)

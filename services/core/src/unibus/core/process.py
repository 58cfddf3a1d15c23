"""The life of a unibus service process: settings once, logging, run until a signal.

Both services start the same way; keeping it here means a configuration error always
exits 2 with one line naming the setting, and a runtime error exits 1, never a traceback
(a bug's traceback is logged, redacted, as one log line).
A stop signal always ends the process: a service still trying to reach the cluster (one
started while every node is down keeps retrying its first connect) is given
``SHUTDOWN_GRACE`` to finish, then cancelled. A service wraps its start (the first
connects, opening the store) in ``unless_stopped``: a stop that arrives there has nothing
to drain, and ends the process at once instead of after the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final, Protocol, TypeVar

from unibus.core.connect import bound_tls_close_wait
from unibus.core.errors import UnibusError
from unibus.core.log import configure_logging, get_logger, redact_text

SHUTDOWN_GRACE: Final = 5.0
"""Seconds a service may take to stop after SIGTERM before its work is cancelled; inside
the 10 s a container engine waits before SIGKILL. The API's server (Hypercorn) ends
requests within 3 s, then waits for each idle TLS client to answer its close_notify,
which an idle client never does: the cancel ends that wait."""


_CANCEL_SETTLE: Final = 1.0


class ServiceSettings(Protocol):
    @property
    def log_json(self) -> bool: ...


S = TypeVar("S", bound=ServiceSettings)
T = TypeVar("T")


class StopRequested(Exception):
    """A stop arrived while the service was still starting; ``run_service`` ends it as a
    clean stop (status 0)."""


async def unless_stopped(stop: asyncio.Event, starting: Coroutine[Any, Any, T]) -> T:
    """What ``starting`` returns, unless ``stop`` is set first: then ``starting`` is
    cancelled and ``StopRequested`` raised.

    For a service's start, which retries for as long as no node answers; whatever it
    opened before the cancel is the caller's to close.
    """
    work = asyncio.ensure_future(starting)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not work.done():
            work.cancel()
    if work.done() and not work.cancelled():
        return work.result()
    # A moment for the cancel to land, so what the start opened is in the caller's hands
    # to close; not more: a start that swallows its cancel must not hold the stop.
    await asyncio.wait({work}, timeout=_CANCEL_SETTLE)
    raise StopRequested


def _quiet_after_forced_stop(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    get_logger("unibus").debug("left behind by a forced stop", what=str(context.get("message")))


def run_service(
    name: str,
    load: Callable[[Mapping[str, str]], S],
    serve: Callable[[S, asyncio.Event], Coroutine[Any, Any, None]],
) -> int:
    """Read settings from the environment, then ``serve`` until SIGTERM or SIGINT."""
    try:
        settings = load(os.environ)
    except UnibusError as exc:
        print(f"{name}: configuration error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    configure_logging(json=settings.log_json)
    bound_tls_close_wait()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        serving = asyncio.create_task(serve(settings, stop))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not serving.done():
                await asyncio.wait({serving}, timeout=SHUTDOWN_GRACE)
            if not serving.done():
                get_logger(name).warning(
                    "still not stopped; cancelling", grace_seconds=SHUTDOWN_GRACE
                )
                serving.cancel()
                # What a cancelled server raises or leaves pending on its way out
                # (Hypercorn: an InvalidStateError, its lifespan task) is no failure: the
                # stop was asked for, and was only cut short.
                loop.set_exception_handler(_quiet_after_forced_stop)
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await serving
                return
        finally:
            stopping.cancel()
        with contextlib.suppress(StopRequested):
            serving.result()  # its error, if it failed

    try:
        asyncio.run(main())
    except UnibusError as exc:
        # Printed, not logged, but the same text a log line would show: a store's or
        # the client library's message may name a subject.
        print(f"{name}: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    except Exception:  # noqa: BLE001 - logged, then the exit status says it failed
        # A bug. Its traceback goes to the log as every line does, redacted, instead of
        # the interpreter printing it raw.
        get_logger(name).exception("stopped by an unexpected error")
        return 1
    return 0

"""The life of a unibus service process: settings once, logging, run until a signal.

Both services start the same way; keeping it here means a configuration error always
exits 2 with one line naming the setting, and a runtime error exits 1, never a traceback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

from unibus.core.errors import UnibusError
from unibus.core.log import configure_logging


class ServiceSettings(Protocol):
    @property
    def log_json(self) -> bool: ...


S = TypeVar("S", bound=ServiceSettings)


def run_service(
    name: str,
    load: Callable[[Mapping[str, str]], S],
    serve: Callable[[S, asyncio.Event], Awaitable[None]],
) -> int:
    """Read settings from the environment, then ``serve`` until SIGTERM or SIGINT."""
    try:
        settings = load(os.environ)
    except UnibusError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(json=settings.log_json)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    try:
        asyncio.run(main())
    except UnibusError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    return 0

"""``python -m unibus.authcallout``: run one callout instance until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from unibus.authcallout.metrics import Metrics
from unibus.authcallout.service import CalloutService, Keys
from unibus.authcallout.settings import Settings
from unibus.core.errors import UnibusError
from unibus.core.log import configure_logging, get_logger


async def _main(settings: Settings) -> None:
    keys = Keys.load(settings)
    metrics = Metrics()
    port = metrics.serve(settings.metrics_host, settings.metrics_port)
    get_logger("unibus.authcallout").info(
        "metrics listening", host=settings.metrics_host, port=port
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await CalloutService(settings, keys, metrics).run(stop)


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except UnibusError as exc:
        print(f"unibus-authcallout: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(json=settings.log_json)
    try:
        asyncio.run(_main(settings))
    except UnibusError as exc:
        print(f"unibus-authcallout: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

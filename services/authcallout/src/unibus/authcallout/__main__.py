"""``python -m unibus.authcallout``: run one callout instance until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys

from unibus.authcallout.keys import Keys
from unibus.authcallout.metrics import Metrics
from unibus.authcallout.service import CalloutService
from unibus.authcallout.settings import Settings
from unibus.core.log import get_logger
from unibus.core.metricsserver import serve_metrics
from unibus.core.process import run_service


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    keys = Keys.load(settings)
    metrics = Metrics()
    for generation in keys.generations:
        metrics.key_generations.labels(generation=generation.name).set(1)
    port = serve_metrics(
        metrics.registry, settings.metrics_host, settings.metrics_port, settings.metrics_tls
    )
    get_logger("unibus.authcallout").info(
        "metrics listening",
        host=settings.metrics_host,
        port=port,
        tls=settings.metrics_tls is not None,
    )
    await CalloutService(settings, keys, metrics).run(stop)


def main() -> int:
    return run_service("unibus-authcallout", Settings.from_env, serve)


if __name__ == "__main__":
    sys.exit(main())

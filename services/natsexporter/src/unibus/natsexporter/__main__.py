"""``python -m unibus.natsexporter``: serve the node's metrics until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys

from prometheus_client import CollectorRegistry

from unibus.core.log import get_logger
from unibus.core.metricsserver import serve_metrics
from unibus.core.process import run_service
from unibus.natsexporter.collector import NatsCollector
from unibus.natsexporter.monitor import MonitorClient
from unibus.natsexporter.settings import Settings

__all__ = ["main", "serve"]


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    registry = CollectorRegistry()
    client = MonitorClient(settings.ca_file, settings.timeout)
    registry.register(NatsCollector(settings.servers, client.fetch, timeout=settings.timeout))
    port = serve_metrics(registry, settings.host, settings.port, settings.tls)
    get_logger("unibus.natsexporter").info(
        "metrics listening",
        host=settings.host,
        port=port,
        tls=settings.tls is not None,
        servers=[server.name for server in settings.servers],
    )
    await stop.wait()


def main() -> int:
    return run_service("unibus-natsexporter", Settings.from_env, serve)


if __name__ == "__main__":
    sys.exit(main())

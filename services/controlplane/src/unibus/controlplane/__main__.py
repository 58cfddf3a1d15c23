"""``python -m unibus.controlplane``: serve the API on Hypercorn until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import sys

from hypercorn.asyncio import serve as serve_asgi
from hypercorn.config import Config
from nats.aio.client import Client as NATS

from unibus.controlplane.app import Context, build_app
from unibus.controlplane.metrics import ApiMetrics
from unibus.controlplane.settings import Settings
from unibus.core.bootstrap import ensure_first_admin
from unibus.core.connect import NatsTarget, close_all, connect
from unibus.core.kvstore import JetStreamStore
from unibus.core.log import get_logger
from unibus.core.metricsserver import serve_metrics
from unibus.core.process import run_service, unless_stopped
from unibus.core.retry import retry_until

__all__ = ["main", "serve"]

_log = get_logger("unibus.controlplane")


def _hypercorn_config(settings: Settings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    if settings.tls_cert is not None and settings.tls_key is not None:
        config.certfile = str(settings.tls_cert)
        config.keyfile = str(settings.tls_key)
    config.accesslog = None
    config.errorlog = None
    # Hypercorn's own request body limit is larger than ours; ours is enforced per route.
    config.h11_max_incomplete_size = 64 * 1024
    return config


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    metrics = ApiMetrics()
    metrics_port = serve_metrics(
        metrics.registry, settings.metrics_host, settings.metrics_port, settings.metrics_tls
    )
    _log.info(
        "metrics listening",
        host=settings.metrics_host,
        port=metrics_port,
        tls=settings.metrics_tls is not None,
    )

    connections: list[NATS] = []
    try:
        context = await unless_stopped(stop, _start(settings, metrics, connections))
        _log.info("serving", port=settings.port, tls=settings.tls, metrics_port=metrics_port)
        await serve_asgi(
            build_app(context), _hypercorn_config(settings), shutdown_trigger=stop.wait
        )
    finally:
        await close_all(connections)


async def _start(settings: Settings, metrics: ApiMetrics, connections: list[NATS]) -> Context:
    """Connect, open the store and write the first admin; retried for as long as no node
    answers. Each connection lands in ``connections`` as it opens, for the caller to close."""

    def target(seed: os.PathLike[str]) -> NatsTarget:
        return NatsTarget(urls=settings.nats_urls, ca_file=settings.ca_file, identity_file=seed)  # type: ignore[arg-type]

    nc = await connect(target(settings.internal_seed), name="unibus-controlplane", randomize=False)
    connections.append(nc)
    sys_nc = await connect(
        target(settings.system_seed), name="unibus-controlplane-sys", randomize=False
    )
    connections.append(sys_nc)
    store = await retry_until(
        "open the store",
        lambda: JetStreamStore.open(
            nc, op_timeout=settings.op_timeout, quorum_max_age=settings.quorum_max_age
        ),
    )
    if settings.bootstrap_admin is not None:
        admin = settings.bootstrap_admin
        wrote = await retry_until("first admin", lambda: ensure_first_admin(store, admin))
        _log.info("first admin", written=wrote)
    return Context(settings=settings, store=store, nc=nc, sys_nc=sys_nc, metrics=metrics)


def main() -> int:
    return run_service("unibus-controlplane", Settings.from_env, serve)


if __name__ == "__main__":
    sys.exit(main())

"""What every container of a unibus deployment runs, stated once.

``compose.yaml`` (one machine) and the per-host files ``unibus deploy render`` writes
(three hosts) run the same roles in the same way: the same commands, the same health
checks, the same lame-duck stop. The per-host renderer builds its services from the
values here, and ``tests/unit/test_containers.py`` holds ``compose.yaml`` to them, so the
two cannot drift apart.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "API_HEALTH",
    "CALLOUT_HEALTH",
    "EXPORTER_HEALTH",
    "NATS_STOP_GRACE",
    "NATS_STOP_SIGNAL",
    "SERVICE_COMMANDS",
    "health_test",
]

NATS_STOP_SIGNAL: Final = "SIGUSR2"
"""A stop is a lame-duck exit: leaderships handed to the peers first, then clients closed
over the template's ``lame_duck_duration`` (30 s)."""
NATS_STOP_GRACE: Final = "60s"
"""Covers the lame-duck grace period and duration, so a stop is never cut short by SIGKILL."""

SERVICE_COMMANDS: Final = {
    "authcallout": ("python", "-m", "unibus.authcallout"),
    "controlplane": ("python", "-m", "unibus.controlplane"),
    "natsexporter": ("python", "-m", "unibus.natsexporter"),
}

CALLOUT_HEALTH: Final = (
    "import ssl, sys, urllib.request as u; "
    "c = ssl.create_default_context(cafile='/etc/unibus/certs/client-ca.pem'); "
    "t = u.urlopen('https://localhost:9471/metrics', timeout=3, context=c).read().decode(); "
    "sys.exit(0 if 'unibus_authcallout_view_fresh 1.0' in t else 1)"
)
"""Healthy only while the callout's view is fresh: a stale view denies every connect. Its
metrics listener serves HTTPS with the node's certificate (``localhost`` is among its names)."""
EXPORTER_HEALTH: Final = (
    "import ssl, urllib.request as u; "
    "c = ssl.create_default_context(cafile='/etc/unibus/certs/client-ca.pem'); "
    "u.urlopen('https://localhost:7777/metrics', timeout=3, context=c)"
)
"""Healthy when the exporter answers a scrape (its node may be down: that is a metric)."""
API_HEALTH: Final = (
    "import ssl, urllib.request as u; "
    "c = ssl.create_default_context(cafile='/etc/unibus/certs/client-ca.pem'); "
    "u.urlopen('https://localhost:8470/healthz', timeout=3, context=c)"
)
"""Healthy when the API answers ``/healthz`` over its own TLS listener."""


def health_test(code: str) -> list[str]:
    """A compose ``healthcheck.test`` running ``code`` with the image's Python."""
    return ["CMD", "python", "-c", code]

"""The exporter's settings: read once from the environment at start, failing fast.

``UNIBUS_NATSEXPORTER_SERVERS`` names the monitoring endpoints to read, as a comma list of
``name=url`` (``n1=https://n1:8222``): the name is the ``server`` label of every metric.
Monitoring has no authentication, so it is read over plain HTTP only on loopback (the
local stack's ``http://127.0.0.1:8222``); anywhere else over HTTPS, verified with the CA in
``UNIBUS_NATSEXPORTER_CA`` (the nodes' client CA).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from unibus.core import envnames
from unibus.core.connect import is_loopback_host
from unibus.core.errors import ConfigError, PostureError
from unibus.core.metricsserver import MetricsTLS, read_metrics_listener
from unibus.core.settings import EnvReader

__all__ = ["DEFAULT_ADDR", "DEFAULT_TIMEOUT", "MonitoredServer", "Settings"]

DEFAULT_ADDR: Final = "127.0.0.1:7777"
DEFAULT_TIMEOUT: Final = 3.0
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class MonitoredServer:
    """One nats-server's monitoring endpoint."""

    name: str
    """The ``server`` label of its metrics."""
    url: str
    """Base URL, no trailing slash: ``https://n1:8222`` (a base path is kept)."""

    @property
    def tls(self) -> bool:
        return self.url.startswith("https://")


@dataclass(frozen=True)
class Settings:
    servers: tuple[MonitoredServer, ...]
    ca_file: Path | None = None
    """Verifies the HTTPS monitoring endpoints; required when one is configured."""
    host: str = "127.0.0.1"
    port: int = 7777
    tls: MetricsTLS | None = None
    """The exporter's own listener; None is plain HTTP, allowed on loopback only."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds each request to a monitoring endpoint may take, connecting included."""
    log_json: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        env = EnvReader(environ)
        servers = _read_servers(env)
        ca_file = env.optional_path(envnames.NATSEXPORTER_CA)
        if ca_file is not None:
            _check_ca(ca_file)
        elif any(server.tls for server in servers):
            raise ConfigError(
                f"{envnames.NATSEXPORTER_CA} is required to read an https:// monitoring "
                "endpoint: the CA that issued the nodes' certificates (the client CA)",
                setting=envnames.NATSEXPORTER_CA,
            )
        listener = read_metrics_listener(
            env,
            addr=envnames.NATSEXPORTER_ADDR,
            cert=envnames.NATSEXPORTER_TLS_CERT,
            key=envnames.NATSEXPORTER_TLS_KEY,
            default=DEFAULT_ADDR,
        )
        return cls(
            servers=servers,
            ca_file=ca_file,
            host=listener.host,
            port=listener.port,
            tls=listener.tls,
            timeout=env.number(
                envnames.NATSEXPORTER_TIMEOUT, default=DEFAULT_TIMEOUT, minimum=0.1, maximum=30.0
            ),
            log_json=env.boolean(envnames.LOG_JSON, default=True),
        )


def _read_servers(env: EnvReader) -> tuple[MonitoredServer, ...]:
    name = envnames.NATSEXPORTER_SERVERS
    items = env.items(name)
    if not items:
        raise ConfigError(
            f"{name} is required: the monitoring endpoints to read, as name=url separated by "
            "commas, for example n1=https://n1:8222",
            setting=name,
        )
    servers = tuple(_read_server(item) for item in items)
    names = [server.name for server in servers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{name} names {', '.join(duplicates)} more than once", setting=name)
    return servers


def _read_server(item: str) -> MonitoredServer:
    setting = envnames.NATSEXPORTER_SERVERS
    label, sep, url = (part.strip() for part in item.partition("="))
    if not sep or not _NAME.fullmatch(label):
        raise ConfigError(
            f"{setting}: {item!r} is not name=url (a name of letters, digits, '_', '.', '-', "
            "then the monitoring URL, for example n1=https://n1:8222)",
            setting=setting,
        )
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not _port_ok(url)
        or parts.username is not None
        or parts.query
        or parts.fragment
    ):
        raise ConfigError(
            f"{setting}: {url!r} (for {label}) is not a monitoring URL: "
            "http://HOST:PORT or https://HOST:PORT, without credentials, query or fragment",
            setting=setting,
        )
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise PostureError(
            f"{setting}: {url!r} (for {label}) is plain HTTP off loopback; the monitoring "
            "endpoint has no authentication and is read only over HTTPS on a network: "
            "serve it with the node's certificate and use https:// with "
            f"{envnames.NATSEXPORTER_CA}",
            setting=setting,
        )
    return MonitoredServer(
        name=label, url=f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")
    )


def _port_ok(url: str) -> bool:
    try:
        port = urlsplit(url).port  # raises on a port that is not a number in range
    except ValueError:
        return False
    return port is None or port > 0


def _check_ca(ca_file: Path) -> None:
    try:
        ssl.create_default_context(cafile=ca_file)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"{envnames.NATSEXPORTER_CA}={ca_file} does not load as a CA certificate (PEM): {exc}",
            setting=envnames.NATSEXPORTER_CA,
        ) from None

"""Serving a Prometheus registry: plain HTTP on loopback only, TLS anywhere else.

Every unibus process that exports metrics (the callout, the API, the NATS exporter) reads
where to listen with ``read_metrics_listener`` and serves with ``serve_metrics``. Metrics
are scraped across the private network, and unibus runs TLS on every network path outside
a loopback dev mode, so a listener bound off loopback without a certificate and key is
refused at start, with a ``PostureError`` (a ``ConfigError``) naming the variable.

Why not prometheus_client's own ``start_http_server``, which takes a certificate and key:
it wraps the listening socket, so every connection's TLS handshake runs in the one thread
that accepts, with no timeout, and a single client that connects and sends nothing (a port
scan, a half-open connection) stops the endpoint from answering anyone. Here every
connection is accepted at once and handshakes in its own thread within
``CONNECTION_TIMEOUT``; the exposition itself is prometheus_client's (``make_wsgi_app``).

>>> from unibus.core.settings import EnvReader
>>> read_metrics_listener(
...     EnvReader({}), addr="X_ADDR", cert="X_CERT", key="X_KEY", default="127.0.0.1:9471"
... )
MetricsListener(host='127.0.0.1', port=9471, tls=None)
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import make_wsgi_app
from prometheus_client.registry import Collector

from unibus.core.connect import is_loopback_host
from unibus.core.errors import ConfigError, PostureError
from unibus.core.log import get_logger
from unibus.core.settings import EnvReader

__all__ = [
    "CONNECTION_TIMEOUT",
    "MetricsListener",
    "MetricsTLS",
    "read_metrics_listener",
    "serve_metrics",
]

CONNECTION_TIMEOUT: Final = 10.0
"""Seconds a scrape connection may take to handshake, then for each read and write."""

_log = get_logger("unibus.metrics")


@dataclass(frozen=True)
class MetricsTLS:
    """The certificate (chain, PEM) and private key a metrics listener serves TLS with."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class MetricsListener:
    """Where a process serves its metrics; ``tls`` None means plain HTTP (loopback only)."""

    host: str
    port: int
    tls: MetricsTLS | None = None


def read_metrics_listener(
    env: EnvReader, *, addr: str, cert: str, key: str, default: str
) -> MetricsListener:
    """Read a metrics listener from the variables named ``addr``, ``cert`` and ``key``.

    Args:
        env: the environment, read once by the service's settings.
        addr: the ``HOST:PORT`` variable (port 0 picks a free port).
        cert: the variable naming the PEM certificate (chain) file.
        key: the variable naming its private key file.
        default: ``HOST:PORT`` when ``addr`` is unset; keep it on loopback.

    Raises:
        ConfigError: a malformed address, only one of ``cert`` and ``key`` set, a file that
            does not exist, or a certificate and key that do not load as a pair.
        PostureError: a host off loopback (a wildcard address included) without TLS.
    """
    host, port = env.host_port(addr, default=default)
    cert_file = env.optional_path(cert)
    key_file = env.optional_path(key)
    if (cert_file is None) != (key_file is None):
        missing = key if key_file is None else cert
        raise ConfigError(
            f"set both {cert} and {key} (a certificate and its private key), or neither "
            f"to serve plain HTTP on loopback; {missing} is not set",
            setting=missing,
        )
    tls = None
    if cert_file is not None and key_file is not None:
        tls = MetricsTLS(cert=cert_file, key=key_file)
        try:
            _server_context(tls)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{cert} and {key} do not load as a certificate and its private key (PEM): {exc}",
                setting=cert,
            ) from None
    if tls is None and not is_loopback_host(host):
        raise PostureError(
            f"{addr} binds {host}, off loopback: metrics leave this machine only over TLS; "
            f"set {cert} and {key} (a certificate the scraper trusts and its key), or bind "
            f"{addr} to 127.0.0.1",
            setting=addr,
        )
    return MetricsListener(host=host, port=port, tls=tls)


def serve_metrics(registry: Collector, host: str, port: int, tls: MetricsTLS | None) -> int:
    """Serve ``registry`` at ``/metrics`` from a daemon thread; returns the bound port.

    Port 0 picks a free port. The listener lives as long as the process. Callers check
    the posture first (``read_metrics_listener``); this function serves what it is given.
    """
    context = _server_context(tls) if tls is not None else None
    server = _MetricsServer((host, port), _family(host, port), context)
    server.set_app(make_wsgi_app(registry))
    threading.Thread(target=server.serve_forever, name="unibus-metrics", daemon=True).start()
    return int(server.server_address[1])


def _server_context(tls: MetricsTLS) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=tls.cert, keyfile=tls.key)
    return context


def _family(host: str, port: int) -> socket.AddressFamily:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return infos[0][0]


class _Handler(WSGIRequestHandler):
    timeout = CONNECTION_TIMEOUT  # applied to the socket by StreamRequestHandler.setup

    def setup(self) -> None:
        # The handshake runs here, in this connection's thread, under the timeout.
        self.request.settimeout(self.timeout)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: one line every few seconds says nothing."""


class _MetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        context: ssl.SSLContext | None,
    ) -> None:
        self.address_family = family
        self._context = context
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, peer = self.socket.accept()
        if self._context is None:
            return conn, peer
        # No I/O here: the handshake waits for the connection's own thread (_Handler.setup).
        wrapped = self._context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return wrapped, peer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A scanner, a client that does not trust the certificate, a timeout: nothing for
        # the operator to act on, and no traceback on stderr.
        _log.debug("metrics connection failed", peer=str(client_address))

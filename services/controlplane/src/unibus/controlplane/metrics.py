"""Prometheus metrics of the API, served on their own listener by
``unibus.core.metricsserver`` (loopback by default; TLS when bound anywhere else)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ApiMetrics"]


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "unibus_api_requests",
            "API requests by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "unibus_api_request_seconds",
            "API request latency by route.",
            ["route"],
            registry=self.registry,
        )
        self.replays = Counter(
            "unibus_api_replay_rejections",
            "Signed requests refused because their nonce was already used.",
            registry=self.registry,
        )
        self.certificate_expiry = Gauge(
            "unibus_api_certificate_expiry_timestamp_seconds",
            "When the earliest certificate this node serves expires (Unix time), read live "
            "from the server with each health report. The API serves the node's client "
            "certificate too.",
            ["listener"],
            registry=self.registry,
        )

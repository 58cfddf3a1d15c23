"""Prometheus metrics of the callout, served by ``unibus.core.metricsserver`` (loopback by
default; TLS when bound anywhere else)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from unibus.authcallout.reasons import Reason


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "unibus_authcallout_decisions",
            "Authorization decisions by stable reason code.",
            ["reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "unibus_authcallout_decision_seconds",
            "Time from receiving an auth request to sending the answer.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        self.watch_lag = Gauge(
            "unibus_authcallout_watch_lag_seconds",
            "Seconds since the KV view was last proven current (decisions deny above the bound).",
            registry=self.registry,
        )
        self.view_fresh = Gauge(
            "unibus_authcallout_view_fresh",
            "1 while the view is fresh enough to admit anyone, else 0.",
            registry=self.registry,
        )
        self.nodes_served = Gauge(
            "unibus_authcallout_nodes_served",
            "Nodes whose auth requests this instance receives (its link there is up).",
            registry=self.registry,
        )
        self.key_generations = Gauge(
            "unibus_authcallout_key_generations",
            "Issuer and xkey generations this callout answers with (2 during a rotation).",
            ["generation"],
            registry=self.registry,
        )
        self.kicks = Counter(
            "unibus_authcallout_kicks",
            "Connections disconnected because their authorization changed.",
            registry=self.registry,
        )
        self.revoke_latency = Histogram(
            "unibus_authcallout_revoke_disconnect_seconds",
            "From the KV change (server time) to the last affected connection kicked.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
            registry=self.registry,
        )
        self.room_cap_truncations = Counter(
            "unibus_authcallout_room_cap_truncated",
            "Admissions past the room cap: the user's oldest rooms granted, the newest not.",
            registry=self.registry,
        )
        for reason in Reason:
            self.decisions.labels(reason=reason.value)

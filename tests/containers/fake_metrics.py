"""A stand-in for one node's three metrics endpoints, for the monitoring tests and the
dashboard screenshot (docs/monitoring-dashboard.png).

Serves, over HTTPS with the node's certificate, the series of the metric contract the
rules and the dashboard are written against: the nats exporter's on 7777, the callout's
on 9471, the API's on 9470. Counters grow at fixed rates from the start, so rates and
quantiles have values. Standard library only: it runs in the unibus tools image.

    python fake_metrics.py NODE CERT KEY [--degraded STREAM]

Cluster shape: three nodes n1..n3, n2 the meta leader, each asset led by one node in turn;
``--degraded STREAM`` makes that stream's leader report one replica not current.
"""

from __future__ import annotations

import argparse
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NODES = ("n1", "n2", "n3")
STREAMS = (
    "KV_UNIBUS_users",
    "KV_UNIBUS_rooms",
    "KV_UNIBUS_members",
    "KV_UNIBUS_rooms_by_member",
    "KV_UNIBUS_room_keys",
    "KV_UNIBUS_nonces",
    "UNIBUS_messages",
    "OBJ_UNIBUS_blobs",
)
REASONS = {  # decisions per second by reason
    "allowed": 2.0,
    "unknown_key": 0.05,
    "revoked": 0.02,
    "bad_signature": 0.0,
    "bad_request": 0.0,
    "store_unavailable": 0.0,
    "no_credentials": 0.01,
    "unsupported_client": 0.0,
    "dropped_malformed": 0.0,
    "dropped_expired": 0.0,
}
DAY = 86400.0
START = time.time()


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{value}"' for key, value in labels.items()) + "}"


class Series:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.elapsed = time.time() - START

    def add(self, name: str, value: float, **labels: str) -> None:
        self.lines.append(f"{name}{_labels(**labels)} {value!r}")

    def counter(self, name: str, per_second: float, base: float = 0.0, **labels: str) -> None:
        self.add(name, base + per_second * self.elapsed, **labels)

    def histogram(
        self, name: str, buckets: dict[float, float], per_second: float, **labels: str
    ) -> None:
        """``buckets``: upper bound -> share of the observations at or below it."""
        count = per_second * self.elapsed
        for bound, share in sorted(buckets.items()):
            self.add(f"{name}_bucket", count * share, le=repr(bound), **labels)
        self.add(f"{name}_bucket", count, le="+Inf", **labels)
        self.add(f"{name}_count", count, **labels)
        self.add(f"{name}_sum", count * 0.004, **labels)

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode()


def nats(node: str, degraded: str | None) -> bytes:
    s = Series()
    index = NODES.index(node)
    server = {"server": node}
    s.add("nats_server_up", 1, **server)
    s.add("nats_server_info", 1, version="2.15.1", server_id=f"N{node.upper()}FAKE", **server)
    s.add("nats_server_start_time_seconds", START - (index + 1) * 3 * DAY, **server)
    s.add("nats_server_connections", 12 - 3 * index, **server)
    s.counter("nats_server_accepted_connections_total", 0.05, 400, **server)
    s.add("nats_server_subscriptions", 140 - 20 * index, **server)
    s.counter("nats_server_slow_consumers_total", 0.0, **server)
    s.counter("nats_server_in_msgs_total", 40.0 + 5 * index, **server)
    s.counter("nats_server_out_msgs_total", 95.0 + 5 * index, **server)
    s.counter("nats_server_in_bytes_total", 40_000.0, **server)
    s.counter("nats_server_out_bytes_total", 110_000.0, **server)
    s.add("nats_server_routes", 2, **server)
    s.add("nats_server_memory_bytes", (38 + 4 * index) * 2**20, **server)
    s.add("nats_server_cpu_percent", 2.5 + index, **server)
    for listener, days in (("client", 80.0 if node != "n3" else 21.0), ("route", 300.0)):
        s.add(
            "nats_server_tls_cert_not_after_timestamp_seconds",
            START + days * DAY,
            listener=listener,
            **server,
        )
    leader = node == "n2"
    s.add("nats_jetstream_meta_has_leader", 1, **server)
    s.add("nats_jetstream_meta_is_leader", 1 if leader else 0, **server)
    s.add("nats_jetstream_meta_cluster_size", 3, **server)
    s.add("nats_jetstream_meta_peers_current", 3 if leader else 1, **server)
    s.counter("nats_jetstream_meta_leader_changes_total", 0.0, 1, **server)
    for number, stream in enumerate(STREAMS):
        labels = {"stream": stream, **server}
        history = stream == "UNIBUS_messages"
        messages = 15_000 + 40 * s.elapsed if history else 20 + 7 * number
        s.add("nats_jetstream_stream_messages", messages, **labels)
        s.add("nats_jetstream_stream_bytes", messages * (900 if history else 350), **labels)
        s.add("nats_jetstream_stream_consumers", 4 if history else 0, **labels)
        s.add("nats_jetstream_stream_replicas_configured", 3, **labels)
        is_leader = NODES[number % 3] == node
        s.add("nats_jetstream_stream_is_leader", 1 if is_leader else 0, **labels)
        if is_leader:
            lagging = stream == degraded
            s.add("nats_jetstream_stream_replicas_current", 2 if lagging else 3, **labels)
            for peer in NODES:
                if peer != node:
                    lag = 1800 if lagging and peer == NODES[(number + 1) % 3] else 0
                    s.add("nats_jetstream_stream_follower_lag", lag, peer=peer, **labels)
    return s.text()


def authcallout(node: str, _degraded: str | None) -> bytes:
    s = Series()
    for reason, rate in REASONS.items():
        s.counter("unibus_authcallout_decisions_total", rate, reason=reason)
    s.histogram(
        "unibus_authcallout_decision_seconds",
        {0.0005: 0.1, 0.001: 0.35, 0.0025: 0.7, 0.005: 0.9, 0.01: 0.97, 0.025: 0.995},
        sum(REASONS.values()),
    )
    s.add("unibus_authcallout_watch_lag_seconds", 0.3 + 0.1 * NODES.index(node))
    s.add("unibus_authcallout_view_fresh", 1)
    s.add("unibus_authcallout_nodes_served", len(NODES))
    s.add("unibus_authcallout_key_generations", 1, generation="current")
    s.counter("unibus_authcallout_kicks_total", 0.01)
    s.histogram(
        "unibus_authcallout_revoke_disconnect_seconds",
        {0.05: 0.2, 0.1: 0.6, 0.25: 0.9, 0.5: 0.99, 1.0: 1.0},
        0.01,
    )
    s.counter("unibus_authcallout_room_cap_truncated_total", 0.0)
    return s.text()


def controlplane(node: str, _degraded: str | None) -> bytes:
    s = Series()
    for route, status, rate in (
        ("/v1/users", "200", 0.4),
        ("/v1/rooms", "200", 0.8),
        ("/v1/rooms", "404", 0.05),
        ("/v1/blobs", "200", 0.2),
        ("/v1/rooms", "503", 0.01 if node == "n1" else 0.0),
    ):
        s.counter("unibus_api_requests_total", rate, route=route, status=status)
    s.histogram(
        "unibus_api_request_seconds",
        {0.005: 0.3, 0.01: 0.6, 0.025: 0.85, 0.05: 0.95, 0.1: 0.99},
        1.4,
        route="/v1/rooms",
    )
    s.counter("unibus_api_replay_rejections_total", 0.0)
    s.add("unibus_api_certificate_expiry_timestamp_seconds", START + 80 * DAY, listener="nats")
    return s.text()


def serve(port: int, render: Callable[[], bytes], context: ssl.SSLContext) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = render()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - inside a container
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("node", choices=NODES)
    parser.add_argument("cert")
    parser.add_argument("key")
    parser.add_argument("--degraded", choices=STREAMS)
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    for port, role in ((7777, nats), (9471, authcallout), (9470, controlplane)):
        threading.Thread(
            target=serve,
            args=(port, lambda role=role: role(args.node, args.degraded), context),
            daemon=True,
        ).start()
    print(f"fake metrics for {args.node} on 7777, 9471, 9470", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()

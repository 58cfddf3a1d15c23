"""The metrics, read from each server's monitoring endpoint when Prometheus scrapes.

Each scrape reads ``/varz``, ``/routez`` and ``/jsz?accounts=true&streams=true&config=true``
of every configured server at once, each request bounded by the timeout. A server whose
three answers did not all arrive, as JSON, in time has ``nats_server_up 0`` and no other
metric this scrape; the others are served as usual: one server failing never fails the
scrape.

The names below (``FAMILIES``) are a contract: alert rules and dashboards are written
against them. Every metric carries ``server``, the name the server is configured under.

Stream metrics come from every server that holds a replica (``is_leader`` 1 on one of
them), except ``nats_jetstream_stream_replicas_current`` and
``nats_jetstream_stream_follower_lag``, which only the stream's leader knows and only the
leader's exporter emits: a follower sees its fellow followers as not current. A server
reports its JetStream meta view the same way, as that node sees it.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from unibus.core.log import get_logger
from unibus.natsexporter.settings import MonitoredServer

__all__ = ["ENDPOINTS", "FAMILIES", "Family", "Fetch", "LeaderChanges", "NatsCollector"]

Fetch = Callable[[str], Any]
"""GET one monitoring URL and return its decoded JSON; raise on any failure."""

VARZ: Final = "varz"
ROUTEZ: Final = "routez"
JSZ: Final = "jsz?accounts=true&streams=true&config=true"
ENDPOINTS: Final = (VARZ, ROUTEZ, JSZ)

_log = get_logger("unibus.natsexporter")


@dataclass(frozen=True)
class Family:
    kind: Literal["gauge", "counter"]
    help: str
    labels: tuple[str, ...] = ("server",)


_STREAM: Final = ("server", "stream")

FAMILIES: Final[Mapping[str, Family]] = {
    "nats_server_up": Family(
        "gauge", "1 if the server's monitoring endpoint answered this scrape, else 0."
    ),
    "nats_server_info": Family(
        "gauge", "Always 1: the server's version and ID.", ("server", "version", "server_id")
    ),
    "nats_server_start_time_seconds": Family("gauge", "When the server started (Unix time)."),
    "nats_server_connections": Family("gauge", "Client connections open now."),
    "nats_server_accepted_connections_total": Family(
        "counter", "Client connections accepted since the server started."
    ),
    "nats_server_subscriptions": Family("gauge", "Subscriptions the server holds now."),
    "nats_server_slow_consumers_total": Family(
        "counter", "Connections found to be slow consumers since the server started."
    ),
    "nats_server_in_msgs_total": Family("counter", "Messages received by the server."),
    "nats_server_out_msgs_total": Family("counter", "Messages sent by the server."),
    "nats_server_in_bytes_total": Family("counter", "Payload bytes received by the server."),
    "nats_server_out_bytes_total": Family("counter", "Payload bytes sent by the server."),
    "nats_server_routes": Family("gauge", "Route connections to other servers (ROUTEZ)."),
    "nats_server_memory_bytes": Family("gauge", "Resident memory of the server process."),
    "nats_server_cpu_percent": Family("gauge", "CPU use of the server process, in percent."),
    "nats_server_tls_cert_not_after_timestamp_seconds": Family(
        "gauge",
        "When the certificate a listener serves expires (Unix time); listener is client or route.",
        ("server", "listener"),
    ),
    "nats_jetstream_meta_has_leader": Family(
        "gauge", "1 if the server knows a JetStream meta leader, else 0."
    ),
    "nats_jetstream_meta_is_leader": Family(
        "gauge", "1 if the server is the JetStream meta leader, else 0."
    ),
    "nats_jetstream_meta_cluster_size": Family(
        "gauge", "Servers in the JetStream meta group, as the server knows it."
    ),
    "nats_jetstream_meta_peers_current": Family(
        "gauge",
        "The server itself and the meta peers it sees current and online (the leader's "
        "view is the complete one).",
    ),
    "nats_jetstream_meta_leader_changes_total": Family(
        "counter",
        "Times the meta leader the server names differed from the one it named at an "
        "earlier scrape (counted by this exporter, from its start).",
    ),
    "nats_jetstream_stream_messages": Family("gauge", "Messages in the stream.", _STREAM),
    "nats_jetstream_stream_bytes": Family("gauge", "Bytes in the stream.", _STREAM),
    "nats_jetstream_stream_consumers": Family("gauge", "Consumers of the stream.", _STREAM),
    "nats_jetstream_stream_replicas_configured": Family(
        "gauge", "Replicas the stream is configured with.", _STREAM
    ),
    "nats_jetstream_stream_is_leader": Family(
        "gauge", "1 if the server leads the stream's replica group, else 0.", _STREAM
    ),
    "nats_jetstream_stream_replicas_current": Family(
        "gauge",
        "The leader and the followers it sees current and online; from the leader only.",
        _STREAM,
    ),
    "nats_jetstream_stream_follower_lag": Family(
        "gauge",
        "Operations a follower is behind the leader; from the leader only.",
        ("server", "stream", "peer"),
    ),
}

Sample = tuple[str, tuple[str, ...], float]


class LeaderChanges:
    """The meta leader each server named last, and how often that name changed.

    A scrape that finds no leader (an election under way) changes nothing: the count goes
    up when a leader is named that differs from the last one named.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, str] = {}
        self._changes: dict[str, int] = {}

    def observe(self, server: str, leader: str) -> int:
        with self._lock:
            last = self._last.get(server)
            if leader:
                if last is not None and leader != last:
                    self._changes[server] = self._changes.get(server, 0) + 1
                self._last[server] = leader
            return self._changes.get(server, 0)


class NatsCollector(Collector):
    """A prometheus_client collector reading the servers' monitoring endpoints per scrape."""

    def __init__(self, servers: Sequence[MonitoredServer], fetch: Fetch, *, timeout: float) -> None:
        self._servers = tuple(servers)
        self._fetch = fetch
        self._timeout = timeout
        self._leaders = LeaderChanges()
        self._lock = threading.Lock()
        self._answering: dict[str, bool] = {}
        self._reported_duplicates: set[tuple[str, str]] = set()

    def collect(self) -> Iterator[Metric]:
        answers = self._fetch_all()
        samples: list[Sample] = []
        for server in self._servers:
            samples.extend(self._server_samples(server, answers))
        families = {name: _family(name, spec) for name, spec in FAMILIES.items()}
        for name, labels, value in samples:
            families[name].add_metric(list(labels), value)
        yield from families.values()

    def _fetch_all(self) -> dict[tuple[str, str], Any]:
        """Every endpoint of every server at once; a failure, or no answer by the deadline,
        is an exception in place of the answer."""
        jobs = {
            (server.name, endpoint): f"{server.url}/{endpoint}"
            for server in self._servers
            for endpoint in ENDPOINTS
        }
        lock = threading.Lock()
        answers: dict[tuple[str, str], Any] = {}

        def fetch(key: tuple[str, str], url: str) -> None:
            try:
                answer = self._fetch(url)
            except Exception as exc:  # noqa: BLE001 - the failure is this server's answer
                answer = exc
            with lock:
                answers[key] = answer

        # Daemon threads: a request past the deadline is left to end by its socket timeout
        # and never holds up the scrape or the process's exit.
        threads = [
            threading.Thread(target=fetch, args=job, name="natsexporter-fetch", daemon=True)
            for job in jobs.items()
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + self._timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with lock:
            late = TimeoutError(f"no answer within {self._timeout:g} s")
            return {key: answers.get(key, late) for key in jobs}

    def _server_samples(
        self, server: MonitoredServer, answers: Mapping[tuple[str, str], Any]
    ) -> list[Sample]:
        varz, routez, jsz = (answers[(server.name, endpoint)] for endpoint in ENDPOINTS)
        problem = next((a for a in (varz, routez, jsz) if isinstance(a, BaseException)), None)
        read = _Read([], [])
        if problem is None:
            try:
                read = _read_server(server.name, varz, routez, jsz, self._leaders)
            except _MalformedError as exc:
                problem = exc
        self._report(server.name, problem)
        for stream in read.duplicates:
            self._report_duplicate(server.name, stream)
        return [("nats_server_up", (server.name,), 0.0 if problem else 1.0), *read.samples]

    def _report_duplicate(self, server: str, stream: str) -> None:
        with self._lock:
            if (server, stream) in self._reported_duplicates:
                return
            self._reported_duplicates.add((server, stream))
        _log.warning(
            "a stream name is in more than one account; only the first is exported",
            server=server,
            stream=stream,
        )

    def _report(self, server: str, problem: BaseException | None) -> None:
        """One log line when a server stops answering or answers again, not one a scrape."""
        with self._lock:
            before = self._answering.get(server)
            self._answering[server] = problem is None
        if problem is not None and before is not False:
            _log.warning(
                "monitoring endpoint not answering",
                server=server,
                error=f"{type(problem).__name__}: {problem}",
            )
        elif problem is None and before is not True:
            _log.info("monitoring endpoint answering", server=server)


class _MalformedError(Exception):
    """An answer that is not the document the endpoint serves."""


def _family(name: str, spec: Family) -> GaugeMetricFamily | CounterMetricFamily:
    if spec.kind == "counter":
        return CounterMetricFamily(name, spec.help, labels=spec.labels)
    return GaugeMetricFamily(name, spec.help, labels=spec.labels)


@dataclass(frozen=True)
class _Read:
    samples: list[Sample]
    duplicates: list[str]
    """Stream names met again in another account (left out: a repeated series would fail
    the whole scrape)."""


def _read_server(server: str, varz: Any, routez: Any, jsz: Any, leaders: LeaderChanges) -> _Read:
    """One server's samples, all but ``nats_server_up``."""
    varz, routez, jsz = (_document(doc) for doc in (varz, routez, jsz))
    out: list[Sample] = []
    seen: set[str] = set()
    duplicates: list[str] = []

    def add(name: str, value: float | None, *labels: str) -> None:
        if value is not None:
            out.append((name, (server, *labels), float(value)))

    me = varz.get("server_name")
    if not isinstance(me, str) or not me:
        raise _MalformedError("VARZ names no server")
    add("nats_server_info", 1, str(varz.get("version", "")), str(varz.get("server_id", "")))
    add("nats_server_start_time_seconds", _timestamp(varz.get("start")))
    add("nats_server_connections", _number(varz, "connections"))
    add("nats_server_accepted_connections_total", _number(varz, "total_connections"))
    add("nats_server_subscriptions", _number(varz, "subscriptions"))
    add("nats_server_slow_consumers_total", _number(varz, "slow_consumers"))
    for direction in ("in", "out"):
        add(f"nats_server_{direction}_msgs_total", _number(varz, f"{direction}_msgs"))
        add(f"nats_server_{direction}_bytes_total", _number(varz, f"{direction}_bytes"))
    add("nats_server_routes", _number(routez, "num_routes"))
    add("nats_server_memory_bytes", _number(varz, "mem"))
    add("nats_server_cpu_percent", _number(varz, "cpu"))
    cluster = varz.get("cluster")
    for listener, section in (("client", varz), ("route", cluster)):
        if isinstance(section, dict):
            expiry = _timestamp(section.get("tls_cert_not_after"))
            add("nats_server_tls_cert_not_after_timestamp_seconds", expiry, listener)

    meta = jsz.get("meta_cluster")
    if isinstance(meta, dict):
        named = meta.get("leader")
        leader = named if isinstance(named, str) else ""
        add("nats_jetstream_meta_has_leader", 1 if leader else 0)
        add("nats_jetstream_meta_is_leader", 1 if leader and leader == me else 0)
        add("nats_jetstream_meta_cluster_size", _number(meta, "cluster_size"))
        add("nats_jetstream_meta_peers_current", 1 + _current(meta.get("replicas")))
        add("nats_jetstream_meta_leader_changes_total", leaders.observe(server, leader))

    for account in _list(jsz.get("account_details")):
        for stream in _list(_document(account).get("stream_detail")):
            stream = _document(stream)
            name = stream.get("name")
            if not isinstance(name, str):
                raise _MalformedError("a stream without a name")
            if name in seen:
                duplicates.append(name)
                continue
            seen.add(name)
            state = _section(stream, "state")
            config = _section(stream, "config")
            add("nats_jetstream_stream_messages", _number(state, "messages"), name)
            add("nats_jetstream_stream_bytes", _number(state, "bytes"), name)
            add("nats_jetstream_stream_consumers", _number(state, "consumer_count"), name)
            add(
                "nats_jetstream_stream_replicas_configured",
                _number(config, "num_replicas"),
                name,
            )
            group = stream.get("cluster")
            # A stream without a replica group (JetStream not clustered) has one copy, here.
            leads = group.get("leader") == me if isinstance(group, dict) else True
            add("nats_jetstream_stream_is_leader", 1 if leads else 0, name)
            if leads:
                followers = _list(group.get("replicas")) if isinstance(group, dict) else []
                add("nats_jetstream_stream_replicas_current", 1 + _current(followers), name)
                for follower in followers:
                    peer = _document(follower).get("name")
                    if isinstance(peer, str):
                        lag = _number(follower, "lag")
                        add("nats_jetstream_stream_follower_lag", lag or 0, name, peer)
    return _Read(out, duplicates)


def _document(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _MalformedError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _section(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    return _document(value) if value is not None else {}


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _MalformedError(f"expected a JSON array, got {type(value).__name__}")
    return value


def _number(doc: Mapping[str, Any], key: str) -> float | None:
    """The value under ``key`` if it is a number; None (the sample left out) otherwise."""
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _current(peers: Any) -> int:
    """Peers reported current and not offline."""
    return sum(
        1
        for peer in _list(peers)
        if isinstance(peer, dict) and peer.get("current") is True and not peer.get("offline")
    )


def _timestamp(value: Any) -> float | None:
    """An RFC 3339 time as Unix time; None when absent, malformed or Go's zero time."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.year > 1 else None

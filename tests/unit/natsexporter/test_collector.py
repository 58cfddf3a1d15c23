"""The exporter's metrics, from monitoring answers recorded on a real 3-node cluster.

``recorded/healthy`` is VARZ, ROUTEZ and JSZ (accounts, streams, config) of each node of a
provisioned nats-server 2.15.1 cluster once every replica was current, with a durable
consumer on ``KV_UNIBUS_users``; ``recorded/n1_killed`` is the same from n2 and n3 six
seconds after n1, the meta leader, was killed. No sockets: a fake stands in for HTTP.
"""

from __future__ import annotations

import copy
import datetime
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from unibus.natsexporter.collector import FAMILIES, LeaderChanges, NatsCollector
from unibus.natsexporter.settings import MonitoredServer

RECORDED = Path(__file__).parent / "recorded"
NODES = ("n1", "n2", "n3")
SERVERS = tuple(MonitoredServer(name, f"http://{name}.test:8222") for name in NODES)

CONTRACT = {
    "nats_server_up": ("gauge", ("server",)),
    "nats_server_info": ("gauge", ("server", "version", "server_id")),
    "nats_server_start_time_seconds": ("gauge", ("server",)),
    "nats_server_connections": ("gauge", ("server",)),
    "nats_server_accepted_connections_total": ("counter", ("server",)),
    "nats_server_subscriptions": ("gauge", ("server",)),
    "nats_server_slow_consumers_total": ("counter", ("server",)),
    "nats_server_in_msgs_total": ("counter", ("server",)),
    "nats_server_out_msgs_total": ("counter", ("server",)),
    "nats_server_in_bytes_total": ("counter", ("server",)),
    "nats_server_out_bytes_total": ("counter", ("server",)),
    "nats_server_routes": ("gauge", ("server",)),
    "nats_server_memory_bytes": ("gauge", ("server",)),
    "nats_server_cpu_percent": ("gauge", ("server",)),
    "nats_server_tls_cert_not_after_timestamp_seconds": ("gauge", ("server", "listener")),
    "nats_jetstream_meta_has_leader": ("gauge", ("server",)),
    "nats_jetstream_meta_is_leader": ("gauge", ("server",)),
    "nats_jetstream_meta_cluster_size": ("gauge", ("server",)),
    "nats_jetstream_meta_peers_current": ("gauge", ("server",)),
    "nats_jetstream_meta_leader_changes_total": ("counter", ("server",)),
    "nats_jetstream_stream_messages": ("gauge", ("server", "stream")),
    "nats_jetstream_stream_bytes": ("gauge", ("server", "stream")),
    "nats_jetstream_stream_consumers": ("gauge", ("server", "stream")),
    "nats_jetstream_stream_replicas_configured": ("gauge", ("server", "stream")),
    "nats_jetstream_stream_is_leader": ("gauge", ("server", "stream")),
    "nats_jetstream_stream_replicas_current": ("gauge", ("server", "stream")),
    "nats_jetstream_stream_follower_lag": ("gauge", ("server", "stream", "peer")),
}
"""The names alert rules and dashboards are written against: changing one breaks them."""

Docs = dict[tuple[str, str], Any]
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def recorded(situation: str) -> Docs:
    """(node, endpoint) -> the recorded answer, for the nodes that answered."""
    docs: Docs = {}
    for path in sorted((RECORDED / situation).glob("*.json")):
        node, endpoint = path.stem.split("_")
        docs[(node, endpoint)] = json.loads(path.read_text(encoding="utf-8"))
    return docs


class FakeMonitor:
    """Answers monitoring URLs from documents; a node it has nothing for refuses."""

    def __init__(self, docs: Docs) -> None:
        self.docs = docs
        self.urls: list[str] = []

    def fetch(self, url: str) -> Any:
        self.urls.append(url)
        parts = urlsplit(url)
        node = (parts.hostname or "").removesuffix(".test")
        endpoint = parts.path.strip("/")
        if (node, endpoint) not in self.docs:
            raise ConnectionRefusedError(f"{node} is down")
        return copy.deepcopy(self.docs[(node, endpoint)])


def scrape(collector: NatsCollector) -> Series:
    series: Series = {}
    for family in collector.collect():
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in series, f"{key} exported twice"
            series[key] = sample.value
    return series


def value(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


def of(series: Series, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in series.items() if n == name}


def collector(docs: Docs | Callable[[str], Any], timeout: float = 1.0) -> NatsCollector:
    fetch = docs if callable(docs) else FakeMonitor(docs).fetch
    return NatsCollector(SERVERS, fetch, timeout=timeout)


def streams(docs: Docs, node: str) -> list[dict[str, Any]]:
    return [
        stream
        for account in docs[(node, "jsz")]["account_details"]
        for stream in account["stream_detail"]
    ]


def rfc3339(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


# -- the contract ---------------------------------------------------------------------------


def test_the_families_are_exactly_the_contracts_names_types_and_labels() -> None:
    served = {name: (spec.kind, spec.labels) for name, spec in FAMILIES.items()}

    assert served == CONTRACT


def test_the_exposition_names_every_family_as_the_contract_does() -> None:
    registry = CollectorRegistry()
    registry.register(collector(recorded("healthy")))

    text = generate_latest(registry).decode()

    for name, (kind, _) in CONTRACT.items():
        assert f"# TYPE {name} {kind}\n" in text
    assert 'nats_server_in_msgs_total{server="n1"} 213.0' in text
    assert "_created" not in text


def test_every_family_has_samples_from_a_healthy_cluster() -> None:
    series = scrape(collector(recorded("healthy")))

    assert {name for name, _ in series} == set(CONTRACT)


# -- the server -----------------------------------------------------------------------------


def test_a_server_that_answers_is_up_with_its_identity_and_start_time() -> None:
    docs = recorded("healthy")
    series = scrape(collector(docs))

    assert of(series, "nats_server_info") == {
        frozenset(
            {
                ("server", node),
                ("version", "2.15.1"),
                ("server_id", docs[(node, "varz")]["server_id"]),
            }
        ): 1
        for node in NODES
    }
    for node in NODES:
        assert value(series, "nats_server_up", server=node) == 1
        start = rfc3339(docs[(node, "varz")]["start"])
        assert value(series, "nats_server_start_time_seconds", server=node) == start


def test_each_server_metric_reads_its_own_field() -> None:
    docs = recorded("healthy")
    docs[("n1", "varz")].update(
        connections=3,
        total_connections=5,
        subscriptions=7,
        slow_consumers=11,
        in_msgs=13,
        out_msgs=17,
        in_bytes=19,
        out_bytes=23,
        mem=29,
        cpu=31.5,
    )
    series = scrape(collector(docs))

    expected = {
        "nats_server_connections": 3,
        "nats_server_accepted_connections_total": 5,
        "nats_server_subscriptions": 7,
        "nats_server_slow_consumers_total": 11,
        "nats_server_in_msgs_total": 13,
        "nats_server_out_msgs_total": 17,
        "nats_server_in_bytes_total": 19,
        "nats_server_out_bytes_total": 23,
        "nats_server_memory_bytes": 29,
        "nats_server_cpu_percent": 31.5,
        "nats_server_routes": 2,
    }
    for name, wanted in expected.items():
        assert value(series, name, server="n1") == wanted, name


def test_the_client_and_route_certificates_expiry_is_exported_per_listener() -> None:
    docs = recorded("healthy")
    docs[("n1", "varz")]["cluster"]["tls_cert_not_after"] = "2030-01-02T03:04:05Z"
    series = scrape(collector(docs))

    name = "nats_server_tls_cert_not_after_timestamp_seconds"
    client = docs[("n1", "varz")]["tls_cert_not_after"]
    assert value(series, name, server="n1", listener="client") == rfc3339(client)
    assert value(series, name, server="n1", listener="route") == rfc3339("2030-01-02T03:04:05Z")


def test_a_listener_without_a_certificate_has_no_expiry() -> None:
    docs = recorded("healthy")
    del docs[("n1", "varz")]["tls_cert_not_after"]
    del docs[("n1", "varz")]["cluster"]
    docs[("n2", "varz")]["tls_cert_not_after"] = "0001-01-01T00:00:00Z"  # Go's zero time
    series = scrape(collector(docs))

    expiries = of(series, "nats_server_tls_cert_not_after_timestamp_seconds")
    assert {dict(labels)["server"] + "/" + dict(labels)["listener"] for labels in expiries} == {
        "n2/route",
        "n3/client",
        "n3/route",
    }


def test_the_routes_are_what_routez_counts() -> None:
    series = scrape(collector(recorded("n1_killed")))

    assert value(series, "nats_server_routes", server="n2") == 1
    assert value(series, "nats_server_routes", server="n3") == 1


# -- JetStream meta -------------------------------------------------------------------------


def test_the_meta_leader_sees_every_peer_current() -> None:
    series = scrape(collector(recorded("healthy")))

    assert value(series, "nats_jetstream_meta_is_leader", server="n1") == 1
    assert value(series, "nats_jetstream_meta_peers_current", server="n1") == 3
    for node in NODES:
        assert value(series, "nats_jetstream_meta_has_leader", server=node) == 1
        assert value(series, "nats_jetstream_meta_cluster_size", server=node) == 3
        assert value(series, "nats_jetstream_meta_leader_changes_total", server=node) == 0
    assert sum(of(series, "nats_jetstream_meta_is_leader").values()) == 1
    # a follower counts only the peers it hears from: the leader, not its fellow follower
    assert value(series, "nats_jetstream_meta_peers_current", server="n2") == 2


def test_a_meta_group_without_a_leader_says_so() -> None:
    docs = recorded("healthy")
    for node in NODES:
        docs[(node, "jsz")]["meta_cluster"]["leader"] = ""
    series = scrape(collector(docs))

    for node in NODES:
        assert value(series, "nats_jetstream_meta_has_leader", server=node) == 0
        assert value(series, "nats_jetstream_meta_is_leader", server=node) == 0


def test_an_offline_peer_is_not_counted_current_even_if_reported_current() -> None:
    docs = recorded("healthy")
    docs[("n1", "jsz")]["meta_cluster"]["replicas"][1]["offline"] = True
    series = scrape(collector(docs))

    assert value(series, "nats_jetstream_meta_peers_current", server="n1") == 2


def test_a_change_of_meta_leader_is_counted_once_per_server_that_sees_it() -> None:
    monitor = FakeMonitor(recorded("healthy"))
    exporter = collector(monitor.fetch)
    scrape(exporter)

    monitor.docs = recorded("n1_killed")  # n1 killed: n2 leads
    after = scrape(exporter)
    again = scrape(exporter)

    for node in ("n2", "n3"):
        assert value(after, "nats_jetstream_meta_leader_changes_total", server=node) == 1
        assert value(again, "nats_jetstream_meta_leader_changes_total", server=node) == 1
    assert value(after, "nats_jetstream_meta_is_leader", server="n2") == 1
    assert value(after, "nats_jetstream_meta_leader_changes_total", server="n1") is None


@pytest.mark.parametrize(
    ("leaders", "changes"),
    [
        (["n1", "n1", "n1"], 0),
        (["n1", "n2"], 1),
        (["n1", "", "n1"], 0),  # an election the same leader won
        (["n1", "", "n2"], 1),  # counted once, not once to nobody and once to n2
        (["", "n1"], 0),  # the first leader seen is no change
        (["n1", "n2", "n1", "n3"], 3),
    ],
)
def test_leader_changes_count_each_new_name_after_the_first(
    leaders: list[str], changes: int
) -> None:
    counter = LeaderChanges()
    counted = [counter.observe("n1", leader) for leader in leaders]

    assert counted[-1] == changes
    assert counted == sorted(counted)


def test_leader_changes_are_kept_across_a_scrape_the_server_missed() -> None:
    monitor = FakeMonitor(recorded("healthy"))
    exporter = collector(monitor.fetch)
    scrape(exporter)
    monitor.docs = {k: v for k, v in recorded("healthy").items() if k[0] != "n2"}
    assert value(scrape(exporter), "nats_server_up", server="n2") == 0

    monitor.docs = recorded("n1_killed")
    series = scrape(exporter)

    assert value(series, "nats_jetstream_meta_leader_changes_total", server="n2") == 1


# -- streams --------------------------------------------------------------------------------


def test_every_stream_is_reported_by_every_replica_with_one_leader() -> None:
    docs = recorded("healthy")
    series = scrape(collector(docs))
    names = {stream["name"] for stream in streams(docs, "n1")}

    assert len(names) == 8
    for name in names:
        leaders = [
            node
            for node in NODES
            if value(series, "nats_jetstream_stream_is_leader", server=node, stream=name) == 1
        ]
        assert len(leaders) == 1, name
        for node in NODES:
            labels = {"server": node, "stream": name}
            assert value(series, "nats_jetstream_stream_replicas_configured", **labels) == 3
            assert value(series, "nats_jetstream_stream_is_leader", **labels) is not None
            current = value(series, "nats_jetstream_stream_replicas_current", **labels)
            assert current == (3 if node == leaders[0] else None), (name, node)


def test_a_streams_size_and_consumers_come_from_its_state() -> None:
    docs = recorded("healthy")
    series = scrape(collector(docs))

    for node in NODES:
        labels = {"server": node, "stream": "KV_UNIBUS_users"}
        state = next(s for s in streams(docs, node) if s["name"] == "KV_UNIBUS_users")["state"]
        assert value(series, "nats_jetstream_stream_messages", **labels) == 2
        assert value(series, "nats_jetstream_stream_bytes", **labels) == state["bytes"] > 0
        assert value(series, "nats_jetstream_stream_consumers", **labels) == 1


def test_the_leader_reports_each_followers_lag() -> None:
    docs = recorded("n1_killed")
    series = scrape(collector(docs))

    # recorded: n3 leads UNIBUS_messages, n1 (killed) two operations behind, n2 current
    lag = of(series, "nats_jetstream_stream_follower_lag")
    messages = {
        dict(k)["peer"]: v for k, v in lag.items() if dict(k)["stream"] == "UNIBUS_messages"
    }
    assert messages == {"n1": 2, "n2": 0}
    assert {dict(k)["server"] for k in lag} <= {"n2", "n3"}
    follower_view = {"server": "n2", "stream": "UNIBUS_messages", "peer": "n1"}
    assert value(series, "nats_jetstream_stream_follower_lag", **follower_view) is None


def test_after_a_node_is_killed_it_is_down_and_its_streams_lose_a_current_replica() -> None:
    series = scrape(collector(recorded("n1_killed")))

    assert value(series, "nats_server_up", server="n1") == 0
    assert [k for k in series if dict(k[1]).get("server") == "n1"] == [
        ("nats_server_up", frozenset({("server", "n1")}))
    ]
    assert value(series, "nats_server_up", server="n2") == 1
    assert value(series, "nats_server_up", server="n3") == 1
    current = of(series, "nats_jetstream_stream_replicas_current")
    assert len(current) == 8  # every stream has a leader among n2 and n3
    # recorded six seconds after the kill: UNIBUS_messages' leader (n3) no longer counts n1;
    # the leaders of the idle streams had not noticed yet
    assert (
        value(
            series, "nats_jetstream_stream_replicas_current", server="n3", stream="UNIBUS_messages"
        )
        == 2
    )
    assert sorted(current.values()) == [2, 3, 3, 3, 3, 3, 3, 3]


def test_a_stream_without_a_replica_group_is_led_by_the_server_holding_it() -> None:
    docs = recorded("healthy")
    stream = streams(docs, "n1")[0]
    del stream["cluster"]
    series = scrape(collector(docs))

    labels = {"server": "n1", "stream": stream["name"]}
    assert value(series, "nats_jetstream_stream_is_leader", **labels) == 1
    assert value(series, "nats_jetstream_stream_replicas_current", **labels) == 1


def test_a_single_server_without_a_meta_group_leads_its_streams_alone() -> None:
    """What nats-server 2.15.1 answers when JetStream is not clustered (one node)."""
    docs = recorded("healthy")
    del docs[("n1", "jsz")]["meta_cluster"]
    for stream in streams(docs, "n1"):
        stream["cluster"] = {"leader": "n1"}
        stream["config"]["num_replicas"] = 1
    series = scrape(collector(docs))

    assert not [
        k for k in series if k[0].startswith("nats_jetstream_meta") and ("server", "n1") in k[1]
    ]
    labels = {"server": "n1", "stream": "KV_UNIBUS_users"}
    assert value(series, "nats_jetstream_stream_is_leader", **labels) == 1
    assert value(series, "nats_jetstream_stream_replicas_current", **labels) == 1
    assert value(series, "nats_jetstream_stream_replicas_configured", **labels) == 1


def test_varz_naming_no_server_is_malformed() -> None:
    docs = recorded("healthy")
    del docs[("n1", "varz")]["server_name"]
    series = scrape(collector(docs))

    assert value(series, "nats_server_up", server="n1") == 0


def test_a_stream_name_in_two_accounts_is_exported_once() -> None:
    docs = recorded("healthy")
    jsz = docs[("n1", "jsz")]
    other = copy.deepcopy(jsz["account_details"][0])
    other["name"] = other["id"] = "OTHER"
    jsz["account_details"].append(other)
    registry = CollectorRegistry()
    registry.register(collector(docs))

    text = generate_latest(registry).decode()

    line = 'nats_jetstream_stream_messages{server="n1",stream="KV_UNIBUS_users"}'
    assert text.count(line) == 1


# -- failures -------------------------------------------------------------------------------


def test_a_server_that_refuses_is_down_and_the_others_are_served() -> None:
    docs = {k: v for k, v in recorded("healthy").items() if k[0] != "n2"}
    series = scrape(collector(docs))

    assert value(series, "nats_server_up", server="n2") == 0
    assert value(series, "nats_server_up", server="n1") == 1
    assert value(series, "nats_server_routes", server="n3") == 2


@pytest.mark.parametrize("endpoint", ["varz", "routez", "jsz"])
def test_a_server_missing_any_one_answer_is_down(endpoint: str) -> None:
    docs = recorded("healthy")
    del docs[("n3", endpoint)]
    series = scrape(collector(docs))

    assert value(series, "nats_server_up", server="n3") == 0
    assert not [k for k in series if dict(k[1]).get("server") == "n3" and k[0] != "nats_server_up"]


@pytest.mark.parametrize(
    ("endpoint", "garbage"),
    [
        ("varz", ["not", "an", "object"]),
        ("routez", "text"),
        ("jsz", {"account_details": "not a list"}),
        ("jsz", {"account_details": [{"stream_detail": [{"state": {}}]}]}),
    ],
)
def test_a_malformed_answer_is_a_down_server_not_a_failed_scrape(
    endpoint: str, garbage: Any
) -> None:
    docs = recorded("healthy")
    docs[("n2", endpoint)] = garbage
    series = scrape(collector(docs))

    assert value(series, "nats_server_up", server="n2") == 0
    assert value(series, "nats_server_up", server="n1") == 1


def test_a_server_that_does_not_answer_in_time_is_down_and_does_not_hold_up_the_scrape() -> None:
    docs = recorded("healthy")
    monitor = FakeMonitor(docs)
    release = threading.Event()

    def fetch(url: str) -> Any:
        if "n2.test" in url:
            release.wait(10)
        return monitor.fetch(url)

    try:
        began = time.monotonic()
        series = scrape(collector(fetch, timeout=0.3))
        took = time.monotonic() - began
    finally:
        release.set()

    assert took < 2.0
    assert value(series, "nats_server_up", server="n2") == 0
    assert value(series, "nats_server_up", server="n1") == 1
    assert value(series, "nats_server_up", server="n3") == 1


def test_every_endpoint_of_every_server_is_read_once_a_scrape() -> None:
    monitor = FakeMonitor(recorded("healthy"))

    scrape(collector(monitor.fetch))

    assert sorted(monitor.urls) == sorted(
        f"http://{node}.test:8222/{endpoint}"
        for node in NODES
        for endpoint in ("varz", "routez", "jsz?accounts=true&streams=true&config=true")
    )

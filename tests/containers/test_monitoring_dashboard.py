"""Prometheus with the rendered directory scraping a fake cluster: the scrape config
verifies each node's certificate, labels are what the rules and the dashboard expect, the
dashboard renders from live data, and a degraded asset raises its alert.

The fake endpoints (tests/containers/fake_metrics.py) serve the metric contract over
HTTPS under the compose names with a certificate for the node's name only, so a scrape
succeeds only through ``server_name``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.containers.harness import eventually
from tests.containers.prometheus import NODES, FakeCluster, require_prometheus_image


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeCluster]:
    require_prometheus_image()
    directory = tmp_path_factory.mktemp("fake-cluster")
    directory.chmod(0o755)
    fake = FakeCluster(directory, degraded="KV_UNIBUS_nonces").start()
    try:
        fake.wait_scraped()
        yield fake
    finally:
        fake.stop()


def test_every_target_is_scraped_over_verified_tls_and_labelled_by_node(
    cluster: FakeCluster,
) -> None:
    up = {(s["metric"]["job"], s["metric"]["instance"]): s["value"][1] for s in cluster.query("up")}

    assert up == {
        ("prometheus", "prometheus"): "1",
        **{(job, node): "1" for job in ("nats", "authcallout", "controlplane") for node in NODES},
    }
    leaders = cluster.query("nats_jetstream_meta_is_leader == 1")
    assert [(s["metric"]["instance"], s["metric"]["server"]) for s in leaders] == [("n2", "n2")]


def test_the_rules_are_loaded(cluster: FakeCluster) -> None:
    status, body = cluster.get("/api/v1/rules")

    assert status == 200
    for alert in ("UnibusQuorumLost", "UnibusAssetDegraded", "UnibusCalloutViewStale"):
        assert f'"name":"{alert}"' in body


def test_the_dashboard_renders_the_cluster_the_auth_path_and_the_bus(cluster: FakeCluster) -> None:
    # Rates need two scrapes: the decisions table fills one scrape after the targets are up.
    status, page = eventually(
        lambda: cluster.get("/consoles/unibus.html"),
        until=lambda answer: answer[0] != 200 or "<td>allowed</td>" in answer[1],
        timeout=30,
        what="the dashboard showing decision rates",
    )

    assert status == 200, page
    assert "error executing template" not in page
    for heading in ("Cluster", "Assets", "Auth path", "Bus"):
        assert f">{heading}</h" in page
    summary = re.sub(r"\s+", " ", page.split("<h2>Cluster</h2>")[0])
    assert '<th>nodes up</th> <td class="table-success"> 3 of 3</td>' in summary
    assert '<th>meta leader</th> <td class="table-success">n2</td>' in summary
    assert '<td class="table-warning">7 of 8</td>' in summary  # KV_UNIBUS_nonces degraded
    for stream in ("KV_UNIBUS_users", "OBJ_UNIBUS_blobs", "UNIBUS_messages"):
        assert f"<th>{stream}</th>" in page
    assert "2 of 3" in page
    for reason in ("allowed", "revoked", "store_unavailable"):
        assert f"<td>{reason}</td>" in page
    assert "no data" not in page


def test_the_dashboards_links_lead_to_pages_this_prometheus_serves(cluster: FakeCluster) -> None:
    """Debian's build serves its UI under /classic/, the official one at the root: the
    dashboard links to whichever the running Prometheus has."""
    _, page = cluster.get("/consoles/unibus.html")
    nav = page.split("<nav", 1)[1].split("</nav>", 1)[0]
    links = re.findall(r'href="([^"]+)"', nav)

    assert len(links) == 5
    for link in links:
        status, _ = cluster.get(link)
        assert status == 200, link


def test_a_degraded_asset_raises_its_alert(cluster: FakeCluster) -> None:
    firing = cluster.api.wait_firing("UnibusAssetDegraded", timeout=180)

    assert [s["metric"]["stream"] for s in firing] == ["KV_UNIBUS_nonces"]
    _, page = cluster.get("/consoles/unibus.html")
    assert "UnibusAssetDegraded" in page

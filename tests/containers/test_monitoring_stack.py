"""Monitoring of the compose stack (issue 16), against the real Prometheus of its
``monitoring`` profile: every node's exporter, callout and API is a target that is up
(each scraped over HTTPS on the compose network, verified with the client CA); each metric
SPEC §9 names has a sample once the stack has done the work behind it (decisions, a
revocation with a live session, API requests); the config and rules the stack runs pass
``promtool``; and stopping a node fires the degraded-asset alert, which resolves once the
node is back."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.containers.harness import ComposeStack, eventually
from tests.containers.prometheus import PrometheusApi, require_prometheus_image
from unibus.core.connect import NatsTarget, connect

pytestmark = pytest.mark.timeout(1200)

NODES = ("n1", "n2", "n3")
JOBS = ("nats", "authcallout", "controlplane")
CONFIG = "/etc/prometheus/monitoring/prometheus.yml"
RULES = "/etc/prometheus/monitoring/rules/unibus.rules.yml"


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    require_prometheus_image()
    stack = ComposeStack.create(tmp_path_factory.mktemp("monitored"))
    try:
        stack.up("monitoring")
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def prometheus(monitored: ComposeStack) -> PrometheusApi:
    env = (monitored.directory / "compose.env").read_text().splitlines()
    port = next(int(line.split("=", 1)[1]) for line in env if line.startswith("UNIBUS_PROM"))
    return PrometheusApi(f"http://127.0.0.1:{port}")


def _up(targets: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}


def test_every_node_exporter_callout_and_api_is_a_target_that_is_up(
    prometheus: PrometheusApi,
) -> None:
    wanted = {(job, node) for job in JOBS for node in NODES}
    seen = eventually(
        prometheus.targets,
        until=lambda ts: all(_up(ts).get(key) == "up" for key in wanted),
        timeout=120,
        interval=2,
        what="every unibus target up",
    )
    assert {key for key in _up(seen) if key[0] in JOBS} == wanted
    for target in seen:
        if target["labels"]["job"] in JOBS:
            assert target["scrapeUrl"].startswith("https://"), target["scrapeUrl"]


def _member(stack: ComposeStack, tmp: Path) -> tuple[str, NatsTarget]:
    seed = tmp / "member.seed"
    made = stack.cli("keygen", "--out", str(seed), "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["public_key"]
    added = stack.cli(
        "user", "add", "--dir", str(stack.directory), "--handle", "watched", "--key", key
    )
    assert added.returncode == 0, added.stderr
    info = stack.info
    target = NatsTarget(urls=tuple(info.nats_urls), ca_file=Path(info.ca_file), identity_file=seed)
    return key, target


async def _revoke_while_connected(stack: ComposeStack, key: str, target: NatsTarget) -> None:
    closed = asyncio.Event()

    async def on_disconnect() -> None:
        closed.set()

    nc = await connect(
        target,
        name="watched",
        max_reconnect_attempts=0,
        disconnected_cb=on_disconnect,
    )
    try:
        await nc.flush(timeout=5)
        revoked = await asyncio.to_thread(
            stack.cli, "user", "revoke", "--dir", str(stack.directory), key
        )
        assert revoked.returncode == 0, revoked.stderr
        async with asyncio.timeout(30):
            await closed.wait()
    finally:
        await nc.close()


def _has_sample(prometheus: PrometheusApi, expr: str) -> bool:
    return bool(prometheus.query(expr))


# Every family SPEC §9 and the issue name, with the selector that proves the work was seen.
NAMED = {
    "decisions by reason": 'unibus_authcallout_decisions_total{reason="allowed"}',
    "decision latency": "unibus_authcallout_decision_seconds_count > 0",
    "watch lag": "unibus_authcallout_watch_lag_seconds",
    "callout view fresh": "unibus_authcallout_view_fresh == 1",
    "kicks": "unibus_authcallout_kicks_total > 0",
    "revoke to disconnect latency": "unibus_authcallout_revoke_disconnect_seconds_count > 0",
    "API requests by route and status": 'unibus_api_requests_total{route!="", status=~"2.."}',
    # clientcheck's signed requests, beside /healthz: more than one route counted
    "API requests of several routes": "count(count by (route) (unibus_api_requests_total)) > 1",
    "API latency": "unibus_api_request_seconds_count > 0",
    "API certificate expiry": "unibus_api_certificate_expiry_timestamp_seconds > time()",
    "nats connections": "nats_server_connections > 0",
    "nats message rates": "nats_server_in_msgs_total > 0",
    "nats byte rates": "nats_server_out_bytes_total > 0",
    "slow consumers": "nats_server_slow_consumers_total",
    "routes": "nats_server_routes == 2",
    "stream messages": 'nats_jetstream_stream_messages{stream="KV_UNIBUS_users"} > 0',
    "stream bytes": "nats_jetstream_stream_bytes",
    "stream replicas": "nats_jetstream_stream_replicas_configured == 3",
    "stream leader": "nats_jetstream_stream_is_leader == 1",
    "stream follower lag": "nats_jetstream_stream_follower_lag",
    "meta leader": "nats_jetstream_meta_is_leader == 1",
    "meta leader changes": "nats_jetstream_meta_leader_changes_total",
    "node certificate expiry": "nats_server_tls_cert_not_after_timestamp_seconds > time()",
}


def test_each_named_metric_has_a_sample_after_the_work_behind_it(
    monitored: ComposeStack, prometheus: PrometheusApi, tmp_path: Path
) -> None:
    check = monitored.cli("clientcheck", "--dir", str(monitored.directory), timeout=180)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    key, target = _member(monitored, tmp_path)
    asyncio.run(_revoke_while_connected(monitored, key, target))

    def missing() -> list[str]:
        return [name for name, expr in NAMED.items() if not _has_sample(prometheus, expr)]

    # Each target is scraped on its own schedule: wait for the scrapes after the work.
    eventually(missing, until=lambda names: not names, timeout=120, interval=2, what="a sample")


def test_the_dashboard_renders_the_live_cluster(prometheus: PrometheusApi) -> None:
    def page() -> str:
        status, body = prometheus.get("/consoles/unibus.html")
        assert status == 200, body
        return body

    html = eventually(
        page,
        until=lambda text: "3 of 3" in text,
        timeout=120,
        interval=2,
        what="the dashboard counting 3 of 3 nodes up",
    )
    assert "error executing template" not in html
    summary = re.sub(r"\s+", " ", html.split("<h2>Cluster</h2>")[0])
    assert '<th>nodes up</th> <td class="table-success"> 3 of 3</td>' in summary
    for stream in ("KV_UNIBUS_users", "OBJ_UNIBUS_blobs", "UNIBUS_messages"):
        assert f"<th>{stream}</th>" in html
    for node in NODES:
        assert f"<th>{node}</th>" in html


def _browser() -> str:
    """A headless browser (scripts/containers installs one); skipped with the reason
    without it, and failed instead under UNIBUS_REQUIRE_CONTAINERS=1."""
    found = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if found is not None:
        return found
    reason = "no headless browser (chromium-headless-shell): run ./scripts/containers as root"
    if os.environ.get("UNIBUS_REQUIRE_CONTAINERS") == "1":
        pytest.fail(f"container tier required but {reason}")
    pytest.skip(reason)


def test_the_dashboard_draws_its_graphs_in_a_real_browser(
    prometheus: PrometheusApi, tmp_path: Path
) -> None:
    """The tables are rendered by Prometheus; the graphs by the page's JavaScript, which
    only a browser runs. A screenshot is left beside the test's files to look at."""
    browser = _browser()
    url = f"{prometheus.url}/consoles/unibus.html"
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    base += ["--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}"]

    def dom() -> str:
        done = subprocess.run(
            [*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=False
        )
        return done.stdout

    page = eventually(
        dom,
        until=lambda text: text.count('class="rickshaw_graph"') >= 4 and "<path" in text,
        timeout=120,
        interval=5,
        what="the dashboard's four graphs drawn by the browser",
    )
    assert page.count("<svg") >= 4
    assert "3 of 3" in page
    shot = tmp_path / "dashboard.png"
    subprocess.run(
        [*base, "--window-size=1400,1800", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert shot.stat().st_size > 50_000, "the screenshot is (nearly) empty"


def _compose_exec(stack: ComposeStack, *command: str) -> tuple[int, str]:
    result = stack.compose("--profile", "monitoring", "exec", "-T", "prometheus", *command)
    return result.returncode, result.stdout + result.stderr


def test_promtool_accepts_the_config_and_the_rules_the_stack_runs(
    monitored: ComposeStack,
) -> None:
    code, output = _compose_exec(monitored, "promtool", "check", "config", CONFIG)
    assert code == 0, output
    code, output = _compose_exec(monitored, "promtool", "check", "rules", RULES)
    assert code == 0, output
    assert "SUCCESS" in output


def test_a_stopped_node_fires_the_degraded_asset_alert_until_it_is_back(
    monitored: ComposeStack, prometheus: PrometheusApi
) -> None:
    assert prometheus.firing("UnibusAssetDegraded") == []
    monitored.stop("n3")
    try:
        # Writes while it is down: a follower that misses them is not current even where
        # the leader has not yet noticed the silence of an idle one.
        check = monitored.cli("clientcheck", "--dir", str(monitored.directory), timeout=180)
        assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
        fired = prometheus.wait_firing("UnibusAssetDegraded", timeout=300, why=" with n3 stopped")
        assert {alert["metric"]["stream"] for alert in fired}
        down = prometheus.wait_firing("UnibusNodeDown", timeout=180, why=" with n3 stopped")
        assert [alert["metric"]["instance"] for alert in down] == ["n3"]
    finally:
        monitored.start("n3")
    prometheus.wait_resolved("UnibusAssetDegraded", timeout=300, why=" with n3 back")
    monitored.wait_healthy(timeout=180)

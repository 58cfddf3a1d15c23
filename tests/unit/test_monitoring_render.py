"""unibus.stack.monitoring: the Prometheus directory rendered for compose and for hosts.

No sockets: the rendered YAML is parsed and read. That Prometheus accepts it, that the
rules fire as meant and that the dashboard renders is checked with the real binary in
tests/containers/test_monitoring_rules.py and test_monitoring_dashboard.py.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from unibus.core.errors import ConfigError, PostureError
from unibus.stack.monitoring import (
    CONFIG_FILE,
    CONSOLE_FILE,
    JOBS,
    RULES_FILE,
    MonitoringSpec,
    NodeTargets,
    ScrapeTLS,
    prometheus_args,
    render_monitoring,
    write_monitoring,
)

NODES = ("n1", "n2", "n3")
TLS = ScrapeTLS(ca_file="certs/client-ca.pem")

# The metric contract the rules are written against (the nats exporter's, the callout's and
# the API's, as prometheus_client exposes them: counters with _total, histograms _bucket).
CONTRACT = {
    "nats_server_up",
    "nats_server_info",
    "nats_server_start_time_seconds",
    "nats_server_connections",
    "nats_server_accepted_connections_total",
    "nats_server_subscriptions",
    "nats_server_slow_consumers_total",
    "nats_server_in_msgs_total",
    "nats_server_out_msgs_total",
    "nats_server_in_bytes_total",
    "nats_server_out_bytes_total",
    "nats_server_routes",
    "nats_server_memory_bytes",
    "nats_server_cpu_percent",
    "nats_server_tls_cert_not_after_timestamp_seconds",
    "nats_jetstream_meta_has_leader",
    "nats_jetstream_meta_is_leader",
    "nats_jetstream_meta_cluster_size",
    "nats_jetstream_meta_peers_current",
    "nats_jetstream_meta_leader_changes_total",
    "nats_jetstream_stream_messages",
    "nats_jetstream_stream_bytes",
    "nats_jetstream_stream_consumers",
    "nats_jetstream_stream_replicas_configured",
    "nats_jetstream_stream_is_leader",
    "nats_jetstream_stream_replicas_current",
    "nats_jetstream_stream_follower_lag",
    "unibus_authcallout_decisions_total",
    "unibus_authcallout_decision_seconds_bucket",
    "unibus_authcallout_watch_lag_seconds",
    "unibus_authcallout_view_fresh",
    "unibus_authcallout_nodes_served",
    "unibus_authcallout_key_generations",
    "unibus_authcallout_kicks_total",
    "unibus_authcallout_revoke_disconnect_seconds_bucket",
    "unibus_authcallout_room_cap_truncated_total",
    "unibus_api_requests_total",
    "unibus_api_request_seconds_bucket",
    "unibus_api_replay_rejections_total",
    "unibus_api_certificate_expiry_timestamp_seconds",
}
_METRIC_RE = re.compile(r'(?<!\w)((?:nats|unibus)_[a-z0-9_]+)(?![\w"])')
"""A series name; a template name (``"unibus_flag"``) ends with a quote and is left out."""


def _compose_spec(**overrides: Any) -> MonitoringSpec:
    settings: dict[str, Any] = {"tls": TLS, **overrides}
    return MonitoringSpec(nodes=[NodeTargets.in_compose(node) for node in NODES], **settings)


def _config(spec: MonitoringSpec) -> dict[str, Any]:
    parsed: dict[str, Any] = yaml.safe_load(render_monitoring(spec)[CONFIG_FILE])
    return parsed


def _jobs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in config["scrape_configs"]}


def _relabelled(job: dict[str, Any]) -> dict[str, str]:
    return {rule["target_label"]: rule["replacement"] for rule in job["relabel_configs"]}


def _rules() -> list[dict[str, Any]]:
    parsed = yaml.safe_load(render_monitoring(_compose_spec())[RULES_FILE])
    return [rule for group in parsed["groups"] for rule in group["rules"]]


# -- the scrape config ----------------------------------------------------------------------


def test_compose_render_scrapes_every_role_on_every_node_by_its_compose_name() -> None:
    jobs = _jobs(_config(_compose_spec()))

    targets = {
        name: job["static_configs"][0]["targets"]
        for name, job in jobs.items()
        if name != "prometheus"
    }
    assert targets == {
        **{f"nats@{n}": [f"natsexporter-{n}:7777"] for n in NODES},
        **{f"authcallout@{n}": [f"authcallout-{n}:9471"] for n in NODES},
        **{f"controlplane@{n}": [f"controlplane-{n}:9470"] for n in NODES},
    }


def test_every_unibus_job_is_https_verified_against_the_client_ca_and_its_node_name() -> None:
    jobs = _jobs(_config(_compose_spec()))

    for role in JOBS:
        for node in NODES:
            job = jobs[f"{role}@{node}"]
            assert job["scheme"] == "https"
            assert job["tls_config"] == {"ca_file": "certs/client-ca.pem", "server_name": node}
            assert "insecure_skip_verify" not in job["tls_config"]


def test_job_is_relabelled_to_the_role_and_instance_to_the_node() -> None:
    jobs = _jobs(_config(_compose_spec()))

    for role in JOBS:
        for node in NODES:
            assert _relabelled(jobs[f"{role}@{node}"]) == {"job": role, "instance": node}


def test_prometheus_scrapes_itself_over_plain_http() -> None:
    job = _jobs(_config(_compose_spec()))["prometheus"]

    assert job["static_configs"] == [
        {"targets": ["localhost:9090"], "labels": {"instance": "prometheus"}}
    ]
    assert "scheme" not in job


def test_host_render_scrapes_each_hosts_private_address() -> None:
    spec = MonitoringSpec(
        nodes=[
            NodeTargets.on_host("n1", "10.0.0.5"),
            NodeTargets.on_host("n2", "10.0.0.6", server_name="n2.example.org"),
            NodeTargets.on_host("n3", "fd00::7", nats_port=17777),
        ],
        tls=ScrapeTLS(ca_file="/etc/prometheus/certs/client-ca.pem"),
    )
    jobs = _jobs(_config(spec))

    assert jobs["nats@n1"]["static_configs"][0]["targets"] == ["10.0.0.5:7777"]
    assert jobs["authcallout@n1"]["static_configs"][0]["targets"] == ["10.0.0.5:9471"]
    assert jobs["controlplane@n1"]["static_configs"][0]["targets"] == ["10.0.0.5:9470"]
    assert jobs["nats@n3"]["static_configs"][0]["targets"] == ["[fd00::7]:17777"]
    assert jobs["controlplane@n2"]["tls_config"]["server_name"] == "n2.example.org"
    assert jobs["nats@n3"]["tls_config"]["server_name"] == "n3"
    assert _relabelled(jobs["nats@n3"])["instance"] == "n3"


def test_rules_are_loaded_relative_to_the_config_and_no_alertmanager_by_default() -> None:
    config = _config(_compose_spec())

    assert config["rule_files"] == ["rules/*.yml"]
    assert "alerting" not in config
    assert config["global"]["external_labels"] == {"cluster": "unibus"}


def test_alertmanagers_and_intervals_are_rendered_when_given() -> None:
    config = _config(
        _compose_spec(alertmanagers=("am:9093",), scrape_interval=5, evaluation_interval=30)
    )

    assert config["alerting"] == {"alertmanagers": [{"static_configs": [{"targets": ["am:9093"]}]}]}
    assert config["global"]["scrape_interval"] == "5s"
    assert config["global"]["scrape_timeout"] == "5s"  # never above the interval
    assert config["global"]["evaluation_interval"] == "30s"


def test_plain_http_is_rendered_for_loopback_targets() -> None:
    spec = MonitoringSpec(
        nodes=[
            NodeTargets("n1", "127.0.0.1:7777", "127.0.0.1:9471", "localhost:9470"),
        ],
        tls=None,
    )
    job = _jobs(_config(spec))["nats@n1"]

    assert job["scheme"] == "http"
    assert "tls_config" not in job


def test_plain_http_off_loopback_is_refused() -> None:
    """The services refuse to serve metrics off loopback without TLS; so does the scraper."""
    spec = MonitoringSpec(nodes=[NodeTargets.in_compose("n1")], tls=None)

    with pytest.raises(PostureError, match="off loopback"):
        render_monitoring(spec)


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([], "at least one node"),
        ([NodeTargets.in_compose("n1"), NodeTargets.in_compose("n1")], "unique"),
        ([NodeTargets.in_compose('n1"\ninjected: x')], "node name"),
        ([NodeTargets("n1", "n1", "a:9471", "c:9470")], "HOST:PORT"),
        ([NodeTargets("n1", "n1:0", "a:9471", "c:9470")], "HOST:PORT"),
        ([NodeTargets("n1", "n1:7777", "a b:9471", "c:9470")], "neither a host name"),
        ([NodeTargets("n1", "n1:7777", "a:9471", "c:9470", server_name="x/y")], "server name"),
    ],
)
def test_unusable_nodes_are_refused(nodes: list[NodeTargets], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        render_monitoring(MonitoringSpec(nodes=nodes, tls=TLS))


@pytest.mark.parametrize(
    "overrides",
    [
        {"tls": ScrapeTLS(ca_file="ca\n.pem")},
        {"tls": ScrapeTLS(ca_file="")},
        {"scrape_interval": 0},
        {"cluster": "a b"},
        {"alertmanagers": ("am",)},
    ],
)
def test_unusable_settings_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        render_monitoring(_compose_spec(**overrides))


# -- the rules ------------------------------------------------------------------------------


def test_every_alert_has_a_for_a_severity_and_says_what_to_run() -> None:
    alerts = [rule for rule in _rules() if "alert" in rule]

    assert len(alerts) >= 8
    for alert in alerts:
        assert re.fullmatch(r"\d+[smh]", alert["for"]), alert["alert"]
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]
        assert alert["annotations"]["summary"], alert["alert"]
        assert "`unibus " in alert["annotations"]["description"], alert["alert"]


def test_the_required_alerts_exist() -> None:
    names = {rule["alert"] for rule in _rules()}

    assert names >= {
        "UnibusAssetDegraded",
        "UnibusAssetNoLeader",
        "UnibusCalloutViewStale",
        "UnibusCalloutServesNoNode",
        "UnibusNoMetaLeader",
        "UnibusQuorumLost",
        "UnibusCertificateExpiring",
        "UnibusDenialSpike",
        "UnibusApiErrors",
        "UnibusRevokeDisconnectSlow",
        "UnibusTargetDown",
    }


def test_rules_and_dashboard_use_only_the_metric_contract() -> None:
    """A misspelt series name matches nothing and never fires: every name must be known."""
    files = render_monitoring(_compose_spec())
    used = {match for rule in _rules() for match in _METRIC_RE.findall(rule["expr"])}
    used |= set(_METRIC_RE.findall(files[CONSOLE_FILE]))

    assert used - CONTRACT == set()
    assert {"nats_jetstream_stream_replicas_current", "unibus_authcallout_view_fresh"} <= used


# -- the files ------------------------------------------------------------------------------


def test_the_dashboard_and_rules_are_package_data_and_the_same_for_every_cluster() -> None:
    compose = render_monitoring(_compose_spec())
    hosts = render_monitoring(
        MonitoringSpec(nodes=[NodeTargets.on_host("n1", "10.0.0.5")], tls=TLS)
    )

    assert set(compose) == {CONFIG_FILE, RULES_FILE, CONSOLE_FILE}
    assert compose[RULES_FILE] == hosts[RULES_FILE]
    assert compose[CONSOLE_FILE] == hosts[CONSOLE_FILE]
    assert 'template "prom_console_head"' in compose[CONSOLE_FILE]


def test_written_files_are_readable_by_the_prometheus_user(tmp_path: Path) -> None:
    written = write_monitoring(tmp_path / "mon", _compose_spec())

    assert sorted(p.relative_to(tmp_path / "mon").as_posix() for p in written) == sorted(
        [CONFIG_FILE, RULES_FILE, CONSOLE_FILE]
    )
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755


def test_prometheus_args_point_at_the_mounted_directory() -> None:
    assert prometheus_args() == [
        "--config.file=/etc/prometheus/prometheus.yml",
        "--storage.tsdb.path=/prometheus",
        "--storage.tsdb.retention.time=15d",
        "--web.listen-address=0.0.0.0:9090",
        "--web.console.templates=/etc/prometheus/consoles",
        "--web.console.libraries=/usr/share/prometheus/console_libraries",
    ]

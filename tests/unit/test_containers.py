"""compose.yaml and the per-host compose files run every role the same way.

Both are held to ``unibus.stack.containers``: the per-host renderer builds from it, and
``compose.yaml`` (YAML, for ``docker compose up`` on one machine) is checked against it
here, so a health check or a stop setting changed in one place fails until the other
follows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from unibus.stack import containers
from unibus.stack.compose import MONITORING_DIR, PROMETHEUS_ROOT
from unibus.stack.deploy import EXAMPLE_TOPOLOGY, Topology, host_compose
from unibus.stack.monitoring import prometheus_args

ROOT = Path(__file__).resolve().parents[2]
HEALTH = {
    "authcallout": containers.CALLOUT_HEALTH,
    "controlplane": containers.API_HEALTH,
    "natsexporter": containers.EXPORTER_HEALTH,
}


@pytest.fixture(scope="module")
def compose_yaml() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _host_services() -> dict[str, Any]:
    topology = Topology.parse(EXAMPLE_TOPOLOGY, allow_placeholders=True)
    services = host_compose(topology.hosts[0], topology)["services"]
    assert isinstance(services, dict)
    return services


def _fold(code: str) -> str:
    # compose.yaml folds the one-liner over lines (">-"): compare without the layout.
    return " ".join(code.split())


@pytest.mark.parametrize("node", ["n1", "n2", "n3"])
def test_compose_yaml_stops_every_node_in_lame_duck_with_the_shared_grace(
    compose_yaml: dict[str, Any], node: str
) -> None:
    service = compose_yaml["services"][node]
    assert service["stop_signal"] == containers.NATS_STOP_SIGNAL
    assert service["stop_grace_period"] == containers.NATS_STOP_GRACE


def test_the_per_host_node_stops_in_lame_duck_with_the_shared_grace() -> None:
    node = _host_services()["n1"]
    assert node["stop_signal"] == containers.NATS_STOP_SIGNAL
    assert node["stop_grace_period"] == containers.NATS_STOP_GRACE


@pytest.mark.parametrize("role", sorted(containers.SERVICE_COMMANDS))
@pytest.mark.parametrize("node", ["n1", "n2", "n3"])
def test_compose_yaml_runs_each_service_with_the_shared_command_and_health_check(
    compose_yaml: dict[str, Any], role: str, node: str
) -> None:
    service = compose_yaml["services"][f"{role}-{node}"]
    assert tuple(service["command"]) == containers.SERVICE_COMMANDS[role]
    test = service["healthcheck"]["test"]
    assert test[:3] == containers.health_test("")[:3]
    assert _fold(test[3]) == _fold(HEALTH[role])


@pytest.mark.parametrize("role", sorted(containers.SERVICE_COMMANDS))
def test_the_per_host_services_run_the_shared_command_and_health_check(role: str) -> None:
    service = _host_services()[role]
    assert tuple(service["command"]) == containers.SERVICE_COMMANDS[role]
    assert service["healthcheck"]["test"] == containers.health_test(HEALTH[role])


def test_compose_yaml_runs_prometheus_as_the_monitoring_module_says(
    compose_yaml: dict[str, Any],
) -> None:
    service = compose_yaml["services"]["prometheus"]
    assert service["profiles"] == ["monitoring"]
    assert service["command"] == prometheus_args(config_dir=f"{PROMETHEUS_ROOT}/{MONITORING_DIR}")
    assert f"material-monitoring:{PROMETHEUS_ROOT}:ro" in service["volumes"]

"""The monitoring directory through the real promtool, in unibus/prometheus:local.

``promtool check config`` (which checks the rules it loads too) on the compose render;
``promtool test rules`` on tests/containers/monitoring/unibus.rules.test.yml, whose
cases feed series in and expect alerts out: every alert fires on its condition, an
asset-degraded alert fires and resolves, a healthy cluster fires nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.containers.prometheus import RULE_TESTS, promtool, render, require_prometheus_image
from unibus.stack.monitoring import CONFIG_FILE, RULES_FILE


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_prometheus_image()
    directory = tmp_path_factory.mktemp("monitoring")
    directory.chmod(0o755)
    render(directory / "prometheus")
    shutil.copy(RULE_TESTS, directory / "prometheus" / RULE_TESTS.name)
    (directory / "prometheus" / RULE_TESTS.name).chmod(0o644)
    return directory / "prometheus"


def test_the_rendered_config_and_its_rules_pass_promtool_check(rendered: Path) -> None:
    code, output = promtool(rendered, "check", "config", CONFIG_FILE)

    assert code == 0, output
    assert "SUCCESS: 1 rule files found" in output
    code, output = promtool(rendered, "check", "rules", RULES_FILE)
    assert code == 0, output


def test_the_alert_rules_fire_and_resolve_as_their_unit_tests_expect(rendered: Path) -> None:
    code, output = promtool(rendered, "test", "rules", RULE_TESTS.name)

    assert code == 0, output
    assert "SUCCESS" in output


def test_a_broken_expectation_fails_promtool(rendered: Path) -> None:
    """The unit tests can fail: an expected alert that does not fire is reported."""
    broken = rendered.parent / "broken"
    shutil.copytree(rendered, broken)
    text = (broken / RULE_TESTS.name).read_text()
    (broken / RULE_TESTS.name).write_text(
        text.replace("values: '3 3 2 2 2 2 2 3", "values: '3 3 3 3 3 3 3 3", 1)
    )

    code, output = promtool(broken, "test", "rules", RULE_TESTS.name)

    assert code != 0
    assert "UnibusAssetDegraded" in output

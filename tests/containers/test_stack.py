"""The compose stack from clean volumes, used from the host the way an operator would."""

from __future__ import annotations

import json
from pathlib import Path

from tests.containers.harness import ComposeStack
from tests.fixtures.legacy import build_legacy_db


def test_stack_cold_starts_into_an_r3_cluster_with_tls_healthz_on_every_node(
    stack: ComposeStack,
) -> None:
    """Three routed nodes with mutual route TLS, every asset at R3, every API healthy."""
    status = stack.wait_healthy()
    assert status["expected_nodes"] == 3
    assert len(status["nodes"]) == 3
    assert all(node["route_tls"] and node["routes"] == 2 for node in status["nodes"])
    assert {asset["replicas"] for asset in status["assets"]} == {3}
    for index in range(3):
        code, body = stack.healthz(index)
        assert code == 200, body
        assert stack.info.api_urls[index].startswith("https://127.0.0.1:")


def test_clientcheck_passes_against_the_compose_stack(stack: ComposeStack) -> None:
    """The end-to-end client check runs from the host through the published ports."""
    result = stack.cli("clientcheck", "--dir", str(stack.directory), timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "clientcheck passed" in result.stdout


def test_compose_run_migrate_imports_a_legacy_database(stack: ComposeStack, tmp_path: Path) -> None:
    """`docker compose run migrate` copies the legacy users; `unibus user list` shows them."""
    legacy_dir = tmp_path / "legacy"
    legacy_dir.mkdir()
    fixture = build_legacy_db(legacy_dir / "membershipd.db", users=12, rooms=5, members_per_room=3)
    result = stack.compose(
        "run",
        "--rm",
        "migrate",
        "--json",
        env={"UNIBUS_LEGACY_DIR": str(legacy_dir), "UNIBUS_LEGACY_DB": "membershipd.db"},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    listing = stack.cli("user", "list", "--dir", str(stack.directory), "--json")
    assert listing.returncode == 0, listing.stderr
    keys = {user["key"] for user in json.loads(listing.stdout)}
    assert {fixture.canonical(key) for key in fixture.users} <= keys

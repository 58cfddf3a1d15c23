"""The container tier: the images and the compose stack, through a real Docker engine.

Collected only where an engine is reachable (``./scripts/containers`` makes one usable
on a fresh Debian machine); elsewhere every test is skipped with the reason, at
collection, so the tier never passes silently. ``UNIBUS_REQUIRE_CONTAINERS=1`` (CI)
turns that skip into an error.

Every container, network and volume a test creates carries the compose project name
``unibus-ct-…`` or the testcontainers session label, and is removed at teardown.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers.harness import (
    DEFAULT_DOCKER_CONFIG,
    UNIBUS_IMAGE,
    ComposeStack,
    docker,
    engine_problem,
)

# testcontainers settings for an engine without registry access (notes/containers.md §6).
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
if "DOCKER_CONFIG" not in os.environ and (DEFAULT_DOCKER_CONFIG / "cli-plugins").is_dir():
    os.environ["DOCKER_CONFIG"] = str(DEFAULT_DOCKER_CONFIG)

_HERE = Path(__file__).resolve().parent
_PROBLEM: str | None = None
_CHECKED = False


def _problem() -> str | None:
    global _PROBLEM, _CHECKED
    if not _CHECKED:
        _PROBLEM = engine_problem()
        _CHECKED = True
    return _PROBLEM


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if _HERE in Path(str(item.path)).resolve().parents]
    if not ours:
        return
    problem = _problem()
    for item in ours:
        item.add_marker(pytest.mark.containers)
        if problem is not None:
            if os.environ.get("UNIBUS_REQUIRE_CONTAINERS") == "1":
                raise pytest.UsageError(f"container tier required but {problem}")
            item.add_marker(pytest.mark.skip(reason=f"container tier skipped: {problem}"))


@pytest.fixture(scope="session", autouse=True)
def _remove_testcontainers_leftovers() -> Iterator[None]:
    """Remove what testcontainers started in this session (there is no reaper: no registry)."""
    yield
    if _problem() is not None:
        return
    from testcontainers.core.labels import SESSION_ID

    ids = docker("ps", "-aq", "--filter", f"label=org.testcontainers.session-id={SESSION_ID}")
    if ids.stdout.split():
        docker("rm", "-f", *ids.stdout.split())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    """A compose stack cold-started from clean volumes, torn down (volumes too) after."""
    compose_stack = ComposeStack.create(tmp_path_factory.mktemp("compose"), image=UNIBUS_IMAGE)
    try:
        compose_stack.up()
        yield compose_stack
    finally:
        compose_stack.down()

"""Real nats-server clusters on loopback, started by the same launcher as `unibus up`.

Every cluster gets free ports chosen at run time and a fresh directory; every process is
stopped by PID at teardown, whatever the test did to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.integration.deployment import deployment  # noqa: F401 - a fixture, shared
from tests.integration.harness import StackFactory


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest_asyncio.fixture
async def stacks(tmp_path: Path) -> AsyncIterator[StackFactory]:
    factory = StackFactory(tmp_path)
    try:
        yield factory
    finally:
        await factory.close()

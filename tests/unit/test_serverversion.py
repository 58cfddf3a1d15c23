"""The nats-server version floor: 2.14.4, before which the auth-callout fixes are missing."""

from __future__ import annotations

import pytest
from nats.aio.client import ServerVersion

from unibus.core.bootstrap import provision_cluster
from unibus.core.errors import PostureError
from unibus.core.provisioning import Provisioning
from unibus.core.serverversion import MIN_SERVER_VERSION, require_supported, version_problem


@pytest.mark.parametrize("version", ["2.14.4", "2.15.1", "v2.15.1", "3.0.0", "2.14.10-beta.1"])
def test_the_floor_and_anything_newer_is_supported(version: str) -> None:
    assert version_problem(version) is None
    require_supported(version)


@pytest.mark.parametrize("version", ["2.14.3", "2.10.22", "1.4.1", "v2.14.0"])
def test_an_older_server_is_refused_naming_the_node_and_what_to_do(version: str) -> None:
    problem = version_problem(version, node="n2")
    assert problem is not None
    assert problem.startswith(f"n2: nats-server {version} is older than 2.14.4")
    assert problem.endswith("upgrade it")
    with pytest.raises(PostureError, match=r"older than 2\.14\.4"):
        require_supported(version)


@pytest.mark.parametrize("version", ["", "latest", "2.15"])
def test_a_version_that_does_not_parse_is_not_trusted(version: str) -> None:
    assert "is not recognised" in (version_problem(version) or "")


def test_the_floor_is_the_release_with_the_callout_fixes() -> None:
    assert MIN_SERVER_VERSION == (2, 14, 4)


class _OldServer:
    """What provisioning reads of a connection: the version of the server it reached."""

    connected_server_version = ServerVersion("2.14.3")

    def jetstream(self, **_: object) -> object:
        raise AssertionError("provisioning went on with a server below the floor")


async def test_provisioning_refuses_a_server_below_the_floor_before_creating_anything() -> None:
    with pytest.raises(PostureError, match=r"nats-server 2\.14\.3 is older"):
        await provision_cluster(_OldServer(), Provisioning(replicas=1), None)  # type: ignore[arg-type]

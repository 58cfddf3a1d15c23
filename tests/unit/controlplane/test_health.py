"""/healthz costs the cluster one report per second, and shows anyone no topology."""

from __future__ import annotations

import asyncio
from typing import Any

from unibus.controlplane.health import HealthCache, public_view

FULL: dict[str, Any] = {
    "node": "n1",
    "store": "usable",
    "degraded": False,
    "posture": {
        "server": "n1",
        "server_version": "2.15.1",
        "server_supported": True,
        "certificate_expires": 1_900_000_000.0,
        "certificate_days_left": 800.0,
        "bus_auth": True,
        "acl": True,
        "callout_connections": 3,
        "tls": True,
        "cluster": {"name": "unibus", "route_tls": True, "routes": 2},
    },
    "assets": [
        {
            "name": "UNIBUS_users",
            "replicas": 3,
            "leader": "n2",
            "followers_current": 2,
            "followers": 2,
            "degraded": False,
            "missing": False,
        }
    ],
}


async def test_concurrent_and_repeated_calls_within_the_ttl_share_one_report() -> None:
    computed = 0
    release = asyncio.Event()

    async def compute() -> tuple[dict[str, Any], bool]:
        nonlocal computed
        computed += 1
        await release.wait()
        return FULL, True

    cache = HealthCache(compute, ttl=60.0)
    waiting = [asyncio.create_task(cache.get()) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiting)
    assert all(result == (FULL, True) for result in results)
    assert await cache.get() == (FULL, True)
    assert computed == 1


async def test_a_report_older_than_the_ttl_is_computed_again() -> None:
    computed = 0

    async def compute() -> tuple[dict[str, Any], bool]:
        nonlocal computed
        computed += 1
        return FULL, computed == 1

    cache = HealthCache(compute, ttl=0.0)
    assert (await cache.get())[1] is True
    assert (await cache.get())[1] is False
    assert computed == 2


async def test_a_caller_that_gives_up_does_not_cancel_the_report_for_the_others() -> None:
    release = asyncio.Event()

    async def compute() -> tuple[dict[str, Any], bool]:
        await release.wait()
        return FULL, True

    cache = HealthCache(compute, ttl=60.0)
    impatient = asyncio.create_task(cache.get())
    patient = asyncio.create_task(cache.get())
    await asyncio.sleep(0)
    impatient.cancel()
    release.set()
    assert await patient == (FULL, True)


def test_the_public_view_says_whether_the_server_is_supported_not_its_version() -> None:
    view = public_view(FULL)
    assert view["posture"]["server_supported"] is True
    assert "server_version" not in view["posture"]


def test_the_public_view_keeps_posture_and_replication_and_drops_the_topology() -> None:
    view = public_view(FULL)
    assert view == {
        "node": "n1",
        "store": "usable",
        "degraded": False,
        "posture": {
            "server": "n1",
            "bus_auth": True,
            "acl": True,
            "tls": True,
            "server_supported": True,
            "certificate_days_left": 800.0,
            "cluster": {"route_tls": True},
        },
        "assets": [{"name": "UNIBUS_users", "replicas": 3, "degraded": False, "missing": False}],
    }


def test_the_public_view_of_a_report_without_posture_or_assets_says_so() -> None:
    view = public_view({"node": "n1", "store": "unavailable", "posture": None, "assets": None})
    assert view == {"node": "n1", "store": "unavailable", "posture": None, "assets": None}

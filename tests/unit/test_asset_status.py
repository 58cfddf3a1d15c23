"""How one asset's replication is judged from the stream infos its leader gives."""

from __future__ import annotations

from typing import Any

import pytest
from nats.js import api

from unibus.core import provisioning
from unibus.core.provisioning import ASSETS, asset_status

_USERS = next(a for a in ASSETS if a.stream.endswith("users"))


def _info(*followers: tuple[str, bool, bool], replicas: int = 3) -> api.StreamInfo:
    """A stream info led by n1 with ``followers`` as (name, current, offline)."""
    response: dict[str, Any] = {
        "config": {"name": _USERS.stream, "num_replicas": replicas},
        "state": {"messages": 1, "bytes": 1, "first_seq": 1, "last_seq": 1, "consumer_count": 0},
        "cluster": {
            "name": "unibus",
            "leader": "n1",
            "replicas": [
                {"name": name, "current": current, "offline": offline, "active": 0}
                for name, current, offline in followers
            ],
        },
    }
    return api.StreamInfo.from_response(response)


class _ScriptedLeader:
    """Answers stream infos from a script, the last one repeated; counts the reads."""

    def __init__(self, *infos: api.StreamInfo) -> None:
        self._infos = list(infos)
        self.reads = 0

    async def stream_info(self, name: str) -> api.StreamInfo:
        assert name == _USERS.stream
        self.reads += 1
        return self._infos[min(self.reads, len(self._infos)) - 1]


@pytest.fixture(autouse=True)
def _no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provisioning, "_CURRENCY_PAUSE", 0.0)


async def test_a_follower_whose_ack_was_in_flight_at_one_read_is_not_reported_degraded() -> None:
    leader = _ScriptedLeader(
        _info(("n2", True, False), ("n3", False, False)),
        _info(("n2", True, False), ("n3", True, False)),
    )

    status = await asset_status(leader, _USERS, cluster_size=3)  # type: ignore[arg-type]

    assert not status.degraded
    assert status.followers_current == 2
    assert leader.reads == 2


async def test_a_follower_behind_in_every_read_is_reported_degraded() -> None:
    leader = _ScriptedLeader(_info(("n2", True, False), ("n3", False, False)))

    status = await asset_status(leader, _USERS, cluster_size=3)  # type: ignore[arg-type]

    assert status.degraded
    assert status.followers_current == 1
    assert leader.reads == provisioning._CURRENCY_READS


@pytest.mark.parametrize(
    ("info", "cluster_size"),
    [
        (_info(("n2", True, False), ("n3", False, True)), 3),  # a follower offline
        (_info(replicas=1), 3),  # R1 in a cluster of three
        (_info(("n2", True, False), ("n3", True, False)), 3),  # healthy
    ],
    ids=["follower-offline", "short-of-replicas", "healthy"],
)
async def test_what_a_moment_would_not_change_is_read_once(
    info: api.StreamInfo, cluster_size: int
) -> None:
    leader = _ScriptedLeader(info)

    await asset_status(leader, _USERS, cluster_size=cluster_size)  # type: ignore[arg-type]

    assert leader.reads == 1

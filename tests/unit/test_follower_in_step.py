"""When a follower counts as keeping up with its leader, and what an asset's status makes
of it: a healthy cluster under a trickle of writes is not DEGRADED, a lost follower is."""

from __future__ import annotations

from typing import cast

import pytest
from nats.js import api
from nats.js.client import JetStreamContext

from unibus.core.provisioning import (
    ASSETS,
    FOLLOWER_LAG_TOLERANCE,
    FOLLOWER_SEEN_WITHIN_NS,
    asset_status,
    follower_in_step,
)

SECOND_NS = 1_000_000_000


def _peer(
    *, current: bool = True, offline: bool = False, lag: int | None = 0, active: int | None = 0
) -> api.PeerInfo:
    return api.PeerInfo(name="n2", current=current, offline=offline, active=active, lag=lag)


def test_a_follower_the_server_calls_current_keeps_up() -> None:
    assert follower_in_step(_peer(current=True, lag=0, active=SECOND_NS // 2))


def test_a_follower_whose_ack_of_the_newest_writes_is_in_flight_keeps_up() -> None:
    assert follower_in_step(_peer(current=False, lag=1, active=SECOND_NS // 2))
    assert follower_in_step(
        _peer(current=False, lag=FOLLOWER_LAG_TOLERANCE, active=FOLLOWER_SEEN_WITHIN_NS)
    )


@pytest.mark.parametrize(
    ("lag", "active"),
    [
        (FOLLOWER_LAG_TOLERANCE + 1, SECOND_NS // 2),  # falls behind
        (1, FOLLOWER_SEEN_WITHIN_NS + 1),  # not heard from lately
        (None, SECOND_NS // 2),
        (1, None),
    ],
    ids=["too-far-behind", "not-heard-lately", "lag-unknown", "last-heard-unknown"],
)
def test_a_follower_not_current_that_is_behind_or_unheard_of_does_not_keep_up(
    lag: int | None, active: int | None
) -> None:
    assert not follower_in_step(_peer(current=False, lag=lag, active=active))


def test_an_offline_follower_never_keeps_up() -> None:
    assert not follower_in_step(_peer(current=True, offline=True))


class _OneStream:
    """``stream_info`` of an R3 stream with the given followers."""

    def __init__(self, *followers: api.PeerInfo) -> None:
        self._followers = list(followers)

    async def stream_info(self, name: str) -> api.StreamInfo:
        return api.StreamInfo.from_response(
            {
                "config": {"name": name, "num_replicas": 3},
                "state": {
                    "messages": 7,
                    "bytes": 0,
                    "first_seq": 1,
                    "last_seq": 7,
                    "consumer_count": 0,
                },
                "cluster": {
                    "leader": "n1",
                    "replicas": [
                        {
                            "name": p.name,
                            "current": p.current,
                            "offline": p.offline,
                            "active": p.active,
                            "lag": p.lag,
                        }
                        for p in self._followers
                    ],
                },
            }
        )


async def test_an_asset_whose_slower_follower_is_one_write_behind_is_not_degraded() -> None:
    js = cast(JetStreamContext, _OneStream(_peer(), _peer(current=False, lag=1)))

    status = await asset_status(js, ASSETS[0], cluster_size=3)

    assert (status.followers_current, status.degraded) == (2, False)


async def test_an_asset_with_a_follower_falling_behind_is_degraded() -> None:
    far_behind = _peer(current=False, lag=FOLLOWER_LAG_TOLERANCE * 10)
    js = cast(JetStreamContext, _OneStream(_peer(), far_behind))

    status = await asset_status(js, ASSETS[0], cluster_size=3)

    assert (status.followers_current, status.degraded) == (1, True)

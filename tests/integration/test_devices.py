"""Two devices of one user (issue 14): each replays the room's history through a consumer
slot of its own, so one device's replay never cuts the other's short; when every slot is
taken, a third replay is refused with an error that says why and when to retry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.deployment import Deployment
from tests.integration.harness import bounded
from unibus.client.errors import RoomError
from unibus.client.room import HISTORY_BATCH, Message, Room
from unibus.core import naming

pytestmark = pytest.mark.timeout(300)
STORED = 3 * HISTORY_BATCH  # several fetches per replay: room for another device to cut in


async def _filled_room(deployment: Deployment) -> tuple[Room, Room, Room, list[bytes]]:
    """A room with ``STORED`` messages, and the same member's room on three devices."""
    alice = await deployment.member("alice")
    room = await alice.create_room()
    sent = [f"stored {i}".encode() for i in range(STORED)]
    for start in range(0, STORED, 100):
        await room.publish_many(sent[start : start + 100])
    devices = []
    for _ in range(3):
        device = await deployment.device(alice.identity)
        devices.append(await device.room(room.room_id))
    return devices[0], devices[1], devices[2], sent


async def test_a_device_replaying_history_is_not_cut_short_by_the_same_users_other_device(
    deployment: Deployment,
) -> None:
    phone, laptop, _, sent = await _filled_room(deployment)

    async with bounded(120):
        on_phone: AsyncIterator[Message] = phone.history()
        first = [await anext(on_phone)]  # the phone's replay is under way ...
        on_laptop = [m.data async for m in laptop.history()]  # ... the laptop replays all
        rest = [m async for m in on_phone]  # ... and the phone goes on to the end

    assert on_laptop == sent
    assert [m.data for m in first + rest] == sent


async def test_a_replay_while_every_slot_is_in_use_is_refused_saying_when_to_retry(
    deployment: Deployment,
) -> None:
    phone, laptop, tablet, sent = await _filled_room(deployment)
    assert naming.HISTORY_SLOTS == 2, "this test holds every slot with two replays"

    async with bounded(120):
        on_phone = phone.history()
        on_laptop = laptop.history()
        await anext(on_phone)
        await anext(on_laptop)
        with pytest.raises(RoomError, match="every history slot") as refused:
            await anext(tablet.history())
        assert "try again" in str(refused.value)
        # The two replays holding the slots are unharmed, and a slot frees when one ends.
        assert len([m async for m in on_phone]) == STORED - 1
        assert [m.data async for m in tablet.history()] == sent
        assert len([m async for m in on_laptop]) == STORED - 1

"""Following a bucket from a given revision on (``KvFollower(start_after=...)``)."""

from __future__ import annotations

from tests.integration.harness import StackFactory, bounded
from unibus.core import naming
from unibus.core.kvfollow import KvFollower


async def test_a_follower_started_after_a_revision_delivers_only_the_writes_after_it(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=1)
    nc = await stacks.connect(stack)
    kv = await nc.jetstream(timeout=10.0).key_value(naming.ROOMS_BUCKET)
    await kv.put("room-older", b"1")
    start_after = await kv.put("room-at-the-start", b"1")
    later = [await kv.put("room-later", b"1"), await kv.put("room-last", b"1")]
    seen: list[int] = []
    async with (
        KvFollower(nc, naming.ROOMS_BUCKET, start_after=start_after) as follower,
        bounded(20),
    ):
        while len(seen) < len(later):
            entry = await follower.next(timeout=10.0)
            assert entry is not None, f"the follower stalled after {seen}"
            seen.append(entry.revision)
    assert seen == later

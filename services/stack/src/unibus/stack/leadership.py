"""Where JetStream leaders are, and moving them by step-down with a preferred placement.

Used to arrange a failover on purpose (benchmarks, chaos tests) and, before a node is taken
down for maintenance, to have no stream led by it. Needs a connection with JetStream
administration rights in the bus account (the internal identity).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable

from nats.aio.client import Client as NATS

from unibus.core.errors import StackError

__all__ = ["leaders", "meta_leader", "move_leaders", "move_meta_leader"]

_STEP_DOWN = "$JS.API.STREAM.LEADER.STEPDOWN.{}"
_META_STEP_DOWN = "$JS.API.META.LEADER.STEPDOWN"


async def leaders(
    nc: NATS, streams: Iterable[str], *, timeout: float = 1.0
) -> dict[str, str | None]:
    """Each stream's leader by server name; None while it has none (or does not answer)."""
    js = nc.jetstream(timeout=timeout)
    names = list(streams)

    async def leader(stream: str) -> str | None:
        try:
            info = await js.stream_info(stream)
        except Exception:  # noqa: BLE001 - no leader answering is what None means
            return None
        return info.cluster.leader if info.cluster else None

    found = await asyncio.gather(*(leader(s) for s in names))
    return dict(zip(names, found, strict=True))


async def move_leaders(
    nc: NATS,
    streams: Iterable[str],
    *,
    to: str | None = None,
    away_from: str | None = None,
    budget: float = 60.0,
) -> None:
    """Step leaders down until ``to`` leads every stream, or ``away_from`` leads none."""
    if (to is None) == (away_from is None):
        raise ValueError("give exactly one of to= and away_from=")
    names = list(streams)
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        current = await leaders(nc, names)
        wrong = [
            stream
            for stream, leader in current.items()
            if leader is None or (to is not None and leader != to) or leader == away_from
        ]
        if not wrong:
            return
        body = json.dumps({"placement": {"preferred": to}} if to is not None else {}).encode()
        for stream in wrong:
            if current[stream] is None:
                continue  # an election is running; look again
            # A step-down that fails is seen on the next round.
            with contextlib.suppress(Exception):
                await nc.request(_STEP_DOWN.format(stream), body, timeout=5.0)
        await asyncio.sleep(0.5)
    target = f"to {to}" if to is not None else f"away from {away_from}"
    raise StackError(f"could not move the leaders of {', '.join(names)} {target} in {budget:g}s")


async def meta_leader(system_nc: NATS, *, timeout: float = 1.0) -> str | None:
    """The JetStream meta leader's server name, asked in the system account."""
    try:
        reply = await system_nc.request("$SYS.REQ.SERVER.PING.JSZ", b"{}", timeout=timeout)
    except Exception:  # noqa: BLE001 - no answer: unknown right now
        return None
    data = json.loads(reply.data).get("data", {})
    cluster = data.get("meta_cluster") or {}
    leader = cluster.get("leader")
    return leader if isinstance(leader, str) and leader else None


async def move_meta_leader(system_nc: NATS, *, away_from: str, budget: float = 60.0) -> None:
    """Step the meta leader down until a server other than ``away_from`` leads."""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        leader = await meta_leader(system_nc)
        if leader is not None and leader != away_from:
            return
        if leader == away_from:
            with contextlib.suppress(Exception):
                await system_nc.request(_META_STEP_DOWN, b"{}", timeout=5.0)
        await asyncio.sleep(0.5)
    raise StackError(f"could not move the meta leader away from {away_from} in {budget:g}s")

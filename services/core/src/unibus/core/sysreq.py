"""Requests to the system account: server pings that every node answers.

``$SYS.REQ.SERVER.PING.<KIND>`` is answered by every server in the cluster, so it is a
scatter-gather: collect replies until all expected nodes answered or the time is up.
Only a system-account connection (the system identity of SPEC §3) may ask.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from unibus.core.errors import StoreUnavailableError

_decoder = msgspec.json.Decoder(dict[str, Any])


async def server_ping(
    nc: NATS, kind: str, *, expected: int, timeout: float = 2.0, body: bytes = b""
) -> list[dict[str, Any]]:
    """Ask every server for ``kind`` (``VARZ``, ``ROUTEZ``, ``JSZ``, …); one reply each.

    Returns the replies that arrived before ``timeout`` (possibly fewer than ``expected``
    when nodes are down: the caller reports them as missing).
    """
    inbox = nc.new_inbox()
    replies: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def collect(msg: Msg) -> None:
        try:
            replies.append(_decoder.decode(msg.data))
        except msgspec.DecodeError:
            return
        if len(replies) >= expected:
            done.set()

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(f"$SYS.REQ.SERVER.PING.{kind}", body, reply=inbox)
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await done.wait()
        except TimeoutError:
            pass
    finally:
        await sub.unsubscribe()
    if not replies and expected:
        raise StoreUnavailableError(f"no server answered {kind} within {timeout:g}s")
    return replies

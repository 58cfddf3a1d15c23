"""Requests to the system account: server pings that every node answers.

``$SYS.REQ.SERVER.PING.<KIND>`` is answered by every server in the cluster, so it is a
scatter-gather: collect replies until all expected nodes answered or the time is up.
Only a system-account connection (the system identity of SPEC §3) may ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
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
    replies = [
        reply
        async for reply in server_replies(nc, kind, expected=expected, timeout=timeout, body=body)
    ]
    if not replies and expected:
        raise StoreUnavailableError(f"no server answered {kind} within {timeout:g}s")
    return replies


async def server_replies(
    nc: NATS, kind: str, *, expected: int, timeout: float = 2.0, body: bytes = b""
) -> AsyncGenerator[dict[str, Any]]:
    """The replies to a server ping as each arrives, until ``expected`` came or ``timeout``.

    For callers that act on each server's answer at once: a node that cannot answer (down,
    or in lame duck, which sends nothing more) then holds up only its own share.
    """
    inbox = nc.new_inbox()
    arrived: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            arrived.put_nowait(_decoder.decode(msg.data))

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(f"$SYS.REQ.SERVER.PING.{kind}", body, reply=inbox)
        deadline = time.monotonic() + timeout
        for _ in range(expected):
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    reply = await arrived.get()
            except TimeoutError:
                return
            yield reply
    finally:
        await sub.unsubscribe()

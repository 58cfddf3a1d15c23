"""Where auth requests arrive: one connection per node, each a member of the callout queue.

A server hands an auth request to a random member of the queue group, and a member behind a
route is as likely a pick as one on the server itself (nats-server ``processMsgResults``:
a routed entry is "Pick this one and be done"). A request sent across a route to a node that
has just died, or hangs, is lost: the server waits out its callout timeout and refuses the
client. So the routes do not carry the callout's interest (the cluster's route permissions
deny the callout subject, ``unibus.stack.natsconf``) and every instance subscribes on every
node instead: each node has a local member in every instance that is up, and a request is
answered on the node that received it.

Each link is pinned to its node: its only URL is that node's, and the servers advertise no
others (``no_advertise``), so nats-py learns none. It reconnects to that node forever and
re-subscribes on its own; a node that comes back is served once the first instance's link
reaches it (``reconnect_time_wait`` apart).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from unibus.core import naming
from unibus.core.connect import close_all
from unibus.core.log import get_logger

_log = get_logger("unibus.authcallout.links")
_RETRY_PAUSE = 1.0
"""Seconds before a link whose connect failed outright (not a node that is down: nats-py
retries that itself) is tried again."""

Connector = Callable[[str], Awaitable[NATS]]
"""Opens the callout identity's connection to the one node at this URL (retrying forever)."""


class RequestLinks:
    """The request subscriptions of one instance, one per node URL."""

    def __init__(self, urls: Sequence[str], connector: Connector) -> None:
        self._urls = tuple(urls)
        self._connector = connector
        self._links: dict[str, tuple[NATS, Subscription]] = {}
        self._opening: set[asyncio.Task[None]] = set()

    def start(self, on_request: Callable[[Msg], Awaitable[None]]) -> None:
        """Open every link in the background: a node that is down is joined once it is up."""
        for url in self._urls:
            task = asyncio.create_task(self._open(url, on_request))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)

    @property
    def nodes_served(self) -> int:
        """Links whose connection is up, each with its subscription."""
        return sum(1 for nc, _ in self._links.values() if nc.is_connected)

    async def _open(self, url: str, on_request: Callable[[Msg], Awaitable[None]]) -> None:
        while True:
            try:
                self._links[url] = await self._subscribed(url, on_request)
            except Exception as exc:  # noqa: BLE001 - a node is never given up on
                _log.warning("cannot serve a node's requests yet", node=url, error=repr(exc))
                await asyncio.sleep(_RETRY_PAUSE)
                continue
            _log.info("serving auth requests", node=url, queue=naming.CALLOUT_QUEUE)
            return

    async def _subscribed(
        self, url: str, on_request: Callable[[Msg], Awaitable[None]]
    ) -> tuple[NATS, Subscription]:
        nc = await self._connector(url)
        try:
            sub = await nc.subscribe(
                naming.CALLOUT_SUBJECT, queue=naming.CALLOUT_QUEUE, cb=on_request
            )
            await nc.flush()
        except BaseException:
            await close_all([nc])
            raise
        return nc, sub

    async def unsubscribe(self) -> None:
        """Receive no more requests; those already received are still answered (the
        connections stay open until :meth:`close`)."""
        for task in list(self._opening):
            task.cancel()
        await asyncio.gather(*self._opening, return_exceptions=True)
        for _, sub in self._links.values():
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def close(self) -> None:
        await self.unsubscribe()
        await close_all(nc for nc, _ in self._links.values())
        self._links.clear()

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

An instance that cannot decide leaves the queue group on every node (:meth:`RequestLinks.pause`)
while the others answer: the service pauses its links while its view's own connection stays
down, and resumes them once the view is fresh again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import nats.errors
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
_FLUSH_TIMEOUT = 2
_DRAIN_TIMEOUT = 1.0
"""Seconds a paused link waits for its node to confirm the UNSUB (a round trip)."""

Connector = Callable[[str], Awaitable[NATS]]
"""Opens the callout identity's connection to the one node at this URL (retrying forever)."""
Handler = Callable[[Msg], Awaitable[None]]


class RequestLinks:
    """The request subscriptions of one instance, one per node URL."""

    def __init__(self, urls: Sequence[str], connector: Connector, on_request: Handler) -> None:
        self._urls = tuple(urls)
        self._connector = connector
        self._on_request = on_request
        self._connections: dict[str, NATS] = {}
        self._subscriptions: dict[str, Subscription] = {}
        self._paused = False
        self._membership = asyncio.Lock()
        self._opening: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Open every link in the background: a node that is down is joined once it is up."""
        for url in self._urls:
            task = asyncio.create_task(self._open(url))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)

    @property
    def nodes_served(self) -> int:
        """Links whose connection is up and subscribed."""
        return sum(1 for url in self._subscriptions if self._connections[url].is_connected)

    @property
    def paused(self) -> bool:
        return self._paused

    def is_connected(self, url: str) -> bool:
        """Whether the link to the node at ``url`` is up: that node takes clients now."""
        nc = self._connections.get(url)
        return nc is not None and nc.is_connected

    async def pause(self) -> None:
        """Leave the queue group on every node: requests go to the other instances.

        Requests a node handed this instance before it saw the UNSUB are on their way
        and are still answered (a drain: nats-py drops what arrives for a subscription
        it has removed, and the server would refuse those clients after its timeout).
        """
        async with self._membership:
            self._paused = True
            subscriptions, self._subscriptions = self._subscriptions, {}
        await asyncio.gather(
            *(self._leave(url, sub) for url, sub in subscriptions.items()),
            return_exceptions=True,
        )

    async def _leave(self, url: str, sub: Subscription) -> None:
        nc = self._connections.get(url)
        if nc is not None and nc.is_connected:
            try:
                async with asyncio.timeout(_DRAIN_TIMEOUT):
                    await sub.drain()  # type: ignore[no-untyped-call]  # nats-py: untyped
            except (TimeoutError, nats.errors.Error) as exc:
                _log.info("could not drain a link; leaving it", node=url, error=repr(exc))
            else:
                return
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

    async def resume(self) -> None:
        """Join the queue group again on every node this instance is connected to."""
        async with self._membership:
            self._paused = False
        # A link whose node is down subscribes now all the same: nats-py sends the SUB once
        # the link is back.
        await asyncio.gather(
            *(self._subscribe(url) for url in list(self._connections)), return_exceptions=True
        )

    async def _open(self, url: str) -> None:
        while True:
            try:
                nc = await self._connector(url)
            except Exception as exc:  # noqa: BLE001 - a node is never given up on
                _log.warning("cannot serve a node's requests yet", node=url, error=repr(exc))
                await asyncio.sleep(_RETRY_PAUSE)
                continue
            self._connections[url] = nc
            try:
                await self._subscribe(url)
            except Exception as exc:  # noqa: BLE001 - resubscribed at the next resume
                _log.warning("cannot subscribe for a node's requests", node=url, error=repr(exc))
            return

    async def _subscribe(self, url: str) -> None:
        # One change of membership at a time: an open and a resume, or a pause, racing on
        # one link would otherwise leave a subscription no pause knows of.
        async with self._membership:
            if self._paused or url in self._subscriptions:
                return
            nc = self._connections[url]
            self._subscriptions[url] = await nc.subscribe(
                naming.CALLOUT_SUBJECT, queue=naming.CALLOUT_QUEUE, cb=self._on_request
            )
        if nc.is_connected:
            await nc.flush(timeout=_FLUSH_TIMEOUT)
        _log.info("serving auth requests", node=url, queue=naming.CALLOUT_QUEUE)

    async def unsubscribe(self) -> None:
        """Receive no more requests; those already received are still answered (the
        connections stay open until :meth:`close`)."""
        for task in list(self._opening):
            task.cancel()
        await asyncio.gather(*self._opening, return_exceptions=True)
        await self.pause()

    async def close(self) -> None:
        await self.unsubscribe()
        connections, self._connections = self._connections, {}
        await close_all(connections.values())

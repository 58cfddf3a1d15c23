"""The callout service: answers ``$SYS.REQ.USER.AUTH`` and disconnects on changes.

Connections with the least identity each needs: the callout identity receives auth requests,
on one link per node (``links``: a request is answered on the node that received it, so the
loss of another node loses none), the internal identity feeds the KV view, the system
identity lists and kicks connections. Any number of instances share the requests of a node:
their links there are members of one queue group.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from unibus.authcallout.keys import KeyGeneration, Keys
from unibus.authcallout.kicks import AdmittedConnections, Kicker, connection_name
from unibus.authcallout.links import RequestLinks
from unibus.authcallout.metrics import Metrics
from unibus.authcallout.permissions import permissions_for
from unibus.authcallout.protocol import (
    AuthRequest,
    Denial,
    Dropped,
    allow_response,
    deny_response,
    open_request_with,
    user_jwt,
    verify_client,
)
from unibus.authcallout.reasons import Reason
from unibus.authcallout.settings import Settings
from unibus.authcallout.view import Change, DirectoryView
from unibus.core.connect import NatsTarget, close_all, connect, is_connected_to
from unibus.core.log import get_logger
from unibus.core.process import unless_stopped

_SWEEP_WAIT = 10.0
_STORE_PING_INTERVAL = 2
"""Seconds between the view's and the kicks' pings: a node that hangs with their connections
open is left for another within about six seconds (nats-py's default is two minutes, while
the view would deny every request it is asked)."""
_REJOIN_CHECK = 5.0
"""Seconds between two looks at a view that is not fresh yet after its reconnect."""
_LINK_RECONNECT_WAIT = 0.02
"""Seconds between two attempts of a request link at its node. A node that starts takes
clients at once, and their auth requests are lost (refused after the server's callout
timeout) until the first link subscribes there, since the routes carry none: measured,
clients arriving in the first 25-240 ms after a start were refused with links 0.25 s
apart, in the first ~25 ms with 0.02 s. A refused TCP connect costs next to nothing,
and a node that hangs makes each attempt wait out the connect timeout instead."""
_STEP_ASIDE_AFTER = 0.5
"""Seconds the view's connection may be down before this instance leaves the requests to
the others. A node that dies or restarts closes the connection and nats-py is on the next
node within milliseconds, so stepping aside at once only left the requests of that moment
to no one where no other instance could take them (a lone instance; every instance, when
their views shared the node): measured, clients connecting at the kill were refused after
the servers' callout timeout. Requests taken meanwhile wait for the view (``stale_grace``)."""
_HOME_CHECK = 1.0
"""Seconds between two looks at whether the view's connection is on this instance's node."""
_HOME_CHECK_MAX = 4.0
"""The longest wait between two attempts to bring the view home that failed in a row."""
_HOME_CONNECT_TIMEOUT = 3.0
_JWT_SLACK = 5.0
"""Seconds an admitted connection is remembered past its JWT's lifetime (clock skew)."""
_log = get_logger("unibus.authcallout")


class CalloutService:
    def __init__(self, settings: Settings, keys: Keys, metrics: Metrics) -> None:
        self._settings = settings
        self._keys = keys
        self._metrics = metrics
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._view: DirectoryView | None = None
        self._kicker: Kicker | None = None
        self._admitted = AdmittedConnections(lifetime=settings.jwt_ttl + _JWT_SLACK)
        self._links = RequestLinks(self._settings.nats_urls, self._connect_link, self._on_request)
        self._rejoin: asyncio.Task[None] | None = None
        self._stepping_aside: asyncio.Task[None] | None = None
        self._view_nc: NATS | None = None
        """The view's connection: the only one whose loss makes this instance step aside."""

    def _target(self, identity: str, urls: tuple[str, ...] | None = None) -> NatsTarget:
        files = {
            "callout": self._settings.callout_seed,
            "internal": self._settings.internal_seed,
            "system": self._settings.system_seed,
        }
        return NatsTarget(
            urls=urls or self._settings.nats_urls,
            ca_file=self._settings.ca_file,
            identity_file=files[identity],
        )

    async def run(self, stop: asyncio.Event) -> None:
        opened: list[NATS] = []
        try:
            await unless_stopped(stop, self._connect_all(opened))
        except BaseException:
            await close_all(opened)
            raise
        view_nc, sys_nc = opened
        self._view_nc = view_nc
        self._kicker = Kicker(
            sys_nc, expected_servers=len(self._settings.nats_urls), admitted=self._admitted
        )
        self._view = DirectoryView(
            view_nc,
            max_staleness=self._settings.max_staleness,
            heartbeat=self._settings.heartbeat,
            on_change=self._on_change,
            max_rooms=self._settings.max_rooms,
        )
        await self._view.start()
        gauges = asyncio.create_task(self._update_gauges())
        sweep = asyncio.create_task(self._sweep_on_start())
        homing = asyncio.create_task(self._keep_view_home())
        try:
            self._links.start()
            await stop.wait()
            await self._links.unsubscribe()
        finally:
            # The view's connection first stops counting as one: closing it must not
            # start a step-aside (nats-py calls the disconnected callback on close).
            view_nc, self._view_nc = self._view_nc, None
            background = [gauges, sweep, homing, self._rejoin, self._stepping_aside]
            pending = [task for task in background if task is not None]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await self._view.stop()
            for task in list(self._tasks):
                task.cancel()
            await self._links.close()
            await close_all([*opened, *([view_nc] if view_nc is not None else [])])

    async def _connect_all(self, opened: list[NATS]) -> None:
        """The view's and the kicks' connections, in ``opened`` as each opens (retried for
        as long as no node answers)."""
        opened.append(await self._connect_view())
        opened.append(await self._connect("system"))

    async def _connect_link(self, url: str) -> NATS:
        return await connect(
            self._target("callout", (url,)),
            name="unibus-authcallout-callout",
            reconnect_time_wait=_LINK_RECONNECT_WAIT,
        )

    async def _connect(
        self,
        identity: str,
        disconnected_cb: Callable[[], Awaitable[None]] | None = None,
        reconnected_cb: Callable[[], Awaitable[None]] | None = None,
    ) -> NATS:
        return await connect(
            self._target(identity),
            name=f"unibus-authcallout-{identity}",
            randomize=False,
            ping_interval=_STORE_PING_INTERVAL,
            disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb,
        )

    async def _connect_view(self) -> NATS:
        """A connection for the view, this instance's own node first. Its callbacks act
        only while it is the view's connection: one moved away from closes quietly."""
        nc: NATS | None = None

        async def disconnected() -> None:
            # Returns at once: nats-py reconnects only once this callback is done.
            if self._view is not None and nc is not None and nc is self._view_nc:
                self._view.mark_disconnected()
                self._step_aside_unless_back(nc)

        async def reconnected() -> None:
            if self._view is not None and nc is not None and nc is self._view_nc:
                if self._stepping_aside is not None:
                    self._stepping_aside.cancel()
                self._view.confirm_now()
                self._rejoin_once_fresh()

        nc = await self._connect("internal", disconnected, reconnected)
        return nc

    async def _keep_view_home(self) -> None:
        """Bring the view's connection back to this instance's own node when it is elsewhere.

        A view whose node is lost fails over to another node, and nothing else brings it
        back: after a few losses the instances' views share a node, and the loss of that
        node makes every instance step aside at once, leaving every node's auth requests
        to no one (the servers refuse those clients after their callout timeout; measured:
        a reconnect storm of 500 clients, all refused). At home, one node's loss takes
        one view. Tried while the view is fresh and this instance's request link shows
        its node up (a node that is down costs no connect); failures back off.
        """
        home = self._settings.nats_urls[0]
        pause = _HOME_CHECK
        while True:
            await asyncio.sleep(pause)
            view, current = self._view, self._view_nc
            if view is None or current is None or is_connected_to(current, home):
                pause = _HOME_CHECK
                continue
            # A view that is reconnecting is left to nats-py (own node first). One that is
            # connected elsewhere moves even when stale: a node without quorum holds it
            # stale while its own node may serve (move_to checks that the streams answer).
            if not (current.is_connected and self._links.is_connected(home)):
                continue
            try:
                moved = await self._move_view_home(view, home)
            except Exception as exc:  # noqa: BLE001 - tried again later; the view stays put
                _log.info("could not bring the view home", error=type(exc).__name__)
                moved = False
            pause = _HOME_CHECK if moved else min(pause * 2, _HOME_CHECK_MAX)

    async def _move_view_home(self, view: DirectoryView, home: str) -> bool:
        async with asyncio.timeout(_HOME_CONNECT_TIMEOUT):
            nc = await self._connect_view()
        try:
            moved = is_connected_to(nc, home) and await view.move_to(nc)
        except BaseException:  # a stop meanwhile included: the new connection is not left open
            await close_all([nc])
            raise
        if not moved:
            await close_all([nc])
            return False
        # No await since the move: the old connection's callbacks already see it moved.
        moved_from, self._view_nc = self._view_nc, nc
        if not nc.is_connected:
            # Lost during the move, when its callbacks did not count yet.
            view.mark_disconnected()
            self._step_aside_unless_back(nc)
        elif self._links.paused:
            # Stepped aside meanwhile: the old connection, closed, never reports a reconnect.
            self._rejoin_once_fresh()
        if moved_from is not None:
            # Shielded: a stop meanwhile must not leave the socket open.
            await asyncio.shield(close_all([moved_from]))
        _log.info("the view is back on this instance's node", node=home)
        return True

    def _step_aside_unless_back(self, nc: NATS) -> None:
        if self._stepping_aside is not None:
            self._stepping_aside.cancel()
        self._stepping_aside = asyncio.create_task(self._step_aside_if_still_down(nc))

    async def _step_aside_if_still_down(self, nc: NATS) -> None:
        await asyncio.sleep(_STEP_ASIDE_AFTER)
        if nc is self._view_nc and not nc.is_connected:
            # Shielded: a pause cut short would leave subscriptions no one answers on.
            await asyncio.shield(self._step_aside(nc))

    async def _step_aside(self, nc: NATS) -> None:
        """The view's own connection has stayed down: until it is back, this instance could
        only deny, while the instances whose views are connected can decide. So it leaves
        them the requests. (A view that is stale while connected, without quorum, stays in
        the group: its denials are the honest answer.)"""
        if self._rejoin is not None:
            self._rejoin.cancel()
        await self._links.pause()
        _log.warning("the view's connection is down; requests are left to the other instances")
        if self._view_nc is not None and (nc is not self._view_nc or nc.is_connected):
            # Back, or moved, while the pause took effect: the rejoin that came with it may
            # have run first, and nothing else would.
            self._rejoin_once_fresh()

    def _rejoin_once_fresh(self) -> None:
        if self._rejoin is not None:
            self._rejoin.cancel()
        self._rejoin = asyncio.create_task(self._rejoin_when_fresh())

    async def _rejoin_when_fresh(self) -> None:
        while self._view is not None and not await self._view.until_fresh(_REJOIN_CHECK):
            pass
        await self._links.resume()
        _log.info("the view is fresh again: serving auth requests", nodes=self._links.nodes_served)

    async def _update_gauges(self) -> None:
        while True:
            if self._view is not None:
                lag = self._view.staleness
                self._metrics.watch_lag.set(lag if lag != float("inf") else -1)
                self._metrics.view_fresh.set(1 if self._view.is_fresh else 0)
            self._metrics.nodes_served.set(self._links.nodes_served)
            await asyncio.sleep(0.25)

    # -- requests ---------------------------------------------------------------------------------
    async def _on_request(self, msg: Msg) -> None:
        # nats-py runs one subscription's callbacks one at a time: never do the work here.
        task = asyncio.create_task(self._guarded(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, msg: Msg) -> None:
        started = time.perf_counter()
        async with self._slots:
            reason = await self._handle(msg)
        self._metrics.decisions.labels(reason=reason.value).inc()
        self._metrics.latency.observe(time.perf_counter() - started)
        _log.info("auth decision", reason=reason.value)

    async def _handle(self, msg: Msg) -> Reason:
        arrived, now = time.monotonic(), time.time()
        try:
            request, opened_with = open_request_with(
                msg.data, msg.headers, self._keys.xkeys, now=now
            )
        except Dropped as dropped:
            return dropped.reason
        keys = self._keys.generations[opened_with]
        current = False
        if self._view is not None:
            # One budget for both waits: what a stale view does not use, a catch-up across
            # a leader change may (the server gives the callout about two seconds).
            deadline = arrived + self._settings.stale_grace + self._settings.catch_up
            if not self._view.is_fresh:
                await self._view.until_fresh(self._settings.stale_grace)
            if self._view.is_fresh:
                remaining = max(self._settings.catch_up, deadline - time.monotonic())
                current = await self._view.until_current(arrived, remaining)
        try:
            response, reason = self._decide(request, keys, time.time(), current), Reason.ALLOWED
        except Denial as denial:
            reason = denial.reason
            response = deny_response(keys.issuer, request, keys.xkey, reason, now=now)
        try:
            await msg.respond(response)
        except Exception as exc:  # noqa: BLE001 - connection closing; the server times out and denies
            _log.warning("could not answer an auth request", error=type(exc).__name__)
        return reason

    def _decide(
        self, request: AuthRequest, keys: KeyGeneration, now: float, current: bool
    ) -> bytes:
        if self._view is None:
            raise Denial(Reason.STORE_UNAVAILABLE, "view not started")
        if not current:
            raise Denial(Reason.STORE_UNAVAILABLE, "view not shown fresh and current")
        key = verify_client(request)
        lookup = self._view.lookup(key)
        if lookup.reason is not Reason.ALLOWED:
            raise Denial(lookup.reason, "not admitted")
        if lookup.member_of > len(lookup.rooms):
            # Never a refusal: that would let anyone lock a user out by inviting it to
            # rooms. The newest rooms wait until the user leaves others.
            self._metrics.room_cap_truncations.inc()
            _log.warning(
                "past the room cap: the oldest rooms granted",
                rooms=lookup.member_of,
                cap=self._settings.max_rooms,
            )
        name = connection_name(key, lookup.stamp)
        self._admitted.add(request.server_id, request.client_id, name)
        token = user_jwt(
            keys.issuer,
            request,
            user_key=key,
            connection_name=name,
            permissions=permissions_for(key, lookup.rooms),
            ttl=self._settings.jwt_ttl,
            now=now,
        )
        return allow_response(keys.issuer, request, keys.xkey, token, now=now)

    # -- changes ----------------------------------------------------------------------------------
    async def _sweep_on_start(self) -> None:
        """Once the view is loaded and current, kick what it no longer grants.

        A revocation or removal committed while every callout was down was never seen as a
        change; without this its user would stay connected until the JWT expires. Retried
        until it succeeds once: the cluster may still be forming.
        """
        view, kicker = self._view, self._kicker
        if view is None or kicker is None:
            return
        pause = 0.5
        while True:
            started = time.monotonic()
            if await view.until_loaded(_SWEEP_WAIT) and await view.until_current(
                started, _SWEEP_WAIT
            ):
                try:
                    kicked = await kicker.sweep(view.still_grants)
                except Exception as exc:  # noqa: BLE001 - tried again below
                    _log.info("start-up sweep failed; retrying", error=type(exc).__name__)
                else:
                    if kicked:
                        self._metrics.kicks.inc(kicked)
                    _log.info("start-up sweep done", kicked=kicked)
                    return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    async def _on_change(self, change: Change) -> None:
        task = asyncio.create_task(self._kick(change))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _kick(self, change: Change) -> None:
        if self._kicker is None:
            return
        try:
            kicked = await self._kicker.kick(change)
        except Exception as exc:  # noqa: BLE001 - JWT expiry remains the backstop
            _log.warning("could not disconnect affected users", error=type(exc).__name__)
            return
        if kicked.count:
            self._metrics.kicks.inc(kicked.count)
        if kicked.last_at is not None and change.committed_at is not None:
            # Measured to the last kick the servers confirmed, not to the end of the
            # CONNZ round: a node that cannot answer holds that up for its whole timeout.
            latency = max(0.0, kicked.last_at - change.committed_at)
            self._metrics.revoke_latency.observe(latency)
        _log.info("authorization changed", users=len(change.users), kicked=kicked.count)

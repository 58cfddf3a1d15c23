"""A user's connection to the bus that outlives kicks, JWT expiry and the loss of a node.

nats-py handles plain disconnects and kicks by itself: it reconnects across every cluster
URL (the callout re-authorizes it with fresh permissions) and re-sends its SUBs. It does
not survive the end of an authorization: on ``-ERR 'User Authentication Expired'`` (the
short JWT TTL that backs up the kicks, SPEC §5) nats-py 2.16 closes the client for good
(nats.py#1019), and an ``Authorization Violation`` while reconnecting only burns attempts.

``BusConnection`` owns that part. When the underlying client is gone for good — closed
after an expiry, refused while reconnecting, or closed for any other reason but our own
``close()`` — it opens a brand-new one (bounded attempts with backoff, every URL),
re-subscribes everything its callers subscribed, bumps ``generation`` and awaits the
``on_reauthorized`` callbacks, where the SDK re-creates what lived on the old connection
(JetStream consumers; callers re-acquire ``jetstream()``).

A bus that refuses the identity ``max_denials`` times in a row (revoked or unknown key)
ends the connection with ``AccessDeniedError``: ``wait_connected``, ``publish`` and ``request``
raise it instead of hanging. A refusal does not say why: a callout that cannot read a
quorum of its store refuses too (it fails closed) while a node's election runs. So an
identity the bus accepted before gives up only once refusals have also lasted
``reauth_denial_window`` seconds; a first connect gives up after ``max_denials`` alone.

A node that hangs with its sockets open (a frozen host, a cut network) says nothing, so
the client pings it every ``ping_interval`` seconds and leaves it after two unanswered
pings (nats-py's own default is two minutes), and bounds what closing its TLS connection
waits for the silent peer (``unibus.core.connect.bound_tls_close_wait``: nats-py moves
on only once the old connection is closed, and asyncio would wait 30 s).
Seeds and payloads are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js.client import JetStreamContext

from unibus.client.errors import AccessDeniedError, BusUnavailableError
from unibus.core import naming
from unibus.core.connect import NatsTarget, bound_tls_close_wait, tls_options
from unibus.core.errors import ConfigError, UnibusError
from unibus.core.log import get_logger
from unibus.core.nkeys import KeyPair, Prefix

__all__ = [
    "DEFAULT_CALLBACK_TIMEOUT",
    "DEFAULT_CONNECT_BUDGET",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_REAUTH_BUDGET",
    "DEFAULT_REAUTH_DENIAL_WINDOW",
    "RECONNECT_TIME_WAIT",
    "AccessDeniedError",
    "BusConnection",
    "BusUnavailableError",
    "MessageHandler",
    "ReauthorizedCallback",
    "Subscription",
]

_log = get_logger("unibus.client.connection")

MessageHandler = Callable[[Msg], Awaitable[None]]
ReauthorizedCallback = Callable[[], Awaitable[None]]

RECONNECT_TIME_WAIT: Final = 0.25
"""nats-py's pause before it retries a server it just failed on (plain reconnects)."""
DEFAULT_CONNECT_BUDGET: Final = 30.0
"""How long ``connect`` tries before giving up on an unreachable bus."""
DEFAULT_REAUTH_BUDGET: Final = 300.0
"""How long a re-authorization tries before the connection gives up for good."""
DEFAULT_PING_INTERVAL: Final = 5.0
"""Seconds between the client's pings: a node that stops answering is left 10-15 s after
it hung (two pings outstanding, a third due)."""
_MAX_OUTSTANDING_PINGS: Final = 2
DEFAULT_CALLBACK_TIMEOUT: Final = 30.0
"""Bound on each ``on_reauthorized`` callback."""
DEFAULT_REAUTH_DENIAL_WINDOW: Final = 30.0
"""How long refusals of a once-accepted identity must last before it gives up (an
election of the store, during which callouts fail closed, takes seconds)."""
_BACKOFF_BASE: Final = 0.25
_BACKOFF_CAP: Final = 5.0
_CLOSE_TIMEOUT: Final = 2.0
_WATCH_INTERVAL: Final = 1.0
_WAIT_POLL: Final = 0.5
_DENIED: Final = "authorization violation"
_EXPIRED: Final = "authentication expired"
_PERMISSIONS: Final = "permissions violation"
_rng = random.SystemRandom()


def _access_denied(user_key: str, denials: int) -> AccessDeniedError:
    return AccessDeniedError(
        f"the bus refused identity {user_key} {denials} time(s) in a row: the key is revoked "
        "or not on the allowlist. Check that you use the right identity file; an unknown key "
        "must be added by an admin (`unibus user add`); a revoked key stays revoked, so "
        "create a new identity (`unibus keygen`) and have an admin add it"
    )


def _is_denial(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    return isinstance(exc, nats.errors.AuthorizationError) or _DENIED in str(exc).lower()


def _reason(exc: BaseException | None) -> str:
    """A loggable reason: never the text of a permission error (it names subjects)."""
    if exc is None:
        return "closed"
    if _is_denial(exc):
        return "authorization violation"
    if _EXPIRED in str(exc).lower():
        return "authorization expired"
    return type(exc).__name__


class _Outcome(enum.Enum):
    CONNECTED = "connected"
    DENIED = "denied"
    FAILED = "failed"


class _Session:
    """One underlying nats-py client and what it reported."""

    def __init__(self) -> None:
        self.nc = NATS()
        self.lost = asyncio.Event()
        """Set when the client is gone for good or the bus refused the identity."""
        self.denied = False
        self.discarding = False
        self.problem: str = "no answer"
        self.permission_errors = 0
        """``-ERR 'Permissions Violation …'`` lines this client received."""
        self.probes = 0
        """Permission probes in flight: a refusal they provoke is expected, not a warning."""


class Subscription:
    """A remembered subscription, re-established on every new underlying connection."""

    def __init__(self, owner: BusConnection, subject: str, cb: MessageHandler) -> None:
        self._owner = owner
        self._subject = subject

        if inspect.iscoroutinefunction(cb):
            self._cb = cb
        else:
            # nats-py accepts only coroutine functions; callers may pass any async callable.
            async def deliver(msg: Msg) -> None:
                await cb(msg)

            self._cb = deliver
        self._active = True
        self._attached_to: NATS | None = None
        self._current: NatsSubscription | None = None

    @property
    def subject(self) -> str:
        return self._subject

    @property
    def active(self) -> bool:
        return self._active

    async def _attach(self, nc: NATS) -> None:
        if not self._active or self._attached_to is nc:
            return
        self._attached_to = nc
        try:
            sub = await nc.subscribe(self._subject, cb=self._cb)
        except BaseException:
            if self._attached_to is nc:
                self._attached_to = None
            raise
        if self._active and self._attached_to is nc:
            self._current = sub
        else:  # unsubscribed, or moved to a newer connection, while we subscribed
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def unsubscribe(self) -> None:
        """Stop receiving and forget the subscription; idempotent."""
        if not self._active:
            return
        self._active = False
        self._owner._forget(self)
        current, self._current = self._current, None
        self._attached_to = None
        if current is not None:
            with contextlib.suppress(nats.errors.Error):
                await current.unsubscribe()


class BusConnection:
    """One nats-py connection at a time for one user identity, re-authorized as needed.

    Build it with ``await BusConnection.connect(...)``; close it with ``close()``.
    """

    def __init__(
        self,
        urls: Sequence[str],
        identity: KeyPair,
        *,
        ca_file: Path | None,
        name: str,
        connect_timeout: float,
        max_denials: int,
        connect_budget: float,
        reauth_budget: float,
        callback_timeout: float,
        reauth_denial_window: float = DEFAULT_REAUTH_DENIAL_WINDOW,
        ping_interval: float = DEFAULT_PING_INTERVAL,
    ) -> None:
        if identity.prefix is not Prefix.USER:
            raise ConfigError("a bus identity must be a user key pair (U…)")
        if max_denials < 1:
            raise ConfigError("max_denials must be at least 1")
        if min(connect_timeout, connect_budget, reauth_budget, ping_interval) <= 0:
            raise ConfigError("connect_timeout, ping_interval and the budgets must be positive")
        target = NatsTarget(urls=tuple(urls), ca_file=ca_file)
        target.check_secure()
        self._urls = list(target.urls)
        self._identity = identity
        self._tls = tls_options(ca_file) if ca_file is not None else {}
        self._name = name
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._max_denials = max_denials
        self._reauth_denial_window = reauth_denial_window
        self._denied_since: float | None = None
        self._connect_budget = connect_budget
        self._reauth_budget = reauth_budget
        self._callback_timeout = callback_timeout
        # One attempt: every URL once with its connect timeout, plus slack.
        self._attempt_budget = connect_timeout * (len(self._urls) + 1)
        self._session: _Session | None = None
        self._subs: list[Subscription] = []
        self._generation = 0
        self._reconnects = 0
        self._denials = 0
        self._failure: tuple[type[UnibusError], str] | None = None
        self._closed = False
        self._changed = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self.on_reauthorized: list[ReauthorizedCallback] = []
        """Awaited, in order, after every brand-new underlying connection is up and
        re-subscribed (not after the first one, nor after nats-py's own reconnects)."""

    @classmethod
    async def connect(
        cls,
        urls: Sequence[str],
        identity: KeyPair,
        *,
        ca_file: Path | None,
        name: str = "unibus-client",
        connect_timeout: float = 5.0,
        max_denials: int = 3,
        connect_budget: float = DEFAULT_CONNECT_BUDGET,
        reauth_budget: float = DEFAULT_REAUTH_BUDGET,
        callback_timeout: float = DEFAULT_CALLBACK_TIMEOUT,
        reauth_denial_window: float = DEFAULT_REAUTH_DENIAL_WINDOW,
        ping_interval: float = DEFAULT_PING_INTERVAL,
    ) -> BusConnection:
        """Connect as ``identity`` to any of ``urls``.

        Raises:
            AccessDeniedError: the bus refused the identity ``max_denials`` times in a row.
            BusUnavailableError: no node answered within ``connect_budget`` seconds.
            PostureError: a non-loopback URL without ``ca_file``.
        """
        self = cls(
            urls,
            identity,
            ca_file=ca_file,
            name=name,
            connect_timeout=connect_timeout,
            max_denials=max_denials,
            connect_budget=connect_budget,
            reauth_budget=reauth_budget,
            callback_timeout=callback_timeout,
            reauth_denial_window=reauth_denial_window,
            ping_interval=ping_interval,
        )
        bound_tls_close_wait()
        session = await self._establish(self._connect_budget, pause_first=False)
        await self._install(session)
        self._supervisor = asyncio.create_task(self._supervise(), name="unibus-bus-supervisor")
        return self

    # -- state ------------------------------------------------------------------------------------
    @property
    def nc(self) -> NATS:
        """The current underlying connection; replaced after a re-authorization."""
        if self._session is None:
            raise BusUnavailableError("not connected yet: use `await BusConnection.connect(...)`")
        return self._session.nc

    @property
    def user_key(self) -> str:
        return self._identity.public_key

    @property
    def generation(self) -> int:
        """1 for the first underlying connection, +1 for each brand-new one."""
        return self._generation

    @property
    def reconnects(self) -> int:
        """Reconnects nats-py did by itself (kicks, lost nodes) on any generation."""
        return self._reconnects

    @property
    def denials(self) -> int:
        """Refusals of the identity in a row, so far (0 once connected again)."""
        return self._denials

    @property
    def is_connected(self) -> bool:
        return self._failure is None and not self._closed and self.nc.is_connected

    @property
    def is_closed(self) -> bool:
        """True after ``close()`` or once the connection gave up for good."""
        return self._closed or self._failure is not None

    def _raise_if_unusable(self) -> None:
        if self._failure is not None:
            kind, message = self._failure
            raise kind(message)
        if self._closed:
            raise BusUnavailableError("this bus connection was closed")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once connected; raise ``AccessDeniedError``/``BusUnavailableError`` if not.

        Raises:
            TimeoutError: still not connected after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while True:
                self._raise_if_unusable()
                if self.nc.is_connected:
                    return
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_WAIT_POLL):
                        await changed.wait()

    async def _usable(self) -> NATS:
        """The connection to use now; between two connections, wait (bounded) for the next."""
        self._raise_if_unusable()
        if self.nc.is_closed:
            await self.wait_connected(self._attempt_budget)
        return self.nc

    # -- operations -------------------------------------------------------------------------------
    async def subscribe(self, subject: str, cb: MessageHandler) -> Subscription:
        """Subscribe now and again on every new underlying connection until unsubscribed."""
        self._raise_if_unusable()
        sub = Subscription(self, subject, cb)
        self._subs.append(sub)
        try:
            await sub._attach(self.nc)
        except nats.errors.ConnectionClosedError:
            pass  # between two connections: _install attaches it to the next one
        except BaseException:
            self._forget(sub)
            raise
        return sub

    def _forget(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)

    async def publish(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> None:
        """Publish through the current connection (buffered by nats-py while it reconnects)."""
        for attempt in range(2):
            nc = await self._usable()
            try:
                await nc.publish(subject, data, headers=headers)
            except nats.errors.ConnectionClosedError:
                # Raised before anything was sent: safe to try once on the next connection.
                self._raise_if_unusable()
                if attempt:
                    raise
                continue
            return

    async def request(
        self,
        subject: str,
        data: bytes = b"",
        *,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
    ) -> Msg:
        """Request/reply through the current connection (replies land in the user's inbox)."""
        for attempt in range(2):
            nc = await self._usable()
            try:
                return await nc.request(subject, data, timeout=timeout, headers=headers)
            except nats.errors.ConnectionClosedError:
                # Only raised before the request went out: safe to retry once.
                self._raise_if_unusable()
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def incarnation(self) -> tuple[int, int]:
        """Changes whenever the server may have authorized this user anew.

        ``(generation, reconnects)``: a kick, a lost node or an expiry all end in a fresh
        authorization, with the permissions the callout computes at that moment.
        """
        return (self._generation, self._reconnects)

    async def may_subscribe(self, subject: str, *, timeout: float = 5.0) -> bool:
        """Whether the server, right now, lets this connection subscribe to ``subject``.

        A SUB, then a PING: the server answers a refused SUB with a permissions error
        before its PONG, so one round trip settles it. ``False`` also when the round trip
        fails (between two connections); callers poll.
        """
        nc = await self._usable()
        session = self._session
        if session is None:  # pragma: no cover - _usable() raised first
            return False
        before = session.permission_errors
        session.probes += 1
        try:
            try:
                probe = await nc.subscribe(subject)
            except nats.errors.Error:
                return False
            try:
                await nc.flush(timeout=timeout)  # type: ignore[arg-type]  # a float works
            except (nats.errors.Error, TimeoutError):
                return False
            finally:
                with contextlib.suppress(nats.errors.Error):
                    await probe.unsubscribe()
        finally:
            session.probes -= 1
        return session is self._session and session.permission_errors == before

    def jetstream(self, *, timeout: float = 5.0) -> JetStreamContext:
        """A JetStream context of the current connection.

        Re-acquire it after a re-authorization (``generation`` changes, ``on_reauthorized``).
        """
        self._raise_if_unusable()
        return self.nc.jetstream(timeout=timeout)

    async def close(self) -> None:
        """Close for good: no further reconnects; idempotent."""
        if self._closed:
            return
        self._closed = True
        supervisor = self._supervisor
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            await asyncio.wait({supervisor})
        if self._session is not None:
            await self._discard(self._session)
        self._notify()

    async def __aenter__(self) -> BusConnection:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # -- underlying connections -------------------------------------------------------------------
    def _callbacks(self, session: _Session) -> dict[str, Callable[..., Awaitable[None]]]:
        async def error_cb(exc: Exception) -> None:
            if _is_denial(exc):
                session.denied = True
                session.problem = "the bus refused the identity"
                # nats-py would retry a refused identity forever: take over.
                session.lost.set()
                self._notify()
                return
            session.problem = _reason(exc)
            if _PERMISSIONS in str(exc).lower():
                session.permission_errors += 1
                # Expected around a membership change (a probe, or a moment on a connection
                # that a lagging callout authorized before its own kick lands): info, not a
                # warning; a lasting refusal surfaces to the caller as RoomError.
                if session.probes:
                    _log.debug("a permission probe was refused")
                else:
                    _log.info("the bus refused an operation", error="permissions violation")
            else:
                _log.debug("bus connection error", error=_reason(exc))

        async def disconnected_cb() -> None:
            if not session.discarding:
                _log.info("bus connection lost; reconnecting", user=self.user_key)
            self._notify()

        async def reconnected_cb() -> None:
            if session is self._session:
                self._reconnects += 1
                self._reset_denials()
                _log.info("bus connection re-established", user=self.user_key)
            self._notify()

        async def closed_cb() -> None:
            session.lost.set()
            self._notify()

        return {
            "error_cb": error_cb,
            "disconnected_cb": disconnected_cb,
            "reconnected_cb": reconnected_cb,
            "closed_cb": closed_cb,
        }

    async def _open(self, session: _Session) -> None:
        callbacks = self._callbacks(session)
        await session.nc.connect(
            servers=self._urls,
            name=self._name,
            nkeys_seed_str=self._identity.seed,
            inbox_prefix=naming.inbox_prefix(self.user_key),
            connect_timeout=self._connect_timeout,  # type: ignore[arg-type]  # a float works
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_TIME_WAIT,  # type: ignore[arg-type]  # a float works
            ping_interval=self._ping_interval,  # type: ignore[arg-type]  # a float works
            max_outstanding_pings=_MAX_OUTSTANDING_PINGS,
            error_cb=callbacks["error_cb"],
            disconnected_cb=callbacks["disconnected_cb"],
            reconnected_cb=callbacks["reconnected_cb"],
            closed_cb=callbacks["closed_cb"],
            **self._tls,  # type: ignore[arg-type]  # tls and tls_handshake_first
        )

    async def _attempt(self, session: _Session, budget: float) -> _Outcome:
        """One connection attempt over every URL, bounded by ``budget``."""
        connecting = asyncio.create_task(self._open(session), name="unibus-bus-connect")
        refused = asyncio.create_task(session.lost.wait())
        try:
            done, _ = await asyncio.wait(
                {connecting, refused}, timeout=budget, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            refused.cancel()
            if not connecting.done():
                connecting.cancel()
                await asyncio.wait({connecting})
        opened = connecting in done and not connecting.cancelled()
        if opened and (exc := connecting.exception()) is not None:
            session.problem = _reason(exc)
            opened = False
        if opened and not session.lost.is_set():
            # A callout slower than the server's first PING makes nats-py return from
            # connect() before it is authorized; only a round trip proves it is.
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                async with asyncio.timeout(self._connect_timeout):
                    await session.nc.flush()
            if session.nc.is_connected and not session.lost.is_set():
                return _Outcome.CONNECTED
        elif not opened and not session.lost.is_set() and connecting not in done:
            session.problem = f"no node answered within {budget:.1f}s ({session.problem})"
        denied = session.denied or _is_denial(session.nc.last_error)
        await self._discard(session)
        return _Outcome.DENIED if denied else _Outcome.FAILED

    def _note_denial(self) -> None:
        self._denials += 1
        if self._denied_since is None:
            self._denied_since = time.monotonic()

    def _reset_denials(self) -> None:
        self._denials = 0
        self._denied_since = None

    def _denied_for_good(self, window: float) -> bool:
        if self._denials < self._max_denials or self._denied_since is None:
            return False
        return time.monotonic() - self._denied_since >= window

    async def _establish(
        self, budget: float, *, pause_first: bool, denial_window: float = 0.0
    ) -> _Session:
        """A brand-new, connected underlying connection, within ``budget`` seconds.

        Raises:
            AccessDeniedError: ``max_denials`` refusals in a row (counting those that led here),
                the first of them at least ``denial_window`` seconds ago.
            BusUnavailableError: the budget ran out, or ``close()`` was called.
        """
        deadline = time.monotonic() + budget
        attempts = 0
        problem = "no attempt made"
        while True:
            if self._denied_for_good(denial_window):
                raise _access_denied(self.user_key, self._denials)
            if self._closed:
                raise BusUnavailableError("this bus connection was closed")
            if attempts or pause_first:
                pause = min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempts) * _rng.uniform(0.75, 1.25)
                if time.monotonic() + pause >= deadline:
                    break
                await asyncio.sleep(pause)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            session = _Session()
            try:
                outcome = await self._attempt(session, min(self._attempt_budget, remaining))
            except BaseException:
                await self._discard(session)
                raise
            attempts += 1
            if outcome is _Outcome.CONNECTED:
                self._reset_denials()
                return session
            if outcome is _Outcome.DENIED:
                self._note_denial()
                problem = "the bus refused the identity"
                _log.warning(
                    "the bus refused the identity",
                    user=self.user_key,
                    denials=self._denials,
                    max_denials=self._max_denials,
                )
            else:
                problem = session.problem
                _log.info("bus connection attempt failed", attempt=attempts, error=problem)
        raise BusUnavailableError(
            f"could not connect to the bus at {', '.join(self._urls)} within {budget:g}s "
            f"({attempts} attempt(s); last: {problem}); check the URLs and the CA file, and "
            "that at least one node is up"
        )

    async def _install(self, session: _Session) -> None:
        self._session = session
        for sub in list(self._subs):
            try:
                await sub._attach(session.nc)
            except nats.errors.Error as exc:
                # The session is already gone again: the supervisor retries on the next one.
                _log.warning("could not re-subscribe", error=_reason(exc))
        self._generation += 1
        self._notify()
        _log.info("bus connection up", user=self.user_key, generation=self._generation)

    async def _discard(self, session: _Session) -> None:
        session.discarding = True
        if session.nc.is_closed:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await session.nc.close()

    async def _until_lost(self, session: _Session) -> None:
        while not session.lost.is_set():
            # nats-py skips closed_cb when it closes while still CONNECTING: look as well.
            if session.nc.is_closed:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_WATCH_INTERVAL):
                    await session.lost.wait()

    async def _supervise(self) -> None:
        while not self._closed:
            session = self._session
            if session is None:
                return
            await self._until_lost(session)
            if self._closed:
                return
            denied = session.denied or _is_denial(session.nc.last_error)
            reason = "authorization violation" if denied else _reason(session.nc.last_error)
            await self._discard(session)
            self._notify()
            if denied:
                self._note_denial()
            _log.info("bus connection ended; re-authorizing", user=self.user_key, reason=reason)
            try:
                fresh = await self._establish(
                    self._reauth_budget,
                    pause_first=denied,
                    denial_window=self._reauth_denial_window,
                )
            except UnibusError as exc:
                self._fail(exc)
                return
            await self._install(fresh)
            await self._run_callbacks()

    def _fail(self, exc: UnibusError) -> None:
        if self._closed:
            return
        self._failure = (type(exc), str(exc))
        _log.warning("bus connection gave up", user=self.user_key, error=type(exc).__name__)
        self._notify()

    async def _run_callbacks(self) -> None:
        for callback in list(self.on_reauthorized):
            if self._closed:
                return
            try:
                async with asyncio.timeout(self._callback_timeout):
                    await callback()
            except Exception as exc:  # noqa: BLE001 - one failing callback must not stop the rest
                _log.warning("on_reauthorized callback failed", error=type(exc).__name__)

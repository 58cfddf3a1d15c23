"""An in-memory view of users and room memberships, trusted only while provably fresh.

Auth decisions must take milliseconds (the server gives the callout about two seconds,
and nats-py misreads anything slower), so they are answered from memory, kept current
by KV watches on ``UNIBUS_users`` and ``UNIBUS_rooms``.

A watch alone cannot tell "nothing changed" from "I am cut off". So a heartbeat commits
a barrier write to each stream — possible only with a quorum — and waits until the
watch has delivered it: the view then holds every change committed before the barrier.
Decisions are made only while the last confirmation is younger than ``max_staleness``;
otherwise the view answers ``store_unavailable`` and the callout denies (fail closed).

Freshness alone leaves a window: a change another callout has already acted on (kicked a
client for) may not have reached this view's watch yet, and the reconnecting client would
be admitted once more with what it just lost. So before deciding, the view also catches
up with the streams' last sequence numbers as read *after* the request arrived
(:meth:`DirectoryView.until_current`; concurrent requests share one read).

The watches ride on one R1 consumer per bucket, which lives on one node: when that node is
lost, nothing arrives until the consumer is re-created elsewhere, which takes seconds while
the cluster notices the loss. Neither proof waits for that: whatever the watch has not
delivered a moment after it was needed is read from the stream itself, message by message
from the stream leader (:meth:`DirectoryView._read_through`), and applied in order exactly
as the watch would have applied it, its changes announced (kicks) alike. Whichever of the
two applies a revision first wins; the other skips it.

Every decision carries a *stamp*, the stream revisions the view had applied. A change at
revision r therefore affects exactly the connections stamped below r (see kicks).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from unibus.authcallout.reasons import Reason
from unibus.core import naming
from unibus.core.errors import ProvisioningError
from unibus.core.kvfollow import KvEntry, KvFollower
from unibus.core.kvstore import BARRIER_KEY
from unibus.core.limits import DEFAULT_MAX_ROOMS
from unibus.core.log import get_logger
from unibus.core.models import RecordError, RoomRecord, UserRecord, decode
from unibus.core.retry import retry_until

_log = get_logger("unibus.authcallout.view")
_BUCKETS: Final = (naming.USERS_BUCKET, naming.ROOMS_BUCKET)
_GRANT_CHARS: Final = 12
_TAIL_BUDGET: Final = 2.4
_TAIL_ATTEMPT_TIMEOUT: Final = 0.3
_FOLLOW_HEARTBEAT: Final = 0.25
"""The followers' idle heartbeat: a consumer lost with its node is re-created within about
two and a half of these, well inside a decision's budget."""
_GRANT_RE: Final = re.compile(f"[0-9a-f]{{{_GRANT_CHARS}}}")
_READ_THROUGH_AFTER: Final = 0.1
"""How long a proof waits for the watch before it reads what is missing from the stream."""
_READ_TIMEOUT: Final = 0.5
_READ_BUDGET: Final = 2.0
_READ_PAUSE: Final = 0.05
_MOVE_CHECK: Final = 1.0
"""Seconds a stream may take to answer through a connection the view would move to."""
_KV_OPERATION: Final = "KV-Operation"
_MARKER_REASON: Final = "Nats-Marker-Reason"
_MARKER_OPERATIONS: Final = {"MaxAge": "PURGE", "Purge": "PURGE", "Remove": "DEL"}


class _ReadError(Exception):
    """A message could not be read from the stream leader."""


class _NothingAfter(_ReadError):
    """The stream leader holds no message after the revision asked about."""


class _StoredMessage(msgspec.Struct):
    subject: str
    seq: int
    time: str = ""
    hdrs: str = ""
    data: str = ""


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


_NO_MESSAGE_FOUND: Final = 10037
"""JetStream's error code when the stream holds no message from the sequence asked on."""


class _MessageReply(msgspec.Struct):
    message: _StoredMessage | None = None
    error: _ApiError | None = None


_MESSAGE_REPLY: Final = msgspec.json.Decoder(_MessageReply)


class _StreamState(msgspec.Struct):
    last_seq: int


class _InfoReply(msgspec.Struct):
    state: _StreamState | None = None
    error: _ApiError | None = None


# Only the last sequence number is read out of a stream info (the rest is never parsed).
_INFO_REPLY: Final = msgspec.json.Decoder(_InfoReply)


def _stored_headers(encoded: str) -> dict[str, str]:
    """The headers of a stored message (``NATS/1.0`` block, base64 in the API reply)."""
    if not encoded:
        return {}
    lines = base64.b64decode(encoded).decode("utf-8", "replace").split("\r\n")[1:]
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    return headers


def _stored_time(text: str) -> float | None:
    """Seconds since the epoch of Go's RFC 3339 UTC time (``...T04:32:20.123456789Z``)."""
    head, _, fraction = text.rstrip("Z").partition(".")
    try:
        whole = datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    digits = fraction if fraction.isdigit() else ""
    return whole.timestamp() + (int(digits) / 10 ** len(digits) if digits else 0.0)


def _retrieved(task: asyncio.Task[dict[str, int]]) -> None:
    if not task.cancelled():
        task.exception()


def grant_digest(rooms: Iterable[str]) -> str:
    """A short digest of the rooms a decision granted: equal exactly when the set is."""
    return hashlib.sha256(",".join(sorted(rooms)).encode("ascii")).hexdigest()[:_GRANT_CHARS]


@dataclass(frozen=True, slots=True)
class Stamp:
    """The stream revisions a decision was made at, and what it granted.

    ``grant`` lets a callout that just started judge a connection it did not see being
    authorized: a changed room set, whatever the revisions, means the connection holds
    permissions the state no longer gives (``DirectoryView.still_grants``).
    """

    users: int
    rooms: int
    grant: str = ""

    def encode(self) -> str:
        base = f"{self.users}.{self.rooms}"
        return f"{base}.{self.grant}" if self.grant else base

    @classmethod
    def parse(cls, text: str) -> Stamp | None:
        users, _, rest = text.partition(".")
        rooms, _, grant = rest.partition(".")
        if not (users.isdigit() and rooms.isdigit()):
            return None
        if grant and not (
            len(grant) == _GRANT_CHARS and all(c in "0123456789abcdef" for c in grant)
        ):
            return None
        return cls(int(users), int(rooms), grant)


@dataclass(frozen=True, slots=True)
class Change:
    """Users whose authorization changed at ``revision`` of ``bucket``."""

    bucket: str
    revision: int
    users: frozenset[str]
    revoked: bool
    committed_at: float | None
    """Server time of the change (seconds since the epoch), for the latency metric."""


@dataclass(frozen=True, slots=True)
class Lookup:
    reason: Reason
    user: UserRecord | None = None
    rooms: tuple[str, ...] = ()
    stamp: Stamp = Stamp(0, 0)
    member_of: int = 0
    """Rooms the user is a member of; more than ``rooms`` when past the cap."""


@dataclass
class _State:
    users: dict[str, UserRecord] = field(default_factory=dict)
    user_revisions: dict[str, int] = field(default_factory=dict)
    rooms: dict[str, frozenset[str]] = field(default_factory=dict)
    joined: dict[tuple[str, str], int] = field(default_factory=dict)
    """(room, member) -> the revision it was first seen a member at (for the room cap)."""
    member_of: dict[str, set[str]] = field(default_factory=dict)
    """member -> the rooms it is in: ``rooms`` inverted, so a decision reads one user's rooms
    without scanning every room."""
    applied: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_BUCKETS, 0))

    def rooms_of(self, user: str) -> tuple[str, ...]:
        return tuple(sorted(self.member_of.get(user, ())))

    def oldest_rooms_of(self, user: str, cap: int) -> tuple[str, ...]:
        """The ``cap`` rooms ``user`` has been a member of longest (then by id), sorted.

        Past the cap, newer rooms are left out rather than the user refused: whoever adds
        a victim to rooms can then crowd out nothing the victim already had.
        """
        rooms = self.rooms_of(user)
        if len(rooms) <= cap:
            return rooms
        oldest = sorted(rooms, key=lambda room: (self.joined.get((room, user), 0), room))
        return tuple(sorted(oldest[:cap]))


def _timestamp(created: object) -> float | None:
    if isinstance(created, datetime.datetime):
        return created.timestamp()
    if isinstance(created, int | float):
        return float(created) / (1e9 if created > 1e12 else 1.0)
    return None


class DirectoryView:
    def __init__(
        self,
        nc: NATS,
        *,
        max_staleness: float = 2.0,
        heartbeat: float = 0.5,
        on_change: Callable[[Change], Awaitable[None]] | None = None,
        max_rooms: int = DEFAULT_MAX_ROOMS,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=max_staleness)
        self._followers: dict[str, KvFollower] = {}
        self._max_rooms = max_rooms
        self._max_staleness = max_staleness
        self._heartbeat = heartbeat
        self._on_change = on_change
        self._state = _State()
        self._confirmed: dict[str, float] = dict.fromkeys(_BUCKETS, float("-inf"))
        self._waiters: list[tuple[str, int, asyncio.Future[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._retired: list[asyncio.Task[None]] = []
        """Tasks of the connection moved away from, ending (deleting their consumers)."""
        self._loaded: dict[str, asyncio.Event] = {b: asyncio.Event() for b in _BUCKETS}
        self._confirmation = asyncio.Event()
        self._wake = asyncio.Event()
        self._tail_read: asyncio.Task[dict[str, int]] | None = None
        self._tail_read_started = float("-inf")
        self._reads: dict[str, asyncio.Task[None]] = {}
        self._read_targets: dict[str, int] = dict.fromkeys(_BUCKETS, 0)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self._begin()

    def _begin(self) -> None:
        for bucket in _BUCKETS:
            self._tasks.append(asyncio.create_task(self._watch_forever(bucket)))
        self._tasks.append(asyncio.create_task(self._heartbeat_forever()))

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._retired, *self._reads.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._retired.clear()
        self._reads.clear()

    @property
    def connection(self) -> NATS:
        """The connection the view watches and proves itself over."""
        return self._nc

    async def move_to(self, nc: NATS) -> bool:
        """Carry on over ``nc`` (the service brings its view back to its own node).

        False, and nothing changed, unless both streams answer through ``nc`` (a node
        that has just started may not have its routes yet). The state and its last proof
        carry over, so decisions go on meanwhile: the watches resume on ``nc`` from the
        revision after the last one applied, so nothing committed meanwhile is missed or
        announced twice by this view, and the next heartbeat proves the view through
        ``nc``. Reads in flight on the old connection fail once it closes, and are
        retried on ``nc``.
        """
        for bucket in _BUCKETS:
            try:
                await self._last_seq(bucket, via=nc, timeout=_MOVE_CHECK)
            except (TimeoutError, nats.errors.Error, msgspec.DecodeError, _ReadError):
                return False
        # From here to the return nothing awaits: the caller learns of the move before
        # any callback of the old connection can run.
        self._nc, self._js = nc, nc.jetstream(timeout=self._max_staleness)
        for task in self._tasks:
            task.cancel()  # a watch's consumer is deleted as it ends; stop() waits for it
        self._retired = [task for task in (*self._retired, *self._tasks) if not task.done()]
        self._tasks = []
        self._begin()
        self._wake.set()
        return True

    def mark_disconnected(self) -> None:
        """The connection dropped: nothing in memory can be trusted until re-confirmed."""
        self._confirmed = dict.fromkeys(_BUCKETS, float("-inf"))

    def confirm_now(self) -> None:
        """Prove the view fresh again now, not at the next heartbeat (after a reconnect: a
        node in lame duck closes its clients, and requests wait for this proof)."""
        self._wake.set()

    # -- decisions --------------------------------------------------------------------------------
    @property
    def staleness(self) -> float:
        """Seconds since the view was last proven current (infinite before the first time)."""
        return time.monotonic() - min(self._confirmed.values())

    @property
    def is_fresh(self) -> bool:
        return self.staleness <= self._max_staleness

    async def until_fresh(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the view to be proven current; False if it was not.

        After a failover the view re-proves itself within about one heartbeat; waiting that
        long (well inside the server's auth timeout) avoids refusing clients that reconnect
        meanwhile, while a real loss of quorum still ends in a denial.
        """
        deadline = time.monotonic() + timeout
        while not self.is_fresh:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._confirmation.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._confirmation.wait()
            except TimeoutError:
                return self.is_fresh
        return True

    async def until_current(self, arrived: float, timeout: float) -> bool:
        """Wait until the view holds everything the streams held at ``arrived`` (monotonic).

        Reads, for each stream, a revision holding everything its leader holds (:meth:`_tail`)
        with a read that started at or after ``arrived`` (shared by every request waiting for
        one), then waits for the watches to apply up to it. False when that cannot be shown
        within ``timeout``: the caller denies (fail closed).
        """
        try:
            async with asyncio.timeout(timeout):
                tails = await self._tails_after(arrived)
                waits = [self._caught_up(bucket, seq) for bucket, seq in tails.items()]
                await asyncio.gather(*waits)
        except (TimeoutError, nats.errors.Error, ProvisioningError) as exc:
            _log.info("view not shown current", error=type(exc).__name__)
            return False
        return True

    async def _tails_after(self, arrived: float) -> dict[str, int]:
        for _ in range(3):  # bounded: a read in flight, then one started after ``arrived``
            task = self._tail_read
            if task is not None and self._tail_read_started >= arrived:
                return await asyncio.shield(task)
            if task is None or task.done():
                self._tail_read_started = time.monotonic()
                self._tail_read = asyncio.create_task(self._read_tails())
                # Every request waiting on it may have given up: its failure is theirs to
                # report (they deny), not the event loop's.
                self._tail_read.add_done_callback(_retrieved)
                continue
            # A read started before this request arrived: it may miss what came since.
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        raise TimeoutError("no read of the streams' tails started in time")

    async def _read_tails(self) -> dict[str, int]:
        # Short attempts, retried: a request that reaches a stream while its leadership is
        # being handed over is dropped, not queued, and waiting out a long timeout on it
        # would spend a decision's whole budget on one lost message.
        tails = await retry_until(
            "the users and rooms streams' tails",
            lambda: asyncio.gather(*(self._tail(bucket) for bucket in _BUCKETS)),
            budget=_TAIL_BUDGET,
            attempt_timeout=_TAIL_ATTEMPT_TIMEOUT,
            pause=0.0,
        )
        return dict(zip(_BUCKETS, tails, strict=True))

    async def _tail(self, bucket: str) -> int:
        """A revision holding everything the stream's leader holds now.

        Usually the view holds it already, and the leader's "no message after the revision
        the view applied" proves it: a reply far cheaper for the server than a stream info,
        which builds the stream's whole state, config and cluster report. Only when the
        leader has more does a stream info give its last sequence number.
        """
        applied = self._state.applied[bucket]
        try:
            await self._read_after(bucket, applied, timeout=_TAIL_ATTEMPT_TIMEOUT)
        except _NothingAfter:
            return applied
        return await self._last_seq(bucket)

    async def _last_seq(
        self, bucket: str, *, via: NATS | None = None, timeout: float = _TAIL_ATTEMPT_TIMEOUT
    ) -> int:
        """The stream's last sequence number, from its leader (a stream info), asked over
        the view's connection or ``via`` another."""
        stream = naming.kv_stream(bucket)
        nc = self._nc if via is None else via
        reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=timeout)
        info = _INFO_REPLY.decode(reply.data)
        if info.state is None:
            detail = info.error.description if info.error else "no state"
            raise _ReadError(f"stream info of {stream}: {detail}")
        return info.state.last_seq

    async def _caught_up(self, bucket: str, revision: int) -> None:
        """Until ``bucket`` is applied up to ``revision``: by the watch, or else by reading."""
        if self._state.applied[bucket] >= revision:
            return
        waiting = asyncio.create_task(self._applied(bucket, revision))
        try:
            done, _ = await asyncio.wait({waiting}, timeout=_READ_THROUGH_AFTER)
            if not done:
                self._read_through(bucket, revision)
            await waiting
        finally:
            waiting.cancel()

    def _read_through(self, bucket: str, revision: int) -> None:
        """Have ``bucket`` read from its stream up to ``revision`` (one reader per bucket)."""
        self._read_targets[bucket] = max(self._read_targets[bucket], revision)
        reader = self._reads.get(bucket)
        if reader is None or reader.done():
            self._reads[bucket] = asyncio.create_task(self._read_missing(bucket))

    async def _read_missing(self, bucket: str) -> None:
        # Failures are retried (a read during a leader change is answered 503) until reads
        # have failed for _READ_BUDGET; the proofs waiting meanwhile deny at their deadline.
        failing_since: float | None = None
        while self._state.applied[bucket] < self._read_targets[bucket]:
            try:
                entry = await self._read_after(bucket, self._state.applied[bucket])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - best effort: the proofs still wait, then deny
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since >= _READ_BUDGET:
                    _log.info(
                        "could not read the stream through",
                        bucket=bucket,
                        error=type(exc).__name__,
                        detail=str(exc)[:120],
                    )
                    return
                await asyncio.sleep(_READ_PAUSE)
                continue
            failing_since = None
            await self._take(bucket, entry)

    async def _read_after(
        self, bucket: str, revision: int, *, timeout: float = _READ_TIMEOUT
    ) -> KvEntry:
        """The first message of ``bucket`` after ``revision``, as the stream leader has it
        (only the leader answers this request)."""
        prefix = f"$KV.{bucket}."
        body = msgspec.json.encode({"seq": revision + 1, "next_by_subj": f"{prefix}>"})
        reply = await self._nc.request(
            f"$JS.API.STREAM.MSG.GET.{naming.kv_stream(bucket)}", body, timeout=timeout
        )
        decoded = _MESSAGE_REPLY.decode(reply.data)
        found = decoded.message
        if decoded.error is not None and decoded.error.err_code == _NO_MESSAGE_FOUND:
            raise _NothingAfter(f"no message of {bucket} after revision {revision}")
        if found is None or found.seq <= revision or not found.subject.startswith(prefix):
            raise _ReadError(f"no message of {bucket} after revision {revision}")
        headers = _stored_headers(found.hdrs)
        operation = headers.get(_KV_OPERATION)
        if operation is None and _MARKER_REASON in headers:
            operation = _MARKER_OPERATIONS.get(headers[_MARKER_REASON], "DEL")
        return KvEntry(
            key=found.subject.removeprefix(prefix),
            value=base64.b64decode(found.data) if found.data else b"",
            revision=found.seq,
            operation=operation,
            created=_stored_time(found.time),
            pending=0,
        )

    async def _take(self, bucket: str, entry: KvEntry) -> None:
        """Apply one entry after the first load, unless already applied; announce its change."""
        if entry.revision and entry.revision <= self._state.applied[bucket]:
            return  # the watch or the reader got there first
        change = self.apply(bucket, entry)
        if change is not None and self._on_change is not None:
            await self._on_change(change)

    async def _applied(self, bucket: str, revision: int) -> None:
        if self._state.applied[bucket] >= revision:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (bucket, revision, future)
        self._waiters.append(waiter)
        try:
            await future
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def lookup(self, user_key: str) -> Lookup:
        if not self.is_fresh:
            return Lookup(Reason.STORE_UNAVAILABLE)
        state = self._state
        stamp = Stamp(state.applied[naming.USERS_BUCKET], state.applied[naming.ROOMS_BUCKET])
        user = state.users.get(user_key)
        if user is None:
            return Lookup(Reason.UNKNOWN_KEY, stamp=stamp)
        if not user.is_active:
            return Lookup(Reason.REVOKED, user, stamp=stamp)
        rooms = state.oldest_rooms_of(user_key, self._max_rooms)
        granted = Stamp(stamp.users, stamp.rooms, grant_digest(rooms))
        member_of = len(state.member_of.get(user_key, ()))
        return Lookup(Reason.ALLOWED, user, rooms, granted, member_of=member_of)

    def still_grants(self, user_key: str, stamp: Stamp) -> bool:
        """Whether a connection authorized at ``stamp`` holds no more than the state gives.

        False for a user now unknown or inactive, whose record changed since, or whose
        rooms differ from the ones granted. A stamp without a grant (from an older
        callout) is judged on the user record alone.
        """
        state = self._state
        user = state.users.get(user_key)
        if user is None or not user.is_active:
            return False
        if stamp.users < state.user_revisions.get(user_key, 0):
            return False
        granted = state.oldest_rooms_of(user_key, self._max_rooms)
        return not stamp.grant or stamp.grant == grant_digest(granted)

    async def until_loaded(self, timeout: float) -> bool:
        """Wait for the first full load of both buckets; False if it did not come in time."""
        try:
            async with asyncio.timeout(timeout):
                for bucket in _BUCKETS:
                    await self._loaded[bucket].wait()
        except TimeoutError:
            return False
        return True

    # -- watching ---------------------------------------------------------------------------------
    async def _watch_forever(self, bucket: str) -> None:
        while True:
            try:
                await self._watch(bucket)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a broken watch must restart, not die
                _log.warning("watch failed; restarting", bucket=bucket, error=type(exc).__name__)
            self._confirmed[bucket] = float("-inf")
            await asyncio.sleep(0.5)

    async def _watch(self, bucket: str) -> None:
        # Once loaded, a new watch takes up after the last revision applied: every change
        # since is seen in order (a scan of the last values would miss keys that expired
        # meanwhile, and changes undone since).
        resume_after = self._state.applied[bucket] if self._loaded[bucket].is_set() else 0
        async with KvFollower(
            self._nc,
            bucket,
            heartbeat=_FOLLOW_HEARTBEAT,
            op_timeout=self._max_staleness,
            start_after=resume_after,
        ) as follower:
            self._followers[bucket] = follower
            try:
                while True:
                    entry = await follower.next(timeout=self._heartbeat)
                    if entry is None:
                        if follower.caught_up:
                            self._loaded[bucket].set()
                        continue
                    # Only the very first load is not a change. A follower resumed after an
                    # outage delivers what changed meanwhile, so it still disconnects the
                    # users it affects.
                    initial = not self._loaded[bucket].is_set()
                    applied = self._state.applied[bucket]
                    if entry.revision and entry.revision <= applied:
                        change = None  # read from the stream already (or a resumed follower)
                    else:
                        change = self.apply(bucket, entry)
                    if entry.pending == 0 and follower.caught_up:
                        self._loaded[bucket].set()
                    if change is not None and not initial and self._on_change is not None:
                        await self._on_change(change)
            finally:
                # A watch replaced by a move may end after its successor registered.
                if self._followers.get(bucket) is follower:
                    del self._followers[bucket]

    def apply(self, bucket: str, entry: KvEntry) -> Change | None:
        """Apply one KV entry of ``bucket``: what the watches do for every entry they get.

        Public so the view's rules can be driven entry by entry without a server; the
        returned ``Change`` is what the service kicks connections for.
        """
        state = self._state
        revision = entry.revision or 0
        change: Change | None = None
        # Keys starting with "_" are markers and barriers (the first-admin claim, the
        # quorum barrier), never user or room records.
        if not entry.key.startswith("_"):
            deleted = entry.is_deletion
            if bucket == naming.USERS_BUCKET:
                change = self._apply_user(entry.key, None if deleted else entry.value, revision)
            else:
                change = self._apply_room(entry.key, None if deleted else entry.value, revision)
            if change is not None:
                change = Change(
                    bucket=bucket,
                    revision=revision,
                    users=change.users,
                    revoked=change.revoked,
                    committed_at=_timestamp(entry.created),
                )
        state.applied[bucket] = max(state.applied[bucket], revision)
        self._release_waiters(bucket)
        return change

    def _apply_user(self, key: str, value: bytes | None, revision: int) -> Change | None:
        users = self._state.users
        before = users.get(key)
        after: UserRecord | None = None
        if value:
            try:
                after = decode(UserRecord, value)
            except RecordError:
                _log.warning("undecodable user record; treating as unknown", revision=revision)
        if after is None:
            users.pop(key, None)
            self._state.user_revisions.pop(key, None)
        else:
            users[key] = after
            self._state.user_revisions[key] = revision
        if before is None or before == after:
            return None
        revoked = before.is_active and (after is None or not after.is_active)
        return Change(naming.USERS_BUCKET, revision, frozenset({key}), revoked, None)

    def _apply_room(self, room_id: str, value: bytes | None, revision: int) -> Change | None:
        rooms = self._state.rooms
        before = rooms.get(room_id, frozenset())
        after: frozenset[str] = frozenset()
        if value:
            try:
                after = frozenset(decode(RoomRecord, value).members)
            except RecordError:
                _log.warning("undecodable room record; treating as empty", revision=revision)
        if after:
            rooms[room_id] = after
        else:
            rooms.pop(room_id, None)
        joined, member_of = self._state.joined, self._state.member_of
        for member in after - before:
            joined[(room_id, member)] = revision
            member_of.setdefault(member, set()).add(room_id)
        for member in before - after:
            joined.pop((room_id, member), None)
            rooms_left = member_of.get(member)
            if rooms_left is not None:
                rooms_left.discard(room_id)
                if not rooms_left:
                    del member_of[member]
        touched = before ^ after
        if not touched:
            return None
        return Change(naming.ROOMS_BUCKET, revision, frozenset(touched), bool(before - after), None)

    # -- freshness --------------------------------------------------------------------------------
    def _release_waiters(self, bucket: str) -> None:
        applied = self._state.applied[bucket]
        remaining = []
        for waiter in self._waiters:
            name, revision, future = waiter
            if name == bucket and revision <= applied:
                if not future.done():
                    future.set_result(None)
            else:
                remaining.append(waiter)
        self._waiters = remaining

    async def _confirm(self, bucket: str) -> None:
        started = time.monotonic()
        ack = await self._js.publish(
            f"$KV.{bucket}.{BARRIER_KEY}", b"", timeout=self._max_staleness
        )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (bucket, ack.seq, future)
        self._waiters.append(waiter)
        self._release_waiters(bucket)
        try:
            async with asyncio.timeout(self._max_staleness):
                done, _ = await asyncio.wait({future}, timeout=_READ_THROUGH_AFTER)
                if not done:
                    # The watch has not delivered it yet: read it (and whatever came before).
                    self._read_through(bucket, ack.seq)
                    done, _ = await asyncio.wait({future}, timeout=self._heartbeat)
                if not done:
                    # The stream committed the barrier and the follower did not deliver it:
                    # its consumer was lost with a node. Re-create it now rather than after
                    # its heartbeats go quiet.
                    follower = self._followers.get(bucket)
                    if follower is not None:
                        follower.restart()
                    await future
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        # The view holds every change committed before the barrier was published.
        self._confirmed[bucket] = started
        self._confirmation.set()

    async def _heartbeat_forever(self) -> None:
        while True:
            self._wake.clear()
            proving = asyncio.create_task(self._confirm_loaded())
            woken = asyncio.create_task(self._wake.wait())
            try:
                await asyncio.wait({proving, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
                if not proving.done():
                    # Woken mid-round (a reconnect, a move): a barrier sent on the lost
                    # connection is never answered, and waiting out its timeout would
                    # leave the view unproven (every decision waiting, then denied) for
                    # max_staleness. Start the round again at once. (Or stopped.)
                    proving.cancel()
                # Unlike an await, a wait never takes this task's own cancel for its own.
                await asyncio.wait({proving, woken})
            if not proving.cancelled():
                proving.result()
            if self._wake.is_set():
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._heartbeat):
                    await self._wake.wait()

    async def _confirm_loaded(self) -> None:
        """Prove both buckets at once (the view is fresh only once both are)."""

        async def confirm(bucket: str) -> None:
            try:
                await self._confirm(bucket)
            except (TimeoutError, nats.errors.Error) as exc:
                _log.info("view not confirmed", bucket=bucket, error=type(exc).__name__)

        await asyncio.gather(*(confirm(b) for b in _BUCKETS if self._loaded[b].is_set()))

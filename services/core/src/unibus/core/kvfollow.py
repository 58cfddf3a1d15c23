"""Following a KV bucket's stream in order, across the loss of the consumer that feeds it.

nats-py's KV watch rides on its ordered consumer, which has two failure modes that cost
the callout its view for ten seconds and more (issue 11):

* the consumer of a watch is an R1 consumer on the stream leader's node. When that node
  stops, nats-py notices only after two missed idle heartbeats (10 s by default), and if
  re-creating the consumer fails once — likely, mid-election — it never tries again;
* its "initial values done" marker is computed from a consumer-info read that races the
  first deliveries, so a scan can end before it saw every key.

:class:`KvFollower` keeps the same contract (every message of the bucket's subjects, in
stream order, from the last value of each key on) but owns the consumer: a gap in the
consumer sequence, a heartbeat gone quiet for two and a half heartbeats or an explicit
:meth:`KvFollower.restart` re-creates it from the stream sequence after the last one
delivered, retrying every ``retry`` seconds until a leader answers. *Caught up* is decided
from each message's own count of what is still pending (0 on the last), or from the
consumer's creation reply when nothing matched — never from a second read.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from unibus.core import naming
from unibus.core.log import get_logger

__all__ = ["KvEntry", "KvFollower"]

_log = get_logger("unibus.core.kvfollow")
_CONTROL_STATUS: Final = "100"
_KV_OPERATION: Final = "KV-Operation"
_MARKER_REASON: Final = "Nats-Marker-Reason"
_MARKER_OPERATIONS: Final = {"MaxAge": "PURGE", "Purge": "PURGE", "Remove": "DEL"}
_QUIET_HEARTBEATS: Final = 2.5
_INACTIVE_THRESHOLD: Final = 10.0


@dataclass(frozen=True, slots=True)
class KvEntry:
    """One message of a bucket: a value, or a ``DEL``/``PURGE`` tombstone."""

    key: str
    value: bytes
    revision: int
    operation: str | None
    created: float | None
    """Server time of the write, seconds since the epoch."""
    pending: int
    """Messages of the consumer still to come after this one, when it was sent."""

    @property
    def is_deletion(self) -> bool:
        return self.operation in ("DEL", "PURGE")


class KvFollower:
    """Every message of ``bucket`` under ``keys``, in stream order, without end.

    Starts from the last message of each key (like a KV watch), or with ``start_after`` a
    revision, from the message after it (a view carried on over another connection); use
    as an async context manager, read with :meth:`next`. Not safe for two readers.
    """

    def __init__(
        self,
        nc: NATS,
        bucket: str,
        *,
        keys: str = ">",
        heartbeat: float = 0.5,
        op_timeout: float = 2.0,
        retry: float = 0.25,
        start_after: int = 0,
    ) -> None:
        if start_after < 0:
            raise ValueError("start_after is a stream revision: 0 or more")
        self._nc = nc
        self._bucket = bucket
        self._stream = naming.kv_stream(bucket)
        self._prefix = f"$KV.{bucket}."
        self._filter = f"{self._prefix}{keys}"
        self._heartbeat = heartbeat
        self._op_timeout = op_timeout
        self._retry = retry
        self._jsm = nc.jsm(timeout=op_timeout)
        self._entries: asyncio.Queue[KvEntry] = asyncio.Queue()
        self._caught_up = asyncio.Event()
        self._arrival = asyncio.Event()
        self._restart = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._sub: Subscription | None = None
        self._consumer: str | None = None
        self._generation = 0
        self._closed = False
        self._next_consumer_seq = 1
        self._last_stream_seq = start_after
        self._last_activity = time.monotonic()

    async def __aenter__(self) -> KvFollower:
        self._supervisor = asyncio.create_task(self._supervise())
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        self._restart.set()  # ends the supervisor's loop even where a library swallows the cancel
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            # A wait, not an await: a cancel of the closing task itself is never swallowed.
            await asyncio.wait({supervisor})
            if not supervisor.cancelled():
                supervisor.exception()  # retrieved: it ended on its own, and is replaced
        await self._drop_consumer()

    # -- reading ----------------------------------------------------------------------------------
    async def next(self, timeout: float) -> KvEntry | None:
        """The next entry, or None when none came within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                return await self._entries.get()
        except TimeoutError:
            return None

    async def initial(self, timeout: float) -> AsyncIterator[KvEntry]:
        """The entries up to the point of being caught up, then stop.

        Raises ``TimeoutError`` if that point is not reached within ``timeout``.
        """
        async with asyncio.timeout(timeout):
            while True:
                while not self._entries.empty():
                    yield self._entries.get_nowait()
                if self._caught_up.is_set():
                    return
                self._arrival.clear()
                await self._arrival.wait()

    @property
    def caught_up(self) -> bool:
        """Every message the stream held when the follower started has been queued."""
        return self._caught_up.is_set()

    async def until_caught_up(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._caught_up.wait()
        except TimeoutError:
            return False
        return True

    def restart(self) -> None:
        """Re-create the consumer now (from the last revision delivered)."""
        self._restart.set()

    # -- the consumer -----------------------------------------------------------------------------
    async def _supervise(self) -> None:
        while not self._closed:
            self._restart.clear()  # before opening: a gap seen while it opens still counts
            if not await self._open():
                await asyncio.sleep(self._retry)
                continue
            while not self._restart.is_set():
                quiet = time.monotonic() - self._last_activity
                if quiet > self._heartbeat * _QUIET_HEARTBEATS:
                    _log.info("consumer quiet; re-creating", bucket=self._bucket)
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._heartbeat):
                        await self._restart.wait()
            await self._drop_consumer()

    async def _open(self) -> bool:
        await self._drop_consumer()
        inbox = self._nc.new_inbox()
        self._next_consumer_seq = 1
        self._generation += 1
        generation = self._generation

        async def deliver(msg: Msg) -> None:
            # Anything else comes from a consumer already replaced.
            if generation == self._generation and not self._closed:
                await self._on_message(msg)

        self._sub = await self._nc.subscribe(inbox, cb=deliver)
        resume = self._last_stream_seq > 0
        # Named here, so that a consumer whose creation reply never came can still be deleted.
        self._consumer = f"unibus-follow-{secrets.token_hex(8)}"
        config = api.ConsumerConfig(
            name=self._consumer,
            deliver_subject=inbox,
            filter_subject=self._filter,
            deliver_policy=(
                api.DeliverPolicy.BY_START_SEQUENCE
                if resume
                else api.DeliverPolicy.LAST_PER_SUBJECT
            ),
            opt_start_seq=self._last_stream_seq + 1 if resume else None,
            ack_policy=api.AckPolicy.NONE,
            max_deliver=1,
            flow_control=True,
            idle_heartbeat=self._heartbeat,
            inactive_threshold=_INACTIVE_THRESHOLD,
            num_replicas=1,
            mem_storage=True,
        )
        try:
            info = await self._jsm.add_consumer(
                self._stream, config=config, timeout=self._op_timeout
            )
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            _log.debug("consumer not created", bucket=self._bucket, error=type(exc).__name__)
            await self._drop_consumer()
            return False
        self._last_activity = time.monotonic()
        if not info.num_pending:
            # Nothing matched beyond what was delivered: whatever the stream held is ours.
            self._caught_up.set()
            self._arrival.set()
        return True

    async def _drop_consumer(self) -> None:
        sub, consumer = self._sub, self._consumer
        self._sub, self._consumer = None, None
        self._generation += 1
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if consumer is not None and self._nc.is_connected:
            # Best effort: a consumer on a lost node is gone already, and an orphan expires
            # after its inactive threshold.
            with contextlib.suppress(Exception):
                await self._jsm.delete_consumer(self._stream, consumer)

    async def _on_message(self, msg: Msg) -> None:
        self._last_activity = time.monotonic()
        headers = msg.headers or {}
        if not msg.data and headers.get(api.Header.STATUS.value) == _CONTROL_STATUS:
            await self._on_control(msg, headers)
            return
        try:
            meta = msg.metadata
        except Exception:  # noqa: BLE001 - not a JetStream delivery; nothing to apply
            return
        if meta.sequence.consumer != self._next_consumer_seq:
            self.restart()  # a gap: resume from the last stream sequence applied
            return
        self._next_consumer_seq += 1
        self._last_stream_seq = meta.sequence.stream
        operation = headers.get(_KV_OPERATION)
        if operation is None and _MARKER_REASON in headers:
            operation = _MARKER_OPERATIONS.get(headers[_MARKER_REASON], "DEL")
        self._entries.put_nowait(
            KvEntry(
                key=msg.subject.removeprefix(self._prefix),
                value=msg.data or b"",
                revision=meta.sequence.stream,
                operation=operation,
                created=meta.timestamp.timestamp() if meta.timestamp else None,
                pending=meta.num_pending,
            )
        )
        if meta.num_pending == 0:
            self._caught_up.set()
        self._arrival.set()

    async def _on_control(self, msg: Msg, headers: dict[str, str]) -> None:
        if msg.reply:  # a flow-control request: answering lets the server send more
            await self._nc.publish(msg.reply)
            return
        stalled = headers.get(api.Header.CONSUMER_STALLED.value)
        if stalled:
            await self._nc.publish(stalled)
        last = headers.get(api.Header.LAST_CONSUMER.value)
        if last is not None and last.isdigit() and int(last) != self._next_consumer_seq - 1:
            self.restart()  # the heartbeat says we missed a delivery

"""A room as a member sees it: a verified chain, its keys, encrypted publish and receive.

Nothing the servers say is trusted for confidentiality or authorship (SPEC §1): the member
list and epochs come only from the signed chain (``unibus.core.roomchain``), verified from
its genesis; a sealed key is used only if its signature checks against that chain; a
message is delivered only if its envelope verifies (``unibus.client.envelope``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import secrets
import time
import types
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from unibus.client.api import ApiClient, ApiError
from unibus.client.changes import adoption, genesis, successor
from unibus.client.connection import BusConnection
from unibus.client.crypto import new_room_key, open_room_key, seal_room_key
from unibus.client.envelope import EnvelopeError, Opened, Opener, Sealer
from unibus.client.errors import RollbackError, RoomAwaitingAdoptionError, RoomError
from unibus.client.heads import HeadMemory
from unibus.core import naming
from unibus.core.apimodels import RoomChange, RoomView, SealedKeyView
from unibus.core.errors import UnibusError
from unibus.core.log import get_logger
from unibus.core.models import Status
from unibus.core.nkeys import KeyPair
from unibus.core.roomchain import (
    LEGACY_KEY_ID,
    ChainError,
    RoomState,
    SignedState,
    check_sealed_key,
    is_leave,
    verify_chain,
)

__all__ = [
    "ADMISSION_TIMEOUT",
    "HISTORY_BATCH",
    "PUBLISH_ATTEMPTS",
    "PUBLISH_BUDGET",
    "Message",
    "RollbackError",
    "Room",
    "RoomError",
    "Undeliverable",
    "create_room",
]

_log = get_logger("unibus.client")
HISTORY_BATCH: Final = 256
ADMISSION_TIMEOUT: Final = 30.0
"""How long publish/subscribe/history wait for the bus to grant a room just joined."""
PUBLISH_ATTEMPTS: Final = 3
"""Tries per message; a retry is safe because the stream deduplicates its message id."""
_HISTORY_YIELD: Final = 32
"""Messages opened between two turns of the event loop while a replay fetches ahead."""
_ADMISSION_POLL: Final = (0.05, 0.5)
_LIVE_QUEUE: Final = 10_000
_RETRY_PAUSE: Final = 0.25
_RETRY_PAUSE_MAX: Final = 2.0
PUBLISH_BUDGET: Final = 30.0
"""Seconds an unacknowledged message is sent again before the error reaches the caller."""
_OVERLAP: Final = frozenset({"replay"})
_LOUD: Final = frozenset[str]()
_REPLAY_INACTIVE: Final = 60.0
"""Seconds a history consumer nobody pulls from lives on: a slot's longest wait."""
_CONSUMER_EXISTS: Final = 10148
"""JetStream's ``JSConsumerAlreadyExists``: a create (not an update) found the name taken."""
_GAP_CHECK: Final = 0.5
"""How often a live subscription waiting for messages checks whether its connection was
made anew (and the gap must be filled from the history)."""
_GAP_MARGIN: Final = datetime.timedelta(seconds=30)
"""How far before the last message heard a gap replay starts: covers the disconnect's
detection and a client clock ahead of the servers'."""
_REFETCH: Final = frozenset({"unknown_epoch", "not_member"})
_REFETCH_INTERVAL: Final = 1.0
"""At most one refetch of the chain per room and this many seconds, for unknown traffic."""
_REFETCH_MEMORY: Final = 1024
_RETRIABLE: Final = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)
"""Publish failures after which the message may or may not be stored: send it again."""
_ATOMIC_MAX: Final = 1000
"""Messages in one JetStream atomic batch: the servers' default ceiling (``max_msgs``)."""
_COMMIT_TIMEOUT: Final = 5.0
"""Seconds an atomic batch's commit waits for its acknowledgement, as a single publish."""
_ATOMIC_DISABLED: Final = 10174
"""JetStream's ``JSAtomicPublishDisabled``: the history stream was provisioned without
``allow_atomic`` (an earlier release); its room publishes message by message."""


class _ApiFault(msgspec.Struct):
    err_code: int = 0
    description: str = ""


class _CommitAck(msgspec.Struct):
    """The answer to an atomic batch's commit: the last message's sequence and the count
    stored, or why nothing was."""

    seq: int = 0
    count: int = 0
    error: _ApiFault | None = None


_COMMIT_ACK: Final = msgspec.json.Decoder(_CommitAck)


class Message(msgspec.Struct, frozen=True):
    """One verified, decrypted room message (a Struct: built once per message received)."""

    data: bytes
    sender: str
    epoch: int
    msg_id: str
    stream_seq: int | None = None
    time: datetime.datetime | None = None
    envelope: bytes = b""
    """The encrypted envelope as stored (what a server, or a removed member, can see)."""
    stale: bool = False
    """Sent under an older epoch than the room had already moved to, when it was received
    (live) or than a message stored before it (history): a removed member may hold its
    key. A sender on a rolled-back chain, or one that published as the room rekeyed."""


@dataclass
class Undeliverable:
    """Messages that failed verification or decryption, by reason: counted, never delivered."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Room:
    def __init__(
        self,
        room_id: str,
        identity: KeyPair,
        api: ApiClient,
        bus: BusConnection,
        *,
        heads: HeadMemory | None = None,
    ) -> None:
        self.room_id = naming.check_room_id(room_id)
        self._heads = heads if heads is not None else HeadMemory()
        self._probed_history = False
        self._identity = identity
        self._api = api
        self._bus = bus
        self._atomic_batches = True
        """Until the history stream says it takes no atomic batch (an earlier release's)."""
        self._states: list[RoomState] = []
        self._head: SignedState | None = None
        """The latest signed state verified: what the next change follows."""
        self._members_at: dict[int, frozenset[str]] = {}
        """Everyone who was a member at some point of each epoch (a message's check)."""
        self._keys: dict[tuple[int, str], bytes] = {}
        self._legacy_keys: dict[int, bytes] = {}
        self._unadopted: RoomView | None = None
        """The server's view of a legacy room nobody has adopted yet (nothing trusted)."""
        self._sealer = Sealer(identity, room_id)
        self._publish_lock = asyncio.Lock()
        self._admitted_on: tuple[int, int] | None = None
        self.undeliverable = Undeliverable()
        """Every refused message of every subscribe() and history() of this object."""
        self._refetched: set[tuple[int, str, str]] = set()
        self._last_refetch = -_REFETCH_INTERVAL
        self.stale_received = 0
        """Messages delivered with ``stale`` set (see ``Message.stale``)."""

    # -- trusted state ----------------------------------------------------------------------------
    @property
    def state(self) -> RoomState:
        if self._unadopted is not None:
            raise RoomAwaitingAdoptionError(self.room_id, self._unadopted.owner)
        if not self._states:
            raise RoomError("the room has not been loaded; call refresh()")
        return self._states[-1]

    @property
    def members(self) -> tuple[str, ...]:
        return self.state.members

    def is_member(self, key: str, epoch: int) -> bool:
        members = self._members_at.get(epoch)
        return members is not None and key in members

    async def refresh(self) -> None:
        """Fetch and verify the chain, then fetch, verify and open this member's keys.

        A room migrated from the legacy store without a signed chain yet is not an error
        here: ``awaiting_adoption`` says so, its legacy keys are read, and everything that
        needs a trusted state raises :class:`RoomAwaitingAdoptionError`.
        """
        view = await self._api.get_room(self.room_id)
        if not view.chain:
            await self._refresh_unadopted(view)
            return
        try:
            states = verify_chain(view.chain, room_id=self.room_id)
        except ChainError as exc:
            raise RoomError(
                f"the room's chain does not verify ({exc.reason}); not trusting it"
            ) from None
        if len(states) < len(self._states) or states[: len(self._states)] != self._states:
            raise RollbackError("the server presented an older or different history of this room")
        problem = self._heads.check(self.room_id, states)
        if problem is not None:
            raise RollbackError(problem)
        # The server's summary must agree with the signed chain, or it is lying about members.
        latest = states[-1]
        if sorted(view.members) != list(latest.members) or view.epoch != latest.epoch:
            raise RoomError("the server's member list disagrees with the room's signed chain")
        self._unadopted = None
        self._states = states
        self._head = view.chain[-1]
        self._heads.remember(self.room_id, states)
        members_at: dict[int, set[str]] = {}
        for verified in states:
            members_at.setdefault(verified.epoch, set()).update(verified.members)
        self._members_at = {epoch: frozenset(keys) for epoch, keys in members_at.items()}
        legacy_epochs = states[0].legacy_epochs
        for sealed in await self._api.sealed_keys(self.room_id):
            if sealed.member != self._identity.public_key:
                continue
            if self._took_legacy_key(sealed, legacy_epochs):
                continue
            try:
                check_sealed_key(
                    states,
                    room_id=self.room_id,
                    epoch=sealed.epoch,
                    key_id=sealed.key_id,
                    member=sealed.member,
                    sealed=sealed.sealed,
                    signer=sealed.signer,
                    signature=sealed.signature,
                )
                key = open_room_key(sealed.sealed, self._identity)
            except UnibusError as exc:
                _log.warning("rejected a sealed key", reason=getattr(exc, "reason", "invalid"))
                continue
            self._keys[(sealed.epoch, sealed.key_id)] = key

    async def _refresh_unadopted(self, view: RoomView) -> None:
        # A device that verified a signed history of this room before must not be shown
        # it without one: that is a rollback, not a legacy room.
        problem = self._heads.check(self.room_id, [])
        if problem is not None:
            raise RollbackError(problem)
        self._unadopted = view
        self._states = []
        self._head = None
        self._members_at = {}
        if self._identity.public_key not in view.members:
            return  # an administrator come to adopt it: no keys of its own here
        for sealed in await self._api.sealed_keys(self.room_id):
            if sealed.member == self._identity.public_key:
                self._took_legacy_key(sealed, view.epoch)

    def _took_legacy_key(self, sealed: SealedKeyView, legacy_epochs: int) -> bool:
        """Open a key of a legacy epoch (unsigned: the legacy store signed nothing).

        Such keys only ever decrypt what the legacy era wrote; nothing is sent with them
        (publishing uses the signed chain's epoch), so a key the server made up would
        open nothing a member wrote. Returns whether ``sealed`` was a legacy key.
        """
        if sealed.key_id != LEGACY_KEY_ID or not 1 <= sealed.epoch <= legacy_epochs:
            return False
        try:
            self._legacy_keys[sealed.epoch] = open_room_key(sealed.sealed, self._identity)
        except UnibusError as exc:
            _log.warning("a legacy key does not open", reason=getattr(exc, "reason", "invalid"))
        return True

    @property
    def awaiting_adoption(self) -> bool:
        """The room came from the legacy store and its owner has not adopted it yet."""
        return self._unadopted is not None

    @property
    def legacy_keys(self) -> Mapping[int, bytes]:
        """This member's keys of the room's legacy epochs, by epoch (read-only): for what
        the legacy era wrote. Unsigned, as the legacy store kept them; never sent with."""
        return types.MappingProxyType(self._legacy_keys)

    async def adopt(self) -> None:
        """Adopt this legacy room: sign its genesis, adopting the migrated members who are
        still active, with a fresh key for the epoch after the legacy ones sealed to each.

        Its legacy owner does this, or an administrator once that owner is revoked (the
        API decides, and refuses anyone else). The adopter owns the room from then on.

        Raises:
            RoomError: the room has a signed chain already.
        """
        await self.refresh()
        view = self._unadopted
        if view is None:
            raise RoomError(f"room {self.room_id} has a signed chain already: nothing to adopt")
        me = self._identity.public_key
        members = {me, *[m for m in view.members if await self._is_active_user(m)]}
        key = new_room_key()
        body = adoption(
            self._identity,
            self.room_id,
            legacy_epochs=view.epoch,
            members=members,
            sealed_by_member={member: seal_room_key(key, member) for member in members},
        )
        await self._api.adopt_room(self.room_id, body)
        await self.refresh()

    async def _is_active_user(self, key: str) -> bool:
        try:
            return (await self._api.get_user(key)).status is Status.ACTIVE
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    def key_for(self, epoch: int, key_id: str) -> bytes | None:
        """The verified room key of ``(epoch, key_id)`` this device holds, if any."""
        return self._keys.get((epoch, key_id))

    @property
    def held_keys(self) -> Mapping[tuple[int, str], bytes]:
        """Every verified room key this device holds, by ``(epoch, key_id)`` (read-only)."""
        return types.MappingProxyType(self._keys)

    # -- membership -------------------------------------------------------------------------------
    async def invite(self, *users: str) -> None:
        """Add members, sealing the current epoch's key to each (owner or room admin only)."""
        await self.refresh()
        current = self.state
        key = self._require_key(current.epoch, current.key_id)
        change = self._change(
            {*current.members, *users},
            new_epoch=False,
            sealed_by_member={user: seal_room_key(key, user) for user in users},
        )
        await self._api.add_members(self.room_id, change)
        await self.refresh()

    async def remove(self, user: str) -> None:
        """Remove a member: a new epoch whose fresh key is sealed to every remaining member."""
        await self.refresh()
        change = self._new_epoch(set(self.state.members) - {user})
        await self._api.remove_member(self.room_id, user, change)
        await self.refresh()

    async def rekey(self) -> None:
        """Start a new epoch with a fresh key sealed to every member (same members).

        The owner and room admins may rekey at any time; any member may right after a
        member left (the leave's epoch has no key: the leaver hands out none).
        """
        await self.refresh()
        await self._api.rekey(self.room_id, self._new_epoch(set(self.state.members)))
        await self.refresh()

    def _new_epoch(self, members: set[str]) -> RoomChange:
        """The next state with ``members``, in a new epoch whose fresh key each receives."""
        key = new_room_key()
        sealed = {member: seal_room_key(key, member) for member in members}
        return self._change(members, new_epoch=True, sealed_by_member=sealed)

    def _change(
        self,
        members: Iterable[str],
        *,
        new_epoch: bool,
        admins: Iterable[str] | None = None,
        sealed_by_member: Mapping[str, bytes] = {},
    ) -> RoomChange:
        """The signed successor of the latest state ``refresh()`` verified."""
        if self._head is None:
            raise RoomError("the room has not been loaded; call refresh()")
        _, change = successor(
            self._head,
            self._identity,
            members=members,
            new_epoch=new_epoch,
            admins=admins,
            sealed_by_member=sealed_by_member,
        )
        return change

    async def leave(self) -> None:
        """Leave the room: a new epoch without this member, for which it hands out no key.

        The remaining members' next publish rekeys the room (any member may, after a
        leave), so the leaver holds no key to anything that follows. The owner cannot
        leave its room.

        Raises:
            RoomError: this identity owns the room.
        """
        await self.refresh()
        me = self._identity.public_key
        if me == self.state.owner:
            raise RoomError("the owner cannot leave its room; remove the other members instead")
        change = self._change(
            set(self.state.members) - {me}, admins=set(self.state.admins) - {me}, new_epoch=True
        )
        await self._api.leave_room(self.room_id, change)
        self._admitted_on = None

    def _require_key(self, epoch: int, key_id: str) -> bytes:
        key = self.key_for(epoch, key_id)
        if key is None:
            raise RoomError(f"no verified key for epoch {epoch}; is this identity a member?")
        return key

    # -- admission --------------------------------------------------------------------------------
    async def wait_admitted(self, timeout: float = ADMISSION_TIMEOUT) -> None:
        """Return once the bus lets this connection use the room's subject.

        Joining a room (creating it, being invited) changes this user's permissions through
        a kick and a fresh authorization shortly after the API call returned (SPEC §5);
        until then the servers refuse the room's subject. Publish, subscribe and history
        call this by themselves, once per authorization of the connection.

        Raises:
            RoomError: still refused after ``timeout`` seconds (not, or no longer, a member).
        """
        subject = naming.room_subject(self.room_id)
        deadline = asyncio.get_running_loop().time() + timeout
        pause, cap = _ADMISSION_POLL
        while True:
            incarnation = self._bus.incarnation
            if await self._bus.may_subscribe(subject):
                self._admitted_on = incarnation
                return
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise RoomError(
                    f"the bus still refuses room {self.room_id} to {self._identity.public_key} "
                    f"after {timeout:g}s: is this identity a member? (`unibus room list`; an "
                    "owner or room admin must invite it)"
                )
            await asyncio.sleep(min(pause, remaining))
            pause = min(cap, pause * 2)

    async def _ensure_admitted(self) -> None:
        if self._admitted_on != self._bus.incarnation:
            if self._admitted_on is not None:
                # Re-authorized since: a change to one of this user's rooms is the usual
                # cause (the callout kicks every member), so learn the new epoch before
                # publishing under the old one. An API that is away, or a server whose
                # record disagrees with the signed chain, is not a reason to fail here: a
                # failed refresh changes nothing, this device keeps the state it verified,
                # and _ensure_current still refuses an epoch older than one it knows.
                try:
                    await self.refresh()
                except (ApiError, RoomError) as exc:
                    _log.info("room not refreshed; keeping the verified state", error=str(exc))
            await self.wait_admitted()

    async def _ensure_current(self) -> None:
        """Refuse to publish under an epoch older than one this device knows exists."""
        if not self._probed_history:
            await self._probe_newest_message()
        state = self.state
        if is_leave(state) and self.key_for(state.epoch, state.key_id) is None:
            await self._rekey_after_leave()
        newest = self._heads.newest_epoch(self.room_id)
        if newest > self.state.epoch:
            await self.refresh()
            if newest > self.state.epoch:
                raise RollbackError(
                    f"signed messages of room {self.room_id} show epoch {newest}, but the "
                    f"server serves its chain only up to epoch {self.state.epoch}: a rollback, "
                    "or a server still catching up; not publishing under the older epoch "
                    "(retry later; if it persists, the room's record was tampered with)"
                )

    async def _rekey_after_leave(self) -> None:
        """The room's epoch was started by a member who left, and has no key: make the
        next one. Another member doing the same at once wins or loses the compare-and-set;
        either way the room then has a key this member can use."""
        try:
            await self.rekey()
        except ApiError as exc:
            if exc.status != 409:
                raise
            await self.refresh()

    async def _probe_newest_message(self) -> None:
        """Learn the epoch of the newest stored message (once per Room object).

        A fresh device knows no head; the room's history may still show that the chain it
        is served is old. Best effort: a server that hides the history can hide it anyway,
        and a probe that fails is tried again at the next publish.
        """
        js = self._bus.jetstream()
        consumer = ""
        try:
            consumer, info = await self._claim_consumer(
                lambda name: api.ConsumerConfig(
                    name=name,
                    filter_subject=naming.room_subject(self.room_id),
                    ack_policy=api.AckPolicy.NONE,
                    deliver_policy=api.DeliverPolicy.LAST,
                    inactive_threshold=10.0,
                )
            )
            if info.num_pending:
                pull = await js.pull_subscribe_bind(consumer, stream=naming.MESSAGES_STREAM)
                try:
                    for msg in await pull.fetch(1, timeout=2.0):
                        self._note_epoch(Opener(self.room_id), msg.data)
                finally:
                    with contextlib.suppress(Exception):
                        await pull.unsubscribe()
        except (*_RETRIABLE, nats.errors.Error, TimeoutError, RoomError) as exc:
            _log.debug("history probe failed", error=type(exc).__name__)
            return
        finally:
            if consumer:
                with contextlib.suppress(Exception):
                    await js.delete_consumer(naming.MESSAGES_STREAM, consumer)
        self._probed_history = True

    def _note_epoch(self, opener: Opener, data: bytes) -> None:
        """Remember the epoch of a message signed by the owner or a room admin.

        Only they can remove anyone, so only their word that a newer epoch exists guards
        against a rollback past a removal; a plain member's claim would let any member stop
        the room's publishing. (After a leave, a plain member may make the next epoch:
        evidence of that one is not taken from traffic, only from this device's memory.)
        """
        try:
            env = opener.attest(data)
        except EnvelopeError:
            return
        if env.epoch > self.state.epoch and self.state.may_act(env.sender):
            self._heads.saw_epoch(self.room_id, env.epoch)

    # -- messages ---------------------------------------------------------------------------------
    async def publish(self, data: bytes) -> int:
        """Encrypt, sign and publish; returns once the history stream has stored it (its seq)."""
        return (await self.publish_many([data]))[0]

    async def publish_many(self, messages: Sequence[bytes]) -> list[int]:
        """One signature for the whole batch, stored as one JetStream atomic batch.

        The stream answers the batch once and stores it whole or not at all. Whatever
        keeps it from storing the batch (a kick, a lost node, a leader election, a stream
        provisioned without atomic batches) sends each message on its own instead, with
        its message id: the stream stores each id once, so a batch stored after all is not
        stored twice, and a message whose acknowledgement does not come is sent again.

        Raises:
            RoomError: no key for the current epoch, or the bus refuses the room.
            nats.errors.TimeoutError: a message was not acknowledged within
                ``PUBLISH_BUDGET`` seconds of attempts.
        """
        await self._ensure_admitted()
        await self._ensure_current()
        state = self.state
        key = self._require_key(state.epoch, state.key_id)
        async with self._publish_lock:
            sealed = self._sealer.seal_batch_with_ids(
                list(messages), epoch=state.epoch, key_id=state.key_id, room_key=key
            )
        subject = naming.room_subject(self.room_id)
        seqs: list[int] = []
        for start in range(0, len(sealed), _ATOMIC_MAX):
            group = sealed[start : start + _ATOMIC_MAX]
            stored = None
            if self._atomic_batches and len(group) > 1:
                stored = await self._publish_atomic(subject, group)
            seqs.extend(stored if stored is not None else await self._publish_each(subject, group))
        return seqs

    async def _publish_atomic(
        self, subject: str, sealed: Sequence[tuple[str, bytes]]
    ) -> list[int] | None:
        """The sequences ``sealed`` was stored at, as one atomic batch; None when the stream
        did not say it stored it (then it stored none of it, or stored it under the same
        message ids, which the caller's sending again finds).

        All but the last message go without a reply: one acknowledgement instead of one
        per message (and one reply route through the member account's import instead of
        one per message) is what makes the batch cheaper for the servers.
        """
        batch_id = secrets.token_hex(16)
        try:
            nc = self._bus.nc
            for index, (message_id, envelope) in enumerate(sealed[:-1], 1):
                await nc.publish(
                    subject, envelope, headers=_batch_headers(batch_id, index, message_id)
                )
            message_id, envelope = sealed[-1]
            headers = _batch_headers(batch_id, len(sealed), message_id)
            headers["Nats-Batch-Commit"] = "1"
            reply = await nc.request(subject, envelope, timeout=_COMMIT_TIMEOUT, headers=headers)
            ack = _COMMIT_ACK.decode(reply.data)
        except (UnibusError, nats.errors.Error, msgspec.DecodeError):
            return None
        if ack.error is not None:
            if ack.error.err_code == _ATOMIC_DISABLED:
                self._atomic_batches = False
            else:
                _log.debug("atomic batch refused", code=ack.error.err_code)
            return None
        if ack.count != len(sealed) or ack.seq < len(sealed):
            return None
        # The batch is stored as one run of sequences, the commit's the last.
        return list(range(ack.seq - len(sealed) + 1, ack.seq + 1))

    async def _publish_each(self, subject: str, sealed: Sequence[tuple[str, bytes]]) -> list[int]:
        js = self._bus.jetstream()
        first = await asyncio.gather(
            *(
                js.publish(
                    subject,
                    envelope,
                    stream=naming.MESSAGES_STREAM,
                    headers={"Nats-Msg-Id": message_id},
                )
                for message_id, envelope in sealed
            ),
            return_exceptions=True,
        )
        seqs: list[int] = []
        for (message_id, envelope), outcome in zip(sealed, first, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, _RETRIABLE):
                    raise outcome
                seqs.append(await self._publish_again(subject, message_id, envelope))
            else:
                seqs.append(outcome.seq)
        return seqs

    async def _publish_again(self, subject: str, message_id: str, envelope: bytes) -> int:
        """Retry one unacknowledged message; the stream's dedupe keeps it stored once.

        Tried for ``PUBLISH_BUDGET`` seconds with a growing pause: longer than a leader
        election after a node is lost (4 to 9 s), so the application never sees one.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PUBLISH_BUDGET
        pause = _RETRY_PAUSE
        while True:
            # A pause for an election to settle; then the permissions, which a kick since
            # the first try may have changed: a member removed meanwhile gets a clear
            # error instead of another timeout.
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RETRY_PAUSE_MAX)
            self._admitted_on = None
            await self._ensure_admitted()
            try:
                ack = await self._bus.jetstream().publish(
                    subject,
                    envelope,
                    stream=naming.MESSAGES_STREAM,
                    headers={"Nats-Msg-Id": message_id},
                )
            except _RETRIABLE:
                if loop.time() >= deadline:
                    raise
                continue
            return ack.seq

    async def _refused(
        self, opener: Opener, data: bytes, reason: str, quiet: frozenset[str]
    ) -> Opened | None:
        """After ``opener`` refused ``data`` for ``reason``: the message after a refetch of
        the chain if that was the cause, else ``None`` (counted unless ``quiet``).

        The loops call ``opener.open`` themselves and come here only on a refusal: a
        coroutine per message costs more than the checks on a small one.
        """
        if reason in _REFETCH:
            try:
                refetched = await self._refetch_for(opener, data)
            except EnvelopeError as exc:
                refetched, reason = False, exc.reason  # junk: what is wrong with it, first
        if reason in _REFETCH and refetched:
            try:
                return opener.open(data, room_key=self.key_for, is_member=self.is_member)
            except EnvelopeError as exc:
                reason = exc.reason
            if reason in _REFETCH:
                # Still newer than the chain served: if a member signed it, the room has
                # moved on without the server saying so.
                self._note_epoch(opener, data)
        if reason not in quiet:
            self.undeliverable.add(reason)
        return None

    async def _refetch_for(self, opener: Opener, data: bytes) -> bool:
        """Refetch the chain and keys for a message from a newer epoch or member, if worth it.

        Each refetch costs two signed API calls (and two replicated writes), for every
        receiver: so only for a message whose sender really signed it, once per new epoch
        and key id (or new sender), and at most once per ``_REFETCH_INTERVAL``. Returns
        whether the chain was refetched.

        Raises:
            EnvelopeError: the sender did not sign it (junk costs nobody an API call).
        """
        env = opener.attest(data)
        marker = (
            env.epoch,
            env.key_id,
            "" if self.is_member(env.sender, env.epoch) else env.sender,
        )
        if marker in self._refetched:
            return False
        if len(self._refetched) >= _REFETCH_MEMORY:
            self._refetched.clear()
        self._refetched.add(marker)
        loop = asyncio.get_running_loop()
        wait = self._last_refetch + _REFETCH_INTERVAL - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_refetch = loop.time()
        with contextlib.suppress(UnibusError):
            await self.refresh()
        return True

    def _live(self, opened: Opened, msg: Msg) -> Message:
        stale = opened.epoch < self.state.epoch
        if stale:
            self._count_stale(opened)
        return Message(
            opened.plaintext,
            opened.sender,
            opened.epoch,
            opened.msg_id,
            envelope=msg.data,
            stale=stale,
        )

    def _count_stale(self, opened: Opened) -> None:
        self.stale_received += 1
        _log.warning(
            "a member sent under an older epoch than the room's",
            sender=opened.sender,
            epoch=opened.epoch,
            room_epoch=self.state.epoch,
        )

    def open_envelope(self, data: bytes) -> Message:
        """Check and decrypt one envelope with what this member knows now (no refetch).

        For tools and audits: a fresh replay memory, nothing counted.

        Raises:
            EnvelopeError: the envelope is refused (``reason`` says why).
        """
        opened = Opener(self.room_id).open(data, room_key=self.key_for, is_member=self.is_member)
        return Message(opened.plaintext, opened.sender, opened.epoch, opened.msg_id, envelope=data)

    async def subscribe(
        self,
        *,
        history: bool = False,
        since: datetime.datetime | None = None,
        slot: int | None = None,
    ) -> AsyncIterator[Message]:
        """Live messages, verified and decrypted, each delivered once.

        With ``history`` (or ``since``), the stored messages come first (from ``since``,
        else all of them), then the live ones, with no gap between them and no message
        twice: the live subscription starts before the replay, and what it received
        meanwhile follows the replay, less what the replay already delivered.
        """
        await self._ensure_admitted()
        opener = Opener(self.room_id)
        key_for, is_member = self.key_for, self.is_member
        opened: Opened | None
        queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=_LIVE_QUEUE)
        subscription = await self._bus.subscribe(naming.room_subject(self.room_id), queue.put)
        try:
            if history or since is not None:
                async for message in self._replay(opener, since=since, slot=slot, idle=2.0):
                    yield message
                # Received while the replay ran: the replay delivered most of them already;
                # the opener knows them as seen, so they are dropped here, uncounted.
                for _ in range(queue.qsize()):
                    msg = queue.get_nowait()
                    try:
                        opened = opener.open(msg.data, room_key=key_for, is_member=is_member)
                    except EnvelopeError as exc:
                        opened = await self._refused(opener, msg.data, exc.reason, _OVERLAP)
                    if opened is not None:
                        yield self._live(opened, msg)
            incarnation = self._bus.incarnation
            heard = time.time()  # a float per message; a datetime only for a gap replay
            overlap = 0
            while True:
                if self._bus.incarnation != incarnation:
                    # The connection was lost and made again (a node went, a kick, an
                    # expiry): what was published meanwhile reached the history, not this
                    # subscription. Replayed from a margin before the last message heard;
                    # the opener drops, uncounted, what was delivered already.
                    since = datetime.datetime.fromtimestamp(heard, datetime.UTC) - _GAP_MARGIN
                    try:
                        async for message in self._replay(
                            opener, since=since, slot=slot, idle=2.0, quiet=_OVERLAP
                        ):
                            yield message
                    except nats.errors.Error as exc:
                        # Still failing over: tried again on the next round, never raised.
                        _log.info("gap replay failed; retrying", error=type(exc).__name__)
                        await asyncio.sleep(_GAP_CHECK)
                        continue
                    incarnation = self._bus.incarnation
                    overlap = queue.qsize()
                if queue.qsize():
                    msg = queue.get_nowait()
                else:
                    try:
                        async with asyncio.timeout(_GAP_CHECK):
                            msg = await queue.get()
                    except TimeoutError:
                        continue
                heard = time.time()
                try:
                    opened = opener.open(msg.data, room_key=key_for, is_member=is_member)
                except EnvelopeError as exc:
                    # Received while a gap replay ran: most were delivered by it already.
                    quiet = _OVERLAP if overlap > 0 else _LOUD
                    opened = await self._refused(opener, msg.data, exc.reason, quiet)
                if overlap:
                    overlap -= 1
                if opened is not None:
                    yield self._live(opened, msg)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def history(
        self, *, since: datetime.datetime | None = None, slot: int | None = None, idle: float = 2.0
    ) -> AsyncIterator[Message]:
        """Replay the room's stored messages in order, each once; ends when caught up.

        Each call checks messages afresh: what an earlier replay or a live subscription
        delivered is delivered again here, not taken for a replay attack. Caught up means
        the consumer reports nothing pending: at its creation, or in the metadata of the
        last message read (as nats-py's KV watchers detect the end of their initial
        values). ``idle`` bounds the wait for a batch that does not come. Each replay takes
        a consumer slot of its own (``naming.HISTORY_SLOTS`` per user and room: devices
        replaying at once never share one); ``slot`` asks for one in particular.

        Raises:
            RoomError: every slot is in use by the user's other devices (or replays).
        """
        await self._ensure_admitted()
        async for message in self._replay(Opener(self.room_id), since=since, slot=slot, idle=idle):
            yield message

    async def _replay(
        self,
        opener: Opener,
        *,
        since: datetime.datetime | None,
        slot: int | None,
        idle: float,
        quiet: frozenset[str] = frozenset(),
    ) -> AsyncIterator[Message]:
        consumer, info = await self._claim_consumer(
            lambda name: api.ConsumerConfig(
                name=name,
                filter_subject=naming.room_subject(self.room_id),
                ack_policy=api.AckPolicy.NONE,
                deliver_policy=api.DeliverPolicy.BY_START_TIME if since else api.DeliverPolicy.ALL,
                opt_start_time=since.astimezone(datetime.UTC) if since else None,
                inactive_threshold=_REPLAY_INACTIVE,
            ),
            slot=slot,
        )
        js = self._bus.jetstream()
        pull = await js.pull_subscribe_bind(consumer, stream=naming.MESSAGES_STREAM)

        def fetch() -> asyncio.Future[list[Msg]]:
            return asyncio.ensure_future(pull.fetch(HISTORY_BATCH, timeout=idle))

        # One batch is fetched ahead while the one before is verified and decrypted, so the
        # crypto overlaps the round trip and the server's reads (order is kept: batches are
        # opened one after the other). Nothing pending, at the consumer's creation or after
        # the last message read, ends the replay; without a count (None), a fetch idling out.
        ahead = fetch() if info.num_pending != 0 else None
        newest = 0
        key_for, is_member = self.key_for, self.is_member
        opened: Opened | None
        try:
            while ahead is not None:
                try:
                    batch = await ahead
                except TimeoutError:
                    # Idle: caught up. nats-py raises its own TimeoutError or, when the
                    # server's "no messages" answer lands at the deadline, asyncio's;
                    # the builtin catches both.
                    return
                ahead = fetch() if not batch or batch[-1].metadata.num_pending != 0 else None
                for index, msg in enumerate(batch):
                    if index % _HISTORY_YIELD == _HISTORY_YIELD - 1:
                        await asyncio.sleep(0)  # let the fetch ahead send and receive
                    try:
                        opened = opener.open(msg.data, room_key=key_for, is_member=is_member)
                    except EnvelopeError as exc:
                        opened = await self._refused(opener, msg.data, exc.reason, quiet)
                    if opened is not None:
                        meta = msg.metadata
                        # in stream order: an epoch below one stored earlier is stale
                        stale = opened.epoch < newest
                        newest = max(newest, opened.epoch)
                        if stale:
                            self._count_stale(opened)
                        yield Message(
                            opened.plaintext,
                            opened.sender,
                            opened.epoch,
                            opened.msg_id,
                            stream_seq=meta.sequence.stream,
                            time=meta.timestamp,
                            envelope=msg.data,
                            stale=stale,
                        )
        finally:
            if ahead is not None:
                _discard(ahead)
            with contextlib.suppress(Exception):
                await pull.unsubscribe()
            with contextlib.suppress(Exception):
                await js.delete_consumer(naming.MESSAGES_STREAM, consumer)

    async def _claim_consumer(
        self, config_for: Callable[[str], api.ConsumerConfig], *, slot: int | None = None
    ) -> tuple[str, api.ConsumerInfo]:
        """A history consumer of this user's that no other device of theirs is reading.

        Each user has ``naming.HISTORY_SLOTS`` consumer names per room (the callout grants
        exactly those). A device takes the first free one with a create that fails if the
        name exists (never a delete: that would cut another device's replay short), and
        marks its config as its own, so two devices never share one by accident. A slot
        left by a device that went away frees itself after the consumer's inactivity
        threshold. ``slot`` asks for one slot only.

        Raises:
            RoomError: every slot is in use.
        """
        slots = range(naming.HISTORY_SLOTS) if slot is None else (slot,)
        for candidate in slots:
            name = naming.history_consumer(self.room_id, self._identity.public_key, candidate)
            config = config_for(name)
            config.description = f"unibus device {secrets.token_hex(8)}"
            info = await self._create_consumer(name, config)
            if info is not None:
                return name, info
        raise RoomError(
            f"every history slot of this user in room {self.room_id} is in use "
            f"({naming.HISTORY_SLOTS}: one per device reading at once); try again once "
            f"a device's replay ends (a device that went away frees its slot within "
            f"{_REPLAY_INACTIVE:g}s)"
        )

    async def _create_consumer(
        self, name: str, config: api.ConsumerConfig
    ) -> api.ConsumerInfo | None:
        """Create ``config``'s consumer only if its name is free; None if it is taken.
        Retried a few times: during a node's failover the JetStream API may time out or
        answer 503 while its leaders are elected."""
        subject = (
            f"$JS.API.CONSUMER.CREATE.{naming.MESSAGES_STREAM}.{name}."
            f"{naming.room_subject(self.room_id)}"
        )
        request = json.dumps(
            {"stream_name": naming.MESSAGES_STREAM, "config": config.as_dict(), "action": "create"}
        ).encode()
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                reply = await self._bus.request(subject, request, timeout=5.0)
                answer = json.loads(reply.data)
                error = answer.get("error")
                if error is None:
                    info: api.ConsumerInfo = api.ConsumerInfo.from_response(answer)
                    return info
                if error.get("err_code") == _CONSUMER_EXISTS:
                    return None
                nats.js.errors.APIError.from_error(error)  # raises the matching error
            except _RETRIABLE:
                if attempt == PUBLISH_ATTEMPTS:
                    raise
                await asyncio.sleep(_RETRY_PAUSE * attempt)
        raise AssertionError("unreachable")  # pragma: no cover


def _discard(future: asyncio.Future[list[Msg]]) -> None:
    """Drop a fetch nobody will read: cancel it, or retrieve its error (never reported)."""
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()


async def create_room(
    identity: KeyPair,
    api: ApiClient,
    bus: BusConnection,
    members: Iterable[str] = (),
    *,
    heads: HeadMemory | None = None,
) -> Room:
    """A new room with a fresh epoch-1 key sealed to the creator and the given members."""
    room_id = await api.new_room_id()
    everyone = {identity.public_key, *members}
    key = new_room_key()
    body = genesis(
        identity,
        room_id,
        members=members,
        sealed_by_member={member: seal_room_key(key, member) for member in everyone},
    )
    await api.create_room(body)
    room = Room(room_id, identity, api, bus, heads=heads)
    await room.refresh()
    return room


def _batch_headers(batch_id: str, index: int, message_id: str) -> dict[str, str]:
    return {
        "Nats-Batch-Id": batch_id,
        "Nats-Batch-Sequence": str(index),
        "Nats-Msg-Id": message_id,
        "Nats-Expected-Stream": naming.MESSAGES_STREAM,
    }

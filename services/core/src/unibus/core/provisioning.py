"""Creating, scaling and inspecting every JetStream asset of SPEC §4.

Only this module creates assets. It runs on start-up of a stack (``unibus up``), before
a migration, and on ``unibus scale``; read paths elsewhere fail on a missing asset
instead of creating it.

>>> # await provision(nc.jetstream(), Provisioning(replicas=3))
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import nats.js.errors
from nats.js import api
from nats.js.client import JetStreamContext

from unibus.core import limits, naming
from unibus.core.errors import ConfigError
from unibus.core.log import get_logger
from unibus.core.retry import DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_BUDGET, retry_until

MIN_REPLICAS: Final = 1
MAX_REPLICAS: Final = 5
HA_REPLICAS: Final = 3
_ERR_STREAM_NOT_FOUND: Final = 10059
_MAX_STORED_MESSAGE: Final = limits.MAX_ENVELOPE_BYTES + 4096
"""The envelope, and room for its headers (the message id)."""
_log = get_logger("unibus.provisioning")


class AssetKind(enum.StrEnum):
    KV = "kv"
    STREAM = "stream"
    OBJECT_STORE = "object_store"


@dataclass(frozen=True)
class Asset:
    """One asset as operators name it, and the JetStream stream that backs it."""

    name: str
    kind: AssetKind

    @property
    def stream(self) -> str:
        if self.kind is AssetKind.KV:
            return naming.kv_stream(self.name)
        if self.kind is AssetKind.OBJECT_STORE:
            return naming.object_stream(self.name)
        return self.name


ASSETS: Final[tuple[Asset, ...]] = (
    *(Asset(bucket, AssetKind.KV) for bucket in naming.KV_BUCKETS),
    Asset(naming.MESSAGES_STREAM, AssetKind.STREAM),
    Asset(naming.BLOBS_BUCKET, AssetKind.OBJECT_STORE),
)


def check_replicas(replicas: int) -> int:
    if not MIN_REPLICAS <= replicas <= MAX_REPLICAS:
        raise ConfigError(
            f"replicas must be between {MIN_REPLICAS} and {MAX_REPLICAS} (3 for a cluster), "
            f"got {replicas}",
            setting="replicas",
        )
    return replicas


@dataclass(frozen=True)
class Provisioning:
    """What to create; the defaults are SPEC §4's."""

    replicas: int = HA_REPLICAS
    history_max_age: float = limits.HISTORY_MAX_AGE
    history_duplicate_window: float = limits.HISTORY_DUPLICATE_WINDOW
    nonce_ttl: float = limits.NONCE_TTL
    """Kept at least twice the request skew window plus clock drift."""
    asset_bytes: Mapping[str, int] = field(default_factory=lambda: dict(limits.ASSET_BYTES))
    """Storage reserved for each asset (``limits.ASSET_BYTES``); -1: unlimited."""
    budget: float = DEFAULT_BUDGET
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT

    def __post_init__(self) -> None:
        check_replicas(self.replicas)
        if self.history_duplicate_window <= 0 or self.history_max_age <= 0:
            raise ConfigError("history retention and duplicate window must be positive")
        if self.history_duplicate_window > self.history_max_age:
            raise ConfigError("the duplicate window cannot exceed the history retention")

    def bytes_for(self, asset: Asset) -> int:
        return self.asset_bytes.get(asset.name, -1)


async def _apply_limits(js: JetStreamContext, asset: Asset, plan: Provisioning) -> bool:
    """Give an asset created without limits (an earlier release) its limits.

    Only an unlimited asset whose data already fits is changed: lowering a limit below
    what is stored would make JetStream discard data. Returns whether it changed.
    """
    info = await js.stream_info(asset.stream)
    config, wanted = info.config, plan.bytes_for(asset)
    if wanted < 0 or (config.max_bytes or -1) >= 0 or info.state.bytes >= wanted:
        return False
    limited = dataclasses.replace(config, max_bytes=wanted)
    if asset.kind is AssetKind.STREAM:
        limited = dataclasses.replace(
            limited,
            max_msg_size=_MAX_STORED_MESSAGE,
            max_msgs_per_subject=limits.HISTORY_MAX_PER_ROOM,
        )
    await js.update_stream(limited)
    _log.info("limits applied", asset=asset.name, max_bytes=wanted)
    return True


async def _allow_atomic_batches(js: JetStreamContext, asset: Asset) -> bool:
    """Let the history stream of an earlier release take atomic batches, as it is created
    now: the SDK stores a signed batch with one acknowledgement, whole or not at all.
    Nothing stored changes. Returns whether it changed."""
    if asset.kind is not AssetKind.STREAM:
        return False
    config = (await js.stream_info(asset.stream)).config
    if config.allow_atomic:
        return False
    await js.update_stream(dataclasses.replace(config, allow_atomic=True))
    _log.info("atomic batches allowed", asset=asset.name)
    return True


@dataclass(frozen=True)
class ProvisionReport:
    created: tuple[str, ...] = ()
    existing: tuple[str, ...] = ()


async def _stream_exists(js: JetStreamContext, stream: str) -> bool:
    try:
        await js.stream_info(stream)
    except nats.js.errors.NotFoundError as exc:
        if getattr(exc, "err_code", None) == _ERR_STREAM_NOT_FOUND:
            return False
        raise
    return True


async def _create(js: JetStreamContext, asset: Asset, plan: Provisioning) -> None:
    storage = api.StorageType.FILE
    if asset.kind is AssetKind.KV:
        ttl = plan.nonce_ttl if asset.name == naming.NONCES_BUCKET else None
        await js.create_key_value(
            api.KeyValueConfig(
                bucket=asset.name,
                history=1,
                ttl=ttl,
                storage=storage,
                replicas=plan.replicas,
                direct=True,
                max_bytes=plan.bytes_for(asset),
            )
        )
    elif asset.kind is AssetKind.STREAM:
        await js.add_stream(
            api.StreamConfig(
                name=asset.name,
                subjects=[naming.ROOM_MESSAGES_FILTER],
                retention=api.RetentionPolicy.LIMITS,
                discard=api.DiscardPolicy.OLD,
                max_age=plan.history_max_age,
                duplicate_window=plan.history_duplicate_window,
                storage=storage,
                num_replicas=plan.replicas,
                max_bytes=plan.bytes_for(asset),
                max_msg_size=_MAX_STORED_MESSAGE,
                max_msgs_per_subject=limits.HISTORY_MAX_PER_ROOM,
                allow_atomic=True,
            )
        )
    else:
        await js.create_object_store(
            asset.name,
            api.ObjectStoreConfig(
                storage=storage,
                replicas=plan.replicas,
                max_bytes=plan.bytes_for(asset),
            ),
        )


async def provision(
    js: JetStreamContext,
    plan: Provisioning,
    *,
    assets: tuple[Asset, ...] = ASSETS,
    progress: Callable[[str], None] | None = None,
) -> ProvisionReport:
    """Create every missing asset, retrying each step within the bootstrap budget.

    Existing assets are left as they are (``scale`` changes replicas, nothing else).
    """
    created: list[str] = []
    existing: list[str] = []
    for asset in assets:

        async def ensure(asset: Asset = asset) -> bool:
            if await _stream_exists(js, asset.stream):
                await _apply_limits(js, asset, plan)
                await _allow_atomic_batches(js, asset)
                return False
            await _create(js, asset, plan)
            return True

        made = await retry_until(
            f"provision {asset.name}",
            ensure,
            budget=plan.budget,
            attempt_timeout=plan.attempt_timeout,
        )
        (created if made else existing).append(asset.name)
        message = f"{asset.name}: {'created' if made else 'exists'} (R{plan.replicas})"
        _log.debug("provisioned", asset=asset.name, created=made, replicas=plan.replicas)
        if progress is not None:
            progress(message)
    return ProvisionReport(created=tuple(created), existing=tuple(existing))


@dataclass(frozen=True)
class AssetStatus:
    name: str
    kind: AssetKind
    replicas: int
    leader: str | None
    followers_current: int
    followers: int
    messages: int
    degraded: bool
    peers: tuple[str, ...] = field(default=())
    missing: bool = False
    unanswered: bool = False
    """No leader answered for it in time (an election, or lost quorum)."""

    @classmethod
    def absent(cls, asset: Asset) -> AssetStatus:
        return cls(
            name=asset.name,
            kind=asset.kind,
            replicas=0,
            leader=None,
            followers_current=0,
            followers=0,
            messages=0,
            degraded=True,
            missing=True,
        )

    @classmethod
    def leaderless(cls, asset: Asset) -> AssetStatus:
        """An asset whose leader did not answer: what a caller sees mid-election."""
        return dataclasses.replace(cls.absent(asset), missing=False, unanswered=True)

    def summary(self) -> str:
        if self.missing:
            return f"{self.name}: MISSING (run provisioning)"
        if self.unanswered:
            return f"{self.name}: NO LEADER ANSWERS (an election, or quorum lost)"
        return (
            f"{self.name}: R{self.replicas} leader={self.leader or '-'} "
            f"followers_current={self.followers_current}/{self.followers} msgs={self.messages}"
            + (" DEGRADED" if self.degraded else "")
        )


_CURRENCY_READS: Final = 5
_CURRENCY_PAUSE: Final = 0.05


async def asset_status(js: JetStreamContext, asset: Asset, *, cluster_size: int) -> AssetStatus:
    """Replication of one asset; ``degraded`` below R3 in a cluster, or with a lagging peer.

    A follower counts as current only when the server says so (its last acknowledged entry
    at or past what the leader applied). Under steady writes (the callouts' barriers, every
    heartbeat) the slower follower's ack of the newest entry is often in flight when a
    stream info is taken: measured, 8 reads in 100 showed a healthy R3 stream one follower
    short under a steady writer. So a shortfall of current followers with every peer online
    is read again, up to ``_CURRENCY_READS`` times ``_CURRENCY_PAUSE`` apart, before it is
    reported. Each read is judged exactly as strictly as one read alone: a follower still
    rebuilding stays short in every read (a replacement gates on this count), while one
    whose ack was in flight is current in the next.
    """
    status, lagging_only = _status_of(await js.stream_info(asset.stream), asset, cluster_size)
    for _ in range(_CURRENCY_READS - 1):
        if not lagging_only:
            break
        await asyncio.sleep(_CURRENCY_PAUSE)
        status, lagging_only = _status_of(await js.stream_info(asset.stream), asset, cluster_size)
    return status


def _status_of(info: api.StreamInfo, asset: Asset, cluster_size: int) -> tuple[AssetStatus, bool]:
    """The status one stream info shows, and whether it is degraded only for a follower
    that is online but not current (an ack in flight, or one catching up): anything else
    a moment will not change."""
    replicas = info.config.num_replicas or 1
    followers = list(info.cluster.replicas or []) if info.cluster else []
    current = sum(1 for peer in followers if peer.current and not peer.offline)
    leader = info.cluster.leader if info.cluster else None
    short_of_ha = cluster_size > 1 and replicas < min(HA_REPLICAS, cluster_size)
    lagging = current < replicas - 1
    status = AssetStatus(
        name=asset.name,
        kind=asset.kind,
        replicas=replicas,
        leader=leader,
        followers_current=current,
        followers=replicas - 1,
        messages=info.state.messages,
        degraded=leader is None or lagging or short_of_ha,
        peers=tuple(peer.name or "?" for peer in followers),
    )
    online = len(followers) == replicas - 1 and not any(peer.offline for peer in followers)
    return status, lagging and online and leader is not None and not short_of_ha


@dataclass(frozen=True)
class RetentionChange:
    before: float
    after: float

    @property
    def shortened(self) -> bool:
        return self.after < self.before


async def history_retention(js: JetStreamContext) -> float:
    """How long the history stream keeps a message, in seconds, as the cluster has it."""
    info = await js.stream_info(naming.MESSAGES_STREAM)
    return float(info.config.max_age or 0.0)


async def set_history_retention(
    js: JetStreamContext, seconds: float, *, budget: float = DEFAULT_BUDGET
) -> RetentionChange:
    """Keep history messages for ``seconds`` from now on, in place on the live stream.

    Shortening it discards at once every message older than the new retention (JetStream
    applies ``max_age`` to what is stored): callers ask before they shorten.
    """
    if not 86_400 <= seconds <= limits.MAX_HISTORY_DAYS * 86_400:
        raise ConfigError(
            f"history retention must be 1 to {limits.MAX_HISTORY_DAYS} days", setting="days"
        )
    seen: list[float] = []

    async def update() -> bool:
        info = await js.stream_info(naming.MESSAGES_STREAM)
        config = info.config
        if not seen:
            seen.append(float(config.max_age or 0.0))
        if config.max_age == seconds:
            return False
        if seconds < float(config.duplicate_window or 0.0):
            raise ConfigError("the history retention cannot be shorter than its duplicate window")
        await js.update_stream(dataclasses.replace(config, max_age=seconds))
        return True

    await retry_until("set the history retention", update, budget=budget)
    _log.info("history retention set", days=seconds / 86_400)
    return RetentionChange(before=seen[0], after=seconds)


async def scale(
    js: JetStreamContext,
    replicas: int,
    *,
    assets: tuple[Asset, ...] = ASSETS,
    budget: float = DEFAULT_BUDGET,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Raise (or lower) every asset's replicas in place; the data stays."""
    check_replicas(replicas)
    changed: list[str] = []
    for asset in assets:

        async def update(asset: Asset = asset) -> bool:
            info = await js.stream_info(asset.stream)
            if info.config.num_replicas == replicas:
                return False
            config = info.config
            config.num_replicas = replicas
            await js.update_stream(config)
            return True

        did = await retry_until(f"scale {asset.name}", update, budget=budget)
        if did:
            changed.append(asset.name)
        if progress is not None:
            progress(f"{asset.name}: {'scaled to' if did else 'already'} R{replicas}")
    return changed

"""Backing up and restoring the bus's state with JetStream's own snapshots.

All state lives in JetStream: the KV buckets, the message history and the blob store are
streams. ``backup`` asks the leader of each for a snapshot (``$JS.API.STREAM.SNAPSHOT``:
the stream's own block files, its configuration and its state, taken while it serves), and
writes one file per asset and a manifest with each file's size and SHA-256 and the state
the snapshot holds. ``restore`` puts them back into a cluster that does not hold them
(``$JS.API.STREAM.RESTORE``), at the replicas the cluster has.

Consistency on a live bus. The snapshots are taken one after the other, in an order that
lets every reference resolve after a restore, because each thing is written before what
refers to it and nothing it refers to is deleted: the history first (a message refers to
an epoch and a blob), then the blobs (uploaded before their announcement), the users and
the rooms (a room record is the commit point of its members' statements and sealed keys,
written before it), then those statements and keys, then the derived member → room index
(repairable with ``unibus index repair``) and the request nonces.

A backup is refused, before anything is written, when its manifest is of another version,
when a file is missing, shorter or longer than the manifest says, or its SHA-256 differs
(truncated or tampered with). After a restore, each asset's state (messages, bytes, first
and last sequence, deleted count) must equal the one its snapshot held, and so must a
SHA-256 over its messages (sequence, subject, headers, data), taken at the backup right
after each snapshot (a snapshot taken again if its range changed meanwhile) and again
after the restore: the parity the migration checks, per message instead of per record.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from unibus.core import naming
from unibus.core.errors import StackError
from unibus.core.files import write_private
from unibus.core.provisioning import ASSETS, Asset
from unibus.core.retry import retry_until

__all__ = [
    "BACKUP_ORDER",
    "MANIFEST_FILE",
    "MANIFEST_VERSION",
    "AssetBackup",
    "BackupError",
    "Manifest",
    "RestoreReport",
    "backup",
    "content_digest",
    "restore",
    "target_contents",
    "verify_backup",
]

MANIFEST_VERSION: Final = 1
_STABLE_ATTEMPTS: Final = 5
"""Snapshots of one asset taken again while writes keep changing what it held."""
_UNHASHED: Final = frozenset({naming.NONCES_BUCKET})
_DIGEST_BATCH: Final = 512
_DIGEST_WAIT: Final = 60.0
"""Seconds a read-back waits for its next messages. An empty fetch is not the end of the
stream: a stream just restored, on a cluster that just started or is busy, may deliver its
first messages after several fetches came back empty."""
MANIFEST_FILE: Final = "manifest.json"
BACKUP_ORDER: Final[tuple[str, ...]] = (
    naming.MESSAGES_STREAM,
    naming.BLOBS_BUCKET,
    naming.USERS_BUCKET,
    naming.ROOMS_BUCKET,
    naming.MEMBERS_BUCKET,
    naming.ROOM_KEYS_BUCKET,
    naming.ROOMS_BY_MEMBER_BUCKET,
    naming.NONCES_BUCKET,
)
"""The order of the snapshots: each thing before what refers to it (module docstring)."""
_API_TIMEOUT: Final = 10.0
_CHUNK_TIMEOUT: Final = 30.0
"""Seconds between two chunks of a snapshot before it is given up as stalled."""
_RESTORE_CHUNK: Final = 128 * 1024
_RESERVATION_WAIT: Final = 60.0
_READY_WAIT: Final = 120.0
"""Seconds a restore waits for a cluster that just started to answer JetStream requests."""
_RESTORE_START_TIMEOUT: Final = 60.0
"""Seconds for a restore's first answer: the server gives it only once the new stream's
group has formed on its peers, which on a cluster just started, or busy, takes longer than
any other API call. Asked once: a second ask would find the first one's stream."""

Progress = Callable[[str], None]


class BackupError(StackError):
    """A backup that cannot be taken, trusted or restored; the message says what to do."""


class AssetBackup(msgspec.Struct, frozen=True, kw_only=True):
    asset: str
    stream: str
    file: str
    size: int
    sha256: str
    state: dict[str, int]
    """What the snapshot holds: messages, bytes, first_seq, last_seq, num_deleted."""
    config: dict[str, Any]
    """The stream's configuration as the server gave it with the snapshot."""
    content_sha256: str | None = None
    """SHA-256 over the snapshot's messages (sequence, subject, headers, data) in order,
    as the migration's parity hashes records; None for the request nonces, which expire."""


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    v: int = MANIFEST_VERSION
    created_at: float
    server_version: str
    assets: list[AssetBackup]


_STATE_FIELDS: Final = ("messages", "bytes", "first_seq", "last_seq", "num_deleted")


def _state_of(raw: dict[str, Any]) -> dict[str, int]:
    return {name: int(raw.get(name) or 0) for name in _STATE_FIELDS}


def _asset(name: str) -> Asset:
    return next(asset for asset in ASSETS if asset.name == name)


async def _api(
    nc: NATS, subject: str, body: dict[str, Any], *, timeout: float = _API_TIMEOUT
) -> dict[str, Any]:
    try:
        reply = await nc.request(subject, json.dumps(body).encode(), timeout=timeout)
    except nats.errors.TimeoutError:
        raise BackupError(
            f"{subject}: no answer within {timeout:g}s; check that every node is up "
            "(`unibus status`), then run it again"
        ) from None
    answer: dict[str, Any] = json.loads(reply.data)
    error = answer.get("error")
    if error:
        raise BackupError(
            f"{subject}: the server refused ({error.get('code')} "
            f"{error.get('description', 'no description')})"
        )
    return answer


# -- content digests ------------------------------------------------------------------------------
async def content_digest(nc: NATS, stream: str, state: dict[str, int]) -> tuple[str, int]:
    """SHA-256 over the messages the stream holds in ``state``'s sequence range (sequence,
    subject, headers, data, in order), and how many there were."""
    digest = hashlib.sha256()
    count = 0
    if state["messages"] == 0:
        return digest.hexdigest(), 0
    js = nc.jetstream(timeout=_API_TIMEOUT)
    # No filter: every subject of the stream (the blob store has two), in sequence order.
    name = f"unibus-backup-{secrets.token_hex(6)}"
    await js.add_consumer(
        stream,
        api.ConsumerConfig(
            name=name,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=state["first_seq"],
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=30.0,
        ),
    )
    pull = await js.pull_subscribe_bind(name, stream=stream)
    waiting_since = time.monotonic()
    try:
        while True:
            try:
                batch = await pull.fetch(_DIGEST_BATCH, timeout=5.0)
            except TimeoutError:
                if time.monotonic() - waiting_since >= _DIGEST_WAIT:
                    raise BackupError(
                        f"{stream}: its messages stopped arriving while they were read back "
                        f"to be checked (nothing for {_DIGEST_WAIT:g}s, {count} read); check "
                        "that every node is up (`unibus status`), then run it again"
                    ) from None
                continue
            waiting_since = time.monotonic()
            for msg in batch:
                seq = msg.metadata.sequence.stream
                if seq > state["last_seq"]:
                    return digest.hexdigest(), count
                headers = json.dumps(sorted((msg.headers or {}).items())).encode()
                digest.update(f"{seq}\n{msg.subject}\n".encode() + headers + b"\n")
                digest.update(len(msg.data).to_bytes(8, "big") + msg.data)
                count += 1
                if seq >= state["last_seq"]:
                    return digest.hexdigest(), count
            if batch and batch[-1].metadata.num_pending == 0:
                break
    finally:
        with contextlib.suppress(Exception):
            await pull.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, name)
    return digest.hexdigest(), count


# -- backup ---------------------------------------------------------------------------------------
async def _snapshot(
    nc: NATS, asset: Asset, target: Path, say: Progress
) -> tuple[int, str, dict[str, Any]]:
    """Stream ``asset``'s snapshot into ``target``; (size, sha256, the server's answer)."""
    inbox = nc.new_inbox()
    chunks: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await nc.subscribe(inbox, cb=chunks.put)
    digest, size = hashlib.sha256(), 0
    try:
        answer = await _api(
            nc,
            f"$JS.API.STREAM.SNAPSHOT.{asset.stream}",
            {"deliver_subject": inbox, "no_consumers": True, "jsck": True},
        )
        expected = int((answer.get("state") or {}).get("bytes") or 0)
        next_report = time.monotonic() + 2.0
        with target.open("wb") as out:
            while True:
                try:
                    async with asyncio.timeout(_CHUNK_TIMEOUT):
                        msg = await chunks.get()
                except TimeoutError:
                    raise BackupError(
                        f"{asset.name}: the snapshot stalled (no data for {_CHUNK_TIMEOUT:g}s); "
                        "run the backup again"
                    ) from None
                status = (msg.headers or {}).get("Status") or (msg.headers or {}).get("Nats-Status")
                if status:
                    raise BackupError(f"{asset.name}: the server ended the snapshot ({status})")
                if not msg.data:
                    break  # the end of the snapshot
                out.write(msg.data)
                digest.update(msg.data)
                size += len(msg.data)
                if msg.reply:
                    await nc.publish(msg.reply, b"")  # flow control: the next window
                if time.monotonic() >= next_report:
                    say(f"{asset.name}: {size / 1e6:.1f} MB (stream holds {expected / 1e6:.1f} MB)")
                    next_report = time.monotonic() + 2.0
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return size, digest.hexdigest(), answer


def _new_directory(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise BackupError(f"{directory} is not empty: back up into a new directory")


async def backup(nc: NATS, directory: Path, *, progress: Progress | None = None) -> Manifest:
    """Snapshot every asset into ``directory`` (created, 0700; must be empty) and write
    the manifest last: a directory without one is an unfinished backup.

    ``nc`` must be allowed the JetStream API (the internal identity).
    """
    say = progress or (lambda _message: None)
    _new_directory(directory)
    entries: list[AssetBackup] = []
    for name in BACKUP_ORDER:
        asset = _asset(name)
        file = f"{asset.stream}.tar.s2"
        for attempt in range(1, _STABLE_ATTEMPTS + 1):
            say(f"{asset.name}: snapshot ...")
            size, sha256, answer = await _snapshot(nc, asset, directory / file, say)
            state = _state_of(answer.get("state") or {})
            if asset.name in _UNHASHED:
                content = None
                break
            # Read back right after: a message of the snapshot's range deleted meanwhile
            # (a key written again) shows as one less, and the snapshot is taken again.
            content, counted = await content_digest(nc, asset.stream, state)
            if counted == state["messages"]:
                break
            say(f"{asset.name}: changed while it was read; again ({attempt})")
        else:
            raise BackupError(
                f"{asset.name} kept changing while it was saved ({_STABLE_ATTEMPTS} tries): "
                "run the backup again at a quieter moment"
            )
        entries.append(
            AssetBackup(
                asset=asset.name,
                stream=asset.stream,
                file=file,
                size=size,
                sha256=sha256,
                state=state,
                config=dict(answer.get("config") or {}),
                content_sha256=content,
            )
        )
        say(f"{asset.name}: {state['messages']} message(s), {size / 1e6:.1f} MB written")
    version = nc.connected_server_version
    manifest = Manifest(
        created_at=time.time(),
        server_version=f"{version.major}.{version.minor}.{version.patch}",
        assets=entries,
    )
    write_private(directory / MANIFEST_FILE, msgspec.json.format(msgspec.json.encode(manifest)))
    return manifest


# -- verifying a backup ---------------------------------------------------------------------------
def verify_backup(directory: Path) -> Manifest:
    """The backup's manifest, once every file matches it; refuses anything else.

    Raises:
        BackupError: no manifest, another manifest version, an asset missing from it, or
            a file missing, of another size or another SHA-256 (truncated or tampered).
    """
    path = directory / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BackupError(
            f"{path} is missing: not a backup, or one that did not finish; take a new one"
        ) from None
    try:
        version = msgspec.json.decode(raw, type=dict[str, Any]).get("v")
    except msgspec.DecodeError:
        raise BackupError(f"{path} is not a backup manifest (it does not decode)") from None
    if version != MANIFEST_VERSION:
        raise BackupError(
            f"{path} is a backup of format {version!r}; this unibus reads format "
            f"{MANIFEST_VERSION}: restore it with the release that wrote it"
        )
    try:
        manifest = msgspec.json.decode(raw, type=Manifest)
    except msgspec.ValidationError as exc:
        raise BackupError(f"{path} is not a valid backup manifest: {exc}") from None
    named = [entry.asset for entry in manifest.assets]
    if sorted(named) != sorted(BACKUP_ORDER):
        raise BackupError(f"{path} does not list every asset once: {named}")
    for entry in manifest.assets:
        _verify_file(directory, entry)
    return manifest


def _verify_file(directory: Path, entry: AssetBackup) -> None:
    path = directory / entry.file
    if Path(entry.file).name != entry.file:
        raise BackupError(f"the manifest names a file outside the backup: {entry.file!r}")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BackupError(f"{path} is missing: the backup is incomplete") from None
    if size != entry.size:
        raise BackupError(
            f"{path} holds {size} bytes, the manifest says {entry.size}: truncated or "
            "altered; restore another backup"
        )
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != entry.sha256:
        raise BackupError(
            f"{path} does not match its SHA-256 in the manifest: altered; restore another backup"
        )


# -- restore --------------------------------------------------------------------------------------
async def target_contents(nc: NATS) -> dict[str, int]:
    """The assets the cluster has, by name, with the messages each holds."""
    found: dict[str, int] = {}
    for asset in ASSETS:
        # A cluster whose nodes just started answers nothing until it has elected its
        # JetStream meta leader: its silence is not an answer yet.
        reply = await retry_until(
            "the cluster's JetStream",
            functools.partial(
                nc.request, f"$JS.API.STREAM.INFO.{asset.stream}", b"", timeout=_API_TIMEOUT
            ),
            budget=_READY_WAIT,
            attempt_timeout=_API_TIMEOUT,
            pause=1.0,
        )
        answer = json.loads(reply.data)
        if answer.get("error"):
            if answer["error"].get("code") == 404:
                continue
            raise BackupError(f"{asset.name}: the cluster did not say what it holds")
        found[asset.name] = int((answer.get("state") or {}).get("messages") or 0)
    return found


@dataclass(frozen=True)
class RestoreReport:
    restored: tuple[str, ...]
    replaced: tuple[str, ...]
    """Assets the target held (with ``force``), deleted before their restore."""
    states: dict[str, dict[str, int]]

    def to_json(self) -> dict[str, Any]:
        return {
            "restored": list(self.restored),
            "replaced": list(self.replaced),
            "states": self.states,
        }


async def _restore_one(
    nc: NATS, directory: Path, entry: AssetBackup, replicas: int, say: Progress
) -> dict[str, int]:
    config = dict(entry.config)
    config["num_replicas"] = replicas
    # A stream deleted just before (--force) holds its storage reservation a moment longer.
    deadline = time.monotonic() + _RESERVATION_WAIT
    while True:
        try:
            answer = await _api(
                nc,
                f"$JS.API.STREAM.RESTORE.{entry.stream}",
                {"config": config, "state": entry.state},
                timeout=_RESTORE_START_TIMEOUT,
            )
            break
        except BackupError as exc:
            if "insufficient storage" not in str(exc) or time.monotonic() >= deadline:
                raise
            await asyncio.sleep(1.0)
    deliver = answer.get("deliver_subject")
    if not deliver:
        raise BackupError(f"{entry.asset}: the server gave no subject to restore into")
    sent = 0
    next_report = time.monotonic() + 2.0
    with (directory / entry.file).open("rb") as data:
        for chunk in iter(lambda: data.read(_RESTORE_CHUNK), b""):
            await nc.request(deliver, chunk, timeout=_CHUNK_TIMEOUT)
            sent += len(chunk)
            if time.monotonic() >= next_report:
                say(f"{entry.asset}: {sent / 1e6:.1f} of {entry.size / 1e6:.1f} MB sent")
                next_report = time.monotonic() + 2.0
    # An empty message ends the upload; the answer is the restored stream, or why not.
    final = await nc.request(deliver, b"", timeout=max(_CHUNK_TIMEOUT, entry.size / 5e6))
    result = json.loads(final.data)
    if result.get("error"):
        raise BackupError(
            f"{entry.asset}: the restore failed ({result['error'].get('description')})"
        )
    return _state_of(result.get("state") or {})


async def restore(
    nc: NATS,
    directory: Path,
    *,
    replicas: int,
    force: bool = False,
    progress: Progress | None = None,
) -> RestoreReport:
    """Restore the backup in ``directory`` into the cluster ``nc`` reaches.

    Everything is checked before anything is written: the backup (``verify_backup``) and
    the target, which must hold none of the assets, or only empty ones, unless ``force``
    (then what it holds is deleted first). Afterwards each asset's state must equal the
    one in the manifest.

    Raises:
        BackupError: the backup is not sound, the target is not empty (and says what it
            holds), or a restored asset differs from its snapshot.
    """
    say = progress or (lambda _message: None)
    manifest = verify_backup(directory)
    say(f"backup of {time.ctime(manifest.created_at)} verified ({len(manifest.assets)} assets)")
    present = await target_contents(nc)
    holding = {name: count for name, count in present.items() if count}
    if holding and not force:
        listing = ", ".join(
            f"{name} ({count} message(s))" for name, count in sorted(holding.items())
        )
        raise BackupError(
            f"the target cluster is not empty: {listing}. Restore into an empty cluster (its "
            "nodes started, nothing provisioned), or pass --force to replace what it holds"
        )
    replaced: list[str] = []
    for name in present:
        stream = _asset(name).stream
        await _api(nc, f"$JS.API.STREAM.DELETE.{stream}", {})
        if name in holding:
            replaced.append(name)
    states: dict[str, dict[str, int]] = {}
    by_name = {entry.asset: entry for entry in manifest.assets}
    for name in BACKUP_ORDER:
        entry = by_name[name]
        say(f"{name}: restoring {entry.state['messages']} message(s) ...")
        states[name] = await _restore_one(nc, directory, entry, replicas, say)
    differing = [
        f"{name}: restored {states[name]}, the backup holds {by_name[name].state}"
        for name in BACKUP_ORDER
        if states[name] != by_name[name].state
    ]
    for name in BACKUP_ORDER:
        entry = by_name[name]
        if entry.content_sha256 is None or states[name] != entry.state:
            continue
        content, _ = await content_digest(nc, entry.stream, entry.state)
        if content != entry.content_sha256:
            differing.append(f"{name}: the restored messages differ from the backup's")
    if differing:
        raise BackupError("the restore does not match the backup: " + "; ".join(differing))
    return RestoreReport(
        restored=tuple(BACKUP_ORDER), replaced=tuple(sorted(replaced)), states=states
    )


def describe(manifest: Manifest) -> Sequence[str]:
    """One line per asset, for a person."""
    return [
        f"{entry.asset}: {entry.state['messages']} message(s), {entry.size} bytes"
        for entry in manifest.assets
    ]

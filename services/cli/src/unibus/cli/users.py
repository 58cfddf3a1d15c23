"""``unibus user add|list|revoke|reinstate|promote|demote``: the allowlist in ``UNIBUS_users``.

Every verb connects as the internal service identity to every URL of the cluster, so a
write still lands with one node down, even the users stream's leader: each step is
retried with short attempts within a budget while JetStream elects a new leader. Writes
are create-only (``add``) or compare-and-set (the four changes); after each one the verb
prints the bucket's replication (``leader=… followers_current=2/2 msgs=N``).

A re-add of a key that exists is an error and never changes the stored record, whatever
role it asks for. ``revoke``/``reinstate`` flip the status and ``promote``/``demote`` the
role, under the rules of ``unibus.core.userchanges`` (the API's too): a change that
already holds succeeds and changes nothing, and the last active admin can be neither
demoted nor revoked. Nothing is ever deleted.

With ``--db FILE`` every verb works offline on a legacy membershipd SQLite file instead
(``unibus.migrate.legacy``; ``add`` creates the file when it is missing), except
``promote`` and ``demote``: that store cannot change a role.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import nats.errors
from nats.aio.client import Client as NATS

from unibus.cli._common import (
    Subparsers,
    add_json_arg,
    add_target_args,
    print_json,
    resolve_target,
)
from unibus.core import models, naming
from unibus.core.connect import connect
from unibus.core.errors import (
    AssetMissingError,
    ConfigError,
    ConflictError,
    InvalidHandleError,
    NotFoundError,
    StoreUnavailableError,
    UnsupportedError,
)
from unibus.core.kvstore import JetStreamStore
from unibus.core.limits import MAX_HANDLE_LEN
from unibus.core.log import configure_logging
from unibus.core.models import RecordError, Role, UserRecord, Versioned
from unibus.core.nkeys import canonical_user_key
from unibus.core.provisioning import Asset, AssetKind, AssetStatus, asset_status
from unibus.core.retry import retry_until
from unibus.core.store import Store
from unibus.core.userchanges import UserChange, change_user
from unibus.migrate.legacy import SQLiteStore

T = TypeVar("T")

DEFAULT_TIMEOUT: Final = 60.0
OP_TIMEOUT: Final = 2.0
"""Bound of one JetStream request; a leader-less stream answers nothing until it elects."""
ATTEMPT_TIMEOUT: Final = 5.0
"""Bound of one attempt (a create-only write may take three requests over a tombstone)."""
REPLICATION_BUDGET: Final = 15.0
USERS_ASSET: Final = Asset(naming.USERS_BUCKET, AssetKind.KV)
ROLES: Final = tuple(role.value for role in Role)
_NO_RETRY: Final = (ConflictError, NotFoundError, AssetMissingError, RecordError, UnsupportedError)
"""Errors no retry can fix: the answer is already final."""

_EPILOG = """\
examples:
  unibus user add --handle ada --key UAB…XYZ --role admin
  unibus user add --handle bob --role member \\
      --key 3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29
  unibus user list --json
  unibus user revoke UAB…XYZ
  unibus user reinstate UAB…XYZ
  unibus user promote UAB…XYZ --json
  unibus user demote UAB…XYZ
  unibus user list --db membership.db          # a legacy SQLite file, offline

Without --dir or --nats-url the local stack in the default directory is used.
"""


# -- validation (before any connection) --------------------------------------------------------
def check_handle(handle: str) -> str:
    """The handle as stored (``models.check_handle``), refused as the ``--handle`` option."""
    try:
        return models.check_handle(handle)
    except InvalidHandleError as exc:
        raise ConfigError(f"--handle {exc}", setting="handle") from None


def check_role(role: str) -> Role:
    try:
        return Role(role.strip().lower())
    except ValueError:
        raise ConfigError(
            f"--role must be one of {', '.join(ROLES)}, got {role!r}", setting="role"
        ) from None


def new_user(key: str, handle: str, role: str, *, now: float | None = None) -> UserRecord:
    """The record ``user add`` writes; raises before anything connects if an input is bad."""
    return UserRecord.new(canonical_user_key(key), check_handle(handle), check_role(role), now=now)


def same_add(stored: UserRecord, written: UserRecord) -> bool:
    """Whether ``stored`` is the record this run wrote (its retried write had landed)."""
    return (
        stored.key == written.key
        and stored.handle == written.handle
        and stored.role is written.role
        and stored.created_at == written.created_at
    )


# -- output ------------------------------------------------------------------------------------
def user_json(user: UserRecord) -> dict[str, Any]:
    return {
        "key": user.key,
        "handle": user.handle,
        "role": user.role.value,
        "status": user.status.value,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
    }


def replication_json(status: AssetStatus | None) -> dict[str, Any] | None:
    return None if status is None else asdict(status)


def replication_line(status: AssetStatus | None) -> str:
    if status is None:
        return f"{naming.USERS_BUCKET}: replication unknown (no answer from its leader)"
    return status.summary()


def users_table(users: Sequence[UserRecord]) -> str:
    header = ("KEY", "HANDLE", "ROLE", "STATUS")
    rows = [header, *((u.key, u.handle, u.role.value, u.status.value) for u in users)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]
    return "\n".join(lines)


# -- parser ------------------------------------------------------------------------------------
def _add_shared_args(
    parser: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int]
) -> None:
    add_target_args(parser)
    parser.add_argument(
        "--db",
        type=Path,
        default=None,
        metavar="FILE",
        help="work on a legacy membershipd SQLite file instead of the live bucket "
        "(user add creates it when missing)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="give up after this long; until then every step is retried, e.g. while "
        f"a new leader is elected (default {DEFAULT_TIMEOUT:g})",
    )
    add_json_arg(parser)
    parser.set_defaults(handler=handler)


_CHANGES: Final = {
    UserChange.REVOKE: (
        "revoke a user (its status flips to revoked; nothing is deleted)",
        "Flip a user's status to revoked; its live connections are closed and its next "
        "connects refused. Its role is kept. The last active admin cannot be revoked. "
        "Revoking a revoked user changes nothing and succeeds.",
    ),
    UserChange.REINSTATE: (
        "reinstate a revoked user (its status flips back to active)",
        "Flip a revoked user's status back to active, with the role it had; it is admitted "
        "again at its next connect. Reinstating an active user changes nothing and succeeds.",
    ),
    UserChange.PROMOTE: (
        "make a user an admin",
        "Set a user's role to admin. Its live connections are closed, so it reconnects "
        "authorized as an admin. A revoked user keeps its status (reinstate it too). "
        "Promoting an admin changes nothing and succeeds. Not with --db: the legacy file "
        "cannot change a role.",
    ),
    UserChange.DEMOTE: (
        "make an admin a member",
        "Set a user's role to member. Its live connections are closed, so it reconnects "
        "authorized as a member. The last active admin cannot be demoted: promote another "
        "user first. Demoting a member changes nothing and succeeds. Not with --db: the "
        "legacy file cannot change a role.",
    ),
}


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    user = verbs.add_parser(
        "user",
        help="add, list, revoke, reinstate, promote and demote allowlisted users "
        "(the live UNIBUS_users bucket)",
        description="Manage the allowlist in the replicated UNIBUS_users bucket, connected "
        "as the internal service identity. Writes succeed with one node down and print "
        "the bucket's replication afterwards. The last active admin can be neither "
        "demoted nor revoked: the bus always keeps one.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = user.add_subparsers(dest="user_verb", metavar="SUBVERB", required=True)

    add = sub.add_parser(
        "add",
        help="allowlist a new user key with a role",
        description="Add a user (create-only). Re-adding an existing key is an error that "
        "leaves the stored record, and its role, unchanged. KEY is an nkey public key "
        "(U…) or a legacy 64-hex Ed25519 key, stored in its canonical U… form.",
    )
    add.add_argument("--handle", required=True, help=f"display name (1..{MAX_HANDLE_LEN} chars)")
    add.add_argument("--key", required=True, metavar="KEY", help="U… public key or 64 hex digits")
    add.add_argument(
        "--role",
        default=Role.MEMBER.value,
        metavar="{" + ",".join(ROLES) + "}",
        help="member (default) or admin",
    )
    _add_shared_args(add, _add)

    listing = sub.add_parser(
        "list",
        help="every allowlisted user with role and status",
        description="Print every user of UNIBUS_users (key, handle, role, status).",
    )
    _add_shared_args(listing, _list)

    for change, (summary, description) in _CHANGES.items():
        verb = sub.add_parser(
            change.value,
            help=summary,
            description=f"{description} By compare-and-set: a concurrent change of the "
            "same user is re-read, never overwritten.",
        )
        verb.add_argument("key", metavar="KEY", help="U… public key or 64 hex digits")
        verb.set_defaults(change=change)
        _add_shared_args(verb, _change)


# -- where the allowlist lives ----------------------------------------------------------------
class _Retry(Protocol):
    """``_Session.retry`` or ``_once``; a protocol because a ``Callable`` cannot be generic."""

    async def __call__(
        self,
        what: str,
        operation: Callable[[], Awaitable[T]],
        *,
        give_up_on: tuple[type[BaseException], ...] = ...,
    ) -> T: ...


@dataclass(frozen=True)
class _Extra:
    """What a backend adds to a write's report, worded as each backend always printed it."""

    json: dict[str, Any]
    after_change: str = ""
    after_noop: str = ""
    lines: tuple[str, ...] = ()
    warning: str | None = None


@dataclass(frozen=True)
class _Backend:
    """What a verb needs besides the ``Store``; the contract suite keeps the stores alike."""

    store: Store
    retry: _Retry
    report_extra: Callable[[], Awaitable[_Extra]]
    """Called after the write and before the store closes: the live report reads the bus."""
    name: str
    """The allowlist as messages name it: the bucket, or the file."""
    located: str = ""
    missing_hint: str = ""


@dataclass(frozen=True)
class _Session:
    """The live bucket: each step is retried until ``--timeout`` while a leader is elected."""

    nc: NATS
    store: JetStreamStore
    cluster_size: int
    deadline: float
    """``time.monotonic()`` value after which no step starts another attempt (``--timeout``)."""

    def remaining(self) -> float:
        return max(0.1, self.deadline - time.monotonic())

    async def retry(
        self,
        what: str,
        operation: Callable[[], Awaitable[T]],
        *,
        give_up_on: tuple[type[BaseException], ...] = _NO_RETRY,
    ) -> T:
        return await retry_until(
            what,
            operation,
            budget=self.remaining(),
            attempt_timeout=ATTEMPT_TIMEOUT,
            give_up_on=give_up_on,
        )

    async def report_extra(self) -> _Extra:
        # Best effort after a committed write: the replication read gets at least one
        # full attempt even when the write used up the budget.
        js = self.nc.jetstream(timeout=OP_TIMEOUT)
        status: AssetStatus | None
        try:
            status = await retry_until(
                f"{naming.USERS_BUCKET} replication",
                lambda: asset_status(js, USERS_ASSET, cluster_size=self.cluster_size),
                budget=min(REPLICATION_BUDGET, max(ATTEMPT_TIMEOUT, self.remaining())),
                attempt_timeout=ATTEMPT_TIMEOUT,
            )
        except Exception:  # noqa: BLE001 - the write is done; the report is best effort
            status = None
        return _Extra(
            json={"replication": replication_json(status)},
            after_noop="; nothing changed",
            lines=(replication_line(status),),
            warning=None
            if status is not None
            else f"warning: {naming.USERS_BUCKET}'s replication could not be read after the "
            "operation; check `unibus status`",
        )


def check_timeout(timeout: float) -> float:
    if not timeout > 0:
        raise ConfigError("--timeout must be a positive number of seconds", setting="timeout")
    return timeout


@asynccontextmanager
async def _session(args: argparse.Namespace) -> AsyncIterator[_Session]:
    deadline = time.monotonic() + args.timeout
    target = resolve_target(args, identity="internal")
    try:
        async with asyncio.timeout(args.timeout):
            nc = await connect(target, name="unibus-user", max_reconnect_attempts=3)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise StoreUnavailableError(
            f"cannot reach the bus at {', '.join(target.urls)} ({type(exc).__name__}); "
            "check that the nodes are up (`unibus status`) and the CA and identity are right"
        ) from None
    try:

        async def open_store() -> JetStreamStore:
            return await JetStreamStore.open(nc, op_timeout=OP_TIMEOUT)

        store = await retry_until(
            "open the users bucket",
            open_store,
            budget=max(0.1, deadline - time.monotonic()),
            attempt_timeout=ATTEMPT_TIMEOUT * 3,
            give_up_on=_NO_RETRY,
        )
        yield _Session(nc=nc, store=store, cluster_size=len(target.urls), deadline=deadline)
    finally:
        await nc.close()


async def _once(
    what: str,
    operation: Callable[[], Awaitable[T]],
    *,
    give_up_on: tuple[type[BaseException], ...] = _NO_RETRY,
) -> T:
    # A local file has no leader to wait for: a failure is already the answer.
    return await operation()


@asynccontextmanager
async def _backend(args: argparse.Namespace, *, create: bool = False) -> AsyncIterator[_Backend]:
    if args.db is None:
        async with _session(args) as session:
            yield _Backend(
                store=session.store,
                retry=session.retry,
                report_extra=session.report_extra,
                name=naming.USERS_BUCKET,
                missing_hint=" (see `unibus user list`)",
            )
        return
    path: Path = args.db
    store = await SQLiteStore.open(path, create=create)

    async def file_extra() -> _Extra:
        return _Extra(json={"db": str(path)}, after_change=f" in {path}")

    try:
        yield _Backend(
            store=store, retry=_once, report_extra=file_extra, name=str(path), located=f" in {path}"
        )
    finally:
        await store.close()


def _run(coro: Coroutine[Any, Any, int]) -> int:
    # Logs go to stderr (structlog's default is stdout, where --json output goes); the
    # per-attempt retry notes stay below the level shown, so a failure ends in one line.
    configure_logging(json=False, level="warning")
    return asyncio.run(coro)


# -- add ---------------------------------------------------------------------------------------
def _add(args: argparse.Namespace) -> int:
    record = new_user(args.key, args.handle, args.role)
    check_timeout(args.timeout)
    return _run(_add_async(args, record))


async def _add_async(args: argparse.Namespace, record: UserRecord) -> int:
    async with _backend(args, create=True) as backend:
        store = backend.store
        try:
            written = await backend.retry(f"add user {record.key}", lambda: store.add_user(record))
        except ConflictError:
            # Either the key was there before, or an earlier attempt of this run landed
            # and only its acknowledgement was lost: the stored record tells which.
            stored = await backend.retry(
                f"read user {record.key}",
                lambda: store.get_user(record.key),
                give_up_on=(NotFoundError, AssetMissingError, RecordError),
            )
            if not same_add(stored.value, record):
                existing = stored.value
                state = "" if existing.is_active else ", revoked"
                raise ConflictError(
                    f"user {record.key} already exists{backend.located} "
                    f"(role {existing.role.value}{state}); a re-add never changes a role"
                ) from None
            written = stored
        extra = await backend.report_extra()
    _report(args, "added", written, extra)
    return 0


# -- list --------------------------------------------------------------------------------------
def _list(args: argparse.Namespace) -> int:
    check_timeout(args.timeout)
    return _run(_list_async(args))


async def _list_async(args: argparse.Namespace) -> int:
    async with _backend(args) as backend:
        users = await backend.retry("list users", backend.store.list_users)
    if args.json:
        print_json([user_json(u) for u in users])
    elif users:
        print(users_table(users))
    else:
        print(f"no users in {backend.name}")
    return 0


# -- revoke, reinstate, promote, demote --------------------------------------------------------
def _change(args: argparse.Namespace) -> int:
    key = canonical_user_key(args.key)
    check_timeout(args.timeout)
    return _run(_change_async(args, key, args.change))


async def _change_async(args: argparse.Namespace, key: str, change: UserChange) -> int:
    async with _backend(args) as backend:
        store = backend.store
        try:
            before = await backend.retry(f"read user {key}", lambda: store.get_user(key))
        except NotFoundError:
            raise NotFoundError(
                f"no user {key} in {backend.name}; nothing to {change.value}{backend.missing_hint}"
            ) from None
        try:
            # change_user is idempotent: a retry after a lost ack finds the change made.
            result = await backend.retry(
                f"{change.value} user {key}", lambda: change_user(store, key, change)
            )
        except UnsupportedError:
            raise UnsupportedError(
                f"{backend.name} is a legacy file, which cannot change a role; "
                f"{change.value} the user in the live bucket (without --db)"
            ) from None
        extra = await backend.report_extra()
    after = result.after.value
    # Judged against the first read, not the last attempt: an attempt whose answer was lost
    # leaves the retry a no-op.
    changed = (after.role, after.status) != (before.value.role, before.value.status)
    result_text = change.past if changed else f"already {change.already}"
    _report(args, result_text, result.after, extra, changed=changed)
    return 0


def _report(
    args: argparse.Namespace,
    result: str,
    written: Versioned[UserRecord],
    extra: _Extra,
    *,
    changed: bool = True,
) -> None:
    user = written.value
    if args.json:
        print_json(
            {
                "result": result,
                "changed": changed,
                "user": user_json(user),
                "revision": written.revision,
                **extra.json,
            }
        )
    else:
        what = f"{user.key} (handle {user.handle!r}, role {user.role.value}, {user.status.value})"
        print(
            f"{result} {what}{extra.after_change}"
            if changed
            else f"{what} was {result}{extra.after_noop}"
        )
        for line in extra.lines:
            print(line)
    if extra.warning is not None:
        print(extra.warning, file=sys.stderr)

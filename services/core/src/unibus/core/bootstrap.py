"""The first administrator, in one step: a create-only claim, then the user.

Several control-plane replicas may start at once with ``UNIBUS_BOOTSTRAP_ADMIN`` set.
The first to create the claim marker wins; the others see it and do nothing, so exactly
one first admin is written even if replicas were given different keys. A claim left by a
crash before the user was written is completed by a replica configured with that key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from nats.aio.client import Client as NATS

from unibus.core.errors import ConflictError, NotFoundError
from unibus.core.kvstore import JetStreamStore
from unibus.core.log import get_logger
from unibus.core.models import Role, UserRecord
from unibus.core.provisioning import Provisioning, ProvisionReport, provision
from unibus.core.retry import retry_until
from unibus.core.serverversion import require_supported

FIRST_ADMIN_CLAIM: Final = "_first-admin"
_log = get_logger("unibus.bootstrap")


async def ensure_first_admin(store: JetStreamStore, key: str, *, handle: str = "admin") -> bool:
    """Write ``key`` as the first admin unless an admin exists; True if this call wrote it."""
    if await store.has_admin():
        return False
    claimed = await store.claim_marker(FIRST_ADMIN_CLAIM, key)
    if claimed != key:
        _log.info("first admin already claimed by another key")
        return False
    try:
        await store.add_user(UserRecord.new(key, handle, Role.ADMIN))
    except ConflictError:
        try:
            existing = (await store.get_user(key)).value
        except NotFoundError:
            return False
        if existing.role is not Role.ADMIN:
            _log.warning("the bootstrap admin key exists as a non-admin; its role is not changed")
        return False
    return True


def _version_of(nc: NATS) -> str:
    version = nc.connected_server_version
    major, minor, patch = version.major, version.minor, version.patch
    return f"{major}.{minor}.{patch}"


async def provision_cluster(
    nc: NATS,
    plan: Provisioning,
    first_admin: str | None,
    *,
    progress: Callable[[str], None] | None = None,
) -> tuple[ProvisionReport, bool]:
    """Every asset at ``plan``'s replicas, then ``first_admin`` if given (create-only).

    What ``unibus up`` and ``unibus provision`` (the compose stack's one-shot step) both
    do. Returns the provisioning report and whether this call wrote the first admin.

    Raises:
        PostureError: the server is older than ``serverversion.MIN_SERVER_VERSION``.
    """
    # The node this connection reached; status and /healthz report every node's.
    require_supported(_version_of(nc))
    report = await provision(nc.jetstream(timeout=plan.attempt_timeout), plan, progress=progress)
    if first_admin is None:
        return report, False
    store = await retry_until("open the store", lambda: JetStreamStore.open(nc))
    wrote = await retry_until("first admin", lambda: ensure_first_admin(store, first_admin))
    return report, wrote

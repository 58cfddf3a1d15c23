"""The oldest nats-server unibus runs on, and the check every entry point makes.

nats-server before 2.14.4 lacks auth-callout fixes the callout relies on; an image pulled
under another tag, or a host's own binary, can be older than the pinned one. Provisioning
refuses such a server; ``unibus status`` and ``/healthz`` report it.
"""

from __future__ import annotations

import re
from typing import Final

from unibus.core.errors import PostureError

__all__ = ["MIN_SERVER_VERSION", "require_supported", "version_problem"]

MIN_SERVER_VERSION: Final = (2, 14, 4)
_FLOOR: Final = ".".join(map(str, MIN_SERVER_VERSION))
_VERSION: Final = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def version_problem(version: str, *, node: str = "") -> str | None:
    """Why a server of ``version`` must not be trusted with the bus, or None.

    >>> version_problem("2.15.1") is None
    True
    >>> version_problem("2.14.3", node="n2")
    'n2: nats-server 2.14.3 is older than 2.14.4 (it lacks auth-callout fixes): upgrade it'
    """
    where = f"{node}: " if node else ""
    found = _VERSION.match(version.strip())
    if found is None:
        return f"{where}nats-server version {version!r} is not recognised (need {_FLOOR} or later)"
    if tuple(int(part) for part in found.groups()) < MIN_SERVER_VERSION:
        return (
            f"{where}nats-server {version.strip()} is older than {_FLOOR} "
            "(it lacks auth-callout fixes): upgrade it"
        )
    return None


def require_supported(version: str, *, node: str = "") -> None:
    """Raise :class:`PostureError` for a server older than ``MIN_SERVER_VERSION``."""
    problem = version_problem(version, node=node)
    if problem is not None:
        raise PostureError(problem)

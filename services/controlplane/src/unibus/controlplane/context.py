"""What every handler is given: the settings and the connections the app was built with.

``__main__`` (or a test) builds one :class:`Context` and hands it to
:func:`unibus.controlplane.app.build_app`; nothing in a handler opens a connection or reads
the environment itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from starlette.requests import Request
from starlette.responses import Response

from unibus.controlplane.auth import Caller
from unibus.controlplane.metrics import ApiMetrics
from unibus.controlplane.settings import Settings
from unibus.core.store import Store

__all__ = ["Context", "Handler"]


@dataclass
class Context:
    settings: Settings
    store: Store
    nc: NATS
    """The internal identity's connection: the object store (blobs) and health reads."""
    sys_nc: NATS
    """The system account's connection: the live server posture for health."""
    metrics: ApiMetrics

    @property
    def room_cap(self) -> int:
        return self.settings.max_rooms


Handler = Callable[[Request, Context, Caller], Awaitable[Response]]
"""A signed route: called only once the caller is authenticated as an active user."""

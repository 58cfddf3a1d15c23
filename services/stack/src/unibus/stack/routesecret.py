"""Rotating the route secret: a new one written, every node reloaded at once.

Routes authenticate twice: mutual TLS under the route CA, and a password (the route
secret) that nats-server takes as one user and password only, never a list. So there is
no overlap during which both secrets are accepted: the nodes take the new one together,
by a config reload (SIGHUP). The routes re-authenticate, and one the reload finds stale is
made again within moments, with the new secret; a client connection the reload closes
reconnects at once and is admitted (the callout is unaffected). From then on a route
that presents the old secret is refused, and a node restarted later presents the new one.
"""

from __future__ import annotations

import secrets

from unibus.core.files import write_private
from unibus.stack.layout import StackLayout

__all__ = ["new_route_secret"]


def new_route_secret(layout: StackLayout) -> None:
    """Replace the stack's route secret (0600), as ``ensure_material`` makes one."""
    layout.route_secret.unlink(missing_ok=True)
    write_private(layout.route_secret, secrets.token_urlsafe(32).encode() + b"\n")

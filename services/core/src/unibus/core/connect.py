"""Connecting to the bus: URLs, the pinned CA and an nkey identity read from a 0600 file.

A connection that would carry identities or the allowlist across a network in clear is
refused before any socket opens: a non-loopback URL needs a pinned CA. With a CA, TLS is
the first thing on the socket (``tls_options``): nats-py otherwise upgrades only when the
server's first INFO asks for it, so a relay that answers with ``tls_required: false``
would receive the nkey signature in clear and log in with it elsewhere.
"""

from __future__ import annotations

import asyncio.constants
import contextlib
import ipaddress
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client as NATS

from unibus.core.errors import ConfigError, PostureError
from unibus.core.log import get_logger
from unibus.core.nkeys import read_seed_file

_log = get_logger("unibus.connect")

TLS_CLOSE_WAIT = 2.0
"""Seconds a TLS connection being closed waits for the peer's close_notify."""


def bound_tls_close_wait(seconds: float = TLS_CLOSE_WAIT) -> None:
    """Make every TLS connection this process closes give up on its peer after ``seconds``.

    nats-py connects to another node only once the connection it leaves is closed
    (nats.py issue 671), and asyncio waits up to 30 s for a silent peer's close_notify.
    A node that hangs with its sockets open (a frozen host, a cut network) is such a
    peer: the callout whose view rode on it went on denying for 35 s, measured, after its
    pings had shown the node dead in 6. A live peer answers at once, and a close that
    gives up early only drops the TLS goodbye. asyncio reads this default each time it
    wraps a connection, so it is set once per process, before any connection opens.
    A shorter bound already set (by the application embedding the SDK) is kept.
    """
    if seconds <= 0:
        raise ValueError("the TLS close wait must be positive")
    if seconds < asyncio.constants.SSL_SHUTDOWN_TIMEOUT:
        # Through setattr: typeshed declares the module's constants final.
        setattr(asyncio.constants, "SSL_SHUTDOWN_TIMEOUT", seconds)  # noqa: B010


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 (bracketed or not) and ``localhost``, in any case; a wildcard
    address is not loopback. Whether TLS may be skipped rests on this one answer."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


DEFAULT_CLIENT_PORT = 4222


def url_address(url: str) -> tuple[str, int]:
    """The host and port a NATS URL names (the port defaulting as nats-py's does)."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if not parts.hostname:
        raise ConfigError(
            f"{url!r} is not a NATS URL; expected nats://HOST:PORT or tls://HOST:PORT"
        )
    return parts.hostname, parts.port or DEFAULT_CLIENT_PORT


def url_host(url: str) -> str:
    return url_address(url)[0]


def is_connected_to(nc: NATS, url: str) -> bool:
    """Whether ``nc`` is connected, to the node at ``url`` (host and port compared)."""
    connected = nc.connected_url
    if connected is None or not nc.is_connected or not connected.hostname:
        return False
    return (connected.hostname, connected.port or DEFAULT_CLIENT_PORT) == url_address(url)


@dataclass(frozen=True)
class NatsTarget:
    """Where and as whom to connect."""

    urls: tuple[str, ...]
    ca_file: Path | None = None
    identity_file: Path | None = None

    def __post_init__(self) -> None:
        if not self.urls:
            raise ConfigError("no NATS URL given; pass --nats-url or --dir of a local stack")
        for url in self.urls:
            url_host(url)

    @property
    def is_loopback(self) -> bool:
        return all(is_loopback_host(url_host(url)) for url in self.urls)

    def check_secure(self) -> None:
        """Refuse, before connecting, a remote target without a pinned CA."""
        if not self.is_loopback and self.ca_file is None:
            raise PostureError(
                "refusing to connect to a non-loopback NATS URL without a pinned CA: "
                "pass --ca CA_FILE (identities and the allowlist must not travel in clear)"
            )


def tls_context(ca_file: Path) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA file {ca_file}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def tls_options(ca_file: Path) -> dict[str, object]:
    """nats-py options for a TLS connection that sends nothing before the handshake.

    The servers' client listeners require the same (``handshake_first``), so a client
    that waited for INFO would be refused rather than fall back to clear text.
    """
    return {"tls": tls_context(ca_file), "tls_handshake_first": True}


async def _quiet_error(exc: Exception) -> None:
    # nats-py reports every reconnect hiccup here; they are expected during failover.
    _log.debug("nats connection error", error=type(exc).__name__)


async def connect(
    target: NatsTarget,
    *,
    name: str,
    connect_timeout: float = 2.0,
    allow_reconnect: bool = True,
    max_reconnect_attempts: int = -1,
    reconnect_time_wait: float = 0.5,
    inbox_prefix: str | None = None,
    randomize: bool = True,
    ping_interval: int | None = None,
    disconnected_cb: Callable[[], Awaitable[None]] | None = None,
    reconnected_cb: Callable[[], Awaitable[None]] | None = None,
    closed_cb: Callable[[], Awaitable[None]] | None = None,
) -> NATS:
    """Open a connection to ``target``; every URL of a cluster is tried and reconnected to.

    ``ping_interval`` (seconds) replaces nats-py's two minutes: a server that hangs with the
    connection open is then left for another after three unanswered intervals.
    """
    target.check_secure()
    options: dict[str, object] = {
        "servers": list(target.urls),
        "name": name,
        "connect_timeout": connect_timeout,
        "allow_reconnect": allow_reconnect,
        "max_reconnect_attempts": max_reconnect_attempts,
        "reconnect_time_wait": reconnect_time_wait,
        "error_cb": _quiet_error,
        # randomize=False keeps the caller's order: a per-node service prefers its own node.
        "dont_randomize": not randomize,
    }
    if target.ca_file is not None:
        options.update(tls_options(target.ca_file))
    if target.identity_file is not None:
        options["nkeys_seed_str"] = read_seed_file(target.identity_file).seed
    if inbox_prefix is not None:
        options["inbox_prefix"] = inbox_prefix
    if ping_interval is not None:
        options["ping_interval"] = ping_interval
        options["max_outstanding_pings"] = 2
    for key, callback in (
        ("disconnected_cb", disconnected_cb),
        ("reconnected_cb", reconnected_cb),
        ("closed_cb", closed_cb),
    ):
        if callback is not None:
            options[key] = callback
    return await nats.connect(**options)  # type: ignore[arg-type]


async def close_all(connections: Iterable[NATS]) -> None:
    """Close each connection, whatever the others do: a service on its way out (a stop
    during its start included) leaves none open behind it."""
    for nc in connections:
        with contextlib.suppress(Exception):
            await nc.close()

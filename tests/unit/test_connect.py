"""Where and how NATS connections go: the loopback test TLS may be skipped on."""

from __future__ import annotations

import asyncio.constants
import asyncio.sslproto
import ssl
from typing import Any, cast
from urllib.parse import urlparse

import pytest

from unibus.core.connect import (
    NatsTarget,
    bound_tls_close_wait,
    is_connected_to,
    is_loopback_host,
    url_address,
)
from unibus.core.errors import PostureError


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "127.0.0.1", "127.8.9.10", "::1", "[::1]"]
)
def test_loopback_hosts_are_recognised_in_every_spelling(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "::", "192.168.1.10", "[2001:db8::1]", "localhost.example", ""],  # noqa: S104
)
def test_wildcards_and_remote_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)


def test_a_remote_target_without_a_pinned_ca_is_refused_before_connecting() -> None:
    with pytest.raises(PostureError, match="pinned CA"):
        NatsTarget(("tls://nats.example:4222",)).check_secure()
    NatsTarget(("tls://[::1]:4222",)).check_secure()


def test_tls_connections_wrapped_after_the_bound_give_up_on_a_silent_peer_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(asyncio.constants, "SSL_SHUTDOWN_TIMEOUT", 30.0)  # restored after
    loop = asyncio.new_event_loop()
    try:
        bound_tls_close_wait(1.5)
        context = ssl.create_default_context()
        wrapped = asyncio.sslproto.SSLProtocol(
            loop, asyncio.Protocol(), context, None, server_hostname="n1"
        )
    finally:
        loop.close()

    assert wrapped._ssl_shutdown_timeout == 1.5  # asyncio's own field: what a close waits


def test_a_shorter_tls_close_wait_already_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio.constants, "SSL_SHUTDOWN_TIMEOUT", 0.5)  # restored after
    bound_tls_close_wait(2.0)
    assert asyncio.constants.SSL_SHUTDOWN_TIMEOUT == 0.5


@pytest.mark.parametrize("seconds", [0.0, -1.0])
def test_a_tls_close_wait_that_is_not_positive_is_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        bound_tls_close_wait(seconds)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("tls://n1:4222", ("n1", 4222)),
        ("nats://n1", ("n1", 4222)),
        ("127.0.0.1:7", ("127.0.0.1", 7)),
    ],
)
def test_a_nats_url_names_its_host_and_port_with_the_default_port(
    url: str, address: tuple[str, int]
) -> None:
    assert url_address(url) == address


class _Connected:
    def __init__(self, url: str | None, *, up: bool = True) -> None:
        self.connected_url = urlparse(url) if url else None
        self.is_connected = up


def test_a_connection_is_on_a_node_only_while_connected_to_its_host_and_port() -> None:
    assert is_connected_to(cast(Any, _Connected("tls://n1:4222")), "tls://n1")
    assert not is_connected_to(cast(Any, _Connected("tls://n2:4222")), "tls://n1:4222")
    assert not is_connected_to(cast(Any, _Connected("tls://n1:4223")), "tls://n1:4222")
    assert not is_connected_to(cast(Any, _Connected("tls://n1:4222", up=False)), "tls://n1:4222")
    assert not is_connected_to(cast(Any, _Connected(None)), "tls://n1:4222")

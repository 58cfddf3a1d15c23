"""Where and how NATS connections go: the loopback test TLS may be skipped on."""

from __future__ import annotations

import pytest

from unibus.core.connect import NatsTarget, is_loopback_host
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

"""BusConnection refuses bad options before any socket opens."""

from __future__ import annotations

import pytest

from unibus.client.connection import BusConnection
from unibus.core.errors import ConfigError
from unibus.core.nkeys import KeyPair, Prefix


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("ping_interval", 0.0, "ping_interval"),
        ("ping_interval", -5.0, "ping_interval"),
        ("connect_timeout", 0.0, "connect_timeout"),
        ("connect_budget", -1.0, "budgets"),
        ("max_denials", 0, "max_denials"),
    ],
)
async def test_an_option_out_of_range_is_refused_before_connecting(
    option: str, value: float, message: str
) -> None:
    user = KeyPair.generate(Prefix.USER)
    with pytest.raises(ConfigError, match=message):
        await BusConnection.connect(
            ["nats://127.0.0.1:1"],
            user,
            ca_file=None,
            **{option: value},  # type: ignore[arg-type]
        )

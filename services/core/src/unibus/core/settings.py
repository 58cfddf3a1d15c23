"""Reading settings from the environment, once, failing fast.

Each process defines one frozen settings object and builds it with an ``EnvReader`` at
start-up. A bad value raises ``ConfigError`` naming the variable and what it accepts,
so the process stops before it touches the network.

>>> env = EnvReader({"UNIBUS_OP_TIMEOUT": "2.5"})
>>> env.number("UNIBUS_OP_TIMEOUT", default=2.0, minimum=0.1)
2.5
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from unibus.core.errors import ConfigError

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def parse_bool(name: str, raw: str) -> bool:
    """Parse a boolean setting; ``ConfigError`` naming ``name`` on anything unexpected."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(
        f"{name}={raw!r} is not a boolean; use one of 1/0, true/false, yes/no, on/off",
        setting=name,
    )


class EnvReader:
    """Typed access to one snapshot of the environment."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = dict(os.environ if environ is None else environ)

    def raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        return None if value is None or value.strip() == "" else value.strip()

    def string(self, name: str, *, default: str | None = None) -> str:
        value = self.raw(name)
        if value is None:
            if default is None:
                raise ConfigError(f"{name} is required but not set", setting=name)
            return default
        return value

    def optional_str(self, name: str) -> str | None:
        return self.raw(name)

    def boolean(self, name: str, *, default: bool) -> bool:
        # Blank means unset here as for every other getter: an empty line in an env file
        # must not silently turn off a setting that defaults to on.
        value = self.raw(name)
        return default if value is None else parse_bool(name, value)

    def integer(
        self, name: str, *, default: int, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not an integer", setting=name) from None
        _check_range(name, number, minimum, maximum)
        return number

    def number(
        self,
        name: str,
        *,
        default: float,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not a number", setting=name) from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ConfigError(f"{name}={value!r} must be a finite number", setting=name)
        _check_range(name, number, minimum, maximum)
        return number

    def path(self, name: str, *, must_exist: bool = True) -> Path:
        path = Path(self.string(name)).expanduser()
        if must_exist and not path.exists():
            raise ConfigError(f"{name} points to {path}, which does not exist", setting=name)
        return path

    def optional_path(self, name: str, *, must_exist: bool = True) -> Path | None:
        return self.path(name, must_exist=must_exist) if self.raw(name) is not None else None

    def host_port(self, name: str, *, default: str) -> tuple[str, int]:
        """``HOST:PORT`` (IPv6 in brackets; port 0 picks a free one) as (host, port)."""
        host, _, port = self.string(name, default=default).rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(
                f"{name} must be HOST:PORT, for example 127.0.0.1:9470 (port 0 picks a free one)",
                setting=name,
            )
        return host.strip("[]"), int(port)

    def items(self, name: str, *, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return default
        items = tuple(item.strip() for item in value.split(","))
        if any(not item for item in items):
            raise ConfigError(f"{name} has an empty item; separate values by commas", setting=name)
        return items


def _check_range(name: str, number: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name}={number} is below the minimum {minimum}", setting=name)
    if maximum is not None and number > maximum:
        raise ConfigError(f"{name}={number} is above the maximum {maximum}", setting=name)

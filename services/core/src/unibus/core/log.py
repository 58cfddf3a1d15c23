"""structlog configuration shared by every unibus process.

Quiet by default: INFO level, and values under keys that could carry room subjects,
payloads or secrets are redacted unless debug logging was asked for explicitly. JSON
lines in production, a console renderer for people.
"""

from __future__ import annotations

import logging as _stdlib_logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"
_SENSITIVE_KEYS = frozenset(
    {
        "seed",
        "secret",
        "password",
        "pass",
        "token",
        "jwt",
        "sig",
        "signature",
        "payload",
        "data",
        "body",
        "subject",
        "sealed",
    }
)


def _redacted(value: Any) -> Any:
    """A copy of ``value`` with sensitive keys redacted at any depth; the caller's is untouched."""
    if isinstance(value, Mapping):
        return {
            key: REDACTED if key in _SENSITIVE_KEYS else _redacted(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_redacted(item) for item in value)
    return value


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        event[key] = REDACTED if key in _SENSITIVE_KEYS else _redacted(value)
    return event


def _stderr_logger(*_: Any) -> structlog.PrintLogger:
    # Resolve sys.stderr per logger, not once at configure time: an embedding program (or a
    # test runner) may swap and close the stream it had when logging was configured.
    return structlog.PrintLogger(file=sys.stderr)


def configure_logging(*, json: bool = True, level: str = "info", debug: bool = False) -> None:
    """Configure structlog (and the stdlib root logger) for this process.

    Args:
        json: one JSON object per line (production) instead of the console renderer.
        level: minimum level name.
        debug: lower the level to debug *and* stop redacting; for local diagnosis only.
    """
    numeric = (
        _stdlib_logging.DEBUG
        if debug
        else _stdlib_logging.getLevelNamesMapping().get(level.upper(), _stdlib_logging.INFO)
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if not debug:
        processors.append(_redact)
    processors.append(
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    # nats-py logs through the stdlib; keep it at WARNING so it never prints subjects.
    _stdlib_logging.basicConfig(level=_stdlib_logging.WARNING, stream=sys.stderr)
    # asyncio warns about every TLS connection nats-py closes ("eof_received"): noise.
    _stdlib_logging.getLogger("asyncio").setLevel(_stdlib_logging.ERROR)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)

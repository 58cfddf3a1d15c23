"""``unibus rollout`` for a local stack: asking the ``unibus up`` that runs it.

The nodes of a local stack are children of its ``unibus up`` process, which stops the
whole stack when one of them ends unasked. So the rollout runs inside that process:
``unibus rollout --dir D`` writes a request into ``D``, sends ``unibus up`` SIGHUP, and
follows the progress and the result it writes back. Files, not a socket: the stack's
directory is already private to its operator (0700).
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgspec

from unibus.core.errors import StackError
from unibus.stack.layout import StackLayout

__all__ = [
    "REQUEST_VERSION",
    "RolloutLog",
    "RolloutRequest",
    "RolloutResult",
    "follow_rollout",
    "read_request",
    "request_rollout",
    "write_result",
]

REQUEST_VERSION: Final = 1
_POLL: Final = 0.2


class RolloutRequest(msgspec.Struct, frozen=True, kw_only=True):
    v: int = REQUEST_VERSION
    id: str
    node_bound: float


class RolloutResult(msgspec.Struct, frozen=True, kw_only=True):
    v: int = REQUEST_VERSION
    id: str
    ok: bool
    error: str | None = None
    report: dict[str, Any] | None = None


def _request_file(layout: StackLayout) -> Path:
    return layout.root / "rollout.request.json"


def _log_file(layout: StackLayout) -> Path:
    return layout.root / "rollout.log"


def _result_file(layout: StackLayout) -> Path:
    return layout.root / "rollout.result.json"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _up_pid(layout: StackLayout) -> int:
    try:
        text = layout.up_pid.read_text().strip()
    except FileNotFoundError:
        text = ""
    if not text.isdigit() or not Path(f"/proc/{text}").exists():
        raise StackError(
            f"no `unibus up` is running from {layout.root}: start the stack with "
            f"`unibus up --dir {layout.root}` (a rollout restarts a running stack)"
        )
    return int(text)


def request_rollout(layout: StackLayout, *, node_bound: float) -> str:
    """Ask the ``unibus up`` of ``layout`` to roll its nodes; returns the request's id."""
    pid = _up_pid(layout)
    request = RolloutRequest(id=secrets.token_hex(8), node_bound=node_bound)
    _result_file(layout).unlink(missing_ok=True)
    _write_atomically(_request_file(layout), msgspec.json.encode(request))
    os.kill(pid, signal.SIGHUP)
    return request.id


def read_request(layout: StackLayout) -> RolloutRequest | None:
    """The pending request, taken (removed) so it runs once; None if there is none."""
    path = _request_file(layout)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    try:
        return msgspec.json.decode(data, type=RolloutRequest)
    except msgspec.DecodeError:
        return None


class RolloutLog:
    """Progress lines for the requester, who follows the file."""

    def __init__(self, layout: StackLayout) -> None:
        self._path = _log_file(layout)
        self._path.write_text("")

    def __call__(self, message: str) -> None:
        with self._path.open("a") as log:
            log.write(message + "\n")


def write_result(layout: StackLayout, result: RolloutResult) -> None:
    _write_atomically(_result_file(layout), msgspec.json.encode(result))


def follow_rollout(
    layout: StackLayout,
    request_id: str,
    *,
    deadline: float,
    on_line: Callable[[str], None],
) -> RolloutResult:
    """Pass on each progress line until the result of ``request_id`` is written."""
    offset = 0
    while True:
        log = _log_file(layout)
        if log.exists():
            text = log.read_text()
            if len(text) < offset:
                offset = 0  # the supervisor started a new log
            # Only whole lines: the supervisor may be writing the next one right now.
            complete = text[offset:].rpartition("\n")[0]
            if complete:
                for line in complete.split("\n"):
                    on_line(line)
                offset += len(complete) + 1
        result_path = _result_file(layout)
        if result_path.exists():
            result = msgspec.json.decode(result_path.read_bytes(), type=RolloutResult)
            if result.id == request_id:
                return result
        if time.monotonic() > deadline:
            raise StackError(
                f"no answer from the `unibus up` of {layout.root} in time; it may still be "
                f"rolling: look at {log}"
            )
        _up_pid(layout)  # the supervisor died: say so instead of waiting out the deadline
        time.sleep(_POLL)

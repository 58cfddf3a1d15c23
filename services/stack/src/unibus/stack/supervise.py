"""Asking the ``unibus up`` that runs a local stack to act on its own nodes.

The nodes of a local stack are children of its ``unibus up`` process, which stops the
whole stack when one of them ends unasked. So whatever stops nodes on purpose runs inside
that process: ``unibus rollout --dir D`` or ``unibus chaoscheck --dir D`` writes a request
(its ``kind`` names the work) into ``D``, sends ``unibus up`` SIGHUP, and follows the
progress and the result it writes back. A requester interrupted (Ctrl-C) writes a cancel
for its request and sends SIGHUP again: ``unibus up`` cancels the work, which undoes what
it did before it writes its result. Files, not a socket: the stack's directory is already
private to its operator (0700).
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
    "KINDS",
    "REQUEST_VERSION",
    "Request",
    "RequestLog",
    "Result",
    "RolloutLog",
    "RolloutRequest",
    "RolloutResult",
    "cancel_requested",
    "follow",
    "follow_rollout",
    "read_request",
    "request",
    "request_cancel",
    "request_rollout",
    "write_result",
]

REQUEST_VERSION: Final = 1
KINDS: Final = ("rollout", "chaoscheck", "replace", "reload")
_POLL: Final = 0.2


class Request(msgspec.Struct, frozen=True, kw_only=True):
    v: int = REQUEST_VERSION
    id: str
    kind: str = "rollout"
    """One of ``KINDS``; absent in requests written before there was more than one."""
    node_bound: float = 300.0
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    """What the kind needs beyond ``node_bound`` (plain JSON values)."""


class Result(msgspec.Struct, frozen=True, kw_only=True):
    v: int = REQUEST_VERSION
    id: str
    ok: bool
    error: str | None = None
    report: dict[str, Any] | None = None
    interrupted: bool = False
    """The requester cancelled the work (or ``unibus up`` was stopped) before its end."""


# The names of the first kind, kept for their callers.
RolloutRequest = Request
RolloutResult = Result


def _request_file(layout: StackLayout) -> Path:
    return layout.root / "up.request.json"


def _cancel_file(layout: StackLayout) -> Path:
    return layout.root / "up.cancel"


def _log_file(layout: StackLayout) -> Path:
    return layout.root / "up.log"


def _result_file(layout: StackLayout) -> Path:
    return layout.root / "up.result.json"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _up_pid(layout: StackLayout, *, doing: str = "a rollout restarts a running stack") -> int:
    try:
        text = layout.up_pid.read_text().strip()
    except FileNotFoundError:
        text = ""
    if not text.isdigit() or not Path(f"/proc/{text}").exists():
        raise StackError(
            f"no `unibus up` is running from {layout.root}: start the stack with "
            f"`unibus up --dir {layout.root}` ({doing})"
        )
    return int(text)


def request(
    layout: StackLayout,
    kind: str,
    *,
    node_bound: float = 300.0,
    options: dict[str, Any] | None = None,
    doing: str = "it acts on a running stack",
) -> str:
    """Ask the ``unibus up`` of ``layout`` to do ``kind``; returns the request's id."""
    if kind not in KINDS:
        raise ValueError(f"unknown request kind {kind!r}: one of {', '.join(KINDS)}")
    pid = _up_pid(layout, doing=doing)
    ask = Request(id=secrets.token_hex(8), kind=kind, node_bound=node_bound, options=options or {})
    _result_file(layout).unlink(missing_ok=True)
    _cancel_file(layout).unlink(missing_ok=True)
    _write_atomically(_request_file(layout), msgspec.json.encode(ask))
    os.kill(pid, signal.SIGHUP)
    return ask.id


def request_rollout(layout: StackLayout, *, node_bound: float) -> str:
    """Ask the ``unibus up`` of ``layout`` to roll its nodes; returns the request's id."""
    return request(
        layout, "rollout", node_bound=node_bound, doing="a rollout restarts a running stack"
    )


def request_cancel(layout: StackLayout, request_id: str) -> None:
    """Ask the ``unibus up`` of ``layout`` to cancel ``request_id`` (it undoes, then answers)."""
    _write_atomically(_cancel_file(layout), request_id.encode())
    os.kill(_up_pid(layout), signal.SIGHUP)


def cancel_requested(layout: StackLayout, request_id: str) -> bool:
    """Whether the requester of ``request_id`` asked to cancel it (read by ``unibus up``)."""
    try:
        return _cancel_file(layout).read_text().strip() == request_id
    except FileNotFoundError:
        return False


def read_request(layout: StackLayout) -> Request | None:
    """The pending request, taken (removed) so it runs once; None if there is none."""
    path = _request_file(layout)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    try:
        return msgspec.json.decode(data, type=Request)
    except msgspec.DecodeError:
        return None


class RequestLog:
    """Progress lines for the requester, who follows the file."""

    def __init__(self, layout: StackLayout) -> None:
        self._path = _log_file(layout)
        self._path.write_text("")

    def __call__(self, message: str) -> None:
        with self._path.open("a") as log:
            log.write(message + "\n")


RolloutLog = RequestLog


def write_result(layout: StackLayout, result: Result) -> None:
    _write_atomically(_result_file(layout), msgspec.json.encode(result))


def follow(
    layout: StackLayout,
    request_id: str,
    *,
    deadline: float,
    on_line: Callable[[str], None],
    interrupted: Callable[[], bool] | None = None,
    cancel_bound: float = 600.0,
) -> Result:
    """Pass on each progress line until the result of ``request_id`` is written.

    ``interrupted`` is asked every poll: once it says so, the request is cancelled and
    followed on (within ``cancel_bound`` seconds) until ``unibus up`` has undone its work
    and answered.
    """
    offset = 0
    cancelled = False
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
            result = msgspec.json.decode(result_path.read_bytes(), type=Result)
            if result.id == request_id:
                return result
        if not cancelled and interrupted is not None and interrupted():
            request_cancel(layout, request_id)
            cancelled = True
            deadline = time.monotonic() + cancel_bound
        if time.monotonic() > deadline:
            raise StackError(
                f"no answer from the `unibus up` of {layout.root} in time; it may still be "
                f"at work: look at {log}"
            )
        _up_pid(layout)  # the supervisor died: say so instead of waiting out the deadline
        time.sleep(_POLL)


def follow_rollout(
    layout: StackLayout,
    request_id: str,
    *,
    deadline: float,
    on_line: Callable[[str], None],
) -> Result:
    """Pass on each progress line until the result of ``request_id`` is written."""
    return follow(layout, request_id, deadline=deadline, on_line=on_line)

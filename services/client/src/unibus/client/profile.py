"""``stack.json``: a deployment's profile, the one file a client needs to reach it.

Whatever starts a stack (the local launcher, ``unibus compose init``, ``unibus deploy
render``) writes this file into its directory; the SDK (``Client.from_stack``) and the CLI
read it. It lives in the client distribution because clients are its readers: the SDK
reads it without importing the tooling that writes it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import msgspec

from unibus.core.errors import StackError

__all__ = [
    "PROFILE_FILE",
    "PROFILE_VERSION",
    "NodeInfo",
    "StackInfo",
    "profile_path",
    "read_stack_info",
    "write_stack_info",
]

PROFILE_FILE: Final = "stack.json"
PROFILE_VERSION: Final = 1


class NodeInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    client_url: str
    route_url: str
    monitor_port: int


class StackInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a client or another command needs to reach a stack."""

    v: int = PROFILE_VERSION
    nats_urls: list[str]
    api_urls: list[str]
    ca_file: str
    admin_seed_file: str
    admin_key: str
    internal_id_file: str
    sys_id_file: str
    replicas: int
    nodes: list[NodeInfo]


def profile_path(root: Path) -> Path:
    """The profile of the stack kept in directory ``root``."""
    return root.expanduser().absolute() / PROFILE_FILE


def write_stack_info(root: Path, info: StackInfo) -> None:
    """Replace the profile in ``root`` atomically: a reader sees the old file or the new."""
    path = profile_path(root)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(info)) + b"\n")
    os.replace(tmp, path)


def read_stack_info(root: Path) -> StackInfo:
    """The profile in ``root``; ``StackError`` saying what to run when it is missing or bad."""
    path = profile_path(root)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StackError(
            f"no stack at {path.parent} ({PROFILE_FILE} missing): start one with "
            f"`unibus up --dir {root}` or pass --nats-url/--ca/--identity"
        ) from None
    try:
        info = msgspec.json.decode(data, type=StackInfo)
    except msgspec.DecodeError as exc:
        raise StackError(f"{path} is not a valid stack file: {exc}") from None
    if info.v != PROFILE_VERSION:
        raise StackError(
            f"{path} is a version {info.v} stack file; this unibus reads version "
            f"{PROFILE_VERSION}: upgrade unibus or re-render the stack"
        )
    return info

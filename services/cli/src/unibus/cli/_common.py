"""What every verb shares: finding the bus (``--dir`` or explicit flags) and printing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec

from unibus.core.connect import NatsTarget
from unibus.core.errors import ConfigError
from unibus.stack.layout import DEFAULT_DIR, read_stack_info

Subparsers = argparse._SubParsersAction


def add_target_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where the bus is")
    group.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"a local stack's directory, read through its stack.json (default {DEFAULT_DIR})",
    )
    group.add_argument(
        "--nats-url",
        action="append",
        default=None,
        metavar="URL",
        help="a NATS URL of the cluster (repeat for every node); overrides --dir",
    )
    group.add_argument("--ca", type=Path, default=None, help="CA certificate to pin (PEM)")
    group.add_argument(
        "--identity", type=Path, default=None, help="nkey seed file to connect as (mode 0600)"
    )


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def resolve_target(args: argparse.Namespace, *, identity: str = "internal") -> NatsTarget:
    """Explicit flags win; otherwise the stack directory's stack.json.

    ``identity`` picks which of the stack's identities to use: ``internal`` (admin verbs),
    ``system`` (server status), or ``admin``.
    """
    if args.nats_url:
        if args.identity is None:
            raise ConfigError("--nats-url needs --identity (an nkey seed file)")
        return NatsTarget(urls=tuple(args.nats_url), ca_file=args.ca, identity_file=args.identity)
    info = read_stack_info(args.dir or DEFAULT_DIR)
    files = {
        "internal": info.internal_id_file,
        "system": info.sys_id_file,
        "admin": info.admin_seed_file,
    }
    return NatsTarget(
        urls=tuple(info.nats_urls),
        ca_file=args.ca or Path(info.ca_file),
        identity_file=args.identity or Path(files[identity]),
    )


def print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value)).decode() + "\n")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

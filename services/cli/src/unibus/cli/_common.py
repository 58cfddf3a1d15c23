"""What every verb shares: finding the bus (``--dir`` or explicit flags) and printing."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from unibus.client.profile import read_stack_info
from unibus.core.connect import NatsTarget
from unibus.core.errors import ConfigError
from unibus.stack.layout import DEFAULT_DIR
from unibus.stack.material import ClientCa

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


def print_json_line(value: Any) -> None:
    """One compact JSON document per line (JSON Lines), for output that streams."""
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
    sys.stdout.flush()


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class TransferProgress:
    """Running progress of a long transfer on stderr: a line per phase, then every second.

    Called as ``(phase, done, total)`` in bytes (the SDK's blob progress callback).
    """

    def __init__(self, *, interval: float = 1.0) -> None:
        self._interval = interval
        self._phase = ""
        self._last = 0.0
        self._finished: set[str] = set()

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        finished = done >= total
        if phase in self._finished:
            return
        if phase == self._phase and not finished and now - self._last < self._interval:
            return
        if finished:
            self._finished.add(phase)
        self._phase, self._last = phase, now
        percent = 100 * done // total if total else 100
        progress(f"{phase}: {_size(done)} of {_size(total)} ({percent}%)")


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def add_client_ca_args(parser: argparse.ArgumentParser) -> None:
    """``--client-ca-cert``/``--client-ca-key``: import the client CA clients already pin."""
    group = parser.add_argument_group("keep the client CA your clients pin (import it)")
    group.add_argument("--client-ca-cert", type=Path, default=None, metavar="PEM")
    group.add_argument("--client-ca-key", type=Path, default=None, metavar="PEM")


def client_ca_of(args: argparse.Namespace) -> ClientCa | None:
    if (args.client_ca_cert is None) != (args.client_ca_key is None):
        raise ConfigError(
            "--client-ca-cert and --client-ca-key go together: give both to import a client "
            "CA, or neither to create one",
            setting="--client-ca-cert",
        )
    if args.client_ca_cert is None:
        return None
    return ClientCa(cert=args.client_ca_cert, key=args.client_ca_key)

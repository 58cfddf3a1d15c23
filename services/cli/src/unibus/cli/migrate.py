"""``unibus migrate-to-kv``: copy a legacy SQLite store into the replicated KV buckets.

The same job as ``python -m unibus.migrate`` (``unibus.core.migration``), with the CLI's
usual target flags (``--dir`` of a local stack, or ``--nats-url``/``--ca``/``--identity``).
Progress goes to stderr; the report to stdout (``--json`` for scripts).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from unibus.cli._common import (
    Subparsers,
    add_json_arg,
    add_target_args,
    print_json,
    progress,
    resolve_target,
)
from unibus.core.errors import ConfigError
from unibus.core.log import configure_logging
from unibus.core.migration import MigrationError, MigrationOptions, migrate
from unibus.core.provisioning import HA_REPLICAS, check_replicas

DEFAULT_TIMEOUT = 3600.0

_EPILOG = """\
examples:
  unibus migrate-to-kv --db membership.db                      # the local stack
  unibus migrate-to-kv --db membership.db --nats-url tls://10.0.0.1:4222 \\
      --ca ca.crt --internal-id-file internal.nk --replicas 3 --json

A second run changes nothing and says so; an interrupted run is resumed by re-running.
"""


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser(
        "migrate-to-kv",
        help="copy a legacy SQLite store into the replicated KV buckets",
        description="Back up the legacy SQLite file (VACUUM INTO), export it, convert keys "
        "to U…, import preserving epochs and statuses, and verify parity (counts and "
        "content hash). Refuses a diverged target unless --force; never re-activates a "
        "user revoked in the target.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--db", type=Path, required=True, help="the legacy SQLite file")
    add_target_args(parser)
    parser.add_argument(
        "--internal-id-file",
        dest="identity",
        type=Path,
        default=None,
        help="same as --identity: the internal service identity's seed file",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=None,
        help=f"replicas for buckets provisioning creates (default: nodes, at most {HA_REPLICAS})",
    )
    parser.add_argument("--no-backup", action="store_true", help="skip the VACUUM INTO backup")
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite a target that diverged from the source (revoked users stay revoked)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up after this long (default {DEFAULT_TIMEOUT:g})",
    )
    add_json_arg(parser)
    parser.set_defaults(handler=_migrate)


def _migrate(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        raise ConfigError("--timeout must be a positive number of seconds", setting="timeout")
    target = resolve_target(args, identity="internal")
    replicas = args.replicas if args.replicas is not None else min(HA_REPLICAS, len(target.urls))
    options = MigrationOptions(
        db=args.db,
        target=target,
        replicas=check_replicas(replicas),
        backup=not args.no_backup,
        force=args.force,
    )
    configure_logging(json=False, level="warning")
    return asyncio.run(_run(options, args.timeout, args.json))


async def _run(options: MigrationOptions, timeout: float, as_json: bool) -> int:
    try:
        async with asyncio.timeout(timeout):
            report = await migrate(options, progress)
    except TimeoutError:
        raise MigrationError(
            f"the migration did not finish within {timeout:g}s; re-run to resume"
        ) from None
    if as_json:
        print_json(report.to_json())
    else:
        print("\n".join(report.lines()))
    return 0

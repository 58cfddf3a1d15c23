"""``unibus migrate-to-kv``: copy a legacy SQLite store into the replicated KV buckets.

The same job and options as ``python -m unibus.migrate`` (``unibus.migrate.job``,
``unibus.migrate.cli``), with the CLI's usual target flags (``--dir`` of a local
stack, or ``--nats-url``/``--ca``/``--identity``) and replicas defaulting to one per node
URL. Progress goes to stderr; the report to stdout (``--json`` for scripts).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from unibus.cli._common import Subparsers, add_target_args, progress, resolve_target
from unibus.migrate.cli import MigrationCommand, add_migration_args

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
    add_migration_args(parser, default_replicas=None)
    add_target_args(parser)
    parser.add_argument(
        "--internal-id-file",
        dest="identity",
        type=Path,
        default=None,
        help="same as --identity: the internal service identity's seed file",
    )
    parser.set_defaults(handler=_migrate)


def _migrate(args: argparse.Namespace) -> int:
    target = resolve_target(args, identity="internal")
    return MigrationCommand.from_args(args, target).execute(progress)

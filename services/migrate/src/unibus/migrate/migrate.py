"""The migration job's command line: ``python -m unibus.migrate --db FILE --nats-url URL ...``.

This is the entrypoint a container runs (``docker compose run migrate``); ``unibus
migrate-to-kv`` runs the same job (``unibus.core.migration``) with the same options
(``unibus.core.migrationargs``) from the CLI. Exit status 0 only after a verified copy
(parity of counts and content hash); 1 with one line on stderr otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from unibus.core.connect import NatsTarget
from unibus.core.errors import UnibusError
from unibus.core.log import configure_logging
from unibus.core.migrationargs import MigrationCommand, add_migration_args
from unibus.core.provisioning import HA_REPLICAS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m unibus.migrate",
        description="Copy the legacy membershipd SQLite store into the replicated KV buckets: "
        "backup (VACUUM INTO), export, convert keys to U…, import preserving epochs and "
        "statuses, verify parity. Idempotent and resumable.",
    )
    # A job run by a deployment names the cluster's size itself; a guess from the URLs
    # given could quietly provision fewer replicas than the cluster has.
    add_migration_args(parser, default_replicas=HA_REPLICAS)
    bus = parser.add_argument_group("where the bus is")
    bus.add_argument(
        "--nats-url",
        action="append",
        required=True,
        metavar="URL",
        help="a NATS URL of the cluster (repeat for every node)",
    )
    bus.add_argument("--ca", type=Path, default=None, help="CA certificate to pin (PEM)")
    bus.add_argument(
        "--internal-id-file",
        type=Path,
        required=True,
        help="the internal service identity's nkey seed file (mode 0600)",
    )
    return parser


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(json=False, level="warning")
    try:
        target = NatsTarget(
            urls=tuple(args.nats_url), ca_file=args.ca, identity_file=args.internal_id_file
        )
        return MigrationCommand.from_args(args, target).execute(_progress)
    except UnibusError as exc:
        print(f"unibus-migrate: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

"""The migration job's command line: ``python -m unibus.migrate --db FILE --nats-url URL ...``.

This is the entrypoint a container runs (``docker compose run migrate``); ``unibus
migrate-to-kv`` runs the same job (``unibus.core.migration``) from the CLI. Exit status
0 only after a verified copy (parity of counts and content hash); 1 with one line on
stderr otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from unibus.core.connect import NatsTarget
from unibus.core.errors import UnibusError
from unibus.core.log import configure_logging
from unibus.core.migration import MigrationError, MigrationOptions, migrate
from unibus.core.provisioning import HA_REPLICAS, check_replicas

DEFAULT_TIMEOUT = 3600.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m unibus.migrate",
        description="Copy the legacy membershipd SQLite store into the replicated KV buckets: "
        "backup (VACUUM INTO), export, convert keys to U…, import preserving epochs and "
        "statuses, verify parity. Idempotent and resumable.",
    )
    parser.add_argument("--db", type=Path, required=True, help="the legacy SQLite file")
    parser.add_argument(
        "--nats-url",
        action="append",
        required=True,
        metavar="URL",
        help="a NATS URL of the cluster (repeat for every node)",
    )
    parser.add_argument("--ca", type=Path, default=None, help="CA certificate to pin (PEM)")
    parser.add_argument(
        "--internal-id-file",
        type=Path,
        required=True,
        help="the internal service identity's nkey seed file (mode 0600)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=HA_REPLICAS,
        help=f"replicas of buckets provisioning creates (default {HA_REPLICAS})",
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
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _run(options: MigrationOptions, timeout: float, as_json: bool) -> int:
    try:
        async with asyncio.timeout(timeout):
            report = await migrate(options, _progress)
    except TimeoutError:
        raise MigrationError(
            f"the migration did not finish within {timeout:g}s; re-run to resume"
        ) from None
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(json=False, level="warning")
    try:
        options = MigrationOptions(
            db=args.db,
            target=NatsTarget(
                urls=tuple(args.nats_url), ca_file=args.ca, identity_file=args.internal_id_file
            ),
            replicas=check_replicas(args.replicas),
            backup=not args.no_backup,
            force=args.force,
        )
        return asyncio.run(_run(options, args.timeout, args.json))
    except UnibusError as exc:
        print(f"unibus-migrate: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

"""The migration job's command-line options, shared by both commands that run it.

``python -m unibus.migrate`` (the container job) and ``unibus migrate-to-kv`` (the CLI)
run the same job (``unibus.core.migration``). Each adds how it finds the bus; the options
of the job itself, their checks, the time bound and the report are defined here once, so
the two commands cannot drift apart.

>>> # add_migration_args(parser, default_replicas=None)
>>> # return MigrationCommand.from_args(parser.parse_args(), target).execute(progress)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from unibus.core.connect import NatsTarget
from unibus.core.errors import ConfigError
from unibus.core.migration import (
    MigrationError,
    MigrationOptions,
    MigrationReport,
    Progress,
    migrate,
)
from unibus.core.provisioning import HA_REPLICAS, check_replicas

DEFAULT_TIMEOUT: Final = 3600.0


def add_migration_args(
    parser: argparse.ArgumentParser, *, default_replicas: int | None = None
) -> None:
    """``--db``, ``--replicas``, ``--no-backup``, ``--force``, ``--timeout`` and ``--json``.

    ``default_replicas``: replicas when ``--replicas`` is not given; ``None`` means one
    per NATS URL of the target, at most ``HA_REPLICAS``.
    """
    group = parser.add_argument_group("the migration")
    group.add_argument("--db", type=Path, required=True, help="the legacy SQLite file")
    group.add_argument(
        "--replicas",
        type=int,
        default=default_replicas,
        help="replicas of buckets provisioning creates (default "
        + (
            f"{default_replicas})"
            if default_replicas is not None
            else f"one per node URL, at most {HA_REPLICAS})"
        ),
    )
    group.add_argument("--no-backup", action="store_true", help="skip the VACUUM INTO backup")
    group.add_argument(
        "--force",
        action="store_true",
        help="overwrite a target that diverged from the source (revoked users stay revoked)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up after this long; re-running resumes (default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument("--json", action="store_true", help="print the report as JSON")


@dataclass(frozen=True)
class MigrationCommand:
    """One checked invocation of the job: what to run, how long to allow, how to report."""

    options: MigrationOptions
    timeout: float = DEFAULT_TIMEOUT
    as_json: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace, target: NatsTarget) -> MigrationCommand:
        """The options of ``add_migration_args``, checked; ``ConfigError`` if unusable."""
        if not args.timeout > 0:
            raise ConfigError("--timeout must be a positive number of seconds", setting="timeout")
        replicas = args.replicas
        if replicas is None:
            replicas = min(HA_REPLICAS, len(target.urls))
        return cls(
            options=MigrationOptions(
                db=args.db,
                target=target,
                replicas=check_replicas(replicas),
                backup=not args.no_backup,
                force=args.force,
            ),
            timeout=args.timeout,
            as_json=args.json,
        )

    def execute(self, progress: Progress) -> int:
        """Run the job to a verified copy and print its report; 0, or an ``UnibusError``."""
        report = asyncio.run(self._bounded(progress))
        if self.as_json:
            out = msgspec.json.format(msgspec.json.encode(report.to_json())).decode()
        else:
            out = "\n".join(report.lines())
        sys.stdout.write(out + "\n")
        return 0

    async def _bounded(self, progress: Progress) -> MigrationReport:
        try:
            async with asyncio.timeout(self.timeout):
                return await migrate(self.options, progress)
        except TimeoutError:
            raise MigrationError(
                f"the migration did not finish within {self.timeout:g}s; re-run to resume"
            ) from None

"""The migration job's command line, and its options shared by both commands that run it.

``python -m unibus.migrate --db FILE --nats-url URL ...`` is the entrypoint a container
runs (``docker compose run migrate``); ``unibus migrate-to-kv`` runs the same job
(``unibus.migrate.job``) from the CLI, which depends on this distribution for it. Each
adds how it finds the bus; the options of the job itself, their checks, the time bound
and the report are defined here once, so the two commands cannot drift apart. Exit
status 0 only after a verified copy (parity of counts and content hash); 1 with one
line on stderr otherwise. With ``--json`` a scheduler reads one JSON summary on stdout
either way (:data:`SUMMARY_VERSION`; ``outcome`` is ``migrated``, ``unchanged`` or
``failed``) and each progress line on stderr as a JSON object.

>>> # add_migration_args(parser, default_replicas=None)
>>> # return MigrationCommand.from_args(parser.parse_args(), target).execute(progress)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from unibus.core.connect import NatsTarget
from unibus.core.errors import ConfigError, UnibusError
from unibus.core.log import configure_logging
from unibus.core.provisioning import HA_REPLICAS, check_replicas
from unibus.migrate.job import (
    MigrationError,
    MigrationOptions,
    MigrationReport,
    Progress,
    migrate,
)

DEFAULT_TIMEOUT: Final = 3600.0
SUMMARY_VERSION: Final = 1
"""Version of the ``--json`` summary; bumped when a field changes meaning or goes away."""


def success_summary(report: MigrationReport) -> dict[str, Any]:
    """The ``--json`` summary of a verified copy."""
    outcome = "migrated" if report.changed else "unchanged"
    return {"version": SUMMARY_VERSION, "outcome": outcome, **report.to_json()}


def failure_summary(error: UnibusError) -> dict[str, Any]:
    """The ``--json`` summary of a run that did not end in a verified copy."""
    return {
        "version": SUMMARY_VERSION,
        "outcome": "failed",
        "error_type": type(error).__name__,
        "error": str(error),
        # Every write is idempotent and the plan is recomputed from both sides.
        "retry": "run the job again: it resumes where it stopped",
    }


def _json(document: dict[str, Any]) -> str:
    return msgspec.json.format(msgspec.json.encode(document)).decode()


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
        """Run the job to a verified copy and print its report; 0, or an ``UnibusError``.

        With ``--json`` each progress line reaches ``progress`` as a JSON object, and a
        failure prints its summary on stdout before the error goes up.
        """

        def say(message: str) -> None:
            if self.as_json:
                message = msgspec.json.encode({"progress": message}).decode()
            progress(message)

        try:
            report = asyncio.run(self._bounded(say))
        except UnibusError as exc:
            if self.as_json:
                sys.stdout.write(_json(failure_summary(exc)) + "\n")
            raise
        out = _json(success_summary(report)) if self.as_json else "\n".join(report.lines())
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


def _failed(error: UnibusError, *, summary: bool) -> int:
    print(f"unibus-migrate: error: {error}", file=sys.stderr)
    if summary:
        sys.stdout.write(_json(failure_summary(error)) + "\n")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(json=False, level="warning")
    try:
        try:
            target = NatsTarget(
                urls=tuple(args.nats_url), ca_file=args.ca, identity_file=args.internal_id_file
            )
            command = MigrationCommand.from_args(args, target)
        except UnibusError as exc:
            return _failed(exc, summary=args.json)
        try:
            return command.execute(_progress)
        except UnibusError as exc:
            return _failed(exc, summary=False)  # execute printed the summary
    except KeyboardInterrupt:
        return 130

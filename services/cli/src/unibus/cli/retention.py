"""``unibus retention``: how long the history keeps a message, read or changed live.

Provisioning creates the history stream with ``UNIBUS_HISTORY_DAYS`` (30 by default); this
changes it on a running cluster, in place. Shortening it deletes at once every message
older than the new retention, so that needs ``--yes``; lengthening does not (messages
already discarded do not come back).
"""

from __future__ import annotations

import argparse
import asyncio

from unibus.cli._common import Subparsers, add_json_arg, add_target_args, print_json, resolve_target
from unibus.core.connect import connect
from unibus.core.errors import ConfigError
from unibus.core.limits import MAX_HISTORY_DAYS
from unibus.core.provisioning import history_retention, set_history_retention

_DAY = 86_400.0


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser(
        "retention",
        help="show or change how long the history keeps a message (live, in place)",
        description="Without --days, print the history's retention. With --days, set it "
        "on the running cluster; shortening it deletes older messages at once and needs "
        "--yes.",
    )
    add_target_args(parser)
    parser.add_argument(
        "--days", type=float, default=None, help=f"the new retention, 1..{MAX_HISTORY_DAYS}"
    )
    parser.add_argument(
        "--yes",
        action="store_true",
        help="confirm a shorter retention (messages older than it are deleted now)",
    )
    add_json_arg(parser)
    parser.set_defaults(handler=_retention)


def _retention(args: argparse.Namespace) -> int:
    if args.days is not None and not 1 <= args.days <= MAX_HISTORY_DAYS:
        raise ConfigError(f"--days must be between 1 and {MAX_HISTORY_DAYS}")
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    nc = await connect(resolve_target(args), name="unibus-retention", max_reconnect_attempts=3)
    try:
        js = nc.jetstream(timeout=5.0)
        current = await history_retention(js)
        if args.days is None:
            _report(args, current / _DAY, None)
            return 0
        wanted = args.days * _DAY
        if wanted < current and not args.yes:
            raise ConfigError(
                f"shortening the history retention from {current / _DAY:g} to {args.days:g} "
                "days deletes every message older than that, now; pass --yes to do it"
            )
        change = await set_history_retention(js, wanted)
    finally:
        await nc.close()
    _report(args, change.before / _DAY, change.after / _DAY)
    return 0


def _report(args: argparse.Namespace, before: float, after: float | None) -> None:
    if args.json:
        print_json({"days": before if after is None else after, "before_days": before})
    elif after is None:
        print(f"the history keeps a message for {before:g} days")
    elif after == before:
        print(f"the history keeps a message for {after:g} days (unchanged)")
    else:
        print(f"the history keeps a message for {after:g} days (was {before:g})")

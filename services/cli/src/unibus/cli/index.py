"""``unibus index repair``: rebuild the member → room index from the room records.

The index (``UNIBUS_rooms_by_member``) is derived: each room record is the truth, and the
index is written after it. A crash between the two, or a hand edit, leaves entries that
list a room a user is no longer in (which count against the room cap and show in
``GET /v1/rooms``) or miss one they are in. The repair adds what is missing and removes
what is stale, and changes nothing a room committed meanwhile makes true; running it again
changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio

from unibus.cli._common import (
    Subparsers,
    add_json_arg,
    add_target_args,
    print_json,
    progress,
    resolve_target,
)
from unibus.core.connect import connect
from unibus.core.kvstore import JetStreamStore
from unibus.core.store import IndexRepair


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    index = verbs.add_parser("index", help="the derived member → room index")
    index_verbs = index.add_subparsers(dest="index_verb", metavar="VERB", required=True)
    repair = index_verbs.add_parser(
        "repair",
        help="rebuild the member → room index from the room records (safe on a live bus)",
        description="Add the index entries the room records imply and remove the ones they "
        "do not; entries a room changed meanwhile are left for the next run.",
    )
    add_target_args(repair)
    add_json_arg(repair)
    repair.set_defaults(handler=_repair)


def _repair(args: argparse.Namespace) -> int:
    result = asyncio.run(_run(args))
    if args.json:
        print_json({"added": result.added, "removed": result.removed})
    elif result.added or result.removed:
        print(f"index repaired: {result.added} entries added, {result.removed} stale removed")
    else:
        print("index consistent: nothing to repair")
    return 0


async def _run(args: argparse.Namespace) -> IndexRepair:
    nc = await connect(resolve_target(args), name="unibus-index", max_reconnect_attempts=3)
    try:
        store = await JetStreamStore.open(nc)
        if not args.json:
            progress("reading every room record and the index ...")
        return await store.repair_index()
    finally:
        await nc.close()

"""``unibus backup`` and ``unibus restore``: the bus's whole state, saved and put back.

JetStream snapshots of every bucket, the message history and the blob store, with a
manifest of sizes, SHA-256 sums and states (``unibus.stack.backup``). A backup runs
against a live cluster; a restore goes into an empty one and checks everything before it
writes anything.
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
from unibus.core.connect import connect
from unibus.core.provisioning import HA_REPLICAS, check_replicas
from unibus.stack.backup import backup, describe, restore, verify_backup

_RESTORE_EPILOG = """\
restoring after losing the cluster's disks (compose on one machine):
  docker compose --env-file .unibus-compose/compose.env up -d n1 n2 n3   # nodes only
  unibus restore --from BACKUP --dir .unibus-compose
  docker compose --env-file .unibus-compose/compose.env up -d            # the rest

The nodes must run with the same material (CAs, identities) as when the backup was
taken: the backup holds the users, rooms, keys, history and blobs, not the material
(back up the stack's directory, or deploy/out/_material, beside it).
"""


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    saving = verbs.add_parser(
        "backup",
        help="snapshot every bucket, the history and the blobs into a directory (live)",
        description="Take a JetStream snapshot of every asset, one after the other, into "
        "a new directory, with a manifest of sizes, SHA-256 sums and states. The cluster "
        "keeps serving.",
    )
    add_target_args(saving)
    saving.add_argument("--out", type=Path, required=True, help="a new, empty directory")
    add_json_arg(saving)
    saving.set_defaults(handler=_backup)

    putting = verbs.add_parser(
        "restore",
        help="restore a backup into an empty cluster (checked before anything is written)",
        description="Verify the backup (manifest version, every file's size and SHA-256), "
        "check that the target holds nothing, restore every asset and compare each "
        "restored state with the backup's.",
        epilog=_RESTORE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_args(putting)
    putting.add_argument("--from", dest="source", type=Path, required=True, help="the backup")
    putting.add_argument(
        "--replicas",
        type=int,
        default=None,
        help=f"replicas of the restored assets (default: one per node URL, at most {HA_REPLICAS})",
    )
    putting.add_argument(
        "--force",
        action="store_true",
        help="replace what the target holds (it is deleted first)",
    )
    putting.add_argument(
        "--check", action="store_true", help="only verify the backup; touch no cluster"
    )
    add_json_arg(putting)
    putting.set_defaults(handler=_restore)


def _backup(args: argparse.Namespace) -> int:
    async def run() -> int:
        nc = await connect(resolve_target(args), name="unibus-backup", max_reconnect_attempts=3)
        try:
            manifest = await backup(nc, args.out, progress=progress)
        finally:
            await nc.close()
        if args.json:
            print_json(
                {
                    "out": str(args.out),
                    "assets": {a.asset: {"size": a.size, **a.state} for a in manifest.assets},
                }
            )
        else:
            print("\n".join(describe(manifest)))
            print(f"backup written to {args.out}")
        return 0

    return asyncio.run(run())


def _restore(args: argparse.Namespace) -> int:
    if args.check:
        manifest = verify_backup(args.source)
        if args.json:
            print_json({"verified": True, "assets": [a.asset for a in manifest.assets]})
        else:
            print("\n".join(describe(manifest)))
            print(f"{args.source}: every file matches its manifest")
        return 0
    target = resolve_target(args)
    replicas = check_replicas(args.replicas or min(HA_REPLICAS, len(target.urls)))

    async def run() -> int:
        nc = await connect(target, name="unibus-restore", max_reconnect_attempts=3)
        try:
            report = await restore(
                nc, args.source, replicas=replicas, force=args.force, progress=progress
            )
        finally:
            await nc.close()
        if args.json:
            print_json(report.to_json())
        else:
            replaced = f" (replaced: {', '.join(report.replaced)})" if report.replaced else ""
            print(
                f"restored {len(report.restored)} assets at R{replicas}{replaced}; "
                "every state matches the backup"
            )
        return 0

    return asyncio.run(run())

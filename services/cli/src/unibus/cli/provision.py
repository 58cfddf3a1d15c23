"""``unibus provision``: create every asset and the first admin on a running cluster.

What ``unibus up`` does after starting its nodes, as a verb of its own for stacks that
other tools start: compose.yaml's one-shot ``provision`` service and per-host deploys.
It waits for the cluster (connection, then a JetStream meta leader), creates whatever
asset is missing at the requested replicas (existing ones are left as they are), and
writes the first admin with a create-only claim. Safe to run again and from several
places at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from unibus.cli._common import (
    Subparsers,
    add_json_arg,
    add_target_args,
    print_json,
    progress,
    resolve_target,
)
from unibus.core import envnames
from unibus.core.bootstrap import provision_cluster
from unibus.core.connect import NatsTarget, connect
from unibus.core.errors import ConfigError, NkeyError
from unibus.core.limits import read_history_max_age
from unibus.core.nkeys import canonical_user_key
from unibus.core.provisioning import HA_REPLICAS, Provisioning, check_replicas
from unibus.core.retry import DEFAULT_BUDGET, retry_until
from unibus.core.settings import EnvReader

_EPILOG = """\
examples:
  unibus provision --nats-url tls://n1:4222 --nats-url tls://n2:4222 --nats-url tls://n3:4222 \\
      --ca client-ca.pem --identity internal.seed --first-admin-file admin.pub
  unibus provision --dir .unibus-compose --replicas 3 --json
"""


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser(
        "provision",
        help="create every bucket, the history stream, the object store and the first admin",
        description="Wait for the cluster (a JetStream meta leader), create the missing "
        "assets at --replicas, and write the first admin (create-only: when an admin "
        "exists nothing changes). Exit 0 when everything exists.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_args(parser)
    parser.add_argument(
        "--replicas",
        type=int,
        default=None,
        help=f"replicas of created assets (default: one per node URL, at most {HA_REPLICAS})",
    )
    admin = parser.add_mutually_exclusive_group()
    admin.add_argument("--first-admin", metavar="KEY", help="the first admin's public key (U…)")
    admin.add_argument(
        "--first-admin-file",
        type=Path,
        metavar="FILE",
        help="a file holding the first admin's public key (U…); not a seed",
    )
    parser.add_argument(
        "--history-days",
        type=float,
        default=None,
        metavar="DAYS",
        help="how long the history keeps a message, when this creates it (default: "
        f"{envnames.HISTORY_DAYS}, else 30); `unibus retention` changes it later",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET,
        metavar="SECONDS",
        help=f"give up when the cluster is not usable within this long ({DEFAULT_BUDGET:g})",
    )
    add_json_arg(parser)
    parser.set_defaults(handler=_provision)


def _first_admin(args: argparse.Namespace) -> str | None:
    raw: str | None = args.first_admin
    if args.first_admin_file is not None:
        try:
            raw = args.first_admin_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read --first-admin-file {args.first_admin_file}: {exc}"
            ) from None
    if raw is None:
        return None
    try:
        return canonical_user_key(raw)
    except NkeyError:
        raise ConfigError(
            "the first admin must be a user public key (U… or 64 hex), never a seed"
        ) from None


def _provision(args: argparse.Namespace) -> int:
    target = resolve_target(args, identity="internal")
    replicas = check_replicas(args.replicas or min(HA_REPLICAS, len(target.urls)))
    admin = _first_admin(args)
    environ = dict(os.environ)
    if args.history_days is not None:
        environ[envnames.HISTORY_DAYS] = str(args.history_days)
    history_max_age = read_history_max_age(EnvReader(environ))
    return asyncio.run(
        _run(target, replicas, admin, args.budget, history_max_age, as_json=args.json)
    )


async def _run(
    target: NatsTarget,
    replicas: int,
    admin: str | None,
    budget: float,
    history_max_age: float,
    *,
    as_json: bool,
) -> int:
    deadline = time.monotonic() + budget

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    say = None if as_json else progress
    nc = await retry_until(
        "connect to the cluster",
        lambda: connect(target, name="unibus-provision", allow_reconnect=True),
        budget=left(),
        attempt_timeout=5.0,
    )
    try:
        js = nc.jetstream(timeout=2.0)
        await retry_until("JetStream meta leader", js.account_info, budget=left())
        plan = Provisioning(replicas=replicas, budget=left(), history_max_age=history_max_age)
        report, wrote = await provision_cluster(nc, plan, admin, progress=say)
    finally:
        await nc.close()
    if as_json:
        print_json(
            {
                "replicas": replicas,
                "created": list(report.created),
                "existing": list(report.existing),
                "first_admin_written": wrote,
            }
        )
    else:
        print(
            f"provisioned at R{replicas}: {len(report.created)} created, "
            f"{len(report.existing)} existing; first admin "
            f"{'written' if wrote else 'already present' if admin else 'not requested'}"
        )
    return 0

"""``unibus rollout``: restart or upgrade every node, one at a time, gated on health.

Three places a cluster runs, one engine (``unibus.stack.rollout``):

* a local stack (``--dir``, default ``.unibus``): its ``unibus up`` restarts its nodes;
* compose on this machine (``--compose``, ``--dir`` default ``.unibus-compose``);
* three hosts over ssh (``--topology`` and ``--out`` of ``unibus deploy render``): the
  plan is printed, and run only with ``--yes``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from unibus.cli._common import Subparsers, add_json_arg, print_json, progress
from unibus.cli._deployment import (
    add_deployment_args,
    compose_deployment,
    remote_deployment,
    targets,
)
from unibus.client.profile import StackInfo, read_stack_info
from unibus.core.connect import connect
from unibus.core.errors import ConfigError, StackError
from unibus.stack.clusterstate import operator_connections
from unibus.stack.drivers import ComposeDriver
from unibus.stack.layout import DEFAULT_DIR, StackLayout
from unibus.stack.rollout import DEFAULT_NODE_BOUND, RolloutReport, rollout
from unibus.stack.supervise import follow_rollout, request_rollout

_EPILOG = """\
examples:
  unibus rollout --dir .unibus                       # the local stack `unibus up` runs
  unibus rollout --compose                           # compose.yaml on this machine
  unibus rollout --topology deploy/topology.toml --out deploy/out         # the plan
  unibus rollout --topology deploy/topology.toml --out deploy/out --yes   # run it

Each node in turn: its leaderships handed over, a lame-duck stop, the current image and
config applied, started; the next node only once every asset is back at full replication
and the node's callout and API are ready. A degraded cluster is refused before anything
is touched; a node that does not come back within --node-bound stops the rollout.
"""


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser(
        "rollout",
        help="restart or upgrade every node, one at a time, never below quorum",
        description="Roll a running cluster node by node, gated on full replication.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_deployment_args(parser)
    parser.add_argument(
        "--node-bound",
        type=float,
        default=DEFAULT_NODE_BOUND,
        metavar="SECONDS",
        help=f"how long one node may take to come back (default {DEFAULT_NODE_BOUND:g})",
    )
    parser.add_argument(
        "--yes", action="store_true", help="on remote hosts: run the plan instead of printing it"
    )
    add_json_arg(parser)
    parser.set_defaults(handler=_rollout)


def _rollout(args: argparse.Namespace) -> int:
    if not args.node_bound > 0:
        raise ConfigError("--node-bound must be a positive number of seconds")
    if args.topology is not None or args.out is not None:
        return _remote(args)
    if args.compose:
        return _compose(args)
    return _local(args)


def print_report(report: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print_json(report)
        return
    for node in report["nodes"]:
        led = ", ".join(node["led"]) or "nothing"
        meta = " and the meta leadership" if node["was_meta_leader"] else ""
        print(f"{node['node']}: rolled in {node['seconds']}s (handed over {led}{meta})")
    print("every node rolled; the cluster is healthy")


# -- a local stack: ask its `unibus up` ---------------------------------------------------------
def _local(args: argparse.Namespace) -> int:
    layout = StackLayout.at(args.dir or DEFAULT_DIR)
    info = read_stack_info(layout.root)
    request = request_rollout(layout, node_bound=args.node_bound)
    deadline = time.monotonic() + len(info.nodes) * (args.node_bound + 120.0) + 60.0
    result = follow_rollout(layout, request, deadline=deadline, on_line=progress)
    if not result.ok:
        raise StackError(result.error or "the rollout failed")
    print_report(result.report or {"nodes": []}, as_json=args.json)
    return 0


# -- compose, here or on the hosts --------------------------------------------------------------
def driver_plan(driver: ComposeDriver) -> list[str]:
    """What a rollout through ``driver`` runs, host by host, for printing before acting."""
    plan = [f"[all] {step}" for step in driver.prepare_steps()]
    for node in driver.nodes:
        plan += [f"[{node}] {step}" for step in driver.steps(node)]
        plan.append(f"[{node}] wait: every asset at full replication, callout and API ready")
    return plan


async def cluster_answers(info: StackInfo, *, budget: float = 10.0) -> bool:
    """Whether any node of ``info`` admits the internal identity within ``budget``."""
    internal, _ = targets(info)
    try:
        async with asyncio.timeout(budget):
            nc = await connect(
                internal, name="unibus-probe", connect_timeout=3.0, max_reconnect_attempts=1
            )
    except Exception:  # noqa: BLE001 - unreachable, refused or hung: it does not answer
        return False
    await nc.close()
    return True


async def drive(driver: ComposeDriver, info: StackInfo, node_bound: float) -> RolloutReport:
    async with operator_connections(*targets(info), name="unibus-rollout") as (nc, sys_nc):
        return await rollout(driver, nc, sys_nc, node_bound=node_bound, progress=progress)


def _compose(args: argparse.Namespace) -> int:
    driver, info = compose_deployment(args)
    report = asyncio.run(drive(driver, info, args.node_bound))
    print_report(report.to_json(), as_json=args.json)
    return 0


def _remote(args: argparse.Namespace) -> int:
    driver, info = remote_deployment(args, "a rollout")
    plan = driver_plan(driver)
    if not args.yes:
        if args.json:
            print_json({"dry_run": True, "plan": plan})
        else:
            print("\n".join(plan))
            print("dry run: nothing was run; pass --yes to roll the hosts one at a time")
        return 0
    report = asyncio.run(drive(driver, info, args.node_bound))
    print_report(report.to_json(), as_json=args.json)
    return 0

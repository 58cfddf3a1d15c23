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
import os
import time
from pathlib import Path
from typing import Any

from unibus.cli._common import Subparsers, add_json_arg, print_json, progress
from unibus.client.profile import StackInfo, read_stack_info
from unibus.core.connect import NatsTarget, connect
from unibus.core.errors import ConfigError, StackError
from unibus.stack.compose import DEFAULT_COMPOSE_DIR
from unibus.stack.deploy import MATERIAL_DIR, Topology, rollout_nodes
from unibus.stack.drivers import ComposeDriver, ComposeNode
from unibus.stack.layout import DEFAULT_DIR, StackLayout
from unibus.stack.rollout import DEFAULT_NODE_BOUND, RolloutReport, rollout
from unibus.stack.supervise import follow_rollout, request_rollout
from unibus.stack.topology import SERVICES

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
    where = parser.add_argument_group("which cluster (a local stack unless told otherwise)")
    where.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"the stack's directory (default {DEFAULT_DIR}, or {DEFAULT_COMPOSE_DIR} "
        "with --compose)",
    )
    where.add_argument("--compose", action="store_true", help="the compose stack on this machine")
    where.add_argument(
        "--compose-file",
        type=Path,
        default=Path("compose.yaml"),
        help="with --compose: the compose file (default ./compose.yaml)",
    )
    where.add_argument(
        "--project",
        default=None,
        help="with --compose: the compose project name (default: compose's own choice)",
    )
    where.add_argument("--topology", type=Path, default=None, help="hosts over ssh: the topology")
    where.add_argument(
        "--out", type=Path, default=None, help="with --topology: the rendered directory"
    )
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
def _targets(info: StackInfo, ca: Path | None = None) -> tuple[NatsTarget, NatsTarget]:
    ca_file = ca or Path(info.ca_file)
    urls = tuple(info.nats_urls)
    internal = NatsTarget(urls=urls, ca_file=ca_file, identity_file=Path(info.internal_id_file))
    system = NatsTarget(urls=urls, ca_file=ca_file, identity_file=Path(info.sys_id_file))
    return internal, system


def driver_plan(driver: ComposeDriver) -> list[str]:
    """What a rollout through ``driver`` runs, host by host, for printing before acting."""
    plan = [f"[all] {step}" for step in driver.prepare_steps()]
    for node in driver.nodes:
        plan += [f"[{node}] {step}" for step in driver.steps(node)]
        plan.append(f"[{node}] wait: every asset at full replication, callout and API ready")
    return plan


async def cluster_answers(info: StackInfo, *, budget: float = 10.0) -> bool:
    """Whether any node of ``info`` admits the internal identity within ``budget``."""
    internal, _ = _targets(info)
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
    internal, system = _targets(info)
    nc = await connect(internal, name="unibus-rollout")
    try:
        sys_nc = await connect(system, name="unibus-rollout")
        try:
            return await rollout(driver, nc, sys_nc, node_bound=node_bound, progress=progress)
        finally:
            await sys_nc.close()
    finally:
        await nc.close()


def _compose(args: argparse.Namespace) -> int:
    directory = (args.dir or DEFAULT_COMPOSE_DIR).expanduser().absolute()
    info = read_stack_info(directory)
    compose_file = args.compose_file.expanduser().absolute()
    if not compose_file.is_file():
        raise ConfigError(
            f"{compose_file} not found: run from the repository, or pass --compose-file"
        )
    base = [
        "docker",
        "compose",
        "-f",
        str(compose_file),
        "--env-file",
        str(directory / "compose.env"),
    ]
    project = args.project or os.environ.get("COMPOSE_PROJECT_NAME")
    if project:
        base += ["-p", project]
    driver = ComposeDriver(
        [
            ComposeNode(
                name=node.name,
                compose=tuple(base),
                node_service=node.name,
                services=tuple(f"{service}-{node.name}" for service in SERVICES),
            )
            for node in info.nodes
        ]
    )
    report = asyncio.run(drive(driver, info, args.node_bound))
    print_report(report.to_json(), as_json=args.json)
    return 0


def _remote(args: argparse.Namespace) -> int:
    if args.topology is None or args.out is None:
        raise ConfigError("a rollout over ssh needs both --topology and --out")
    topology = Topology.load(args.topology)
    out = args.out.expanduser().absolute()
    info = read_stack_info(out / MATERIAL_DIR)
    driver = ComposeDriver(rollout_nodes(topology))
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

"""``unibus replace NODE``: bring back a node whose disk or host was lost, rebuilt by its peers.

Three places a cluster runs, one engine (``unibus.stack.replace``), as for the rollout:

* a local stack (``--dir``): its ``unibus up`` stops, wipes and restarts its own node (a
  drill: a local node never goes missing without stopping the stack);
* compose on this machine (``--compose``);
* three hosts over ssh (``--topology`` and ``--out``): the node gets new certificates
  (new keys, the same CAs: the lost host's keys stayed on its disk), and its host is sent
  its directory (``deploy render``'s output) and images, as ``deploy apply`` does.

It prints its plan and acts only with ``--yes``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Sequence

from unibus.cli._common import Subparsers, add_json_arg, print_json, progress
from unibus.cli._deployment import (
    add_deployment_args,
    compose_deployment,
    remote_deployment,
    targets,
)
from unibus.cli.deploy import run_step
from unibus.client.profile import StackInfo, read_stack_info
from unibus.core.errors import ConfigError, StackError
from unibus.stack.clusterstate import operator_connections
from unibus.stack.deploy import (
    MATERIAL_DIR,
    Topology,
    format_plan,
    plan,
    renew_host_certificates,
)
from unibus.stack.drivers import ComposeDriver
from unibus.stack.layout import DEFAULT_DIR, StackLayout
from unibus.stack.replace import ReplaceReport, check_replaceable, replace
from unibus.stack.rollout import DEFAULT_NODE_BOUND
from unibus.stack.supervise import follow, request

_EPILOG = """\
examples:
  unibus replace n3 --topology deploy/topology.toml --out deploy/out          # the plan
  unibus replace n3 --topology deploy/topology.toml --out deploy/out --yes    # run it
  unibus replace n2 --compose --wipe --yes     # rebuild n2's store from its peers
  unibus replace n1 --dir .unibus --wipe --yes # a drill on the local stack

When a host is lost: give its replacement the old node's name (and its new address in
the topology, then `unibus deploy render` again), and run `unibus replace NODE`. The two
other nodes must answer, with every asset led and current: they hold every asset (R3)
and send it to the new node, which is waited for until every asset is back at full
replication and its callout and API are ready. A node that still answers is replaced
only with --wipe (its state discarded and rebuilt), on a healthy cluster. If the new
node's address changed, roll the others afterwards (`unibus rollout`) so that their
configs name it too.
"""


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser(
        "replace",
        help="bring back a lost node (disk or host) empty, rebuilt from its peers",
        description="Replace one node: start it empty and wait until its peers have "
        "rebuilt every asset on it.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("node", help="the node to replace, by its name (n1, n2, n3)")
    add_deployment_args(parser)
    parser.add_argument(
        "--wipe",
        action="store_true",
        help="discard the node's JetStream state first (a broken store, or a drill); "
        "a node that still answers is replaced only with it",
    )
    parser.add_argument(
        "--node-bound",
        type=float,
        default=DEFAULT_NODE_BOUND,
        metavar="SECONDS",
        help=f"how long the node may take to be whole again (default {DEFAULT_NODE_BOUND:g})",
    )
    parser.add_argument("--yes", action="store_true", help="run the plan instead of printing it")
    add_json_arg(parser)
    parser.set_defaults(handler=_replace)


def _replace(args: argparse.Namespace) -> int:
    if not args.node_bound > 0:
        raise ConfigError("--node-bound must be a positive number of seconds")
    if args.topology is not None or args.out is not None:
        return _remote(args)
    if args.compose:
        return _compose(args)
    return _local(args)


def _print_plan(lines: list[str], *, as_json: bool) -> int:
    if as_json:
        print_json({"dry_run": True, "plan": lines})
    else:
        print("\n".join(lines))
        print("dry run: nothing was run; pass --yes to replace the node")
    return 0


def _print_report(report: dict[str, object], *, as_json: bool) -> None:
    if as_json:
        print_json(report)
        return
    how = "wiped and rebuilt" if report["wiped"] else "started and rebuilt"
    print(f"{report['node']}: {how} in {report['seconds']}s; the cluster is healthy")


def _driver_plan(
    driver: ComposeDriver, node: str, *, wipe: bool, ship: Sequence[str] = ()
) -> list[str]:
    steps = [f"[{node}] check: the other nodes answer, every asset led and current", *ship]
    steps += [f"[{node}] {step}" for step in driver.steps(node)[:2]]
    if wipe:
        steps += [f"[{node}] {step}" for step in driver.wipe_steps(node)]
    steps += [f"[{node}] {step}" for step in driver.prepare_steps((node,))]
    steps += [f"[{node}] {step}" for step in driver.steps(node)[2:]]
    steps.append(f"[{node}] wait: every asset at full replication, callout and API ready")
    return steps


# -- a local stack: ask its `unibus up` ---------------------------------------------------------
def _local(args: argparse.Namespace) -> int:
    layout = StackLayout.at(args.dir or DEFAULT_DIR)
    info = read_stack_info(layout.root)
    names = [node.name for node in info.nodes]
    if args.node not in names:
        raise ConfigError(
            f"no node {args.node!r} in {layout.root}: the nodes are {', '.join(names)}"
        )
    if not args.yes:
        lines = [
            f"[{args.node}] check: the other nodes answer, every asset led and current",
            f"[{args.node}] hand over its leaderships; lame-duck stop",
            *([f"[{args.node}] delete its JetStream state"] if args.wipe else []),
            f"[{args.node}] start it; wait for full replication, callout and API ready",
        ]
        return _print_plan(lines, as_json=args.json)
    asked = request(
        layout,
        "replace",
        node_bound=args.node_bound,
        options={"node": args.node, "wipe": args.wipe},
        doing="a replacement restarts a node of a running stack",
    )
    deadline = time.monotonic() + args.node_bound + 180.0
    result = follow(layout, asked, deadline=deadline, on_line=progress)
    if not result.ok:
        raise StackError(result.error or "the replacement failed")
    _print_report(result.report or {}, as_json=args.json)
    return 0


# -- compose, here or on the hosts --------------------------------------------------------------
async def _drive(
    driver: ComposeDriver,
    info: StackInfo,
    node: str,
    *,
    wipe: bool,
    node_bound: float,
    new_host: Callable[[], None] | None = None,
) -> ReplaceReport:
    async with operator_connections(*targets(info), name="unibus-replace") as (nc, sys_nc):
        if new_host is not None:
            # Checked before anything is issued or sent: a refusal leaves all as it was.
            await check_replaceable(driver, node, nc, sys_nc, wipe=wipe)
            await asyncio.to_thread(new_host)
        return await replace(
            driver, node, nc, sys_nc, wipe=wipe, node_bound=node_bound, progress=progress
        )


def _compose(args: argparse.Namespace) -> int:
    driver, info = compose_deployment(args)
    if args.node not in driver.nodes:
        raise ConfigError(f"no node {args.node!r}: the nodes are {', '.join(driver.nodes)}")
    if not args.yes:
        return _print_plan(_driver_plan(driver, args.node, wipe=args.wipe), as_json=args.json)
    report = asyncio.run(
        _drive(driver, info, args.node, wipe=args.wipe, node_bound=args.node_bound)
    )
    _print_report(report.to_json(), as_json=args.json)
    return 0


def _remote(args: argparse.Namespace) -> int:
    driver, info = remote_deployment(args, "a replacement")
    if args.node not in driver.nodes:
        raise ConfigError(
            f"no host {args.node!r} in {args.topology}: the hosts are {', '.join(driver.nodes)}"
        )
    topology = Topology.load(args.topology)
    ship = [step for step in plan(topology, args.out, start=False) if step.host == args.node]
    renew = (
        f"[{args.node}] new route and server certificates for {args.node} only (new keys, "
        f"the same CAs), into {args.out}/{MATERIAL_DIR} and {args.out}/{args.node}/material"
    )
    lines = _driver_plan(driver, args.node, wipe=args.wipe, ship=[renew, *format_plan(ship)])
    if not args.yes:
        return _print_plan(lines, as_json=args.json)

    def new_host() -> None:
        # The lost host's keys stayed on its disk: the new one gets its own.
        issued = renew_host_certificates(topology, args.out, args.node)
        progress(f"[{args.node}] issued: {', '.join(issued)}")
        for step in ship:
            progress(f"[{step.host}] {step.what}")
            run_step(step)

    report = asyncio.run(
        _drive(
            driver,
            info,
            args.node,
            wipe=args.wipe,
            node_bound=args.node_bound,
            new_host=new_host,
        )
    )
    _print_report(report.to_json(), as_json=args.json)
    return 0

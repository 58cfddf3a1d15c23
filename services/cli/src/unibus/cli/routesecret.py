"""``unibus route-secret rotate``: a new route secret, taken by every node at once.

The nodes reload (SIGHUP) rather than restart: the routes re-authenticate within
moments and clients go on (one whose connection the reload closes reconnects, admitted);
a route presenting the old secret is refused from then on. Why at once and not
node by node: ``unibus.stack.routesecret``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from unibus.cli._common import Subparsers, add_json_arg, print_json, progress
from unibus.cli._deployment import (
    add_deployment_args,
    compose_deployment,
    remote_deployment,
    targets,
)
from unibus.cli.deploy import run_step
from unibus.client.profile import StackInfo, read_stack_info
from unibus.core.errors import StackError
from unibus.stack.clusterstate import operator_connections
from unibus.stack.compose import DEFAULT_COMPOSE_DIR, ComposeSpec, render_configs
from unibus.stack.deploy import MATERIAL_DIR, Topology, format_plan, plan, render
from unibus.stack.layout import DEFAULT_DIR, StackLayout
from unibus.stack.natsconf import NatsToggles
from unibus.stack.rollout import settled_state
from unibus.stack.routesecret import new_route_secret
from unibus.stack.supervise import follow, request

_SETTLE = 30.0


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser(
        "route-secret",
        help="rotate the secret routes authenticate with (every node reloads, nobody refused)",
        description="Write a new route secret and make every node reload its config at "
        "once: the routes re-authenticate, clients go on without a refusal, and the old "
        "secret is refused from then on. On hosts the plan is printed and run only with --yes.",
    )
    parser.add_argument("step", choices=("rotate",))
    add_deployment_args(parser)
    parser.add_argument("--yes", action="store_true", help="on hosts: run the plan")
    add_json_arg(parser)
    parser.set_defaults(handler=_rotate)


def _rotate(args: argparse.Namespace) -> int:
    if args.topology is not None or args.out is not None:
        return _remote(args)
    if args.compose:
        return _compose(args)
    return _local(args)


async def _whole(info: StackInfo) -> list[str]:
    """What is wrong with the cluster once it had time to settle (empty: whole)."""
    async with operator_connections(*targets(info), name="unibus-route-secret") as (nc, sys_nc):
        _, problems = await settled_state(
            nc, sys_nc, len(info.nodes), judge=lambda s: s.problems(), patience=_SETTLE
        )
    return problems


def _finish(info: StackInfo, as_json: bool) -> int:
    problems = asyncio.run(_whole(info))
    if problems:
        raise StackError(
            "the nodes reloaded but the cluster is not whole: "
            + "; ".join(problems)
            + ". Look at the nodes' logs (a node that did not take the new secret is "
            "refused by its peers)"
        )
    if as_json:
        print_json({"rotated": True, "healthy": True})
    else:
        print("route secret rotated: every node reloaded, the cluster is whole")
    return 0


def _local(args: argparse.Namespace) -> int:
    layout = StackLayout.at(args.dir or DEFAULT_DIR)
    info = read_stack_info(layout.root)
    new_route_secret(layout)
    asked = request(layout, "reload", doing="a reload makes the nodes take the new secret")
    result = follow(layout, asked, deadline=time.monotonic() + 120.0, on_line=progress)
    if not result.ok:
        raise StackError(result.error or "the reload failed")
    return _finish(info, args.json)


def _compose(args: argparse.Namespace) -> int:
    driver, info = compose_deployment(args)
    layout = StackLayout.at((args.dir or DEFAULT_COMPOSE_DIR).expanduser().absolute())
    new_route_secret(layout)
    nodes = ComposeSpec().nodes()
    render_configs(layout, nodes, NatsToggles.from_env(os.environ), {n.name: n.name for n in nodes})
    for step in driver.reload_steps():
        progress(step)
    asyncio.run(driver.reload())
    return _finish(info, args.json)


def _remote(args: argparse.Namespace) -> int:
    driver, info = remote_deployment(args, "a route-secret rotation")
    topology = Topology.load(args.topology)
    ship = plan(topology, args.out, ship_images=False, start=False)
    lines = [
        f"[all] a new route secret in {args.out}/{MATERIAL_DIR}, rendered into each host's files",
        *format_plan(ship),
        *(f"[all] {step}" for step in driver.reload_steps()),
    ]
    if not args.yes:
        if args.json:
            print_json({"dry_run": True, "plan": lines})
        else:
            print("\n".join(lines))
            print("dry run: nothing was run; pass --yes to rotate the route secret")
        return 0
    new_route_secret(StackLayout.at(args.out / MATERIAL_DIR))
    render(topology, args.out, toggles=NatsToggles.from_env(os.environ))
    for step in ship:
        progress(f"[{step.host}] {step.what}")
        run_step(step)
    asyncio.run(driver.reload())
    return _finish(info, args.json)

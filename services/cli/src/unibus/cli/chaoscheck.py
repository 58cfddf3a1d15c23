"""``unibus chaoscheck``: does a running deployment fail the way it promises? On itself.

Three places a cluster runs, one engine (``unibus.stack.chaos``), as for the rollout:

* a local stack (``--dir``, default ``.unibus``): its ``unibus up`` runs the check on its
  own nodes (they are its children) and answers; a Ctrl-C here asks it to stop and undo;
* compose on this machine (``--compose``);
* three hosts over ssh (``--topology`` and ``--out``).

What "cut off" means on each: ``unibus.stack.drivers``.

Without ``--yes`` it prints what it would do and exits 0; ``--restore`` undoes what a check
killed outright may have left (heals and starts every node).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from types import FrameType
from typing import Any

from unibus.cli._common import Subparsers, add_json_arg, print_json, progress
from unibus.cli._deployment import (
    add_deployment_args,
    compose_deployment,
    remote_deployment,
)
from unibus.client.profile import read_stack_info
from unibus.core.errors import ConfigError, StackError
from unibus.stack.chaos import (
    DEFAULT_BOUND,
    PHASES,
    ChaosCheck,
    ChaosDriver,
    ChaosReport,
    Deployment,
    plan,
)
from unibus.stack.drivers import ComposeDriver, LocalDriver
from unibus.stack.layout import DEFAULT_DIR, StackLayout
from unibus.stack.supervise import follow, request

_EPILOG = """\
examples:
  unibus chaoscheck --dir .unibus                   # the plan for the local stack
  unibus chaoscheck --dir .unibus --yes             # run it (through its `unibus up`)
  unibus chaoscheck --compose --yes --json          # compose.yaml on this machine
  unibus chaoscheck --topology deploy/topology.toml --out deploy/out --yes
  unibus chaoscheck --compose --phase stop-two --yes
  unibus chaoscheck --compose --restore             # after a check killed outright

Phases (each from a healthy cluster, each undone before the next):
  stop-one  kill the node leading the message history while publishing through it:
            no acknowledged message lost, publishes acknowledged, connects admitted,
            the survivors' APIs back to 200 within an election's allowance
  cut-off   freeze the meta leader with its callout and API (a partition, as the
            majority sees it): the majority keeps acknowledging writes; the node admits
            no connect and its API never answers 2xx; thawed, it catches up
  stop-two  kill two nodes: through the one left no connect is admitted, the API never
            answers 2xx, no publish is acknowledged, and an API write is refused and
            afterwards absent or whole
  restore   always, on failure and on Ctrl-C too: everything undone, cluster healthy

Exit status 0 only if every invariant held; 1 if one did not (or the cluster was not
healthy to begin with: then nothing was done); 130 if interrupted (after undoing).
"""


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser(
        "chaoscheck",
        help="stop, cut off and stop two nodes of a running cluster; check it fails safe",
        description="Damage a running cluster one way at a time and check what clients see: "
        "each invariant is printed with its figure. Destructive: acts only with --yes.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_deployment_args(parser)
    parser.add_argument(
        "--phase",
        action="append",
        choices=PHASES,
        default=None,
        help="run only this phase (repeat for several; default: all, in order)",
    )
    parser.add_argument(
        "--bound",
        type=float,
        default=DEFAULT_BOUND,
        metavar="SECONDS",
        help=f"how long the cluster may take to be whole again after a phase "
        f"(default {DEFAULT_BOUND:g})",
    )
    parser.add_argument(
        "--yes", action="store_true", help="act (without it, print the plan and exit 0)"
    )
    parser.add_argument(
        "--restore",
        action="store_true",
        help="only undo: heal and start every node, then wait for a healthy cluster",
    )
    add_json_arg(parser)
    parser.set_defaults(handler=_chaoscheck)


def _chaoscheck(args: argparse.Namespace) -> int:
    if not args.bound > 0:
        raise ConfigError("--bound must be a positive number of seconds")
    if args.restore and args.phase:
        raise ConfigError("--restore runs no phase: leave out --phase")
    if args.topology is not None or args.out is not None:
        return _remote(args)
    if args.compose:
        return _compose(args)
    return _local(args)


def _phases(args: argparse.Namespace) -> list[str]:
    return [p for p in PHASES if p in (args.phase or PHASES)]


def _print_plan(lines: list[str], *, as_json: bool) -> int:
    if as_json:
        print_json({"dry_run": True, "plan": lines})
    else:
        print("\n".join(lines))
        print("dry run: nothing was done; pass --yes to run the chaos check")
    return 0


def _finish(report: dict[str, Any], *, as_json: bool) -> int:
    if as_json:
        print_json(report)
    else:
        print("\n".join(ChaosReport.from_json(report).lines()))
    if report.get("interrupted"):
        return 130
    return 0 if report.get("ok") else 1


# -- compose, here or on the hosts: the engine runs in this process -------------------------------
def _compose(args: argparse.Namespace) -> int:
    driver, info = compose_deployment(args)
    return _here(args, driver, Deployment.from_stack_info(info))


def _remote(args: argparse.Namespace) -> int:
    driver, info = remote_deployment(args, "a chaos check")
    return _here(args, driver, Deployment.from_stack_info(info))


def _here(args: argparse.Namespace, driver: ComposeDriver, deployment: Deployment) -> int:
    if not args.yes and not args.restore:
        lines = plan(driver.nodes, driver.cut_off, driver.chaos_steps, _phases(args))
        return _print_plan(lines, as_json=args.json)
    report = asyncio.run(_drive(args, driver, deployment))
    return _finish(report.to_json(), as_json=args.json)


async def _drive(
    args: argparse.Namespace, driver: ChaosDriver, deployment: Deployment
) -> ChaosReport:
    check = ChaosCheck(
        driver, deployment, phases=_phases(args), bound=args.bound, progress=progress
    )
    task = asyncio.current_task()
    assert task is not None  # noqa: S101 - always inside asyncio.run
    loop = asyncio.get_running_loop()
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        if interrupted:
            # A second Ctrl-C must not cut the restore short: the damage would stay.
            progress("still undoing what the check did; it ends on its own")
            return
        interrupted = True
        progress("interrupted: undoing what the check did (wait for it)")
        task.cancel()

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal)
    try:
        return await (check.restore_everything() if args.restore else check.run())
    except asyncio.CancelledError:
        if not interrupted:
            raise
        # run() restored before the cancellation reached here (or had done nothing yet).
        check.report.interrupted = True
        return check.report
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


# -- a local stack: ask its `unibus up` -----------------------------------------------------------
def _local(args: argparse.Namespace) -> int:
    layout = StackLayout.at(args.dir or DEFAULT_DIR)
    info = read_stack_info(layout.root)
    if not args.yes and not args.restore:
        nodes = [node.name for node in info.nodes]
        lines = plan(nodes, LocalDriver.cut_off, LocalDriver.chaos_steps, _phases(args))
        return _print_plan(lines, as_json=args.json)
    interrupted: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if interrupted:
            progress("still undoing what the check did; it ends on its own")
        else:
            progress("interrupted: asking `unibus up` to undo what the check did (wait for it)")
        interrupted.append(signum)

    asked = request(
        layout,
        "chaoscheck",
        node_bound=args.bound,
        options={"phases": _phases(args), "restore": bool(args.restore)},
        doing="the chaos check damages a running stack",
    )
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        deadline = time.monotonic() + (len(PHASES) + 1) * (args.bound + 180.0)
        result = follow(
            layout,
            asked,
            deadline=deadline,
            on_line=progress,
            interrupted=lambda: bool(interrupted),
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if result.report is None:
        raise StackError(result.error or "the chaos check failed")
    return _finish(result.report, as_json=args.json)

"""``unibus route-ca``: rotate the CA the nodes' routes are verified with, one step at a
time, through a transition bundle: ``stage``, ``switch``, ``retire``, each followed by a
rollout; ``status`` says where it stands. Why: ``unibus.stack.routeca``."""

from __future__ import annotations

import argparse

from unibus.cli._common import Subparsers
from unibus.cli._rotating import add_rotation_args, print_step, rotation_target
from unibus.stack import routeca

_EPILOG = """\
a whole rotation, on the local stack (with --compose, or --topology/--out, the same):
  unibus route-ca stage   --dir .unibus && unibus rollout --dir .unibus
  unibus route-ca switch  --dir .unibus && unibus rollout --dir .unibus
  unibus route-ca retire  --dir .unibus && unibus rollout --dir .unibus

The cluster stays whole at every rollout. Do not skip one: a switch before every node
trusts the next CA splits the cluster.
"""


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser(
        "route-ca",
        help="rotate the route CA through a transition bundle (stage, switch, retire)",
        description="Replace the CA the nodes' route certificates are issued and verified "
        "with, in three steps, each followed by a rollout, the cluster whole throughout.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_rotation_args(parser)
    parser.set_defaults(handler=_route_ca)


def _route_ca(args: argparse.Namespace) -> int:
    target = rotation_target(args)
    certs = target.layout.certs
    if args.step == "status":
        now = routeca.phase(certs)
        print_step(args, {"phase": now.value, "next": routeca.NEXT_AFTER[now]})
        return 0
    step = {"stage": routeca.stage, "switch": routeca.switch, "retire": routeca.retire}[args.step](
        certs
    )
    target.render_again()
    next_step = f"{target.rollout}; then {step.next_step}"
    print_step(args, {"done": step.done, "phase": step.phase.value, "next": next_step})
    return 0

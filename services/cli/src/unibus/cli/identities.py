"""``unibus identities``: rotate the stack's identities, one step at a time.

The callout's issuer and xkey and the callout, internal and system identities, together:
``stage``, ``switch`` and ``retire``, each followed by a rollout (the step says which);
``status`` says where a rotation stands. Why three steps: ``unibus.stack.rotation``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from unibus.cli._common import Subparsers, add_json_arg, print_json
from unibus.core.errors import ConfigError
from unibus.stack import rotation
from unibus.stack.compose import DEFAULT_COMPOSE_DIR, ComposeSpec, render_configs
from unibus.stack.deploy import MATERIAL_DIR, Topology, render
from unibus.stack.layout import DEFAULT_DIR, StackLayout
from unibus.stack.natsconf import NatsToggles

_EPILOG = """\
a whole rotation, on the local stack (with --compose, or --topology/--out, the same):
  unibus identities stage   --dir .unibus && unibus rollout --dir .unibus
  unibus identities switch  --dir .unibus && unibus rollout --dir .unibus
  unibus identities retire  --dir .unibus && unibus rollout --dir .unibus

Every rollout goes node by node; no connection is refused on the way. Do not skip a
rollout: a switch before every callout and node holds the next keys refuses clients.
The first admin's key is a user's: add another admin and revoke it to replace it.
Other copies of the internal or system seed (an operator's machine, stack.json) must be
taken from the stack's directory again after the switch.
"""


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser(
        "identities",
        help="rotate the callout's issuer and xkey and the service identities, no downtime",
        description="Rotate the key that signs every user JWT (the issuer), the key that "
        "seals auth requests (the xkey) and the callout, internal and system identities, "
        "in three steps, each followed by a rollout.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("step", choices=("status", "stage", "switch", "retire"))
    where = parser.add_argument_group("which stack (a local stack unless told otherwise)")
    where.add_argument("--dir", type=Path, default=None, help=f"default {DEFAULT_DIR}")
    where.add_argument("--compose", action="store_true", help="the compose stack's directory")
    where.add_argument("--topology", type=Path, default=None, help="a deployment's topology")
    where.add_argument("--out", type=Path, default=None, help="with --topology: its directory")
    add_json_arg(parser)
    parser.set_defaults(handler=_identities)


def _identities(args: argparse.Namespace) -> int:
    if (args.topology is None) != (args.out is None):
        raise ConfigError("a deployment needs both --topology and --out")
    if args.topology is not None:
        root = args.out / MATERIAL_DIR
        rollout = f"unibus deploy apply --topology {args.topology} --out {args.out} --yes"
    elif args.compose:
        root = args.dir or DEFAULT_COMPOSE_DIR
        rollout = f"unibus rollout --compose --dir {root}"
    else:
        root = args.dir or DEFAULT_DIR
        rollout = f"unibus rollout --dir {root}"
    layout = StackLayout.at(root)
    if not layout.identity("issuer").is_file():
        raise ConfigError(f"{layout.identities} holds no callout issuer: is {root} a stack?")
    if args.step == "status":
        now = rotation.phase(layout)
        _print(args, {"phase": now.value, "next": rotation.NEXT_AFTER[now]})
        return 0
    step = {
        "stage": rotation.stage,
        "switch": rotation.switch,
        "retire": rotation.retire,
    }[args.step](layout)
    # The nodes' configs name the current issuer and xkey, and hosts and compose volumes
    # receive the seeds from the rendered directories: render them again.
    toggles = NatsToggles.from_env(os.environ)
    if args.topology is not None:
        render(Topology.load(args.topology), args.out, toggles=toggles)
    elif args.compose:
        nodes = ComposeSpec().nodes()
        render_configs(layout, nodes, toggles, {n.name: n.name for n in nodes})
    _print(
        args,
        {"done": step.done, "phase": step.phase.value, "next": f"{rollout}; then {step.next_step}"},
    )
    return 0


def _print(args: argparse.Namespace, report: dict[str, str]) -> None:
    if args.json:
        print_json(report)
    else:
        for key, value in report.items():
            print(f"{key}: {value}")

"""What the rotation verbs (``unibus identities``, ``unibus route-ca``) share: which
stack's material they change, how the rendered files follow, and what they print.

Each step changes files in a stack's directory (local, compose) or in a deployment's
``_material``; the compose configs and the hosts' directories are rendered from those, so
they are rendered again; the nodes and services take them at the rollout the step names.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from unibus.cli._common import add_json_arg, print_json
from unibus.core.errors import ConfigError
from unibus.stack.compose import DEFAULT_COMPOSE_DIR, ComposeSpec, render_configs
from unibus.stack.deploy import MATERIAL_DIR, Topology, render
from unibus.stack.layout import DEFAULT_DIR, StackLayout
from unibus.stack.natsconf import NatsToggles

__all__ = ["RotationTarget", "add_rotation_args", "print_step", "rotation_target"]

STEPS = ("status", "stage", "switch", "retire")


def add_rotation_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("step", choices=STEPS)
    where = parser.add_argument_group("which stack (a local stack unless told otherwise)")
    where.add_argument("--dir", type=Path, default=None, help=f"default {DEFAULT_DIR}")
    where.add_argument("--compose", action="store_true", help="the compose stack's directory")
    where.add_argument("--topology", type=Path, default=None, help="a deployment's topology")
    where.add_argument("--out", type=Path, default=None, help="with --topology: its directory")
    add_json_arg(parser)


@dataclass(frozen=True)
class RotationTarget:
    layout: StackLayout
    rollout: str
    """The command that makes the nodes and services take a step."""
    topology: Path | None
    out: Path | None
    compose: bool

    def render_again(self) -> None:
        """Render what is made from the material (compose configs, hosts' directories)."""
        toggles = NatsToggles.from_env(os.environ)
        if self.topology is not None and self.out is not None:
            render(Topology.load(self.topology), self.out, toggles=toggles)
        elif self.compose:
            nodes = ComposeSpec().nodes()
            render_configs(self.layout, nodes, toggles, {n.name: n.name for n in nodes})


def rotation_target(args: argparse.Namespace) -> RotationTarget:
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
    return RotationTarget(layout, rollout, args.topology, args.out, bool(args.compose))


def print_step(args: argparse.Namespace, report: dict[str, str]) -> None:
    if args.json:
        print_json(report)
    else:
        for key, value in report.items():
            print(f"{key}: {value}")

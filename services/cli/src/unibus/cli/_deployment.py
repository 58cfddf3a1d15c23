"""Which running cluster an operator verb acts on, and the driver that reaches its nodes.

``unibus rollout`` and ``unibus chaoscheck`` take the same choice of cluster: a local
stack (``--dir``), compose on this machine (``--compose``), or three hosts over ssh
(``--topology`` and ``--out``). The options and how they resolve are stated here once.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from unibus.client.profile import StackInfo, read_stack_info
from unibus.core.connect import NatsTarget
from unibus.core.errors import ConfigError
from unibus.stack.compose import DEFAULT_COMPOSE_DIR
from unibus.stack.deploy import MATERIAL_DIR, Topology, rollout_nodes
from unibus.stack.drivers import ComposeDriver, compose_nodes
from unibus.stack.layout import DEFAULT_DIR

__all__ = ["add_deployment_args", "compose_deployment", "remote_deployment", "targets"]


def add_deployment_args(parser: argparse.ArgumentParser) -> None:
    """``--dir``, ``--compose`` (``--compose-file``, ``--project``), ``--topology``/``--out``."""
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


def compose_deployment(args: argparse.Namespace) -> tuple[ComposeDriver, StackInfo]:
    """The compose project on this machine that ``--compose`` names, and its profile."""
    directory = (args.dir or DEFAULT_COMPOSE_DIR).expanduser().absolute()
    info = read_stack_info(directory)
    compose_file = args.compose_file.expanduser().absolute()
    if not compose_file.is_file():
        raise ConfigError(
            f"{compose_file} not found: run from the repository, or pass --compose-file"
        )
    compose = ["docker", "compose", "-f", str(compose_file)]
    compose += ["--env-file", str(directory / "compose.env")]
    project = args.project or os.environ.get("COMPOSE_PROJECT_NAME")
    if project:
        compose += ["-p", project]
    return ComposeDriver(compose_nodes(compose, [node.name for node in info.nodes])), info


def remote_deployment(args: argparse.Namespace, verb: str) -> tuple[ComposeDriver, StackInfo]:
    """The hosts ``--topology``/``--out`` name, reached over ssh, and the operator's profile."""
    if args.topology is None or args.out is None:
        raise ConfigError(f"{verb} over ssh needs both --topology and --out")
    info = read_stack_info(args.out.expanduser().absolute() / MATERIAL_DIR)
    return ComposeDriver(rollout_nodes(Topology.load(args.topology))), info


def targets(info: StackInfo) -> tuple[NatsTarget, NatsTarget]:
    """The internal identity and the system account of the deployment ``info`` describes."""
    urls = tuple(info.nats_urls)
    ca_file = Path(info.ca_file)
    internal = NatsTarget(urls=urls, ca_file=ca_file, identity_file=Path(info.internal_id_file))
    system = NatsTarget(urls=urls, ca_file=ca_file, identity_file=Path(info.sys_id_file))
    return internal, system

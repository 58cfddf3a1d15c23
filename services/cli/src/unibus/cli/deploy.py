"""``unibus deploy render|apply``: per-host compose for three VPS from one topology file.

``render`` writes OUT/<host>/ (compose.yaml, env/, material/) for each host and keeps
the CA keys and the admin seed in OUT/_material/ on this machine. ``apply`` prints the
commands that ship each directory and start it (ssh/scp), and runs them only with
``--yes``. When the cluster already answers, ``apply`` ships without starting and then
rolls the hosts one at a time (``unibus rollout``): an update never restarts all three
nodes at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
from pathlib import Path

from unibus.cli._common import (
    Subparsers,
    add_client_ca_args,
    add_json_arg,
    client_ca_of,
    print_json,
    progress,
)
from unibus.cli.rollout import cluster_answers, drive, driver_plan, print_report
from unibus.client.profile import read_stack_info
from unibus.core.errors import StackError
from unibus.stack.deploy import (
    MATERIAL_DIR,
    Step,
    Topology,
    format_plan,
    migrate_plan,
    plan,
    render,
    rollout_nodes,
)
from unibus.stack.drivers import ComposeDriver
from unibus.stack.natsconf import NatsToggles
from unibus.stack.rollout import DEFAULT_NODE_BOUND

_RENDER_EPILOG = """\
example:
  cp deploy/topology.example.toml deploy/topology.toml      # edit the three hosts
  unibus deploy render --topology deploy/topology.toml --out deploy/out
  unibus deploy apply --topology deploy/topology.toml --out deploy/out      # dry run
  unibus deploy apply --topology deploy/topology.toml --out deploy/out --yes

OUT/_material holds the CA keys and the admin seed: keep it on this machine, backed up.
"""


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    deploy = verbs.add_parser(
        "deploy",
        help="per-host compose files for three VPS from one topology file, and shipping them",
        description="Render and ship a three-VPS deployment (see deploy/README.md).",
    )
    sub = deploy.add_subparsers(dest="deploy_verb", metavar="SUBVERB", required=True)

    render_parser = sub.add_parser(
        "render",
        help="write OUT/<host>/compose.yaml, env files, configs and certificates",
        description="Create material once (identities, route secret, certificates whose "
        "SANs are each host's name, public IP, private IP and hostname, plus localhost "
        "and 127.0.0.1) and render, per host, its nats config (routes over the private "
        'addresses, or the public ones with cluster.routes = "public"; mutual TLS), its '
        "services' env files and its compose.yaml. A topology that still holds the "
        "example's placeholder addresses, or duplicate ones, is refused.",
        epilog=_RENDER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    render_parser.add_argument("--topology", type=Path, required=True, help="topology TOML")
    render_parser.add_argument("--out", type=Path, required=True, help="output directory")
    render_parser.add_argument(
        "--force",
        action="store_true",
        help="renew all material (new CAs: clients re-pin); the first admin is kept",
    )
    add_client_ca_args(render_parser)
    add_json_arg(render_parser)
    render_parser.set_defaults(handler=_render)

    apply = sub.add_parser(
        "apply",
        help="print the plan that ships OUT/<host>/ to each host (runs it with --yes)",
        description="Print, host by host, the ssh/scp commands that copy the rendered "
        "directory, load the images and run `docker compose up -d`. If the cluster "
        "already answers (an update), the hosts are not started at once: the new files "
        "and images are shipped, then the nodes are rolled one at a time, each waiting "
        "for full replication (`unibus rollout`). Nothing is run without --yes.",
    )
    apply.add_argument("--topology", type=Path, required=True, help="topology TOML")
    apply.add_argument("--out", type=Path, required=True, help="the rendered directory")
    apply.add_argument(
        "--no-images", action="store_true", help="do not ship images (the hosts pull them)"
    )
    apply.add_argument(
        "--start",
        action="store_true",
        help="start every host at once, as a first deployment does, even if some node "
        "answers (to bring up a cluster that is down or only partly started)",
    )
    apply.add_argument(
        "--node-bound",
        type=float,
        default=DEFAULT_NODE_BOUND,
        metavar="SECONDS",
        help="in an update, how long one node may take to come back "
        f"(default {DEFAULT_NODE_BOUND:g})",
    )
    apply.add_argument("--yes", action="store_true", help="run the plan instead of printing it")
    add_json_arg(apply)
    apply.set_defaults(handler=_apply)

    migrate_parser = sub.add_parser(
        "migrate",
        help="copy the legacy SQLite file to one host and migrate it there (runs with --yes)",
        description="Print, then with --yes run: copy the legacy membershipd SQLite file "
        "into the host's legacy/ directory (beside its compose.yaml, mode kept) and run "
        "`docker compose --profile migrate run --rm migrate` there, which backs the file "
        "up, imports it into the KV and verifies parity. Any host of the cluster will do.",
    )
    migrate_parser.add_argument("--topology", type=Path, required=True, help="topology TOML")
    migrate_parser.add_argument("--out", type=Path, required=True, help="the rendered directory")
    migrate_parser.add_argument(
        "--db", type=Path, required=True, help="the legacy membershipd SQLite file"
    )
    migrate_parser.add_argument(
        "--host", default=None, help="the host to run it on (default: the first)"
    )
    migrate_parser.add_argument(
        "--force", action="store_true", help="import into a target that diverged (see README)"
    )
    migrate_parser.add_argument(
        "--yes", action="store_true", help="run the plan instead of printing it"
    )
    add_json_arg(migrate_parser)
    migrate_parser.set_defaults(handler=_migrate)


def _render(args: argparse.Namespace) -> int:
    topology = Topology.load(args.topology)
    written = render(
        topology,
        args.out,
        toggles=NatsToggles.from_env(os.environ),
        force=args.force,
        client_ca=client_ca_of(args),
    )
    material = args.out.expanduser().absolute() / MATERIAL_DIR
    if args.json:
        print_json({"hosts": [str(p) for p in written], "material": str(material)})
        return 0
    for path in written:
        print(f"rendered {path}/ (compose.yaml, env/, material/)")
    print(f"kept on this machine: {material} (CA keys, admin seed, stack.json)")
    print(f"next: unibus deploy apply --topology {args.topology} --out {args.out}")
    return 0


def run_step(step: Step) -> None:
    """Run one step of a deploy plan; a failure says which and how to go on."""
    if step.pipe_to:
        producer = subprocess.Popen(step.argv, stdout=subprocess.PIPE)
        consumer = subprocess.run(step.pipe_to, stdin=producer.stdout, check=False)
        if producer.stdout is not None:
            producer.stdout.close()
        failed = producer.wait() != 0 or consumer.returncode != 0
    else:
        failed = subprocess.run(step.argv, check=False).returncode != 0
    if failed:
        raise StackError(
            f"[{step.host}] {step.what} failed: {step.shell()}; fix it and re-run "
            "(every step can be repeated)"
        )


def _migrate(args: argparse.Namespace) -> int:
    topology = Topology.load(args.topology)
    host = args.host or topology.hosts[0].name
    extra = ["--force"] if args.force else []
    steps = migrate_plan(topology, args.out, args.db, host, extra=extra)
    if not args.yes:
        if args.json:
            print_json(
                {
                    "dry_run": True,
                    "steps": [
                        {"host": s.host, "what": s.what, "command": s.shell()} for s in steps
                    ],
                }
            )
        else:
            print("\n".join(format_plan(steps)))
            print("dry run: nothing was run; pass --yes to run these commands")
        return 0
    for step in steps:
        progress(f"[{step.host}] {step.what} ...")
        run_step(step)
    return 0


def _apply(args: argparse.Namespace) -> int:
    topology = Topology.load(args.topology)
    out = args.out.expanduser().absolute()
    info = read_stack_info(out / MATERIAL_DIR)
    update = not args.start and asyncio.run(cluster_answers(info))
    steps = plan(topology, out, ship_images=not args.no_images, start=not update)
    driver = ComposeDriver(rollout_nodes(topology))
    rollout_plan = driver_plan(driver) if update else []
    if args.json:
        print_json(
            {
                "dry_run": not args.yes,
                "update": update,
                "steps": [{"host": s.host, "what": s.what, "command": s.shell()} for s in steps],
                "rollout": rollout_plan,
            }
        )
    else:
        print("\n".join(format_plan(steps)))
        if update:
            print("the cluster answers: an update. Then, one node at a time (unibus rollout):")
            print("\n".join(f"    {line}" for line in rollout_plan))
    if not args.yes:
        if not args.json:
            print("dry run: nothing was run; pass --yes to run these commands")
        return 0
    for step in steps:
        progress(f"[{step.host}] {step.what} ...")
        run_step(step)
    if update:
        report = asyncio.run(drive(driver, info, args.node_bound))
        print_report(report.to_json(), as_json=args.json)
    return 0

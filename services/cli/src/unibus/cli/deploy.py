"""``unibus deploy render|apply``: per-host compose for three VPS from one topology file.

``render`` writes OUT/<host>/ (compose.yaml, env/, material/) for each host and keeps
the CA keys and the admin seed in OUT/_material/ on this machine. ``apply`` prints the
commands that ship each directory and start it (ssh/scp), and runs them only with
``--yes``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from unibus.cli._common import Subparsers, add_json_arg, print_json, progress
from unibus.core.errors import StackError
from unibus.stack.deploy import MATERIAL_DIR, Step, Topology, format_plan, plan, render
from unibus.stack.natsconf import NatsToggles

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
        "addresses, mutual TLS), its services' env files and its compose.yaml.",
        epilog=_RENDER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    render_parser.add_argument("--topology", type=Path, required=True, help="topology TOML")
    render_parser.add_argument("--out", type=Path, required=True, help="output directory")
    render_parser.add_argument(
        "--force", action="store_true", help="renew all material (new CAs: clients re-pin)"
    )
    add_json_arg(render_parser)
    render_parser.set_defaults(handler=_render)

    apply = sub.add_parser(
        "apply",
        help="print the plan that ships OUT/<host>/ to each host (runs it with --yes)",
        description="Print, host by host, the ssh/scp commands that copy the rendered "
        "directory, load the images and run `docker compose up -d`. Nothing is run "
        "without --yes.",
    )
    apply.add_argument("--topology", type=Path, required=True, help="topology TOML")
    apply.add_argument("--out", type=Path, required=True, help="the rendered directory")
    apply.add_argument(
        "--no-images", action="store_true", help="do not ship images (the hosts pull them)"
    )
    apply.add_argument("--yes", action="store_true", help="run the plan instead of printing it")
    add_json_arg(apply)
    apply.set_defaults(handler=_apply)


def _render(args: argparse.Namespace) -> int:
    topology = Topology.load(args.topology)
    written = render(topology, args.out, toggles=NatsToggles.from_env(os.environ), force=args.force)
    material = args.out.expanduser().absolute() / MATERIAL_DIR
    if args.json:
        print_json({"hosts": [str(p) for p in written], "material": str(material)})
        return 0
    for path in written:
        print(f"rendered {path}/ (compose.yaml, env/, material/)")
    print(f"kept on this machine: {material} (CA keys, admin seed, stack.json)")
    print(f"next: unibus deploy apply --topology {args.topology} --out {args.out}")
    return 0


def _run(step: Step) -> None:
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


def _apply(args: argparse.Namespace) -> int:
    topology = Topology.load(args.topology)
    steps = plan(topology, args.out, ship_images=not args.no_images)
    if args.json:
        print_json(
            {
                "dry_run": not args.yes,
                "steps": [{"host": s.host, "what": s.what, "command": s.shell()} for s in steps],
            }
        )
    else:
        print("\n".join(format_plan(steps)))
    if not args.yes:
        if not args.json:
            print("dry run: nothing was run; pass --yes to run these commands")
        return 0
    for step in steps:
        progress(f"[{step.host}] {step.what} ...")
        _run(step)
    return 0

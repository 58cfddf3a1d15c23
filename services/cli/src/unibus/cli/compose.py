"""``unibus compose init|stage``: material and rendered configs for ``compose.yaml``.

``init`` runs on the host, before ``docker compose up`` (``./scripts/up`` does both):
it creates identities, the route secret and certificates once, and renders the three
nats configs, the services' env files, ``compose.env`` and ``stack.json`` on every run.
``stage`` is the compose stack's one-shot first step, run inside the unibus image: it
copies that material into one volume per role, owned by the user each role runs as.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from unibus.cli._common import (
    Subparsers,
    add_client_ca_args,
    add_json_arg,
    client_ca_of,
    print_json,
)
from unibus.core.errors import ConfigError
from unibus.stack.compose import (
    DEFAULT_COMPOSE_DIR,
    NODE_NAMES,
    PROMETHEUS_UID,
    SERVICE_UID,
    ComposeSpec,
    render_compose_dir,
    stage_material,
)
from unibus.stack.natsconf import NatsToggles

_INIT_EPILOG = """\
then:
  docker compose --env-file DIR/compose.env up -d      (./scripts/up does init and up)
  uv run unibus user list --dir DIR
  uv run unibus clientcheck --dir DIR

Material (identities, route secret, certificates) is created once and kept; configs,
env files, compose.env and stack.json are rendered again on every run, so
UNIBUS_NATS_MONITOR / UNIBUS_NATS_DEBUG and port changes take effect on the next
`docker compose up`. --force renews all material (new CAs: clients must re-pin).
"""


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    compose = verbs.add_parser(
        "compose",
        help="prepare the container stack (compose.yaml): material and rendered configs",
        description="Prepare and stage the material of the compose stack.",
    )
    sub = compose.add_subparsers(dest="compose_verb", metavar="SUBVERB", required=True)

    init = sub.add_parser(
        "init",
        help="create material and render configs for `docker compose up`",
        description="Create identities (0600), the route secret and certificates (SANs: "
        "n1..n3, localhost, 127.0.0.1, the publish host and --san) if missing; render "
        "each node's nats config with in-container paths (posture checked here), the "
        "services' env files (paths and addresses only), compose.env and stack.json "
        "(the published ports, for the CLI on this host).",
        epilog=_INIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_COMPOSE_DIR,
        help=f"where to write (default {DEFAULT_COMPOSE_DIR})",
    )
    init.add_argument(
        "--publish-host",
        default="127.0.0.1",
        help="address the client and API ports are published on (127.0.0.1)",
    )
    init.add_argument(
        "--nats-port",
        type=int,
        action="append",
        default=None,
        metavar="PORT",
        help="published client port of n1, n2, n3 in turn (default 4222 4223 4224)",
    )
    init.add_argument(
        "--api-port",
        type=int,
        action="append",
        default=None,
        metavar="PORT",
        help="published API port of n1, n2, n3 in turn (default 8470 8471 8472)",
    )
    init.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="IP|DNS",
        help="an extra address every node certificate is valid for (repeatable)",
    )
    init.add_argument(
        "--prometheus-port",
        type=int,
        default=ComposeSpec().prometheus_port,
        metavar="PORT",
        help="loopback port of the monitoring profile's Prometheus (default %(default)s)",
    )
    init.add_argument(
        "--force",
        action="store_true",
        help="renew all material (new CAs, new service identities); the first admin is kept",
    )
    add_client_ca_args(init)
    add_json_arg(init)
    init.set_defaults(handler=_init)

    stage = sub.add_parser(
        "stage",
        help="(inside the stack) copy the material into the per-role volumes",
        description="Copy SOURCE's material into one volume per role (per node for the roles "
        "holding a node's TLS key: TARGET/nats-n1, callout-n1, api-n1, exporter-n1, ...; "
        "TARGET/monitoring and TARGET/tools), replacing what is there: each role gets only "
        "the files it needs, secrets 0600, owned by the user the role runs as. Run by "
        "compose.yaml's `stage` service.",
    )
    stage.add_argument("--source", type=Path, required=True, help="the mounted material")
    stage.add_argument("--target", type=Path, required=True, help="where the volumes are")
    stage.add_argument(
        "--node",
        action="append",
        default=None,
        help=f"a node whose files to stage (repeatable; default {' '.join(NODE_NAMES)})",
    )
    stage.add_argument(
        "--service-uid",
        type=int,
        default=SERVICE_UID,
        help=f"owner of the callout and api volumes (default {SERVICE_UID})",
    )
    add_json_arg(stage)
    stage.set_defaults(handler=_stage)


def _ports(given: list[int] | None, default: tuple[int, ...], flag: str) -> tuple[int, ...]:
    if given is None:
        return default
    if len(given) != len(NODE_NAMES):
        raise ConfigError(f"{flag} needs one port per node: give it {len(NODE_NAMES)} times")
    return tuple(given)


def _init(args: argparse.Namespace) -> int:
    defaults = ComposeSpec()
    spec = ComposeSpec(
        publish_host=args.publish_host,
        nats_ports=_ports(args.nats_port, defaults.nats_ports, "--nats-port"),
        api_ports=_ports(args.api_port, defaults.api_ports, "--api-port"),
        extra_sans=tuple(args.san),
        prometheus_port=args.prometheus_port,
    )
    layout, created = render_compose_dir(
        args.dir,
        spec,
        toggles=NatsToggles.from_env(os.environ),
        force=args.force,
        client_ca=client_ca_of(args),
    )
    env_file = layout.root / "compose.env"
    if args.json:
        print_json(
            {
                "dir": str(layout.root),
                "created": created,
                "env_file": str(env_file),
                "stack_file": str(layout.stack_file),
            }
        )
        return 0
    for what in created:
        print(f"created {what}")
    print(f"rendered {len(spec.node_names)} nats configs and service env files in {layout.root}")
    print(f"next: docker compose --env-file {env_file} up -d")
    return 0


def _stage(args: argparse.Namespace) -> int:
    owner = (args.service_uid, args.service_uid)
    counts = stage_material(
        args.source,
        args.target,
        nodes=tuple(args.node or NODE_NAMES),
        owners={
            "nats": None,
            "callout": owner,
            "api": owner,
            "exporter": owner,
            "monitoring": (PROMETHEUS_UID, PROMETHEUS_UID),
            "tools": owner,
        },
    )
    if args.json:
        print_json(counts)
    else:
        print(", ".join(f"{role}: {n} files" for role, n in counts.items()))
    return 0

"""``unibus certs``: create the cluster's certificate material.

``unibus certs init`` writes a client CA (or imports the one clients already pin), a
separate route CA, and per node a route certificate (mutual TLS between nodes) and a
data-plane server certificate. Nothing existing is replaced without ``--force``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cryptography import x509

from unibus.core.errors import CertificateError, ConfigError
from unibus.stack.certs import CertLayout, NodeSpec, init_certs, renew_leaves
from unibus.stack.deploy import Topology, renew_host_certificates
from unibus.stack.layout import DEFAULT_DIR, StackLayout

_INIT_EPILOG = """\
examples:
  unibus certs init --node n1=10.0.0.5 --node n2=10.0.0.6 --node n3=10.0.0.7
  unibus certs init --node n1=10.0.0.5,203.0.113.7,n1.example.org ...
  unibus certs init --client-ca-cert old/client-ca.pem --client-ca-key old/client-ca-key.pem \\
      --node n1=10.0.0.5 ...

Every node certificate is also valid for the node name, 127.0.0.1 and localhost.
Clients pin client-ca.pem. Each node needs route-ca.pem, client-ca.pem and its own
nodes/NAME/ directory; the CA keys (*-ca-key.pem) belong to whoever issues certificates.
"""


def register(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``certs`` verb group to the top-level parser."""
    certs = verbs.add_parser(
        "certs",
        help="create TLS certificates for the cluster",
        description="Create and manage the cluster's TLS certificates.",
    )
    sub = certs.add_subparsers(dest="certs_verb", metavar="SUBVERB", required=True)
    init = sub.add_parser(
        "init",
        help="create the CAs and per-node route and server certificates",
        description=(
            "Create a client CA (or import an existing one), a separate route CA, and "
            "for each node a route certificate (serverAuth+clientAuth, signed by the "
            "route CA) and a data-plane server certificate (serverAuth, signed by the "
            "client CA). Private keys are written with mode 0600."
        ),
        epilog=_INIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument(
        "--out",
        type=Path,
        default=Path("certs"),
        metavar="DIR",
        help="directory to write into (default: ./certs)",
    )
    init.add_argument(
        "--node",
        action="append",
        required=True,
        metavar="NAME=IP[,IP|DNS...]",
        help="a cluster node: its name, its IP addresses, then optional extra DNS names "
        "(repeat once per node)",
    )
    init.add_argument(
        "--client-ca-cert",
        type=Path,
        metavar="FILE",
        help="import this existing client CA certificate instead of creating one "
        "(needs --client-ca-key)",
    )
    init.add_argument(
        "--client-ca-key",
        type=Path,
        metavar="FILE",
        help="private key of --client-ca-cert (unencrypted PEM or DER)",
    )
    init.add_argument(
        "--force",
        action="store_true",
        help="replace existing certificate files instead of refusing",
    )
    init.add_argument(
        "--json",
        action="store_true",
        help="print a JSON object listing the files written",
    )
    init.set_defaults(handler=_init)

    renew = sub.add_parser(
        "renew",
        help="renew the nodes' route and server certificates (new keys), keeping both CAs",
        description="Issue every node (or --node) a new route and server certificate with "
        "a new key, for the same names, from the same CAs: clients and peers go on "
        "trusting the nodes. The nodes serve them once restarted, one at a time, by "
        "`unibus rollout` (or `unibus deploy apply` on hosts): no connection is refused.",
    )
    renew.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"a local or compose stack's directory (default {DEFAULT_DIR})",
    )
    renew.add_argument("--topology", type=Path, default=None, help="a deployment's topology")
    renew.add_argument("--out", type=Path, default=None, help="with --topology: rendered directory")
    renew.add_argument("--node", action="append", default=[], help="only this node (repeatable)")
    renew.add_argument("--json", action="store_true", help="print JSON for scripts")
    renew.set_defaults(handler=_renew)


def _renew(args: argparse.Namespace) -> int:
    if args.topology is not None or args.out is not None:
        if args.topology is None or args.out is None:
            raise ConfigError("renewing a deployment's certificates needs --topology and --out")
        topology = Topology.load(args.topology)
        hosts = args.node or [host.name for host in topology.hosts]
        issued = [
            line for host in hosts for line in renew_host_certificates(topology, args.out, host)
        ]
        where = f"--topology {args.topology} --out {args.out}"
        after = f"unibus deploy apply {where} --yes (ships, then rolls one node at a time)"
    else:
        directory = args.dir or DEFAULT_DIR
        issued = renew_leaves(StackLayout.at(directory).certs.root, args.node)
        compose = " --compose" if (directory / "compose.env").is_file() else ""
        after = f"unibus rollout --dir {directory}{compose} (one node at a time)"
    if args.json:
        print(json.dumps({"issued": issued, "next": after}, indent=2))
    else:
        print(f"issued {len(issued)} certificate(s), both CAs kept: {', '.join(issued)}")
        print(f"next: {after}")
    return 0


def _init(args: argparse.Namespace) -> int:
    if (args.client_ca_cert is None) != (args.client_ca_key is None):
        raise ConfigError(
            "--client-ca-cert and --client-ca-key go together: give both to import a "
            "client CA, or neither to create one",
            setting="--client-ca-cert",
        )
    nodes = [NodeSpec.parse(value) for value in args.node]
    out: Path = args.out
    layout = init_certs(
        out,
        nodes,
        client_ca_cert=args.client_ca_cert,
        client_ca_key=args.client_ca_key,
        force=args.force,
    )
    report = _report(layout, nodes, imported_from=args.client_ca_cert)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_summary(report)
    return 0


def _sans(path: Path) -> list[str]:
    # Read back from the written file, so the summary shows what is really on disk.
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateError(f"cannot read back {path}: {exc}") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    ips = [f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)]
    dns = [f"DNS:{name}" for name in san.get_values_for_type(x509.DNSName)]
    return ips + dns


def _report(
    layout: CertLayout, nodes: list[NodeSpec], *, imported_from: Path | None
) -> dict[str, Any]:
    node_reports: dict[str, dict[str, Any]] = {}
    for node in nodes:
        node_reports[node.name] = {
            "route_cert": str(layout.route_cert(node.name)),
            "route_key": str(layout.route_key(node.name)),
            "route_sans": _sans(layout.route_cert(node.name)),
            "server_cert": str(layout.server_cert(node.name)),
            "server_key": str(layout.server_key(node.name)),
            "server_sans": _sans(layout.server_cert(node.name)),
        }
    return {
        "out": str(layout.root),
        "client_ca": {
            "cert": str(layout.client_ca_cert),
            "key": str(layout.client_ca_key),
            "imported_from": None if imported_from is None else str(imported_from),
        },
        "route_ca": {"cert": str(layout.route_ca_cert), "key": str(layout.route_ca_key)},
        "nodes": node_reports,
        "files": [str(p) for p in layout.files(node.name for node in nodes)],
    }


def _print_summary(report: dict[str, Any]) -> None:
    client_ca = report["client_ca"]
    origin = f"imported from {client_ca['imported_from']}" if client_ca["imported_from"] else "new"
    print(f"wrote certificates under {report['out']}")
    print(f"  client CA  {client_ca['cert']}  ({origin}; key {client_ca['key']})")
    route_ca = report["route_ca"]
    print(f"  route CA   {route_ca['cert']}  (new; key {route_ca['key']})")
    for name, node in report["nodes"].items():
        print(f"  node {name}")
        print(f"    route   {node['route_cert']}  SANs: {', '.join(node['route_sans'])}")
        print(f"    server  {node['server_cert']}  SANs: {', '.join(node['server_sans'])}")
    print(
        f"clients pin {client_ca['cert']}; each node needs route-ca.pem, client-ca.pem and "
        "its own nodes/NAME/ files; keep the CA keys (*-ca-key.pem) off the nodes"
    )

"""A stack's material: identities, the route secret and certificates, made once and kept.

Shared by every way a stack is laid out — local processes (``unibus up``), one machine's
compose stack and the per-host deploy — so all three hold the same identities, checked
the same way, and a node's config names the same accounts whatever runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from unibus.core.errors import ConfigError
from unibus.core.nkeys import KeyPair, Prefix, read_seed_file, write_seed_file
from unibus.core.xkeys import CurveKeyPair, read_curve_seed_file
from unibus.stack.certs import NodeSpec, init_certs, issue_leaves
from unibus.stack.layout import StackLayout
from unibus.stack.natsconf import AuthIdentities
from unibus.stack.routesecret import new_route_secret

__all__ = ["ADMIN_PUB", "SEEDS", "ClientCa", "auth_identities", "ensure_material"]

SEEDS: Final = ("issuer", "xkey", "callout", "internal", "system", "admin")
"""The stack's identities: the callout's account issuer and xkey, then four users."""
FIRST_ADMIN: Final = "admin"
ADMIN_PUB: Final = "admin.pub"
"""The first admin's public key, beside the seeds: what provisioning may read without
the admin's seed."""


@dataclass(frozen=True)
class ClientCa:
    """A client CA to import instead of creating one, so clients that pin it already keep
    trusting the bus."""

    cert: Path
    key: Path


def ensure_material(
    layout: StackLayout,
    nodes: Sequence[NodeSpec],
    *,
    force: bool = False,
    client_ca: ClientCa | None = None,
) -> list[str]:
    """Create what is missing (identities, route secret, certificates); keep what exists.

    With ``force`` everything is created anew (new CAs: clients must re-pin), except the
    first admin's identity: it is a user's key, and the users bucket names it; renewing
    the stack's material must not lock its operator out (to replace that admin: add
    another admin, then revoke it). A node whose certificates name other addresses than
    it has now gets new ones from the same CAs. ``client_ca`` is imported when the client
    CA is created (first run, or ``force``); a stack that has another one already keeps
    it unless ``force``. Returns what was created.
    """
    created: list[str] = []
    layout.ensure()
    if force:
        for name in SEEDS:
            if name != FIRST_ADMIN:
                layout.identity(name).unlink(missing_ok=True)
        layout.route_secret.unlink(missing_ok=True)
    for name in SEEDS:
        path = layout.identity(name)
        if path.exists():
            continue
        if name == "issuer":
            write_seed_file(path, KeyPair.generate(Prefix.ACCOUNT).seed)
        elif name == "xkey":
            write_seed_file(path, CurveKeyPair.generate().seed)
        else:
            write_seed_file(path, KeyPair.generate(Prefix.USER).seed)
        created.append(f"identity {name}")
    if not layout.route_secret.exists():
        new_route_secret(layout)
        created.append("route secret")
    admin = read_seed_file(layout.identity("admin")).public_key
    pub = layout.identities / ADMIN_PUB
    if not pub.exists() or pub.read_text().strip() != admin:
        pub.write_text(admin + "\n")
        created.append("admin public key")
    certs = layout.certs
    authorities = [
        certs.client_ca_cert,
        certs.client_ca_key,
        certs.route_ca_cert,
        certs.route_ca_key,
    ]
    keep_ca = not force and certs.client_ca_cert.exists() and certs.client_ca_key.exists()
    if client_ca is not None and keep_ca and not _same_file(client_ca.cert, certs.client_ca_cert):
        raise ConfigError(
            f"{layout.root} has a client CA already, not {client_ca.cert}: clients pin it. "
            "Pass --force to replace the material with the imported CA, or drop the import",
            setting="--client-ca-cert",
        )
    if force or not all(path.exists() for path in authorities):
        # Keep a client CA that exists (clients pin it) unless everything is renewed;
        # import the operator's when asked.
        imported = ClientCa(certs.client_ca_cert, certs.client_ca_key) if keep_ca else client_ca
        init_certs(
            certs.root,
            list(nodes),
            client_ca_cert=None if imported is None else imported.cert,
            client_ca_key=None if imported is None else imported.key,
            force=True,
        )
        created.append(
            "certificates (client CA imported)"
            if client_ca is not None and not keep_ca
            else "certificates"
        )
    elif issued := issue_leaves(certs.root, nodes):
        # Both CAs kept: a node given other addresses (a new host, another --bind) gets
        # certificates for them, and its peers and clients go on trusting it.
        created.append("certificates for " + ", ".join(issued))
    return created


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def auth_identities(layout: StackLayout) -> AuthIdentities:
    def public(name: str) -> str:
        return read_seed_file(layout.identity(name)).public_key

    others = tuple(
        (role, read_seed_file(path).public_key)
        for role in ("callout", "internal", "system")
        for generation in ("next", "previous")
        if (path := layout.identities / f"{role}.{generation}.seed").is_file()
    )
    return AuthIdentities(
        issuer=public("issuer"),
        xkey=read_curve_seed_file(layout.identity("xkey")).public_key,
        callout_user=public("callout"),
        internal_user=public("internal"),
        system_user=public("system"),
        other_users=others,
    )

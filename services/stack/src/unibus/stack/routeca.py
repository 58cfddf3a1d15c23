"""Rotating the route CA through a transition bundle: three steps, each followed by a
rollout, with the cluster whole throughout.

A node trusts, for its routes, every CA in ``route-ca.pem`` (a bundle: the CA that issues
the route certificates first, then any other the cluster still trusts). So:

1. ``stage``: a next CA is made; the bundle trusts the current and the next. The rollout
   restarts every node trusting both, still presenting its current certificate.
2. ``switch``: the next CA becomes the issuing one (first in the bundle, the old one kept
   after it), and every node gets a new route certificate from it (and, renewed with it,
   a new server certificate from the unchanged client CA). The rollout restarts each node
   presenting its new certificate; its peers, old or new, trust both CAs.
3. ``retire``: the bundle holds the new CA only. The rollout restarts every node trusting
   it alone: a route certificate from the old CA is refused from then on.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from unibus.core.errors import ConfigError
from unibus.core.files import write_private
from unibus.stack.certs import CertificateAuthority, CertLayout, renew_leaves, write_pem_pair
from unibus.stack.rotation import Phase, RotationStep

__all__ = ["NEXT_AFTER", "phase", "retire", "stage", "switch"]


def _next(layout: CertLayout) -> tuple[Path, Path]:
    return layout.root / "route-ca.next.pem", layout.root / "route-ca.next-key.pem"


def _previous(layout: CertLayout) -> Path:
    return layout.root / "route-ca.previous.pem"


def _pem(path: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_bundle(layout: CertLayout, *members: bytes) -> None:
    # Public certificates, but written the way every other file of the layout is.
    tmp = layout.route_ca_cert.with_suffix(".pem.tmp")
    tmp.write_bytes(b"".join(members))
    tmp.chmod(0o644)
    os.replace(tmp, layout.route_ca_cert)


def phase(layout: CertLayout) -> Phase:
    next_cert, next_key = _next(layout)
    if next_cert.exists() != next_key.exists():
        raise ConfigError(f"{layout.root} holds half of a next route CA: restore it from a backup")
    if next_cert.exists() and _previous(layout).exists():
        raise ConfigError(f"{layout.root} holds both a next and a previous route CA")
    if next_cert.exists():
        return Phase.STAGED
    if _previous(layout).exists():
        return Phase.SWITCHED
    return Phase.STEADY


NEXT_AFTER = {
    Phase.STEADY: "nothing is staged; begin with `unibus route-ca stage`",
    Phase.STAGED: "after a rollout, run `unibus route-ca switch`",
    Phase.SWITCHED: "after a rollout, run `unibus route-ca retire`",
}


def _require(layout: CertLayout, wanted: Phase, step: str) -> None:
    now = phase(layout)
    if now is not wanted:
        raise ConfigError(
            f"cannot {step} the route CA while the rotation is {now.value}: {NEXT_AFTER[now]}"
        )


def stage(layout: CertLayout) -> RotationStep:
    """A next route CA; the nodes' bundle trusts the current and the next."""
    _require(layout, Phase.STEADY, "stage")
    ca = CertificateAuthority.create("unibus route CA")
    next_cert, next_key = _next(layout)
    write_pem_pair(ca.cert, ca.key, next_cert, next_key)
    current = _pem(layout.route_ca_cert)
    _write_bundle(layout, current, _pem(next_cert))
    return RotationStep(
        "a next route CA made; the nodes trust both",
        Phase.STAGED,
        "roll out, then `unibus route-ca switch`",
    )


def switch(layout: CertLayout) -> RotationStep:
    """The next CA issues from now on: new route certificates for every node."""
    _require(layout, Phase.STAGED, "switch")
    next_cert, next_key = _next(layout)
    old = _pem(layout.route_ca_cert)  # the issuing CA comes first in the bundle
    _previous(layout).write_bytes(old)
    write_private(layout.route_ca_key.with_suffix(".pem.tmp"), next_key.read_bytes())
    os.replace(layout.route_ca_key.with_suffix(".pem.tmp"), layout.route_ca_key)
    _write_bundle(layout, _pem(next_cert), old)
    next_cert.unlink()
    next_key.unlink()
    issued = renew_leaves(layout.root)
    return RotationStep(
        f"the next route CA issues now; {len(issued)} certificate(s) issued",
        Phase.SWITCHED,
        "roll out (each node presents its new certificate), then `unibus route-ca retire`",
    )


def retire(layout: CertLayout) -> RotationStep:
    """The bundle trusts the new CA alone."""
    _require(layout, Phase.SWITCHED, "retire")
    current = _pem(layout.route_ca_cert)
    _write_bundle(layout, current)
    _previous(layout).unlink()
    return RotationStep(
        "the old route CA is no longer trusted",
        Phase.STEADY,
        "roll out: a route certificate from the old CA is refused from then on",
    )

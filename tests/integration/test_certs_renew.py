"""Renewing the nodes' certificates without downtime (issue 15): ``unibus certs renew``
issues new leaves (new keys, both CAs kept), ``unibus rollout`` restarts the nodes one at
a time; a client connecting every 200 ms meanwhile is never refused, and afterwards every
node serves its new certificate, which clients pinning the same CA accept."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

from tests.integration.harness import (
    admin_target,
    bounded,
    connect_once,
    probing,
    run_cli,
    running_up,
)
from unibus.client.profile import read_stack_info
from unibus.stack.layout import StackLayout

NODES = ("n1", "n2", "n3")


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _served(url: str, ca: Path) -> x509.Certificate:
    """The certificate a node presents to a client (TLS first, as the servers require)."""
    address = urlsplit(url)
    context = ssl.create_default_context(cafile=str(ca))
    host, port = address.hostname or "", address.port or 4222
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def test_renewed_certificates_are_served_after_a_rollout_that_refuses_no_connect(
    tmp_path: Path,
) -> None:
    root = tmp_path / "stack"
    layout = StackLayout.at(root)
    async with running_up(root):
        info = read_stack_info(root)
        ca = Path(info.ca_file)
        ca_before = _read(ca)
        before = {n: _served(u, ca) for n, u in zip(NODES, info.nats_urls, strict=True)}
        target = admin_target(root)

        code, out, err = await run_cli("certs", "renew", "--dir", str(root), "--json")
        assert code == 0, err
        renewed = json.loads(out)
        assert len(renewed["issued"]) == 2 * len(NODES)
        assert "unibus rollout" in renewed["next"]
        async with (
            bounded(600),
            probing(lambda: connect_once(target, refused_passes=True), every=0.2) as outcomes,
        ):
            code, _, err = await run_cli("rollout", "--dir", str(root), timeout=600)
        assert code == 0, err

        refused = [repr(e) for _, e in outcomes if e is not None]
        assert len(outcomes) > 20, "the probe barely ran"
        assert refused == [], f"connects refused during the renewal: {refused[:5]}"
        assert _read(ca) == ca_before, "the client CA changed: clients would re-pin"
        for node, url in zip(NODES, info.nats_urls, strict=True):
            served = _served(url, ca)  # verified against the same CA, address checked
            on_disk = x509.load_pem_x509_certificate(_read(layout.certs.server_cert(node)))
            assert served == on_disk, f"{node} still serves its old certificate"
            assert served.serial_number != before[node].serial_number
        code, out, err = await run_cli("clientcheck", "--dir", str(root), timeout=240)
        assert code == 0, out[-2000:] + err[-2000:]

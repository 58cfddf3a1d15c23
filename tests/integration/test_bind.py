"""A stack bound to another address (issue 14): ``unibus up --bind`` serves on it, and a
stack started again on the same directory with a changed ``--bind`` gets certificates for
the new address from the same CAs, so clients that pin the CA connect there, with the
address checked. 127.0.0.2 stands for a LAN address: a second address of this machine
that is not the one the stack was first bound to, with all traffic still on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from tests.integration.harness import run_cli, running_up
from unibus.client.profile import read_stack_info
from unibus.stack.layout import StackLayout

pytestmark = pytest.mark.timeout(600)


def _server_ips(layout: StackLayout, node: str) -> set[str]:
    cert = x509.load_pem_x509_certificate(layout.certs.server_cert(node).read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}


async def _clientcheck(root: Path) -> None:
    code, out, err = await run_cli("clientcheck", "--dir", str(root), "--json", timeout=240)
    assert code == 0, out[-2000:] + err[-2000:]


async def test_a_stack_rebound_to_another_address_serves_there_with_certificates_for_it(
    tmp_path: Path,
) -> None:
    root = tmp_path / "stack"
    layout = StackLayout.at(root)
    async with running_up(root, "--bind", "127.0.0.1"):
        await _clientcheck(root)
        client_ca = layout.certs.client_ca_cert.read_bytes()
        assert "127.0.0.2" not in _server_ips(layout, "n1")
    layout.stack_file.unlink()  # written again once the restarted stack is up

    async with running_up(root, "--bind", "127.0.0.2"):
        info = read_stack_info(root)
        assert all(url.startswith("tls://127.0.0.2:") for url in info.nats_urls), info.nats_urls
        assert all(url.startswith("https://127.0.0.2:") for url in info.api_urls), info.api_urls
        assert {"127.0.0.2"} <= _server_ips(layout, "n1")
        assert layout.certs.client_ca_cert.read_bytes() == client_ca, "clients must re-pin"
        # The SDK and the API, over TLS with the address checked, and the users kept.
        await _clientcheck(root)
        code, out, err = await run_cli("user", "list", "--dir", str(root), "--json")
        assert code == 0, err
        assert json.loads(out), "the users of the first run are gone"

"""Certificate expiry, read live from a running stack (issue 15): ``unibus status`` shows
each node's, ``/healthz`` the node's days left, and the API exports it as a metric."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request

from tests.integration.deployment import Deployment
from tests.integration.harness import eventually, run_cli
from unibus.client.profile import write_stack_info
from unibus.stack.certs import LEAF_DAYS

DAY = 86_400.0


def _get(url: str, context: ssl.SSLContext | None = None) -> str:
    # http(s) URLs of this test's own stack only.
    with urllib.request.urlopen(url, timeout=5, context=context) as response:  # noqa: S310
        return str(response.read().decode())


async def test_status_healthz_and_a_metric_show_when_each_nodes_certificate_expires(
    deployment: Deployment,
) -> None:
    stack = deployment.stack
    write_stack_info(stack.layout.root, stack.info())

    code, out, err = await run_cli("status", "--dir", str(stack.layout.root), "--json")

    assert code == 0, err
    status = json.loads(out)
    assert status["warnings"] == []
    for node in status["nodes"]:
        days = (node["certificate_expires"] - time.time()) / DAY
        assert LEAF_DAYS - 2 < days <= LEAF_DAYS, node  # issued at this stack's start

    context = ssl.create_default_context(cafile=str(stack.layout.certs.client_ca_cert))
    health = json.loads(_get(f"{stack.api_url('n2')}/healthz", context))
    assert LEAF_DAYS - 2 < health["posture"]["certificate_days_left"] <= LEAF_DAYS

    port = stack.spec.ports[1].api_metrics
    metric = "unibus_api_certificate_expiry_timestamp_seconds"

    async def exported() -> str:
        return _get(f"http://127.0.0.1:{port}/metrics")

    text = await eventually(exported, until=lambda t: f'{metric}{{listener="nats"}}' in t)
    line = next(line for line in text.splitlines() if line.startswith(f"{metric}{{"))
    assert abs(float(line.split()[-1]) - status["nodes"][1]["certificate_expires"]) < DAY

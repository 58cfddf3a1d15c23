"""What the services log over a whole run holds no secret, payload or room name (SPEC §3).

A 3-node stack with its services goes through an ordinary day: a room created, a message
published and read back, a revoked user refused, API requests refused. Then every
service's log is read whole. No seed of any identity (the stack's, the users'), no route
secret, no payload and no room id (so no room subject) may appear in any of them.
"""

from __future__ import annotations

import json
import secrets

import pytest

from tests.integration.deployment import Deployment
from tests.integration.harness import bounded, eventually
from unibus.client.api import ApiError
from unibus.client.connection import AccessDeniedError
from unibus.client.sdk import Client
from unibus.core import naming
from unibus.core.nkeys import KeyPair, Prefix, read_seed_file
from unibus.core.xkeys import read_curve_seed_file
from unibus.stack import material
from unibus.stack.launcher import LocalStack
from unibus.stack.topology import SERVICES


def _service_logs(stack: LocalStack) -> dict[str, str]:
    """Every service log of the stack, whole, by ``service@node``."""
    return {
        f"{service}@{node}": stack.layout.service_log(service, node).read_text(errors="replace")
        for node in stack.spec.node_names
        for service in SERVICES
    }


def _stack_secrets(stack: LocalStack) -> dict[str, str]:
    """The stack's seeds and its route secret (``admin.pub`` beside them is public)."""
    found = {
        f"{name} seed": read_seed_file(stack.layout.identity(name)).seed
        for name in material.SEEDS
        if name != "xkey"
    }
    found["xkey seed"] = read_curve_seed_file(stack.layout.identity("xkey")).seed
    found["route secret"] = stack.layout.route_secret.read_text().strip()
    return found


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


async def _refused(deployment: Deployment, identity: KeyPair) -> bool:
    """Whether a fresh connection as ``identity`` is refused (it is, once the callout
    saw the revocation)."""
    try:
        client = await Client.open(
            identity=identity,
            nats_urls=[deployment.stack.client_url(n) for n in deployment.stack.spec.node_names],
            api_urls=[deployment.stack.api_url(n) for n in deployment.stack.spec.node_names],
            ca_file=deployment.stack.layout.certs.client_ca_cert,
            name="unibus-test-revoked",
        )
    except AccessDeniedError:
        return True
    await client.close()
    return False


async def test_a_full_run_leaves_no_seed_payload_or_room_subject_in_any_service_log(
    deployment: Deployment,
) -> None:
    alice = await deployment.member("alice")
    bob = await deployment.member("bob")
    carol = await deployment.member("carol")
    payload = f"hygiene payload {secrets.token_hex(8)}".encode()

    room = await alice.create_room([bob.key, carol.key])
    await room.publish(payload)
    async with bounded(60):
        history = [m.data async for m in (await bob.room(room.room_id)).history()]
    assert history == [payload]

    await deployment.admin.revoke_user(carol.key)
    await eventually(lambda: _refused(deployment, carol.identity), until=bool, what="refused")

    with pytest.raises(ApiError, match="403"):
        await bob.api.add_user(KeyPair.generate(Prefix.USER).public_key, "mallory")
    outsider = await deployment.member("dave")
    with pytest.raises(ApiError, match="403"):
        await outsider.api.get_room(room.room_id)

    deployment.stack.stop_services()  # what they log on the way out is read too
    logs = _service_logs(deployment.stack)

    # The logs read are the ones this run wrote: the callout logged carol's refusal.
    decisions = [
        json.loads(line)
        for name, text in logs.items()
        if name.startswith("authcallout@")
        for line in text.splitlines()
        if '"auth decision"' in line
    ]
    assert {"allowed", "revoked"} <= {d["reason"] for d in decisions}

    # A line that is not a JSON object did not go through the log's processors (a raw
    # print or traceback): nothing redacted it.
    raw = [
        f"{name}: {line[:120]}"
        for name, text in logs.items()
        for line in text.splitlines()
        if not _is_json_object(line)
    ]
    assert raw == []

    forbidden = {
        **_stack_secrets(deployment.stack),
        **{f"{c.identity.public_key} seed": c.identity.seed for c in deployment.clients},
        "payload": payload.decode(),
        "room id": room.room_id,
        "room subject": naming.room_subject(room.room_id),
    }
    leaks = [
        f"{what} in {name}"
        for name, text in logs.items()
        for what, value in forbidden.items()
        if value in text
    ]
    assert leaks == []

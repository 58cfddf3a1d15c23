"""Rotating the stack's identities on a running stack (issue 15): the callout's issuer and
xkey and the callout, internal and system identities; stage, switch and retire, each
followed by a rollout, while a client connects every 200 ms: no connect is refused at any
step; the nodes end up naming the new keys only; the old seeds are gone, and the old
internal identity is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.integration.harness import (
    admin_target,
    rotate_with_rollouts,
    run_cli,
    running_up,
)
from unibus.core.connect import NatsTarget, connect
from unibus.core.nkeys import read_seed_file
from unibus.stack.layout import StackLayout

pytestmark = pytest.mark.timeout(1200)


def _issuer_public(layout: StackLayout) -> str:
    return read_seed_file(layout.identity("issuer")).public_key


def _config(layout: StackLayout, node: str) -> str:
    return layout.node_config(node).read_text()


async def test_a_full_identity_rotation_refuses_no_connect_and_retires_the_old_keys(
    tmp_path: Path,
) -> None:
    root = tmp_path / "stack"
    layout = StackLayout.at(root)
    async with running_up(root):
        target = admin_target(root)

        old_issuer = _issuer_public(layout)
        assert old_issuer in _config(layout, "n1")
        old_internal = tmp_path / "old-internal.nk"
        old_internal.write_bytes(layout.identity("internal").read_bytes())
        old_internal.chmod(0o600)
        phases = await rotate_with_rollouts("identities", root)
        assert phases == ["staged", "switched", "steady"]
        new_issuer = _issuer_public(layout)
        assert new_issuer != old_issuer
        for node in ("n1", "n2", "n3"):
            assert new_issuer in _config(layout, node)
            assert old_issuer not in _config(layout, node)
        assert sorted(p.name for p in layout.identities.glob("*.next.seed")) == []
        assert sorted(p.name for p in layout.identities.glob("*.previous.seed")) == []
        # Out of order is refused, saying what to do.
        code, _, err = await run_cli("identities", "switch", "--dir", str(root))
        assert code == 1
        assert "identities stage" in err
        assert read_seed_file(old_internal).public_key not in _config(layout, "n1")
        # The retired internal identity is refused; the stack's own (the new one) works.
        stale = NatsTarget(urls=target.urls[:1], ca_file=target.ca_file, identity_file=old_internal)
        async with asyncio.timeout(30):
            with pytest.raises(Exception) as caught:  # noqa: PT011 - nats-py's types vary
                await connect(stale, name="stale", connect_timeout=5.0, allow_reconnect=False)
        assert "authorization violation" in str(caught.value).lower()
        code, out, err = await run_cli("clientcheck", "--dir", str(root), timeout=240)
        assert code == 0, out[-2000:] + err[-2000:]

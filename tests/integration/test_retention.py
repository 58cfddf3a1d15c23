"""How long the history keeps a message (issue 14): set when provisioning creates the
stream (``UNIBUS_HISTORY_DAYS``, ``unibus provision --history-days``), read and changed on
a live cluster with ``unibus retention``; shortening it, which deletes older messages at
once, only with ``--yes``."""

from __future__ import annotations

import json

from tests.integration.harness import StackFactory, run_cli
from unibus.client.profile import write_stack_info
from unibus.core import naming
from unibus.core.provisioning import history_retention
from unibus.stack.launcher import LocalStack

DAY = 86_400.0


async def _days(stacks: StackFactory, stack: LocalStack) -> float:
    nc = await stacks.connect(stack)
    return await history_retention(nc.jetstream(timeout=5.0)) / DAY


async def test_the_history_retention_is_set_at_provisioning_and_changed_live(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3, environ={"UNIBUS_HISTORY_DAYS": "7"})
    write_stack_info(stack.layout.root, stack.info())
    where = ["--dir", str(stack.layout.root)]
    assert await _days(stacks, stack) == 7

    code, out, err = await run_cli("retention", *where, "--json")
    assert code == 0, err
    assert json.loads(out)["days"] == 7

    # Shorter deletes history now: refused without --yes, and nothing changes.
    code, _, err = await run_cli("retention", *where, "--days", "3")
    assert code == 1
    assert "pass --yes" in err
    assert await _days(stacks, stack) == 7

    code, out, err = await run_cli("retention", *where, "--days", "3", "--yes", "--json")
    assert code == 0, err
    assert json.loads(out) == {"days": 3, "before_days": 7}
    assert await _days(stacks, stack) == 3

    # Longer needs no confirmation.
    code, out, err = await run_cli("retention", *where, "--days", "45")
    assert code == 0, err
    assert "45 days (was 3)" in out
    assert await _days(stacks, stack) == 45


async def test_provision_creates_the_history_with_the_retention_it_is_given(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=1, provision=False)
    write_stack_info(stack.layout.root, stack.info())

    code, out, err = await run_cli(
        "provision", "--dir", str(stack.layout.root), "--history-days", "2", "--json"
    )

    assert code == 0, err
    assert naming.MESSAGES_STREAM in json.loads(out)["created"]
    assert await _days(stacks, stack) == 2

"""The room verbs of the ``unibus`` command against a real 3-node stack, as a person uses them.

Every verb runs as a child process (``python -m unibus.cli``): what a shell sees is what
is checked — exit status, the JSON a script reads, progress on stderr, and the one-line
error that says what to do next.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from tests.integration.harness import StackFactory, run_cli
from unibus.client.profile import write_stack_info


async def test_rooms_messages_and_blobs_work_from_the_command_line(
    stacks: StackFactory, tmp_path: Path
) -> None:
    stack = await stacks.start(nodes=3, services=True)
    write_stack_info(stack.layout.root, stack.info())  # what `unibus up` writes for clients
    root = str(stack.layout.root)
    bob_seed = tmp_path / "bob.seed"
    code, out, err = await run_cli("keygen", "--out", str(bob_seed), "--json")
    assert code == 0, err
    bob = json.loads(out)["public_key"]
    code, _, err = await run_cli(
        "user", "add", "--dir", root, "--handle", "bob", "--key", bob, timeout=120
    )
    assert code == 0, err

    # The admin (the default identity of --dir) creates a room with bob and writes to it.
    code, out, err = await run_cli("room", "create", "--dir", root, "--member", bob, "--json")
    assert code == 0, err
    created = json.loads(out)
    room_id = created["room_id"]
    assert bob in created["members"]
    assert created["epoch"] == 1
    code, out, err = await run_cli("send", room_id, "hello bob", "--dir", root, "--json")
    assert code == 0, err
    assert json.loads(out)["stream_seq"] >= 1

    # Bob replays it, then sees a live message, in one listen.
    listen = asyncio.create_task(
        run_cli(
            "listen", room_id, "--history", "--count", "2", "--json",
            "--dir", root, "--identity", str(bob_seed),
        )
    )  # fmt: skip
    code, _, err = await run_cli(
        "send", room_id, "still there?", "--dir", root, "--identity", str(bob_seed)
    )
    assert code == 0, err
    code, out, err = await listen
    assert code == 0, err
    heard = [json.loads(line) for line in out.splitlines()]
    assert [h["text"] for h in heard] == ["hello bob", "still there?"]

    code, out, err = await run_cli(
        "room", "list", "--dir", root, "--identity", str(bob_seed), "--json"
    )
    assert code == 0, err
    assert {"room_id": room_id, "awaiting_adoption": False} in json.loads(out)

    # A 3 MiB file goes up and comes back, with progress on stderr.
    source = tmp_path / "report.bin"
    source.write_bytes(os.urandom(3 << 20))
    code, out, err = await run_cli("blob", "put", room_id, str(source), "--dir", root, "--json")
    assert code == 0, err
    blob_id = json.loads(out)["blob_id"]
    assert "encrypt:" in err
    assert "upload:" in err
    assert "(100%)" in err
    copy = tmp_path / "copy.bin"
    code, out, err = await run_cli(
        "blob", "get", room_id, blob_id, "--out", str(copy),
        "--dir", root, "--identity", str(bob_seed), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert "download:" in err
    assert json.loads(out)["size"] == 3 << 20
    assert copy.read_bytes() == source.read_bytes()

    # Bad input: one line that says what to do, exit status 1.
    code, _, err = await run_cli("send", room_id, "--dir", root)
    assert code == 1
    assert "give the message TEXT or --file FILE" in err
    code, _, err = await run_cli("send", room_id, "--file", str(source), "--dir", root)
    assert code == 1
    assert "unibus blob put" in err
    code, _, err = await run_cli(
        "blob", "get", room_id, "A" * 20, "--out", str(tmp_path / "x"), "--dir", root
    )
    assert code == 1
    assert "no announcement of blob" in err
    assert not (tmp_path / "x").exists()

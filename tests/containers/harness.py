"""Helpers for the container tier: the engine check and a compose stack on free ports."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from unibus.client.profile import StackInfo, read_stack_info
from unibus.core.connect import NatsTarget, connect
from unibus.stack.compose import ComposeSpec, render_compose_dir
from unibus.stack.layout import free_ports
from unibus.stack.natsconf import NatsToggles

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
DOCKER_STATE = Path(os.environ.get("UNIBUS_DOCKER_STATE", "/var/tmp/unibus-docker"))
DEFAULT_DOCKER_CONFIG = DOCKER_STATE / "docker-config"
# One image per role (images/unibus/Dockerfile targets), under the variables compose.yaml
# reads; UNIBUS_IMAGE is the CLI image (stage, provision).
IMAGE_VARIABLES = {
    "tools": "UNIBUS_IMAGE",
    "authcallout": "UNIBUS_AUTHCALLOUT_IMAGE",
    "controlplane": "UNIBUS_CONTROLPLANE_IMAGE",
    "migrate": "UNIBUS_MIGRATE_IMAGE",
    "natsexporter": "UNIBUS_NATSEXPORTER_IMAGE",
}
IMAGES = {
    role: os.environ.get(variable, f"unibus/{'unibus' if role == 'tools' else role}:local")
    for role, variable in IMAGE_VARIABLES.items()
}
UNIBUS_IMAGE = IMAGES["tools"]
NATS_IMAGE = "nats:2.15.1"
PROJECT_PREFIX = "unibus-ct-"
DOCKER = shutil.which("docker") or "docker"


def docker(
    *args: str, timeout: float = 120.0, check: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def engine_problem() -> str | None:
    """Why the container tier cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "no docker client on PATH; run ./scripts/containers"
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=20)
    except subprocess.TimeoutExpired:
        return "the container engine did not answer `docker info` within 20 s"
    if info.returncode != 0:
        last = (info.stderr.strip().splitlines() or ["?"])[-1]
        return f"no container engine reachable ({last}); run ./scripts/containers"
    if docker("compose", "version", timeout=20).returncode != 0:
        return "docker compose v2 is missing; run ./scripts/containers (or set DOCKER_CONFIG)"
    for image in (NATS_IMAGE, *IMAGES.values()):
        if docker("image", "inspect", image, timeout=20).returncode != 0:
            return f"image {image} is missing; run ./scripts/containers"
    return None


def eventually(
    probe: Callable[[], T],
    *,
    until: Callable[[T], bool],
    timeout: float = 60.0,
    interval: float = 0.5,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until ``until(result)``; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if until(last):
                return last
        except Exception as exc:  # noqa: BLE001 - the probe may fail while the cluster settles
            error = exc
        time.sleep(interval)
    pytest.fail(f"{what} did not hold within {timeout}s (last={last!r}, error={error!r})")


@dataclass
class ComposeStack:
    """The repository's compose.yaml under a project name of its own, on free loopback ports."""

    directory: Path
    project: str
    image: str

    @classmethod
    def create(cls, directory: Path, *, image: str = UNIBUS_IMAGE) -> ComposeStack:
        ports = free_ports(7)
        spec = ComposeSpec(
            nats_ports=tuple(ports[:3]), api_ports=tuple(ports[3:6]), prometheus_port=ports[6]
        )
        render_compose_dir(directory / "material", spec, toggles=NatsToggles())
        return cls(
            directory=directory / "material",
            project=PROJECT_PREFIX + secrets.token_hex(4),
            image=image,
        )

    # -- docker compose ---------------------------------------------------------------------
    def environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update({variable: IMAGES[role] for role, variable in IMAGE_VARIABLES.items()})
        env["UNIBUS_IMAGE"] = self.image
        base = DOCKER_STATE / "python-base"
        if "UNIBUS_PYTHON_BASE" not in env and base.is_file():
            env["UNIBUS_PYTHON_BASE"] = base.read_text().strip()
        env.update(extra or {})
        return env

    def compose(
        self, *args: str, timeout: float = 240.0, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        command = [
            DOCKER,
            "compose",
            "--project-directory",
            str(REPO),
            "-f",
            str(REPO / "compose.yaml"),
            "-p",
            self.project,
            "--env-file",
            str(self.directory / "compose.env"),
            *args,
        ]
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environ(env),
            check=False,
        )

    def up(self, *profiles: str) -> None:
        """Start the stack (and the services of ``profiles``), waiting until all are healthy."""
        selected = [arg for profile in profiles for arg in ("--profile", profile)]
        result = self.compose(
            *selected, "up", "-d", "--no-build", "--wait", "--wait-timeout", "180"
        )
        if result.returncode != 0:
            logs = self.compose("logs", "--no-color", "--tail", "30").stdout
            pytest.fail(f"docker compose up failed:\n{result.stderr[-3000:]}\n{logs[-6000:]}")

    def down(self) -> None:
        self.compose(
            *("--profile", "migrate", "--profile", "monitoring"),
            *("down", "-v", "--remove-orphans", "--timeout", "10"),
        )

    def container(self, service: str) -> str:
        found = self.compose("ps", "-aq", service).stdout.split()
        assert found, f"no container for {service} in {self.project}"
        return found[0]

    @property
    def network(self) -> str:
        return f"{self.project}_unibus"

    def stop(self, *services: str) -> None:
        result = self.compose("stop", "--timeout", "10", *services)
        assert result.returncode == 0, result.stderr

    def start(self, *services: str) -> None:
        result = self.compose("start", *services)
        assert result.returncode == 0, result.stderr

    # -- the host's view --------------------------------------------------------------------
    @property
    def info(self) -> StackInfo:
        return read_stack_info(self.directory)

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """The ``unibus`` command of the host venv, against this stack (``--dir``), with
        the stack's images in its environment (for the verbs that run ``docker compose``)."""
        return subprocess.run(
            [sys.executable, "-m", "unibus.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environ(),
            check=False,
        )

    def status(self) -> dict[str, Any]:
        result = self.cli("status", "--dir", str(self.directory), "--json", timeout=30)
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def wait_healthy(self, *, timeout: float = 120.0) -> dict[str, Any]:
        return eventually(
            self.status,
            until=lambda s: bool(s["healthy"]),
            timeout=timeout,
            interval=1.0,
            what=f"{self.project} healthy (3 nodes routed, every asset R3 and current)",
        )

    def healthz(self, index: int) -> tuple[int, dict[str, Any]]:
        context = ssl.create_default_context(cafile=self.info.ca_file)
        url = f"{self.info.api_urls[index]}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


PROBE_BUDGET = 10.0


async def admitted_within(target: NatsTarget, budget: float = PROBE_BUDGET) -> BaseException | None:
    """One client connecting as a client library should: attempts bounded to 3 s, retried
    for up to 10 s. A node in lame duck behind docker's port proxy accepts the TCP
    connection and resets it; nats-py's connect can then hang, hence the bound. None when
    admitted; the last error when never admitted, or at once when refused."""
    deadline = time.monotonic() + budget
    while True:
        try:
            async with asyncio.timeout(3.0):
                nc = await connect(
                    target, name="probe", connect_timeout=1.0, max_reconnect_attempts=1
                )
            try:
                await nc.flush(timeout=2.0)
            finally:
                await nc.close()
        except Exception as exc:  # noqa: BLE001 - the outcome is asserted
            if "authorization" in str(exc).lower() or time.monotonic() > deadline:
                return exc
            await asyncio.sleep(0.1)
        else:
            return None

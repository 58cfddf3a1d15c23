"""Helpers for the monitoring tests: unibus/prometheus:local, a rendered monitoring
directory, and a fake three-node cluster's metrics endpoints for Prometheus to scrape.

:class:`FakeCluster` runs, on a Docker network of its own, one container per node serving
``tests/containers/fake_metrics.py`` over HTTPS under the compose names (``n1``,
``authcallout-n1``, ``controlplane-n1``, ...) with a certificate for the node's name from a
throwaway client CA, and Prometheus with the directory rendered for compose
(:meth:`NodeTargets.in_compose`), published on a loopback port only. The dashboard
screenshot (docs/monitoring-dashboard.png) is taken against it:

    uv run python -m tests.containers.prometheus   # prints the URL, Ctrl-C removes it all
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.containers.harness import UNIBUS_IMAGE, docker, eventually
from unibus.stack.certs import CertificateAuthority
from unibus.stack.monitoring import (
    MonitoringSpec,
    NodeTargets,
    ScrapeTLS,
    prometheus_args,
    write_monitoring,
)

PROMETHEUS_IMAGE = os.environ.get("UNIBUS_PROMETHEUS_IMAGE", "unibus/prometheus:local")
NODES = ("n1", "n2", "n3")
HERE = Path(__file__).resolve().parent
RULE_TESTS = HERE / "monitoring" / "unibus.rules.test.yml"
FAKE_METRICS = HERE / "fake_metrics.py"
CA_FILE = "certs/client-ca.pem"
"""Where the rendered config expects the client CA (relative to prometheus.yml)."""


def require_prometheus_image() -> None:
    """Skip (with the reason) without the image; fail instead under
    UNIBUS_REQUIRE_CONTAINERS=1, so the monitoring tests never pass silently."""
    if docker("image", "inspect", PROMETHEUS_IMAGE, timeout=20).returncode == 0:
        return
    reason = f"image {PROMETHEUS_IMAGE} is missing; run ./scripts/containers"
    if os.environ.get("UNIBUS_REQUIRE_CONTAINERS") == "1":
        pytest.fail(f"container tier required but {reason}")
    pytest.skip(reason)


def _pem(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o755)
    path.write_bytes(data)
    path.chmod(0o644)  # read by the containers' unprivileged users; throwaway material


def render(directory: Path) -> CertificateAuthority:
    """The compose render of the monitoring directory, with a new client CA beside it.

    Everything is world-readable: Prometheus runs as nobody in its container.
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    ca = CertificateAuthority.create("unibus test client CA")
    spec = MonitoringSpec(
        nodes=[NodeTargets.in_compose(node) for node in NODES],
        tls=ScrapeTLS(ca_file=CA_FILE),
        scrape_interval=2,
        evaluation_interval=2,
    )
    write_monitoring(directory, spec)
    _pem(directory / CA_FILE, ca.cert.public_bytes(serialization.Encoding.PEM))
    return ca


def promtool(directory: Path, *args: str) -> tuple[int, str]:
    """Run promtool in the image with ``directory`` as its working directory (read-only)."""
    result = docker(
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{directory}:/etc/prometheus:ro",
        "-w",
        "/etc/prometheus",
        "--entrypoint",
        "promtool",
        PROMETHEUS_IMAGE,
        *args,
        timeout=120,
    )
    return result.returncode, result.stdout + result.stderr


@dataclass(frozen=True)
class PrometheusApi:
    """The HTTP API of a Prometheus published on a loopback port (``http://127.0.0.1:N``)."""

    url: str

    def get(self, path: str, **params: str) -> tuple[int, str]:
        """(status, body); status 0 when nothing answers."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:  # noqa: S310
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, repr(exc)

    def data(self, path: str, **params: str) -> Any:
        status, body = self.get(path, **params)
        assert status == 200, body
        return json.loads(body)["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.data("/api/v1/query", query=expr)["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.data("/api/v1/targets", state="active")["activeTargets"]
        return active

    def firing(self, alert: str) -> list[dict[str, Any]]:
        return self.query(f'ALERTS{{alertname="{alert}", alertstate="firing"}}')

    def wait_firing(self, alert: str, *, timeout: float, why: str = "") -> list[dict[str, Any]]:
        """The series of ``alert`` once it fires (polled every 5 s; fails at the deadline)."""
        return eventually(
            lambda: self.firing(alert),
            until=bool,
            timeout=timeout,
            interval=5,
            what=f"{alert} firing{why}",
        )

    def wait_resolved(self, alert: str, *, timeout: float, why: str = "") -> None:
        eventually(
            lambda: self.firing(alert),
            until=lambda alerts: alerts == [],
            timeout=timeout,
            interval=5,
            what=f"{alert} resolved{why}",
        )


@dataclass
class FakeCluster:
    directory: Path
    degraded: str | None = None
    name: str = field(default_factory=lambda: "unibus-ct-mon-" + secrets.token_hex(4))
    port: int = 0
    containers: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeCluster:
        ca = render(self.directory / "prometheus")
        fake = self.directory / "fake"
        _pem(fake / "fake_metrics.py", FAKE_METRICS.read_bytes())
        for node in NODES:
            # The node's server certificate names the node; Prometheus dials
            # natsexporter-n1, authcallout-n1 and controlplane-n1 and still verifies "n1"
            # (server_name).
            cert, key = ca.issue(node, ips=[], dns_names=[node, "localhost"])
            _pem(fake / f"{node}.pem", cert.public_bytes(serialization.Encoding.PEM))
            _pem(
                fake / f"{node}-key.pem",
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
        docker("network", "create", self.name, check=True)
        try:
            for node in NODES:
                aliases = [
                    f"--network-alias={alias}-{node}"
                    for alias in ("natsexporter", "authcallout", "controlplane")
                ]
                extra = ["--degraded", self.degraded] if self.degraded else []
                self._run(
                    f"{self.name}-{node}",
                    "--network-alias",
                    node,
                    *aliases,
                    "-v",
                    f"{fake}:/fake:ro",
                    "--entrypoint",
                    "python",
                    UNIBUS_IMAGE,
                    "/fake/fake_metrics.py",
                    node,
                    f"/fake/{node}.pem",
                    f"/fake/{node}-key.pem",
                    *extra,
                )
            self._run(
                f"{self.name}-prometheus",
                "-p",
                "127.0.0.1::9090",
                "-v",
                f"{self.directory / 'prometheus'}:/etc/prometheus:ro",
                PROMETHEUS_IMAGE,
                *prometheus_args(),
            )
            mapped = docker("port", f"{self.name}-prometheus", "9090/tcp", check=True)
            self.port = int(mapped.stdout.splitlines()[0].rsplit(":", 1)[1])
        except BaseException:
            self.stop()
            raise
        return self

    def _run(self, name: str, *args: str) -> None:
        docker("run", "-d", "--name", name, "--network", self.name, *args, check=True)
        self.containers.append(name)

    def stop(self) -> None:
        if self.containers:
            docker("rm", "-f", "-v", *self.containers)
            self.containers.clear()
        docker("network", "rm", self.name)

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n" + docker("logs", "--tail", "30", name).stderr
            for name in self.containers
        )

    # -- Prometheus' HTTP API -------------------------------------------------------------
    @property
    def api(self) -> PrometheusApi:
        return PrometheusApi(self.url)

    def get(self, path: str, **params: str) -> tuple[int, str]:
        return self.api.get(path, **params)

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api.query(expr)

    def wait_scraped(self, *, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Until every unibus target (3 roles x 3 nodes) has been scraped successfully."""
        deadline = time.monotonic() + timeout
        up: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                up = self.query("up")
            except (OSError, AssertionError):
                up = []
            scraped = [s for s in up if s["metric"]["job"] != "prometheus"]
            if sum(1 for s in scraped if s["value"][1] == "1") == 3 * len(NODES):
                return up
            time.sleep(1)
        _, targets = self.get("/api/v1/targets")
        pytest.fail(f"not every target up within {timeout}s: up={up}\n{targets}\n{self.logs()}")


def main() -> None:  # pragma: no cover - a manual aid for the screenshot
    import argparse
    import signal
    import sys
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--degraded", help="a stream whose leader reports a replica behind")
    args = parser.parse_args()
    # Run in the background, SIGINT may be ignored: both signals clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    directory = Path(tempfile.mkdtemp(prefix="unibus-monitoring-"))
    directory.chmod(0o755)
    cluster = FakeCluster(directory, degraded=args.degraded).start()
    try:
        cluster.wait_scraped()
        print(f"{cluster.url}/consoles/unibus.html  (Ctrl-C stops)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

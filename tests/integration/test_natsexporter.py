"""The NATS exporter against a real 3-node cluster, one exporter per node as deployed.

Each node's exporter is ``python -m unibus.natsexporter`` reading its own node's
monitoring endpoint (the local stack serves it on loopback with ``UNIBUS_NATS_MONITOR=1``);
the metrics read from the three of them describe the whole cluster. The monitoring
client's HTTPS path (how containers read it) is checked against a local HTTPS server.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import ssl
import sys
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import StackFactory, eventually
from unibus.core import envnames
from unibus.natsexporter.monitor import MonitorClient, MonitorError
from unibus.stack.certs import CertificateAuthority, write_pem_pair
from unibus.stack.launcher import LocalStack
from unibus.stack.layout import free_ports

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(port: int) -> Samples:
    # This test's own exporter, on loopback.
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class Exporters:
    """One running exporter per node; ``scrape`` reads them all into one set of samples."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports

    async def scrape(self) -> Samples:
        merged: Samples = {}
        for port in self.ports.values():
            merged.update(await asyncio.to_thread(_scrape, port))
        return merged


@asynccontextmanager
async def exporters(stack: LocalStack) -> AsyncIterator[Exporters]:
    names = stack.spec.node_names
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    procs: dict[str, asyncio.subprocess.Process] = {}
    try:
        for name, node_ports in zip(names, stack.spec.ports, strict=True):
            env = {
                "PATH": os.environ.get("PATH", ""),
                envnames.NATSEXPORTER_SERVERS: f"{name}=http://127.0.0.1:{node_ports.monitor}",
                envnames.NATSEXPORTER_ADDR: f"127.0.0.1:{ports[name]}",
                envnames.NATSEXPORTER_TIMEOUT: "1",
            }
            log = (stack.layout.root / f"natsexporter-{name}.log").open("ab")
            procs[name] = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "unibus.natsexporter",
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
            log.close()
        running = Exporters(ports)
        await eventually(running.scrape, until=lambda _: True, what="the exporters listen")
        yield running
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                proc.terminate()
        for name, proc in procs.items():
            async with asyncio.timeout(10):
                code = await proc.wait()
            assert code == 0, f"the exporter of {name} exited {code} after SIGTERM"


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _by_server(samples: Samples, name: str, **labels: str) -> dict[str, float]:
    wanted = set(labels.items())
    return {
        dict(key)["server"]: v
        for (n, key), v in samples.items()
        if n == name and wanted <= set(key)
    }


def _streams(samples: Samples) -> set[str]:
    return {
        dict(key)["stream"]
        for (n, key), _ in samples.items()
        if n == "nats_jetstream_stream_replicas_configured"
    }


def _cluster_whole(samples: Samples) -> bool:
    """Every node up, fully meshed, one meta leader, and each stream led by one node that
    sees all three replicas current."""
    nodes = ("n1", "n2", "n3")
    streams = _streams(samples)
    return (
        all(_value(samples, "nats_server_up", server=n) == 1 for n in nodes)
        and all(_value(samples, "nats_server_routes", server=n) == 2 for n in nodes)
        and sum(_by_server(samples, "nats_jetstream_meta_is_leader").values()) == 1
        and len(streams) == 8
        and all(
            sum(_by_server(samples, "nats_jetstream_stream_is_leader", stream=s).values()) == 1
            and list(
                _by_server(samples, "nats_jetstream_stream_replicas_current", stream=s).values()
            )
            == [3]
            for s in streams
        )
    )


async def test_the_exporters_describe_a_whole_cluster_then_one_node_stopped(
    stacks: StackFactory,
) -> None:
    stack = await stacks.start(nodes=3, environ={"UNIBUS_NATS_MONITOR": "1"})

    async with exporters(stack) as running:
        whole = await eventually(
            running.scrape, until=_cluster_whole, timeout=60, what="the cluster seen whole"
        )

        for node in ("n1", "n2", "n3"):
            assert _value(whole, "nats_jetstream_meta_has_leader", server=node) == 1
            assert _value(whole, "nats_jetstream_meta_cluster_size", server=node) == 3
            assert _value(whole, "nats_server_start_time_seconds", server=node)
            (info,) = [k for (n, k) in whole if n == "nats_server_info" and ("server", node) in k]
            assert dict(info)["version"] == "2.15.1"
        for stream in _streams(whole):
            configured = _by_server(
                whole, "nats_jetstream_stream_replicas_configured", stream=stream
            )
            assert configured == {"n1": 3, "n2": 3, "n3": 3}, stream
        leader = next(n for n, v in _by_server(whole, "nats_jetstream_meta_is_leader").items() if v)
        assert _value(whole, "nats_jetstream_meta_peers_current", server=leader) == 3

        stack.stop_node("n3")

        def degraded(samples: Samples) -> bool:
            current = _by_server(samples, "nats_jetstream_stream_replicas_current")
            return (
                _value(samples, "nats_server_up", server="n3") == 0
                and _value(samples, "nats_server_up", server="n1") == 1
                and _value(samples, "nats_server_up", server="n2") == 1
                and _value(samples, "nats_server_routes", server="n1") == 1
                and bool(current)
                and set(current) <= {"n1", "n2"}
                and min(current.values()) < 3
            )

        after = await eventually(
            running.scrape, until=degraded, timeout=60, what="n3 down and a replica short"
        )

        assert [n for (n, k) in after if ("server", "n3") in k] == ["nats_server_up"]


# -- the monitoring client over HTTPS -----------------------------------------------------------


@contextmanager
def https_json_server(cert: Path, key: Path) -> Iterator[int]:
    """Serves ``{"server_name": "n1"}`` at /varz over HTTPS on loopback; 404 elsewhere,
    and text that is not JSON at /text."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/varz"):
                body, status = json.dumps({"server_name": "n1"}).encode(), 200
            elif self.path == "/text":
                body, status = b"<html>", 200
            else:
                body, status = b"not found", 404
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def https_material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("monitor-tls")
    ca, other = CertificateAuthority.create("nodes CA"), CertificateAuthority.create("other CA")
    cert, key = ca.issue("n1", ips=["127.0.0.1"], dns_names=["localhost"])
    write_pem_pair(cert, key, root / "server.pem", root / "server-key.pem")
    (root / "ca.pem").write_bytes(ca.cert.public_bytes(Encoding.PEM))
    (root / "other.pem").write_bytes(other.cert.public_bytes(Encoding.PEM))
    return {name: root / f"{name}.pem" for name in ("server", "server-key", "ca", "other")}


def test_the_monitoring_client_reads_https_verified_with_the_pinned_ca(
    https_material: dict[str, Path],
) -> None:
    with https_json_server(https_material["server"], https_material["server-key"]) as port:
        client = MonitorClient(https_material["ca"], timeout=2.0)

        assert client.fetch(f"https://127.0.0.1:{port}/varz?x=1") == {"server_name": "n1"}
        with pytest.raises(MonitorError, match="HTTP 404"):
            client.fetch(f"https://127.0.0.1:{port}/jsz")
        with pytest.raises(MonitorError, match="not JSON"):
            client.fetch(f"https://127.0.0.1:{port}/text")


def test_the_monitoring_client_refuses_a_server_its_ca_did_not_issue(
    https_material: dict[str, Path],
) -> None:
    with https_json_server(https_material["server"], https_material["server-key"]) as port:
        client = MonitorClient(https_material["other"], timeout=2.0)

        with pytest.raises(ssl.SSLCertVerificationError):
            client.fetch(f"https://127.0.0.1:{port}/varz")

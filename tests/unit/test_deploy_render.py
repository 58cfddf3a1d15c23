"""`unibus deploy render|apply`: per-host directories from one topology, and the dry-run plan."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from unibus.cli.main import main
from unibus.core.errors import ConfigError
from unibus.stack.deploy import EXAMPLE_TOPOLOGY, Topology, plan, render
from unibus.stack.natsconf import NatsToggles

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    render(Topology.parse(EXAMPLE_TOPOLOGY), tmp_path / "out", toggles=NatsToggles())
    return tmp_path / "out"


def test_the_shipped_example_topology_parses() -> None:
    topology = Topology.load(REPO / "deploy" / "topology.example.toml")
    assert [h.private_ip for h in topology.hosts] == ["10.0.0.10", "10.0.0.11", "10.0.0.12"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.split('[[hosts]]\nname = "n3"')[0], "exactly 3"),
        (lambda t: t.replace("10.0.0.11", "10.0.0.300"), "is not an IP"),
        (lambda t: t.replace('"n2.example.org"', '"n1.example.org"'), "own hostname"),
        (lambda t: t.replace('name = "n2"', 'name = "N 2"'), "node name"),
        (lambda t: t.replace('"/opt/unibus"', '"opt; rm -rf /"'), "remote_dir"),
    ],
)
def test_a_bad_topology_is_refused_with_the_field_to_fix(edit: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Topology.parse(edit(EXAMPLE_TOPOLOGY))  # type: ignore[operator]


def test_each_host_receives_only_its_node_and_never_a_ca_key_or_the_admin_seed(
    out: Path,
) -> None:
    files = {p.relative_to(out / "n2").as_posix() for p in (out / "n2").rglob("*") if p.is_file()}
    assert "material/nodes/n2/nats-server.conf" in files
    assert "material/certs/nodes/n2/route-key.pem" in files
    assert not any("/n1/" in f or "/n3/" in f for f in files)
    assert not any("ca-key" in f or f.endswith("admin.seed") for f in files)
    assert (out / "_material" / "certs" / "client-ca-key.pem").is_file()
    assert (out / "_material" / "identities" / "admin.seed").is_file()


def test_routes_run_over_private_addresses_and_certificates_carry_every_address(
    out: Path,
) -> None:
    conf = (out / "n1" / "material" / "nodes" / "n1" / "nats-server.conf").read_text()
    assert 'advertise: "10.0.0.10:6222"' in conf
    assert all(f"@10.0.0.{i}:6222" in conf for i in (10, 11, 12))
    cert = x509.load_pem_x509_certificate(
        (out / "n1" / "material" / "certs" / "nodes" / "n1" / "server.pem").read_bytes()
    )
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    sans = {str(v) for v in names.get_values_for_type(x509.IPAddress)}
    sans |= set(names.get_values_for_type(x509.DNSName))
    assert {"203.0.113.10", "10.0.0.10", "n1.example.org", "n1", "127.0.0.1"} <= sans
    env = (out / "n1" / "env" / "authcallout-n1.env").read_text()
    assert "UNIBUS_NATS_URLS=tls://n1:4222,tls://10.0.0.11:4222,tls://10.0.0.12:4222" in env


def test_host_compose_publishes_clients_publicly_routes_privately_with_restart_policies(
    out: Path,
) -> None:
    text = (out / "n3" / "compose.yaml").read_text()
    assert '"203.0.113.12:4222:4222"' in text
    assert '"10.0.0.12:6222:6222"' in text
    assert '"203.0.113.12:6222' not in text
    assert text.count('restart: "unless-stopped"') == 3
    assert "\nname:" not in text
    stack = json.loads((out / "_material" / "stack.json").read_text())
    assert stack["nats_urls"][0] == "tls://203.0.113.10:4222"


def test_apply_without_yes_prints_the_plan_and_runs_nothing(
    out: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The dry run never starts a process: no ssh, no scp, no docker."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a dry run started {args!r}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    topology = REPO / "deploy" / "topology.example.toml"
    code = main(["deploy", "apply", "--topology", str(topology), "--out", str(out), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] is True
    commands = [step["command"] for step in report["steps"]]
    assert len(commands) == 12
    assert commands[0] == "ssh root@203.0.113.10 'mkdir -p /opt/unibus'"
    assert commands[2].startswith("docker save nats:2.15.1 unibus/unibus:local | ssh root@")
    assert commands[3].endswith("-p unibus up -d'")


def test_apply_before_render_says_to_render(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unibus deploy render"):
        plan(Topology.parse(EXAMPLE_TOPOLOGY), tmp_path)

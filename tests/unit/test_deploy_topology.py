"""The topology `deploy render` accepts: no placeholders, no shared addresses, and routes
over the private or the public addresses (issue 13).

Rendered compose files are read with PyYAML, as docker compose reads them.
"""

from __future__ import annotations

import doctest
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from unibus.cli.main import main
from unibus.core.errors import ConfigError
from unibus.stack import deploy
from unibus.stack.deploy import EXAMPLE_TOPOLOGY, Topology, host_compose, render
from unibus.stack.natsconf import NatsToggles

REPO = Path(__file__).resolve().parents[2]


def _topology(
    hosts: list[dict[str, str]], cluster: str = 'ssh_user = "root"', *, allow: bool = False
) -> str:
    """A topology text: ``cluster`` lines, then one [[hosts]] table per dict."""
    text = f"[cluster]\n{cluster}\n"
    for host in hosts:
        text += "\n[[hosts]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in host.items())
    return text


def _hosts(*, private: bool = True) -> list[dict[str, str]]:
    hosts = []
    for i in (1, 2, 3):
        host = {"name": f"n{i}", "public_ip": f"100.64.0.{i}", "hostname": f"n{i}.unibus.test"}
        if private:
            host["private_ip"] = f"10.9.0.{i}"
        hosts.append(host)
    return hosts


PUBLIC = _topology(_hosts(private=False), 'routes = "public"')


def test_the_unedited_example_topology_is_refused_naming_the_placeholder_to_replace(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    example = REPO / "deploy" / "topology.example.toml"
    with pytest.raises(ConfigError, match=r"hosts\[0\] \(n1\): public_ip 203\.0\.113\.10 is a"):
        Topology.load(example)
    code = main(["deploy", "render", "--topology", str(example), "--out", str(tmp_path / "o")])
    assert code != 0
    assert "placeholder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists(), "nothing is rendered from a refused topology"


@pytest.mark.parametrize(
    ("field", "value", "what"),
    [
        ("public_ip", "203.0.113.7", "public_ip 203.0.113.7 is a placeholder"),
        ("public_ip", "192.0.2.7", "public_ip 192.0.2.7 is a placeholder"),
        ("public_ip", "2001:db8::7", "public_ip 2001:db8::7 is a placeholder"),
        ("private_ip", "198.51.100.7", "private_ip 198.51.100.7 is a placeholder"),
        ("hostname", "n2.example.org", "hostname n2.example.org is a placeholder"),
        ("hostname", "N2.Example.COM", "hostname n2.example.com is a placeholder"),
    ],
)
def test_a_placeholder_left_in_one_host_is_refused(field: str, value: str, what: str) -> None:
    hosts = _hosts()
    hosts[1][field] = value
    with pytest.raises(ConfigError, match=rf"hosts\[1\] \(n2\): {what}.*real"):
        Topology.parse(_topology(hosts))


def test_placeholders_are_allowed_only_when_asked_for() -> None:
    topology = Topology.parse(EXAMPLE_TOPOLOGY, allow_placeholders=True)
    assert [h.public_ip for h in topology.hosts] == ["203.0.113.10", "203.0.113.11", "203.0.113.12"]


@pytest.mark.parametrize(
    ("index", "field", "value", "message"),
    [
        (1, "name", "n1", r"hosts\[1\] \(n1\): name n1 is already hosts\[0\] \(n1\)'s name"),
        (2, "public_ip", "100.64.0.1", r"public_ip 100\.64\.0\.1 is already hosts\[0\] \(n1\)'s"),
        (1, "private_ip", "10.9.0.3", r"hosts\[2\] \(n3\): private_ip 10\.9\.0\.3 is already"),
        (1, "hostname", "N1.unibus.test", r"hostname n1\.unibus\.test is already"),
        # one host's public address is another's private one
        (1, "public_ip", "10.9.0.1", r"public_ip 10\.9\.0\.1 is already hosts\[0\] \(n1\)'s priv"),
        # a hostname that is another node's name: one certificate would vouch for two nodes
        (2, "hostname", "n1", r"hosts\[2\] \(n3\): hostname n1 is already hosts\[0\] \(n1\)'s"),
    ],
)
def test_two_hosts_sharing_a_name_an_address_or_a_hostname_are_refused(
    index: int, field: str, value: str, message: str
) -> None:
    hosts = _hosts()
    hosts[index][field] = value
    with pytest.raises(ConfigError, match=message):
        Topology.parse(_topology(hosts))


def test_one_address_spelled_two_ways_is_still_one_address() -> None:
    hosts = _hosts()
    hosts[0]["public_ip"] = "2001:a::000a"
    hosts[1]["public_ip"] = "2001:A:0::a"
    with pytest.raises(ConfigError, match=r"public_ip 2001:a::a is already hosts\[0\] \(n1\)'s"):
        Topology.parse(_topology(hosts))


def test_one_address_as_both_public_and_private_points_to_public_routes() -> None:
    hosts = _hosts()
    hosts[0]["private_ip"] = hosts[0]["public_ip"]
    with pytest.raises(ConfigError, match=r'private_ip 100\.64\.0\.1 is also its public_ip.*"pub'):
        Topology.parse(_topology(hosts))


@pytest.mark.parametrize("ip", ["0.0.0.0", "127.0.0.1", "::1", "224.0.0.1"])  # noqa: S104
def test_an_address_no_host_can_have_is_refused(ip: str) -> None:
    hosts = _hosts()
    hosts[2]["public_ip"] = ip
    with pytest.raises(ConfigError, match=r"hosts\[2\]: public_ip .* is not a host's address"):
        Topology.parse(_topology(hosts))


def test_private_routes_need_every_private_ip_and_public_routes_do_not() -> None:
    with pytest.raises(ConfigError, match=r'hosts\[0\]: private_ip is missing.*routes = "public"'):
        Topology.parse(_topology(_hosts(private=False)))
    assert Topology.parse(PUBLIC).routes == "public"
    with pytest.raises(ConfigError, match=r'cluster.routes must be "private".*not "both"'):
        Topology.parse(_topology(_hosts(), 'routes = "both"'))


def _compose(out: Path, host: str) -> dict[str, Any]:
    document = yaml.safe_load((out / host / "compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


def _env(out: Path, host: str, service: str) -> dict[str, str]:
    lines = (out / host / "env" / f"{service}-{host}.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _sans(pem: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in names.get_values_for_type(x509.IPAddress)} | set(
        names.get_values_for_type(x509.DNSName)
    )


def test_private_routes_publish_the_route_port_on_the_private_address_only(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    render(Topology.parse(_topology(_hosts())), out, toggles=NatsToggles())
    services = _compose(out, "n2")["services"]
    assert services["n2"]["ports"] == [
        "100.64.0.2:4222:4222",
        "10.9.0.2:4222:4222",
        "10.9.0.2:6222:6222",
        "10.9.0.2:8222:8222",  # monitoring (HTTPS) for the private network's Prometheus
    ]
    assert services["controlplane"]["ports"] == ["100.64.0.2:8470:8470", "10.9.0.2:9470:9470"]
    assert services["authcallout"]["ports"] == ["10.9.0.2:9471:9471"]
    assert services["natsexporter"]["ports"] == ["10.9.0.2:7777:7777"]
    urls = [a for a in services["provision"]["command"] if a.startswith("--nats-url=")]
    assert urls == [
        "--nats-url=tls://n2:4222",
        "--nats-url=tls://10.9.0.1:4222",
        "--nats-url=tls://10.9.0.3:4222",
    ]
    stack = json.loads((out / "_material" / "stack.json").read_text())
    assert stack["nats_urls"] == [f"tls://100.64.0.{i}:4222" for i in (1, 2, 3)]


def test_public_routes_run_routes_peers_and_the_route_port_over_the_public_addresses(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    render(Topology.parse(PUBLIC), out, toggles=NatsToggles())
    services = _compose(out, "n2")["services"]
    assert services["n2"]["ports"] == ["100.64.0.2:4222:4222", "100.64.0.2:6222:6222"]
    assert services["controlplane"]["ports"] == ["100.64.0.2:8470:8470"]
    # no private network: monitoring and metrics are not published on the public address
    assert "ports" not in services["authcallout"]
    assert "ports" not in services["natsexporter"]
    urls = [a for a in services["provision"]["command"] if a.startswith("--nats-url=")]
    assert urls == [
        "--nats-url=tls://n2:4222",
        "--nats-url=tls://100.64.0.1:4222",
        "--nats-url=tls://100.64.0.3:4222",
    ]
    for service in ("authcallout", "controlplane"):
        env = _env(out, "n2", service)
        assert (
            env["UNIBUS_NATS_URLS"] == "tls://n2:4222,tls://100.64.0.1:4222,tls://100.64.0.3:4222"
        )
    conf = (out / "n2" / "material" / "nodes" / "n2" / "nats-server.conf").read_text()
    assert 'advertise: "100.64.0.2:6222"' in conf
    assert all(f"@100.64.0.{i}:6222" in conf for i in (1, 2, 3))
    assert "10.9.0." not in conf
    stack = json.loads((out / "_material" / "stack.json").read_text())
    assert stack["nats_urls"] == [f"tls://100.64.0.{i}:4222" for i in (1, 2, 3)]
    certs = out / "n2" / "material" / "certs" / "nodes" / "n2"
    for pem in ("server.pem", "route.pem"):
        assert {"100.64.0.2", "n2", "n2.unibus.test"} <= _sans(certs / pem), pem


def test_public_routes_keep_a_given_private_address_in_the_certificates_only(
    tmp_path: Path,
) -> None:
    topology = Topology.parse(_topology(_hosts(), 'routes = "public"'))
    services = host_compose(topology.hosts[0], topology)["services"]
    assert not any("10.9.0." in port for port in services["n1"]["ports"])
    out = tmp_path / "out"
    render(topology, out, toggles=NatsToggles())
    server = out / "n1" / "material" / "certs" / "nodes" / "n1" / "server.pem"
    assert {"100.64.0.1", "10.9.0.1"} <= _sans(server)


def test_the_deploy_module_examples_hold() -> None:
    result = doctest.testmod(deploy)
    assert result.failed == 0
    assert result.attempted > 0


def test_one_prometheus_scrapes_every_host_on_its_private_address(tmp_path: Path) -> None:
    out = tmp_path / "out"
    render(Topology.parse(_topology(_hosts())), out, toggles=NatsToggles())
    config = yaml.safe_load((out / "monitoring" / "monitoring" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for i in (1, 2, 3):
        for role, port in (("nats", 7777), ("authcallout", 9471), ("controlplane", 9470)):
            job = jobs[f"{role}@n{i}"]
            assert job["static_configs"] == [{"targets": [f"10.9.0.{i}:{port}"]}]
            assert job["tls_config"]["server_name"] == f"n{i}"
            assert job["tls_config"]["ca_file"] == "/etc/prometheus/certs/client-ca.pem"
    ca = (out / "monitoring" / "certs" / "client-ca.pem").read_bytes()
    assert ca == (out / "_material" / "certs" / "client-ca.pem").read_bytes()
    assert not list((out / "monitoring").rglob("*key*"))
    service = yaml.safe_load((out / "monitoring" / "compose.yaml").read_text())["services"][
        "prometheus"
    ]
    assert service["ports"] == ["127.0.0.1:9090:9090"]


def test_without_a_private_network_no_prometheus_is_rendered(tmp_path: Path) -> None:
    out = tmp_path / "out"
    render(Topology.parse(PUBLIC), out, toggles=NatsToggles())
    assert not (out / "monitoring").exists()

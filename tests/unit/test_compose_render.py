"""`unibus compose init` and the stage step: what the container stack is given."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from unibus.cli.main import main
from unibus.client.profile import read_stack_info
from unibus.core.errors import ConfigError
from unibus.stack.certs import CertificateAuthority, write_pem_pair
from unibus.stack.compose import ComposeSpec, render_compose_dir, role_files, stage_material
from unibus.stack.material import ClientCa
from unibus.stack.natsconf import NatsToggles

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    spec = ComposeSpec(nats_ports=(14222, 14223, 14224), api_ports=(18470, 18471, 18472))
    render_compose_dir(tmp_path / "c", spec, toggles=NatsToggles())
    return tmp_path / "c"


def _sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in names.get_values_for_type(x509.IPAddress)} | set(
        names.get_values_for_type(x509.DNSName)
    )


def test_node_configs_use_in_container_paths_and_route_tls_between_containers(
    rendered: Path,
) -> None:
    """Every path in a rendered config is the container's; routes dial n1..n3 with mTLS."""
    for node in ("n1", "n2", "n3"):
        text = (rendered / "nodes" / node / "nats-server.conf").read_text()
        assert str(rendered) not in text
        assert f'advertise: "{node}:6222"' in text
        assert f'"/etc/unibus/certs/nodes/{node}/route.pem"' in text
        assert '"/etc/unibus/certs/route-ca.pem"' in text
        assert "verify: true" in text
        assert 'store_dir: "/data/jetstream"' in text
        assert all(f"@{peer}:6222" in text for peer in ("n1", "n2", "n3"))
        mode = stat.S_IMODE((rendered / "nodes" / node / "nats-server.conf").stat().st_mode)
        assert mode == 0o600


def test_env_files_and_compose_env_hold_no_secret(rendered: Path) -> None:
    """Services get file paths and addresses; seeds and the route secret stay in files."""
    secrets = [p.read_text().strip() for p in (rendered / "identities").glob("*.seed")]
    secrets.append((rendered / "identities" / "route-secret").read_text().strip())
    texts = [p.read_text() for p in (rendered / "env").glob("*.env")]
    texts += [(rendered / "compose.env").read_text(), (rendered / "stack.json").read_text()]
    assert len(texts) == 11  # three services per node, compose.env, stack.json
    for text in texts:
        assert not any(secret in text for secret in secrets)
    for seed in (rendered / "identities").glob("*.seed"):
        assert stat.S_IMODE(seed.stat().st_mode) == 0o600
    env = (rendered / "env" / "controlplane-n2.env").read_text()
    assert "UNIBUS_NATS_URLS=tls://n2:4222,tls://n1:4222,tls://n3:4222" in env
    assert "UNIBUS_API_TLS_KEY=/etc/unibus/certs/nodes/n2/server-key.pem" in env


def test_prometheus_scrapes_every_container_of_every_node_over_https(rendered: Path) -> None:
    config = yaml.safe_load((rendered / "monitoring" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for node in ("n1", "n2", "n3"):
        for role, target in (
            ("nats", f"natsexporter-{node}:7777"),
            ("authcallout", f"authcallout-{node}:9471"),
            ("controlplane", f"controlplane-{node}:9470"),
        ):
            job = jobs[f"{role}@{node}"]
            assert job["scheme"] == "https"
            assert job["tls_config"] == {
                "ca_file": "/etc/prometheus/certs/client-ca.pem",
                "server_name": node,
            }
            assert job["static_configs"] == [{"targets": [target]}]


def test_metrics_and_monitoring_serve_the_compose_network_over_https(rendered: Path) -> None:
    """A scraper on the compose network reads every node's monitoring endpoint, exporter,
    callout and API metrics; each listener serves HTTPS with the node's certificate."""
    key = "/etc/unibus/certs/nodes/n2/server-key.pem"
    conf = (rendered / "nodes" / "n2" / "nats-server.conf").read_text()
    assert 'https: "0.0.0.0:8222"' in conf
    env = {
        service: dict(
            line.split("=", 1)
            for line in (rendered / "env" / f"{service}-n2.env").read_text().splitlines()
            if line and not line.startswith("#")
        )
        for service in ("authcallout", "controlplane", "natsexporter")
    }
    assert env["authcallout"]["UNIBUS_AUTHCALLOUT_METRICS_ADDR"] == "0.0.0.0:9471"
    assert env["authcallout"]["UNIBUS_AUTHCALLOUT_METRICS_TLS_KEY"] == key
    assert env["controlplane"]["UNIBUS_API_METRICS_ADDR"] == "0.0.0.0:9470"
    assert env["controlplane"]["UNIBUS_API_METRICS_TLS_KEY"] == key
    assert env["natsexporter"] == {
        "UNIBUS_NATSEXPORTER_SERVERS": "n2=https://n2:8222",
        "UNIBUS_NATSEXPORTER_CA": "/etc/unibus/certs/client-ca.pem",
        "UNIBUS_NATSEXPORTER_ADDR": "0.0.0.0:7777",
        "UNIBUS_NATSEXPORTER_TLS_CERT": "/etc/unibus/certs/nodes/n2/server.pem",
        "UNIBUS_NATSEXPORTER_TLS_KEY": key,
    }


def test_stack_file_points_the_host_cli_at_the_published_loopback_ports(rendered: Path) -> None:
    info = read_stack_info(rendered)
    assert info.nats_urls == [f"tls://127.0.0.1:{p}" for p in (14222, 14223, 14224)]
    assert info.api_urls == [f"https://127.0.0.1:{p}" for p in (18470, 18471, 18472)]
    assert Path(info.admin_seed_file).is_file()
    env = (rendered / "compose.env").read_text()
    assert "UNIBUS_N3_API_PORT=18472" in env
    assert f"UNIBUS_COMPOSE_DIR={rendered}" in env


def test_certificates_cover_container_names_loopback_and_extra_sans(tmp_path: Path) -> None:
    spec = ComposeSpec(extra_sans=("192.0.2.7", "bus.example.org"))
    layout, _ = render_compose_dir(tmp_path / "c", spec, toggles=NatsToggles())
    sans = _sans(layout.certs.server_cert("n3"))
    assert {"n3", "localhost", "127.0.0.1", "192.0.2.7", "bus.example.org"} <= sans
    assert "n3" in _sans(layout.certs.route_cert("n3"))


def test_rendering_again_keeps_material_and_force_renews_it_but_the_first_admin(
    tmp_path: Path,
) -> None:
    """Configs are re-rendered on every init; identities and CAs only with --force, and
    never the first admin's identity (the users bucket names it: renewing material must
    not lock the operator out)."""
    layout, created = render_compose_dir(tmp_path / "c", ComposeSpec(), toggles=NatsToggles())
    assert "certificates" in created
    admin = read_stack_info(layout.root).admin_key
    ca = layout.certs.client_ca_cert.read_bytes()
    _, again = render_compose_dir(tmp_path / "c", ComposeSpec(), toggles=NatsToggles(monitor=True))
    assert again == []
    assert read_stack_info(layout.root).admin_key == admin
    assert layout.certs.client_ca_cert.read_bytes() == ca
    assert 'https: "0.0.0.0:8222"' in layout.node_config("n1").read_text()
    internal = layout.identity("internal").read_bytes()
    admin_seed = layout.identity("admin").read_bytes()
    render_compose_dir(tmp_path / "c", ComposeSpec(), toggles=NatsToggles(), force=True)
    assert read_stack_info(layout.root).admin_key == admin
    assert layout.identity("admin").read_bytes() == admin_seed
    assert layout.identity("internal").read_bytes() != internal
    assert layout.certs.client_ca_cert.read_bytes() != ca


def test_publish_host_must_be_an_address() -> None:
    with pytest.raises(ConfigError, match="--publish-host"):
        ComposeSpec(publish_host="my laptop")


def test_stage_gives_each_role_only_its_files(rendered: Path, tmp_path: Path) -> None:
    """No volume receives a CA key or the admin seed; the nats ones have no identity; a
    node's TLS private keys reach only that node's volumes."""
    target = tmp_path / "stage"
    counts = stage_material(
        rendered, target, nodes=("n1", "n2", "n3"), owners={"nats": None, "callout": None}
    )
    assert counts == {
        **{f"nats-n{i}": 6 for i in (1, 2, 3)},
        **{f"callout-n{i}": 8 for i in (1, 2, 3)},
        **{f"api-n{i}": 6 for i in (1, 2, 3)},
        **{f"exporter-n{i}": 3 for i in (1, 2, 3)},
        "monitoring": 4,  # the CA, prometheus.yml, the rules, the dashboard
        "tools": 3,
    }
    every = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}
    assert not any("ca-key" in p or p.endswith("admin.seed") for p in every)
    assert not any(p.startswith(("nats-", "exporter-")) and "/identities/" in p for p in every)
    assert "api-n1/identities/issuer.seed" not in every
    roles = ("nats", "callout", "api", "exporter")
    for volume in (f"{role}-n{i}" for role in roles for i in (1, 2, 3)):
        keys = {p for p in every if p.startswith(f"{volume}/") and p.endswith("-key.pem")}
        node = volume.rpartition("-")[2]
        assert keys, volume
        assert all(f"/certs/nodes/{node}/" in key for key in keys), volume
    assert not any(
        p.startswith(("tools/", "monitoring/")) and p.endswith(".pem") and "key" in p for p in every
    )
    for relative in role_files("callout", ["n1"]):
        staged = target / "callout-n1" / relative
        source_mode = stat.S_IMODE((rendered / relative).stat().st_mode)
        assert staged.read_bytes() == (rendered / relative).read_bytes()
        assert stat.S_IMODE(staged.stat().st_mode) == (0o600 if source_mode == 0o600 else 0o644)


def test_stage_without_init_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unibus compose init"):
        stage_material(tmp_path, tmp_path / "stage", nodes=("n1",), owners={})


def test_compose_init_verb_reports_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compose", "init", "--dir", str(tmp_path / "c"), "--json"]
    assert main([*argv, "--nats-port", "1", "--nats-port", "2", "--nats-port", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stack_file"].endswith("stack.json")
    assert main([*argv, "--api-port", "9"]) == 1
    assert "one port per node" in capsys.readouterr().err


def test_compose_file_has_no_top_level_name_and_publishes_on_the_publish_host() -> None:
    """compose v1 parsers reject `name:`; nothing is published beyond UNIBUS_PUBLISH_HOST,
    and Prometheus only on loopback."""
    text = (REPO / "compose.yaml").read_text()
    assert not re.search(r"^name:", text, re.MULTILINE)
    published = re.findall(r'ports: \["([^"]+)"\]', text)
    assert len(published) == 7
    # clients and the API on the publish host; Prometheus (no authentication) on loopback
    assert sum(p.startswith("${UNIBUS_PUBLISH_HOST:-127.0.0.1}:") for p in published) == 6
    assert "127.0.0.1:${UNIBUS_PROMETHEUS_PORT:-9090}:9090" in published


def test_compose_init_imports_the_client_ca_clients_already_pin(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("our existing client CA")
    cert, key = tmp_path / "ca.pem", tmp_path / "ca-key.pem"
    write_pem_pair(ca.cert, ca.key, cert, key)

    layout, created = render_compose_dir(
        tmp_path / "c", ComposeSpec(), toggles=NatsToggles(), client_ca=ClientCa(cert, key)
    )

    assert "certificates (client CA imported)" in created
    assert layout.certs.client_ca_cert.read_bytes() == cert.read_bytes()
    server = x509.load_pem_x509_certificate(layout.certs.server_cert("n2").read_bytes())
    server.verify_directly_issued_by(ca.cert)

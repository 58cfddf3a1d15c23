"""`unibus deploy render|apply`: per-host directories from one topology, and the dry-run plan."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from unibus.cli import deploy as cli_deploy
from unibus.cli.main import main
from unibus.core.errors import ConfigError
from unibus.stack.certs import CertificateAuthority, write_pem_pair
from unibus.stack.deploy import (
    EXAMPLE_TOPOLOGY,
    Topology,
    host_compose,
    plan,
    render,
    renew_host_certificates,
)
from unibus.stack.natsconf import NatsToggles

REPO = Path(__file__).resolve().parents[2]
# The example as an operator edits it: `deploy render` refuses the example's placeholders
# (tests/unit/test_deploy_topology.py).
TOPOLOGY = EXAMPLE_TOPOLOGY.replace("203.0.113.", "100.64.0.").replace(
    ".example.org", ".unibus.test"
)


@pytest.fixture
def topology_file(tmp_path: Path) -> Path:
    path = tmp_path / "topology.toml"
    path.write_text(TOPOLOGY)
    return path


@pytest.fixture
def out(tmp_path: Path) -> Path:
    render(Topology.parse(TOPOLOGY), tmp_path / "out", toggles=NatsToggles())
    return tmp_path / "out"


def test_the_shipped_example_topology_parses_once_its_placeholders_are_allowed() -> None:
    text = (REPO / "deploy" / "topology.example.toml").read_text()
    topology = Topology.parse(text, allow_placeholders=True)
    assert [h.private_ip for h in topology.hosts] == ["10.0.0.10", "10.0.0.11", "10.0.0.12"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.split('[[hosts]]\nname = "n3"')[0], "exactly 3"),
        (lambda t: t.replace("10.0.0.11", "10.0.0.300"), "is not an IP"),
        (lambda t: t.replace('"n2.unibus.test"', '"n1.unibus.test"'), "already"),
        (lambda t: t.replace('name = "n2"', 'name = "N 2"'), "node name"),
        (lambda t: t.replace('"/opt/unibus"', '"opt; rm -rf /"'), "remote_dir"),
    ],
)
def test_a_bad_topology_is_refused_with_the_field_to_fix(edit: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Topology.parse(edit(TOPOLOGY))  # type: ignore[operator]


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
    assert {"100.64.0.10", "10.0.0.10", "n1.unibus.test", "n1", "127.0.0.1"} <= sans
    env = (out / "n1" / "env" / "authcallout-n1.env").read_text()
    assert "UNIBUS_NATS_URLS=tls://n1:4222,tls://10.0.0.11:4222,tls://10.0.0.12:4222" in env


def test_a_host_moved_to_new_addresses_gets_new_certificates_from_the_same_cas(
    out: Path,
) -> None:
    material = out / "_material" / "certs"
    kept = {
        path: path.read_bytes()
        for path in [*material.glob("*.pem"), *(material / "nodes" / "n1").glob("*.pem")]
    }
    moved = TOPOLOGY.replace("100.64.0.12", "100.64.9.12").replace("10.0.0.12", "10.0.9.12")

    render(Topology.parse(moved), out, toggles=NatsToggles())

    assert {path: path.read_bytes() for path in kept} == kept, "a CA or n1's leaf changed"
    cert = x509.load_pem_x509_certificate(
        (out / "n3" / "material" / "certs" / "nodes" / "n3" / "server.pem").read_bytes()
    )
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(v) for v in names.get_values_for_type(x509.IPAddress)} == {
        "100.64.9.12",
        "10.0.9.12",
        "127.0.0.1",
    }
    conf = (out / "n1" / "material" / "nodes" / "n1" / "nats-server.conf").read_text()
    assert "@10.0.9.12:6222" in conf, "n1's routes do not name n3's new address"


def test_host_compose_publishes_clients_publicly_routes_privately_with_restart_policies(
    out: Path,
) -> None:
    document = yaml.safe_load((out / "n3" / "compose.yaml").read_text())
    services = document["services"]
    assert services["n3"]["ports"] == [
        "100.64.0.12:4222:4222",
        "10.0.0.12:4222:4222",
        "10.0.0.12:6222:6222",
        "10.0.0.12:8222:8222",
    ]
    # metrics and monitoring on the private address only, never on the public one
    assert services["controlplane"]["ports"] == ["100.64.0.12:8470:8470", "10.0.0.12:9470:9470"]
    restarts = {name: service["restart"] for name, service in services.items()}
    assert sorted(n for n, r in restarts.items() if r == "unless-stopped") == [
        "authcallout",
        "controlplane",
        "n3",
        "natsexporter",
    ]
    assert "name" not in document, "the project name is chosen where it runs"
    stack = json.loads((out / "_material" / "stack.json").read_text())
    assert stack["nats_urls"][0] == "tls://100.64.0.10:4222"


def _cluster_down(monkeypatch: pytest.MonkeyPatch, *, answers: bool = False) -> None:
    # No sockets in unit tests: whether the cluster answers is decided here.
    async def cluster_answers(*_: object, **__: object) -> bool:
        return answers

    monkeypatch.setattr(cli_deploy, "cluster_answers", cluster_answers)


def test_an_update_of_a_running_cluster_ships_everything_then_rolls_one_node_at_a_time(
    out: Path,
    topology_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _cluster_down(monkeypatch, answers=True)
    code = main(["deploy", "apply", "--topology", str(topology_file), "--out", str(out), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["update"] is True
    commands = [step["command"] for step in report["steps"]]
    assert len(commands) == 9, "mkdir, copy and load per host; no host started at once"
    assert not any(" up -d" in command for command in commands)
    rollout = report["rollout"]
    stops = [line for line in rollout if line.endswith(" stop n1'") or " stop n" in line]
    assert stops, rollout
    order = [line.split("]")[0].strip("[") for line in rollout if "up -d --no-deps" in line]
    assert order == ["n1", "n2", "n3"]
    assert rollout.index(next(line for line in rollout if line.startswith("[n1] wait"))) < (
        rollout.index(next(line for line in rollout if line.startswith("[n2]")))
    )


def test_apply_with_start_starts_every_host_even_when_a_node_answers(
    out: Path,
    topology_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _cluster_down(monkeypatch, answers=True)
    argv = ["deploy", "apply", "--topology", str(topology_file), "--out", str(out), "--json"]
    assert main([*argv, "--start"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["update"] is False
    assert sum(" up -d" in step["command"] for step in report["steps"]) == 3


def test_apply_without_yes_prints_the_plan_and_runs_nothing(
    out: Path,
    topology_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The dry run never starts a process: no ssh, no scp, no docker."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a dry run started {args!r}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    _cluster_down(monkeypatch)
    code = main(["deploy", "apply", "--topology", str(topology_file), "--out", str(out), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] is True
    assert report["update"] is False
    assert report["rollout"] == []
    commands = [step["command"] for step in report["steps"]]
    assert len(commands) == 12
    assert commands[0] == "ssh root@100.64.0.10 'mkdir -p /opt/unibus'"
    assert commands[2].startswith(
        "docker save nats:2.15.1 unibus/unibus:local unibus/authcallout:local "
        "unibus/controlplane:local unibus/natsexporter:local | ssh root@"
    )
    assert commands[3].endswith("-p unibus up -d'")


def test_each_role_runs_its_own_image_and_apply_ships_exactly_those(out: Path) -> None:
    """No service runs the CLI image; the plan loads every image the hosts name, no other."""
    topology = Topology.parse(TOPOLOGY)
    services = host_compose(topology.hosts[0], topology)["services"]
    assert {name: service["image"] for name, service in services.items()} == {
        "stage": "unibus/unibus:local",
        "provision": "unibus/unibus:local",
        "migrate": "unibus/unibus:local",  # the CLI holds the migration: one image fewer
        "n1": "nats:2.15.1",
        "authcallout": "unibus/authcallout:local",
        "controlplane": "unibus/controlplane:local",
        "natsexporter": "unibus/natsexporter:local",
    }
    text = (out / "n1" / "compose.yaml").read_text()
    assert 'image: "unibus/authcallout:local"' in text
    load = [step for step in plan(topology, out) if step.what == "load the images"]
    assert len(load) == 3
    assert set(load[0].argv[2:]) == {service["image"] for service in services.values()}


@pytest.mark.parametrize(
    ("cluster", "images"),
    [
        # A topology from before the split: `image` still names the CLI image, the
        # services' images sit beside it (same registry, namespace and tag).
        (
            'image = "registry.example.org:5000/ops/unibus:1.4"',
            {
                "tools": "registry.example.org:5000/ops/unibus:1.4",
                "authcallout": "registry.example.org:5000/ops/authcallout:1.4",
                "controlplane": "registry.example.org:5000/ops/controlplane:1.4",
                "natsexporter": "registry.example.org:5000/ops/natsexporter:1.4",
            },
        ),
        (
            'image = "ops/unibus:2"\ncontrolplane_image = "ops/api:7"',
            {
                "tools": "ops/unibus:2",
                "authcallout": "ops/authcallout:2",
                "controlplane": "ops/api:7",
                "natsexporter": "ops/natsexporter:2",
            },
        ),
    ],
)
def test_service_images_default_to_siblings_of_the_cli_image(
    cluster: str, images: dict[str, str]
) -> None:
    text = TOPOLOGY.replace("[cluster]\n", f"[cluster]\n{cluster}\n")
    assert Topology.parse(text).images() == images


def test_a_digest_pinned_cli_image_needs_the_service_images_named() -> None:
    pinned = 'image = "ops/unibus@sha256:' + "0" * 64 + '"'
    text = TOPOLOGY.replace("[cluster]\n", f"[cluster]\n{pinned}\n")
    with pytest.raises(ConfigError, match=r"cluster\.authcallout_image"):
        Topology.parse(text)
    named = (
        f'{pinned}\nauthcallout_image = "ops/a@sha256:1"\ncontrolplane_image = "ops/c:1"\n'
        'natsexporter_image = "ops/e:1"'
    )
    topology = Topology.parse(TOPOLOGY.replace("[cluster]\n", f"[cluster]\n{named}\n"))
    assert topology.images()["authcallout"] == "ops/a@sha256:1"


def test_apply_before_render_says_to_render(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unibus deploy render"):
        plan(Topology.parse(TOPOLOGY), tmp_path)


def test_replace_over_ssh_without_yes_plans_one_host_ships_it_first_and_runs_nothing(
    out: Path,
    topology_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a dry run started {args!r}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    argv = ["replace", "n2", "--topology", str(topology_file), "--out", str(out), "--wipe"]
    assert main([*argv, "--json"]) == 0
    plan_lines = json.loads(capsys.readouterr().out)["plan"]
    assert all(line.startswith("[n2]") for line in plan_lines), plan_lines
    assert all("100.64.0.10" not in line and "100.64.0.12" not in line for line in plan_lines)
    assert plan_lines[0].startswith("[n2] check: the other nodes answer")
    renew = next(i for i, line in enumerate(plan_lines) if "new route and server cert" in line)
    copy = next(i for i, line in enumerate(plan_lines) if "scp -rp" in line)
    assert renew < copy
    wipe = next(i for i, line in enumerate(plan_lines) if "rm --stop --force n2" in line)
    start = next(i for i, line in enumerate(plan_lines) if "up -d --no-deps n2" in line)
    assert copy < wipe < start
    assert plan_lines[-1] == "[n2] wait: every asset at full replication, callout and API ready"


def test_a_replaced_host_gets_new_keys_for_itself_only_in_the_material_and_its_directory(
    out: Path,
) -> None:
    def pems(root: Path) -> dict[Path, bytes]:
        return {p.relative_to(out): p.read_bytes() for p in root.rglob("*.pem")}

    material, before = out / "_material" / "certs", pems(out)

    issued = renew_host_certificates(Topology.parse(TOPOLOGY), out, "n3")

    assert issued == ["n3 route", "n3 server"]
    after = pems(out)
    changed = {p.as_posix() for p in after if after[p] != before[p]}
    assert changed == {
        f"{where}/certs/nodes/n3/{name}.pem"
        for where in ("_material", "n3/material")
        for name in ("route", "route-key", "server", "server-key")
    }
    for name in ("route", "server-key"):
        shipped = out / "n3" / "material" / "certs" / "nodes" / "n3" / f"{name}.pem"
        assert shipped.read_bytes() == (material / "nodes" / "n3" / f"{name}.pem").read_bytes()


def test_renewing_a_host_that_is_not_in_the_topology_or_not_rendered_says_what_to_do(
    out: Path, tmp_path: Path
) -> None:
    topology = Topology.parse(TOPOLOGY)
    with pytest.raises(ConfigError, match="no host 'n4'"):
        renew_host_certificates(topology, out, "n4")
    with pytest.raises(ConfigError, match="unibus deploy render"):
        renew_host_certificates(topology, tmp_path / "elsewhere", "n3")


def test_a_host_runs_the_migration_on_demand_from_its_legacy_directory(out: Path) -> None:
    topology = Topology.parse(TOPOLOGY)
    migrate = host_compose(topology.hosts[1], topology)["services"]["migrate"]
    assert migrate["profiles"] == ["migrate"], "never started by `up`"
    assert migrate["restart"] == "no"
    assert migrate["entrypoint"][:3] == [
        "unibus",
        "migrate-to-kv",
        "--db=/legacy/${UNIBUS_LEGACY_DB:-membershipd.db}",
    ]
    # Its own node by name, the peers at their route addresses, as provisioning does.
    assert "--nats-url=tls://n2:4222" in migrate["entrypoint"]
    assert "--nats-url=tls://10.0.0.10:4222" in migrate["entrypoint"]
    assert "--identity=/etc/unibus/identities/internal.seed" in migrate["entrypoint"]
    assert "${UNIBUS_LEGACY_DIR:-./legacy}:/legacy" in migrate["volumes"]


def test_deploy_migrate_without_yes_plans_the_copy_and_the_run_on_one_host(
    out: Path,
    topology_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a dry run started {args!r}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    db = tmp_path / "membership.db"
    db.write_bytes(b"SQLite format 3\x00")
    argv = ["deploy", "migrate", "--topology", str(topology_file), "--out", str(out)]

    assert main([*argv, "--db", str(db), "--host", "n2", "--force", "--json"]) == 0

    commands = [step["command"] for step in json.loads(capsys.readouterr().out)["steps"]]
    assert commands == [
        "ssh root@100.64.0.11 'install -d -m 0700 /opt/unibus/legacy'",
        f"scp -p {db} root@100.64.0.11:/opt/unibus/legacy/membershipd.db",
        "ssh root@100.64.0.11 'docker compose --project-directory /opt/unibus -f "
        "/opt/unibus/compose.yaml -p unibus --profile migrate run --rm migrate --force'",
    ]


def test_deploy_migrate_refuses_a_missing_file_or_an_unknown_host(
    out: Path, topology_file: Path, tmp_path: Path
) -> None:
    argv = ["deploy", "migrate", "--topology", str(topology_file), "--out", str(out)]
    assert main([*argv, "--db", str(tmp_path / "nowhere.db")]) == 1
    db = tmp_path / "membership.db"
    db.write_bytes(b"x")
    assert main([*argv, "--db", str(db), "--host", "n9"]) == 1


def _own_ca(directory: Path) -> tuple[Path, Path]:
    """A client CA of the operator's own, as clients in the field already pin it."""
    ca = CertificateAuthority.create("our existing client CA")
    cert, key = directory / "ca.pem", directory / "ca-key.pem"
    write_pem_pair(ca.cert, ca.key, cert, key)
    return cert, key


def test_deploy_render_imports_the_client_ca_clients_already_pin(
    topology_file: Path, tmp_path: Path
) -> None:
    cert, key = _own_ca(tmp_path)
    out = tmp_path / "out"
    argv = ["deploy", "render", "--topology", str(topology_file), "--out", str(out)]

    assert main([*argv, "--client-ca-cert", str(cert), "--client-ca-key", str(key)]) == 0

    pinned = x509.load_pem_x509_certificate(cert.read_bytes())
    for host in ("n1", "n2", "n3"):
        shipped = out / host / "material" / "certs"
        assert (shipped / "client-ca.pem").read_bytes() == cert.read_bytes()
        server = x509.load_pem_x509_certificate(
            (shipped / "nodes" / host / "server.pem").read_bytes()
        )
        server.verify_directly_issued_by(pinned)
    # Rendering again keeps it; another CA is refused unless the material is renewed.
    assert main(argv) == 0
    other_cert, other_key = _own_ca(tmp_path / "other")
    refused = [*argv, "--client-ca-cert", str(other_cert), "--client-ca-key", str(other_key)]
    assert main(refused) == 1
    assert (out / "_material" / "certs" / "client-ca.pem").read_bytes() == cert.read_bytes()
    assert main([*argv, "--client-ca-cert", str(cert)]) == 1  # the key goes with it

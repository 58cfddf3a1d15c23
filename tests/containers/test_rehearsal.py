"""The three-VPS deployment rehearsed: `deploy render`'s per-host output as three compose
projects, each with its own addresses (issue 13; ``tests/containers/rehearsal.py``).

* Routes over the private network, clients and the API on the public one: a cold start
  from clean volumes passes ``clientcheck`` through ``OUT/_material`` and ``status`` is
  healthy; then ``unibus.stack.rollout`` restarts the three hosts' nodes one at a time
  through their own compose projects while a member publishes and a fresh client
  connects every 200 ms: every asset R3 at the end, nothing acknowledged lost, no
  connect refused.
* Routes over the public addresses, no private network (the seeds' deployment): a cold
  start passes ``clientcheck``.

* ``unibus.stack.chaos`` against the three projects: every invariant holds and the
  cluster is restored.
* A host lost with its volumes comes back empty under its name, with its old address:
  ``unibus.stack.replace`` stages its material and starts it, its peers rebuild it, the
  messages written before the loss are all there and ``clientcheck`` passes.

The public variant runs first and is removed before the private one starts, so one
rehearsal runs at a time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509

from tests.containers.harness import admitted_within, docker
from tests.containers.rehearsal import HOSTS, Rehearsal
from tests.fixtures.legacy import build_legacy_db
from unibus.client.api import ApiClient
from unibus.client.sdk import Client
from unibus.core.connect import NatsTarget, connect
from unibus.core.nkeys import KeyPair, Prefix, read_seed_file, write_seed_file
from unibus.stack.chaos import PHASES, ChaosCheck
from unibus.stack.chaos import Deployment as ChaosTarget
from unibus.stack.clusterstate import operator_connections
from unibus.stack.deploy import renew_host_certificates
from unibus.stack.drivers import ComposeDriver
from unibus.stack.replace import ReplaceReport, replace
from unibus.stack.rollout import RolloutReport, rollout

pytestmark = pytest.mark.timeout(900)
NODE_BOUND = 240.0


@pytest.fixture
def public_rehearsal(tmp_path: Path) -> Iterator[Rehearsal]:
    rehearsal = Rehearsal.create(tmp_path, routes="public")
    try:
        rehearsal.up()
        yield rehearsal
    finally:
        rehearsal.down()


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    shared = Rehearsal.create(tmp_path_factory.mktemp("rehearsal"), routes="private")
    try:
        shared.up()
        yield shared
    finally:
        shared.down()


def _clientcheck(rehearsal: Rehearsal) -> None:
    result = rehearsal.cli("clientcheck", "--dir", str(rehearsal.material), timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "clientcheck passed" in result.stdout


# Prints the remote address of every established connection on port 6222, from either
# table: the node listens on a dual-stack socket, so accepted routes sit in tcp6 with an
# IPv4-mapped address. Anything else prints as None, and fails the comparison.
_ROUTE_PEERS = """
import socket, struct
MAPPED = "0000000000000000FFFF0000"
def ipv4(address):
    if len(address) == 32:
        if address[:24].upper() != MAPPED:
            return None
        address = address[24:]
    return socket.inet_ntoa(struct.pack("<I", int(address, 16)))
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).readlines()[1:]:
        fields = line.split()
        (_, here), (there, port) = (end.split(":") for end in fields[1:3])
        if fields[3] == "01" and 6222 in (int(here, 16), int(port, 16)):
            print(ipv4(there))
"""


def _route_peers(rehearsal: Rehearsal, host: str) -> set[str]:
    """The addresses of the peers ``host``'s node has a route with (one side dials, the
    other accepts), read in the host's namespace, which its ``vps`` container holds (the
    nats image has no shell)."""
    container = rehearsal.compose(host, "ps", "-q", "vps").stdout.strip()
    result = docker("exec", container, "python", "-c", _ROUTE_PEERS)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_the_public_routes_variant_cold_starts_routing_over_public_addresses_and_passes_clientcheck(
    public_rehearsal: Rehearsal,
) -> None:
    assert set(public_rehearsal.networks) == {"public"}, "no private network at all"
    status = public_rehearsal.wait_healthy()
    assert all(a["replicas"] == 3 and not a["degraded"] for a in status["assets"])
    _clientcheck(public_rehearsal)
    hosts = public_rehearsal.topology.hosts
    for host in hosts:
        peers = {h.public_ip for h in hosts if h is not host}
        assert _route_peers(public_rehearsal, host.name) == peers, host.name


def test_the_rehearsal_cold_starts_healthy_with_private_routes_and_passes_clientcheck(
    rehearsal: Rehearsal,
) -> None:
    status = rehearsal.wait_healthy()
    assert all(a["replicas"] == 3 and not a["degraded"] for a in status["assets"])
    info = rehearsal.info
    assert info.nats_urls == [f"tls://{h.public_ip}:4222" for h in rehearsal.topology.hosts]
    _clientcheck(rehearsal)
    hosts = rehearsal.topology.hosts
    for host in hosts:
        peers = {h.private_ip for h in hosts if h is not host}
        assert _route_peers(rehearsal, host.name) == peers, host.name


# -- a rollout of the rehearsal, through each host's own compose project -------------------


async def _roll_while_used(rehearsal: Rehearsal, probe_seed: Path) -> dict[str, Any]:
    info = rehearsal.info
    ca = Path(info.ca_file)
    admin = ApiClient(info.api_urls, read_seed_file(Path(info.admin_seed_file)), ca_file=ca)
    member = KeyPair.generate(Prefix.USER)
    prober = read_seed_file(probe_seed)
    async with admin:
        await admin.add_user(member.public_key, "rolling")
        await admin.add_user(prober.public_key, "probe")
    urls = tuple(info.nats_urls)
    internal = NatsTarget(urls=urls, ca_file=ca, identity_file=Path(info.internal_id_file))
    system = NatsTarget(urls=urls, ca_file=ca, identity_file=Path(info.sys_id_file))
    driver = ComposeDriver(rehearsal.compose_nodes())
    said: list[str] = []
    acked: list[bytes] = []
    outcomes: list[BaseException | None] = []
    client = await Client.open(
        identity=member, nats_urls=info.nats_urls, api_urls=info.api_urls, ca_file=ca
    )
    nc = await connect(internal, name="rehearsal-rollout")
    sys_nc = await connect(system, name="rehearsal-rollout")
    try:
        room = await client.create_room()
        await room.wait_admitted()
        rolling = asyncio.create_task(
            rollout(driver, nc, sys_nc, node_bound=NODE_BOUND, progress=said.append)
        )
        target = NatsTarget(urls=urls, ca_file=ca, identity_file=probe_seed)

        async def probe_every_200ms() -> None:
            while not rolling.done():
                began = time.monotonic()
                outcomes.append(await admitted_within(target))
                await asyncio.sleep(max(0.0, 0.2 - (time.monotonic() - began)))

        probing = asyncio.create_task(probe_every_200ms())
        try:
            async with asyncio.timeout(len(HOSTS) * NODE_BOUND + 60):
                index = 0
                while not rolling.done():
                    data = f"rolling {index}".encode()
                    await room.publish(data)
                    acked.append(data)
                    index += 1
                    await asyncio.sleep(0.05)
                report: RolloutReport = await rolling
                await probing
        finally:
            rolling.cancel()
            probing.cancel()
        stored = [m.data async for m in room.history()]
    finally:
        await sys_nc.close()
        await nc.close()
        await client.close()
    return {
        "report": report,
        "said": said,
        "acked": acked,
        "stored": stored,
        "outcomes": outcomes,
    }


def _started_at(rehearsal: Rehearsal, host: str) -> str:
    container = rehearsal.compose(host, "ps", "-q", host).stdout.strip()
    result = docker("inspect", "-f", "{{.State.StartedAt}}", container)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_rollout_of_the_three_host_projects_loses_nothing_and_ends_with_every_asset_r3(
    rehearsal: Rehearsal, tmp_path: Path
) -> None:
    rehearsal.wait_healthy()
    before = {host: _started_at(rehearsal, host) for host in HOSTS}
    probe_seed = tmp_path / "probe.nk"
    write_seed_file(probe_seed, KeyPair.generate(Prefix.USER).seed)

    result = asyncio.run(_roll_while_used(rehearsal, probe_seed))

    report: RolloutReport = result["report"]
    assert sorted(n.node for n in report.nodes) == list(HOSTS), result["said"]
    assert report.after is not None
    assert report.after.problems() == []
    after = {host: _started_at(rehearsal, host) for host in HOSTS}
    assert all(after[h] != before[h] for h in HOSTS), (before, after)
    status = rehearsal.wait_healthy()
    assert all(a["replicas"] == 3 and not a["degraded"] for a in status["assets"])

    refused = [repr(e) for e in result["outcomes"] if e is not None]
    assert len(result["outcomes"]) > 50, "the connect probe barely ran"
    assert refused == [], f"connects failed during the rollout: {refused[:5]}"
    assert len(result["acked"]) > 50, "the publisher barely ran"
    missing = set(result["acked"]) - set(result["stored"])
    assert not missing, f"{len(missing)} acknowledged messages lost"


# -- the operator's chaos check, against the three hosts -----------------------------------------


def test_chaoscheck_against_the_three_host_projects_holds_every_invariant_and_restores(
    rehearsal: Rehearsal,
) -> None:
    """Each host's node, callout and API are stopped, frozen and started through that
    host's own compose project, as `unibus chaoscheck --topology` does over ssh."""
    rehearsal.wait_healthy()
    said: list[str] = []
    check = ChaosCheck(
        ComposeDriver(rehearsal.compose_nodes()),
        ChaosTarget.from_stack_info(rehearsal.info),
        phases=list(PHASES),
        bound=NODE_BOUND,
        progress=said.append,
    )

    report = asyncio.run(check.run()).to_json()

    assert report["ok"] is True, [
        (phase["phase"], [i for i in phase["invariants"] if not i["held"]])
        for phase in report["phases"]
    ]
    assert [phase["phase"] for phase in report["phases"]] == [*PHASES, "restore"]
    status = rehearsal.wait_healthy()
    assert all(a["replicas"] == 3 and not a["degraded"] for a in status["assets"])
    _clientcheck(rehearsal)


# -- a host lost with its disk, replaced under the same name --------------------------------------


_SERVER_PEM = "certs/nodes/{}/server.pem"


def _served_certificate(url: str, ca: Path) -> x509.Certificate:
    """The certificate a node presents to a client (TLS first, as the servers require)."""
    address = urlsplit(url)
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # the chain is what is checked here, not the name
    host, port = address.hostname or "", address.port or 4222
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def _write_then_replace(rehearsal: Rehearsal, lost: str, probe_seed: Path) -> dict[str, Any]:
    info = rehearsal.info
    ca = Path(info.ca_file)
    member = KeyPair.generate(Prefix.USER)
    prober = read_seed_file(probe_seed)
    admin = ApiClient(info.api_urls, read_seed_file(Path(info.admin_seed_file)), ca_file=ca)
    async with admin:
        await admin.add_user(member.public_key, "before-the-loss")
        await admin.add_user(prober.public_key, "probe")
    client = await Client.open(
        identity=member, nats_urls=info.nats_urls, api_urls=info.api_urls, ca_file=ca
    )
    try:
        room = await client.create_room()
        await room.wait_admitted()
        written = [f"before the loss {i}".encode() for i in range(20)]
        for data in written:
            await room.publish(data)

        # The host is gone: its containers and every volume (data and material alike).
        lost_host = rehearsal.compose(lost, "down", "-v", "--timeout", "10")
        assert lost_host.returncode == 0, lost_host.stderr
        # A new machine with the old one's address; nothing of unibus on it yet. As
        # `unibus replace --topology` does, the node gets new keys (the old ones stayed
        # on the lost disk) in the operator's material and the host's directory.
        machine = rehearsal.compose(lost, "up", "-d", "--no-deps", "vps")
        assert machine.returncode == 0, machine.stderr
        old_cert = (rehearsal.out / lost / "material" / _SERVER_PEM.format(lost)).read_bytes()
        issued = renew_host_certificates(rehearsal.topology, rehearsal.out, lost)
        assert issued == [f"{lost} route", f"{lost} server"]

        urls = tuple(info.nats_urls)
        internal = NatsTarget(urls=urls, ca_file=ca, identity_file=Path(info.internal_id_file))
        system = NatsTarget(urls=urls, ca_file=ca, identity_file=Path(info.sys_id_file))
        said: list[str] = []
        async with operator_connections(internal, system, name="rehearsal-replace") as (
            nc,
            sys_nc,
        ):
            report = await replace(
                ComposeDriver(rehearsal.compose_nodes()),
                lost,
                nc,
                sys_nc,
                wipe=False,
                node_bound=NODE_BOUND,
                progress=said.append,
            )
        stored = [m.data async for m in room.history()]
        through_it = NatsTarget(
            urls=(info.nats_urls[HOSTS.index(lost)],), ca_file=ca, identity_file=probe_seed
        )
        admitted = await admitted_within(through_it)
        served = await asyncio.to_thread(_served_certificate, info.nats_urls[HOSTS.index(lost)], ca)
    finally:
        await client.close()
    return {
        "report": report,
        "said": said,
        "written": written,
        "stored": stored,
        "admitted": admitted,
        "old_cert": old_cert,
        "served": served,
    }


def test_a_host_lost_with_its_volumes_is_replaced_under_its_name_and_rebuilt_by_its_peers(
    rehearsal: Rehearsal, tmp_path: Path
) -> None:
    rehearsal.wait_healthy()
    probe_seed = tmp_path / "probe.nk"
    write_seed_file(probe_seed, KeyPair.generate(Prefix.USER).seed)

    result = asyncio.run(_write_then_replace(rehearsal, "n3", probe_seed))

    report: ReplaceReport = result["report"]
    assert report.was_running is False, "the lost host's node still answered"
    assert report.after.problems() == [], result["said"]
    status = rehearsal.wait_healthy()
    assert all(a["replicas"] == 3 and not a["degraded"] for a in status["assets"])
    assert result["admitted"] is None, f"a connect through the new n3: {result['admitted']!r}"
    missing = set(result["written"]) - set(result["stored"])
    assert not missing, f"{len(missing)} messages written before the loss are gone"
    new_cert = (rehearsal.out / "n3" / "material" / _SERVER_PEM.format("n3")).read_bytes()
    assert new_cert != result["old_cert"]
    assert result["served"] == x509.load_pem_x509_certificate(new_cert), "n3 serves its old cert"
    _clientcheck(rehearsal)


# -- the legacy migration, run on a host as `unibus deploy migrate` runs it ----------------------


def test_the_migration_runs_on_a_host_from_its_legacy_directory_into_the_cluster(
    rehearsal: Rehearsal,
) -> None:
    """`deploy migrate` copies the file to REMOTE_DIR/legacy/membershipd.db and runs the
    host's `migrate` service; here the host's directory is OUT/n2 itself."""
    rehearsal.wait_healthy()
    legacy = rehearsal.out / "n2" / "legacy"
    legacy.mkdir(mode=0o700)
    fixture = build_legacy_db(legacy / "membershipd.db", users=6, rooms=4, members_per_room=3)

    run = rehearsal.compose("n2", "--profile", "migrate", "run", "--rm", "migrate", "--json")

    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["parity"] is True, report
    listed = rehearsal.cli("user", "list", "--dir", str(rehearsal.material), "--json")
    assert listed.returncode == 0, listed.stderr
    keys = {user["key"] for user in json.loads(listed.stdout)}
    assert {fixture.canonical(k) for k in fixture.users} <= keys
    assert any(p.name.startswith("membershipd.db.") for p in legacy.iterdir()), "no backup"

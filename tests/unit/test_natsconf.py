"""The rendered nats-server configuration and the posture check (SPEC §3).

Rendered configs are checked three ways: parsed back into a structure by a tiny reader
of the subset the renderer writes, grepped for what must never appear, and handed to
the real ``nats-server -t`` (parses and validates without opening sockets; it loads
the TLS files and checks every nkey, so the tests create real ones).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from unibus.core import naming
from unibus.core.errors import ConfigError, PostureError
from unibus.stack.natsconf import (
    ROUTE_USER,
    AuthIdentities,
    ClientTLS,
    ClusterConfig,
    NatsToggles,
    NodeConfig,
    RouteTLS,
    render_node_config,
    validate_posture,
    write_node_config,
)

SECRET = "route-secret_0123456789.abc~XYZ"
ANY_V4 = "0.0.0.0"  # noqa: S104 - the wildcard bind these tests render and refuse
QUIET = NatsToggles()

# -- throwaway nkeys ----------------------------------------------------------------------


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _public_nkey(kind: str, raw: bytes | None = None) -> str:
    """A valid nkey public key (the server checks only prefix and checksum)."""
    prefix = {"A": 0, "U": 20 << 3, "X": 23 << 3}[kind]
    body = bytes([prefix]) + (raw if raw is not None else os.urandom(32))
    return base64.b32encode(body + _crc16(body).to_bytes(2, "little")).decode().rstrip("=")


def _identities() -> AuthIdentities:
    return AuthIdentities(
        issuer=_public_nkey("A"),
        xkey=_public_nkey("X"),
        callout_user=_public_nkey("U"),
        internal_user=_public_nkey("U"),
        system_user=_public_nkey("U"),
    )


# -- throwaway PKI ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pki:
    route: RouteTLS
    client: ClientTLS


def _write_pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _issue(
    directory: Path,
    name: str,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    usages: list[x509.ObjectIdentifier],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.issuer_name(subject).add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        )
        signer = key
    else:
        builder = (
            builder.issuer_name(issuer[0].subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        signer = issuer[1]
    cert = builder.sign(signer, hashes.SHA256())
    _write_pem(directory / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write_pem(
        directory / f"{name}-key.pem",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> _Pki:
    """A route CA separate from the client-facing CA, as SPEC §3 asks."""
    d = tmp_path_factory.mktemp("pki")
    route_ca = _issue(d, "route-ca", issuer=None, usages=[])
    _issue(
        d,
        "route",
        issuer=route_ca,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    client_ca = _issue(d, "client-ca", issuer=None, usages=[])
    _issue(d, "server", issuer=client_ca, usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    return _Pki(
        route=RouteTLS(d / "route.pem", d / "route-key.pem", d / "route-ca.pem"),
        client=ClientTLS(d / "server.pem", d / "server-key.pem"),
    )


# -- the real server ----------------------------------------------------------------------


def _find_nats_server() -> str | None:
    found = shutil.which("nats-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.exists() else None


@pytest.fixture(scope="module")
def nats_server() -> str:
    binary = _find_nats_server()
    if binary is None:
        pytest.skip("nats-server binary not found on PATH or next to the interpreter")
    return binary


@pytest.fixture
def server_accepts(nats_server: str, tmp_path: Path) -> Callable[[str], None]:
    """Assert that ``nats-server -t`` accepts a rendered config."""

    def check(text: str) -> None:
        conf = tmp_path / "check" / "nats-server.conf"
        write_node_config(conf, text)
        result = subprocess.run(
            [nats_server, "-t", "-c", str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "is valid" in output, output

    return check


# -- a reader for the nats config subset the renderer writes ------------------------------

_TOKEN_RE = re.compile(
    r'(?P<space>\s+)|(?P<comment>#[^\n]*)|"(?P<string>[^"\n]*)"|(?P<punct>[{}\[\]:,])'
    r'|(?P<word>[^\s{}\[\]:,"#]+)'
)


def _parse(text: str) -> dict[str, Any]:
    """Parse the rendered config into dicts and lists; a repeated key is an error.

    nats-server silently lets a later key win, which is exactly what an injected line
    would exploit, so the reader refuses duplicates.
    """
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        assert match is not None, f"unexpected text at {pos}: {text[pos : pos + 20]!r}"
        pos = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("space", "comment"):
            tokens.append((kind, match.group(kind)))
    stream = iter([*tokens, ("eof", "")])
    current = next(stream)

    def advance() -> tuple[str, str]:
        nonlocal current
        taken, current = current, next(stream)
        return taken

    def scalar(kind: str, raw: str) -> Any:
        if kind == "string":
            return raw
        if raw in ("true", "false"):
            return raw == "true"
        for cast in (int, float):
            try:
                return cast(raw)
            except ValueError:
                pass
        return raw

    def value() -> Any:
        kind, raw = advance()
        if (kind, raw) == ("punct", "{"):
            return body("}")
        if (kind, raw) == ("punct", "["):
            items = []
            while current != ("punct", "]"):
                items.append(value())
                if current == ("punct", ","):
                    advance()
            advance()
            return items
        assert kind in ("string", "word"), (kind, raw)
        return scalar(kind, raw)

    def body(end: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        while current != (("punct", end) if end else ("eof", "")):
            kind, key = advance()
            assert kind in ("word", "string"), (kind, key)
            assert key not in result, f"duplicate key {key!r}"
            if current == ("punct", ":"):
                advance()
            result[key] = value()
            if current == ("punct", ","):
                advance()
        if end:
            advance()
        return result

    return body("")


# -- builders -----------------------------------------------------------------------------


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "route.secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def _cluster_nodes(
    base: Path, pki: _Pki, secret_file: Path | None, *, host: str = "127.0.0.1"
) -> list[NodeConfig]:
    auth = _identities()
    routes = tuple(f"{host}:{6220 + i}" for i in (1, 2, 3))
    return [
        NodeConfig(
            server_name=f"n{i}",
            listen_host=host,
            listen_port=4220 + i,
            store_dir=base / f"n{i}" / "js",
            client_tls=pki.client,
            auth=auth,
            cluster=ClusterConfig(
                name="unibus",
                listen_host=host,
                listen_port=6220 + i,
                advertise=f"{host}:{6220 + i}",
                routes=routes,
                secret_file=secret_file,
                tls=pki.route,
            ),
            log_file=base / f"n{i}" / "nats.log",
            pid_file=base / f"n{i}" / "nats.pid",
            auth_timeout=3,
        )
        for i in (1, 2, 3)
    ]


def _single(tmp_path: Path, **changes: Any) -> NodeConfig:
    node = NodeConfig(
        server_name="dev",
        listen_host="127.0.0.1",
        listen_port=4222,
        store_dir=tmp_path / "js",
        client_tls=None,
        auth=None,
        cluster=None,
    )
    return replace(node, **changes)


@pytest.fixture
def cluster(tmp_path: Path, pki: _Pki, secret_file: Path) -> list[NodeConfig]:
    return _cluster_nodes(tmp_path, pki, secret_file)


def _with_cluster(node: NodeConfig, **changes: Any) -> NodeConfig:
    assert node.cluster is not None
    return replace(node, cluster=replace(node.cluster, **changes))


# -- a full 3-node cluster ----------------------------------------------------------------


def test_every_node_of_a_three_node_cluster_is_accepted_by_nats_server(
    cluster: list[NodeConfig], server_accepts: Callable[[str], None]
) -> None:
    for node in cluster:
        server_accepts(render_node_config(node, QUIET))


def test_three_node_config_contains_every_required_setting(
    cluster: list[NodeConfig], pki: _Pki, tmp_path: Path
) -> None:
    node = cluster[1]
    auth = node.auth
    assert auth is not None
    conf = _parse(render_node_config(node, QUIET))

    assert conf["server_name"] == "n2"
    assert conf["listen"] == "127.0.0.1:4222"
    assert conf["jetstream"] == {
        "store_dir": str(tmp_path / "n2" / "js"),
        "sync_interval": "always",
        "max_file_store": "10G",
        "max_memory_store": "256M",
    }
    assert conf["tls"] == {
        "cert_file": str(pki.client.cert_file),
        "key_file": str(pki.client.key_file),
        # a client that waited for INFO could be told by a relay not to upgrade
        "handshake_first": True,
    }
    assert conf["log_file"] == str(tmp_path / "n2" / "nats.log")
    assert conf["pid_file"] == str(tmp_path / "n2" / "nats.pid")
    assert conf["debug"] is False
    assert conf["trace"] is False
    # a hung peer or client is dropped in ~30 s, not minutes (the callout's links)
    assert (conf["ping_interval"], conf["ping_max"]) == ("10s", 3)

    assert conf["cluster"] == {
        "name": "unibus",
        "listen": "127.0.0.1:6222",
        "advertise": "127.0.0.1:6222",
        "no_advertise": True,
        "pool_size": -1,
        # auth requests are answered on the node that received them (authcallout.links)
        "permissions": {
            "import": {"deny": ["$SYS.REQ.USER.AUTH"]},
            "export": {"deny": ["$SYS.REQ.USER.AUTH"]},
        },
        "authorization": {"user": ROUTE_USER, "password": SECRET},
        "tls": {
            "cert_file": str(pki.route.cert_file),
            "key_file": str(pki.route.key_file),
            "ca_file": str(pki.route.ca_file),
            "verify": True,
            "timeout": 3,
        },
        "routes": [f"nats-route://{ROUTE_USER}:{SECRET}@127.0.0.1:{p}" for p in (6221, 6222, 6223)],
    }

    accounts = conf["accounts"]
    assert set(accounts) == {"AUTH", "UNIBUS", "MEMBERS", "SYS"}
    assert accounts["AUTH"] == {"users": [{"nkey": auth.callout_user}]}
    assert accounts["SYS"] == {"users": [{"nkey": auth.system_user}]}
    assert accounts["UNIBUS"]["jetstream"] == "enabled"
    assert accounts["UNIBUS"]["users"] == [{"nkey": auth.internal_user}]
    assert conf["system_account"] == "SYS"
    assert conf["authorization"] == {
        "timeout": 3.0,
        "auth_callout": {
            "issuer": auth.issuer,
            "account": "AUTH",
            "auth_users": [auth.callout_user, auth.internal_user, auth.system_user],
            "xkey": auth.xkey,
        },
    }
    assert "http" not in conf
    assert "no_auth_user" not in conf


def test_every_config_user_bypasses_the_callout(cluster: list[NodeConfig]) -> None:
    """A config user missing from auth_users would still be sent to the callout (notes §1.2)."""
    conf = _parse(render_node_config(cluster[0], QUIET))
    config_users = {
        user["nkey"] for account in conf["accounts"].values() for user in account.get("users", [])
    }
    assert set(conf["authorization"]["auth_callout"]["auth_users"]) == config_users
    assert len(config_users) == 3


def test_other_generations_of_service_identities_are_accepted_in_their_accounts(
    cluster: list[NodeConfig],
) -> None:
    """During a rotation (unibus identities) each account lists both generations of its
    service identity, and each bypasses the callout."""
    auth = cluster[0].auth
    assert auth is not None
    other = {role: _public_nkey("U") for role in ("callout", "internal", "system")}
    rotating = replace(cluster[0], auth=replace(auth, other_users=tuple(other.items())))
    conf = _parse(render_node_config(rotating, QUIET))
    accounts = conf["accounts"]
    assert accounts["AUTH"]["users"] == [{"nkey": auth.callout_user}, {"nkey": other["callout"]}]
    assert accounts["UNIBUS"]["users"] == [
        {"nkey": auth.internal_user},
        {"nkey": other["internal"]},
    ]
    assert accounts["SYS"]["users"] == [{"nkey": auth.system_user}, {"nkey": other["system"]}]
    bypass = set(conf["authorization"]["auth_callout"]["auth_users"])
    assert bypass == {auth.callout_user, auth.internal_user, auth.system_user, *other.values()}


def test_internal_user_has_no_permission_limits(cluster: list[NodeConfig]) -> None:
    conf = _parse(render_node_config(cluster[0], QUIET))
    for account in conf["accounts"].values():
        for user in account.get("users", []):
            assert set(user) == {"nkey"}


def test_members_live_in_an_account_without_jetstream_that_imports_only_the_member_services(
    cluster: list[NodeConfig],
) -> None:
    """A reply subject a member names is rewritten by an import, so it cannot reach a stream."""
    accounts = _parse(render_node_config(cluster[0], QUIET))["accounts"]
    members = accounts["MEMBERS"]
    assert set(members) == {"imports"}  # no jetstream, no static users
    imported = [entry["service"]["subject"] for entry in members["imports"]]
    assert all(entry["service"]["account"] == "UNIBUS" for entry in members["imports"])
    assert imported == [service.subject for service in naming.MEMBER_SERVICES]
    exports = accounts["UNIBUS"]["exports"]
    assert [entry["service"] for entry in exports] == imported
    assert all(entry["accounts"] == ["MEMBERS"] for entry in exports)
    assert not any(subject.startswith(("$KV.", "$O.", "$JS.API.STREAM")) for subject in imported)
    for entry, service in zip(members["imports"], naming.MEMBER_SERVICES, strict=True):
        assert entry.get("share", False) is service.jetstream_api


def test_nodes_differ_only_in_their_own_names_addresses_and_paths(
    cluster: list[NodeConfig],
) -> None:
    first, second = (_parse(render_node_config(node, QUIET)) for node in cluster[:2])
    assert first["cluster"]["routes"] == second["cluster"]["routes"]
    assert first["accounts"] == second["accounts"]
    assert first["authorization"] == second["authorization"]
    assert first["server_name"] != second["server_name"]
    assert first["cluster"]["advertise"] != second["cluster"]["advertise"]


def test_rendered_config_has_no_unfilled_placeholder(cluster: list[NodeConfig]) -> None:
    text = render_node_config(cluster[0], NatsToggles(debug=True))
    assert "{{" not in text
    assert "}}" not in text
    # nothing the nats parser could take for a variable: a $ only inside quotes
    assert "$" not in re.sub(r'"[^"]*"', "", text)


# -- route secret -------------------------------------------------------------------------


def test_route_urls_carry_the_credentials_read_from_the_secret_file(
    cluster: list[NodeConfig], secret_file: Path
) -> None:
    secret_file.write_text("another-secret-0123456789\n")
    conf = _parse(render_node_config(cluster[0], QUIET))
    routes = conf["cluster"]["routes"]
    assert routes == [
        f"nats-route://{ROUTE_USER}:another-secret-0123456789@127.0.0.1:{p}"
        for p in (6221, 6222, 6223)
    ]
    assert conf["cluster"]["authorization"]["password"] == "another-secret-0123456789"


def test_loopback_cluster_without_secret_has_plain_routes_and_no_route_auth(
    cluster: list[NodeConfig],
) -> None:
    node = _with_cluster(cluster[0], secret_file=None)
    conf = _parse(render_node_config(node, QUIET))
    assert conf["cluster"]["routes"][0] == "nats-route://127.0.0.1:6221"
    assert "authorization" not in conf["cluster"]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\n", id="blank-line"),
        pytest.param(b"short-secret\n", id="too-short"),
        pytest.param(b"has space in the secret value\n", id="space"),
        pytest.param(b"has@at-sign-0123456789\n", id="at-sign"),
        pytest.param(b"has:colon-0123456789abc\n", id="colon"),
        pytest.param(b"two-lines-0123456789\nsecond-line-0123456789\n", id="two-lines"),
        pytest.param(b'quote"in-the-secret-01234', id="quote"),
        pytest.param("non-ascii-\u00e9-0123456789".encode(), id="non-ascii"),
    ],
)
def test_malformed_route_secret_is_refused_naming_the_file_only(
    cluster: list[NodeConfig], secret_file: Path, content: bytes
) -> None:
    secret_file.write_bytes(content)
    with pytest.raises(ConfigError, match="must hold one line of at least 16") as caught:
        render_node_config(cluster[0], QUIET)
    assert str(secret_file) in str(caught.value)
    assert caught.value.setting == "cluster.secret_file"
    stripped = content.decode(errors="replace").strip()
    if stripped:
        assert stripped not in str(caught.value)


def test_missing_route_secret_file_is_refused_naming_the_file(
    cluster: list[NodeConfig], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.secret"
    node = _with_cluster(cluster[0], secret_file=missing)
    with pytest.raises(ConfigError, match=r"route secret file .* does not exist") as caught:
        render_node_config(node, QUIET)
    assert str(missing) in str(caught.value)


def test_a_route_secret_file_readable_by_others_is_refused_with_the_chmod_fix(
    cluster: list[NodeConfig], secret_file: Path
) -> None:
    secret_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as caught:
        render_node_config(cluster[0], QUIET)
    assert SECRET not in str(caught.value)


def test_route_secret_never_appears_in_an_error(
    cluster: list[NodeConfig], secret_file: Path
) -> None:
    node = replace(cluster[0], server_name="bad name")
    with pytest.raises(ConfigError) as caught:
        render_node_config(node, QUIET)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.__context__)


# -- toggles ------------------------------------------------------------------------------


def test_monitor_is_absent_by_default(tmp_path: Path) -> None:
    conf = _parse(render_node_config(_single(tmp_path), NatsToggles.from_env({})))
    assert "http" not in conf
    assert "http_port" not in conf
    assert conf["debug"] is False


def test_monitor_toggle_opens_the_endpoint_on_loopback_only(
    tmp_path: Path, server_accepts: Callable[[str], None]
) -> None:
    toggles = NatsToggles.from_env({"UNIBUS_NATS_MONITOR": "1"})
    text = render_node_config(_single(tmp_path), toggles)
    conf = _parse(text)
    assert conf["http"] == "127.0.0.1:8222"
    assert conf["debug"] is False
    server_accepts(text)


def test_monitor_port_changes_but_the_bind_address_never_does(tmp_path: Path) -> None:
    node = _single(
        tmp_path,
        listen_host=ANY_V4,
        monitor_port=18222,
        auth=_identities(),
        client_tls=ClientTLS(Path("/c.pem"), Path("/k.pem")),
    )
    conf = _parse(render_node_config(node, NatsToggles(monitor=True)))
    assert conf["http"] == "127.0.0.1:18222"


def test_a_monitor_host_off_loopback_serves_https_with_the_client_certificate(
    cluster: list[NodeConfig], server_accepts: Callable[[str], None]
) -> None:
    node = replace(cluster[0], monitor_host=ANY_V4)
    text = render_node_config(node, QUIET)
    conf = _parse(text)
    assert conf["https"] == f"{ANY_V4}:8222"
    assert "http" not in conf
    server_accepts(text)


def test_a_loopback_monitor_host_serves_plain_http_without_a_toggle(tmp_path: Path) -> None:
    conf = _parse(render_node_config(_single(tmp_path, monitor_host="127.0.0.1"), QUIET))
    assert conf["http"] == "127.0.0.1:8222"


def test_a_monitor_host_off_loopback_without_client_tls_is_refused(tmp_path: Path) -> None:
    node = _single(tmp_path, monitor_host=ANY_V4)
    with pytest.raises(PostureError, match="monitor_host"):
        render_node_config(node, QUIET)


def test_debug_toggle_enables_debug_logs_and_implies_the_monitor(
    tmp_path: Path, server_accepts: Callable[[str], None]
) -> None:
    toggles = NatsToggles.from_env({"UNIBUS_NATS_DEBUG": "1"})
    text = render_node_config(_single(tmp_path), toggles)
    conf = _parse(text)
    assert conf["debug"] is True
    assert conf["trace"] is False
    assert conf["http"] == "127.0.0.1:8222"
    server_accepts(text)


def test_debug_true_only_with_the_debug_toggle(tmp_path: Path) -> None:
    for toggles in (NatsToggles(), NatsToggles(monitor=True)):
        text = render_node_config(_single(tmp_path), toggles)
        assert "debug: true" not in text
        assert "trace: true" not in text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        ("On", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("OFF", False),
        ("", False),
    ],
)
def test_toggles_accept_the_usual_boolean_spellings(raw: str, expected: bool) -> None:
    toggles = NatsToggles.from_env({"UNIBUS_NATS_MONITOR": raw, "UNIBUS_NATS_DEBUG": raw})
    assert toggles == NatsToggles(monitor=expected, debug=expected)


@pytest.mark.parametrize("variable", ["UNIBUS_NATS_MONITOR", "UNIBUS_NATS_DEBUG"])
@pytest.mark.parametrize("raw", ["2", "enable", "y", "tru"])
def test_toggles_refuse_anything_else_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=rf"{variable}=.*1/0, true/false, yes/no, on/off") as e:
        NatsToggles.from_env({variable: raw})
    assert e.value.setting == variable


# -- auth off -----------------------------------------------------------------------------


def test_single_loopback_node_with_auth_off_is_allowed_and_accepted_by_nats_server(
    tmp_path: Path, server_accepts: Callable[[str], None]
) -> None:
    node = _single(tmp_path)
    validate_posture(node)
    text = render_node_config(node, QUIET)
    conf = _parse(text)
    assert "accounts" not in conf
    assert "authorization" not in conf
    assert "system_account" not in conf
    assert "no_auth_user" not in conf
    assert conf["jetstream"]["sync_interval"] == "always"
    server_accepts(text)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost", "LOCALHOST"])
def test_every_loopback_form_allows_the_dev_mode(tmp_path: Path, host: str) -> None:
    validate_posture(_single(tmp_path, listen_host=host))


def test_ipv6_loopback_listener_is_bracketed(
    tmp_path: Path, server_accepts: Callable[[str], None]
) -> None:
    text = render_node_config(_single(tmp_path, listen_host="::1"), QUIET)
    assert _parse(text)["listen"] == "[::1]:4222"
    server_accepts(text)


def test_auth_timeout_is_ignored_when_auth_is_off(tmp_path: Path) -> None:
    conf = _parse(render_node_config(_single(tmp_path, auth_timeout=5), QUIET))
    assert "authorization" not in conf


# -- posture refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tls", "missing"),
    [
        (RouteTLS(cert_file=Path("/r.pem")), "key_file, ca_file not set"),
        (RouteTLS(cert_file=Path("/r.pem"), key_file=Path("/r-key.pem")), "ca_file not set"),
        (RouteTLS(ca_file=Path("/ca.pem")), "cert_file, key_file not set"),
    ],
)
def test_partial_route_tls_is_refused_even_on_loopback(
    cluster: list[NodeConfig], tls: RouteTLS, missing: str
) -> None:
    node = _with_cluster(cluster[0], tls=tls)
    with pytest.raises(PostureError, match=rf"route TLS is partial \({missing}\)") as caught:
        validate_posture(node)
    assert "set cert_file, key_file and ca_file together" in str(caught.value)
    assert caught.value.setting == "cluster.tls"


@pytest.mark.parametrize(
    "where",
    ["listen", "advertise", "route"],
)
def test_non_loopback_cluster_without_route_secret_is_refused(
    cluster: list[NodeConfig], where: str
) -> None:
    node = _expose(cluster[0], where)
    node = _with_cluster(node, secret_file=None)
    with pytest.raises(PostureError, match="no route secret: set secret_file") as caught:
        validate_posture(node)
    assert caught.value.setting == "cluster.secret_file"
    assert "non-loopback address 10.0.0." in str(caught.value)


@pytest.mark.parametrize("tls", [None, RouteTLS()])
def test_non_loopback_cluster_without_route_tls_is_refused(
    cluster: list[NodeConfig], tls: RouteTLS | None
) -> None:
    node = _with_cluster(_expose(cluster[0], "route"), tls=tls)
    with pytest.raises(
        PostureError, match="no route TLS: set cert_file, key_file and ca_file"
    ) as caught:
        validate_posture(node)
    assert caught.value.setting == "cluster.tls"


def test_non_loopback_cluster_with_partial_tls_reports_partial_only(
    cluster: list[NodeConfig],
) -> None:
    node = _with_cluster(_expose(cluster[0], "listen"), tls=RouteTLS(cert_file=Path("/r.pem")))
    with pytest.raises(PostureError) as caught:
        validate_posture(node)
    assert "route TLS is partial" in str(caught.value)
    assert "no route TLS" not in str(caught.value)


def test_auth_off_on_a_cluster_is_refused_even_on_loopback(cluster: list[NodeConfig]) -> None:
    node = replace(cluster[0], auth=None)
    with pytest.raises(PostureError, match="auth is off on a clustered node") as caught:
        validate_posture(node)
    assert caught.value.setting == "auth"


@pytest.mark.parametrize("host", [ANY_V4, "::", "10.1.2.3", "nats.example.com"])
def test_auth_off_on_a_non_loopback_listener_is_refused(tmp_path: Path, host: str) -> None:
    node = _single(tmp_path, listen_host=host, client_tls=ClientTLS(Path("/c"), Path("/k")))
    with pytest.raises(PostureError, match="auth is off but the client listener") as caught:
        validate_posture(node)
    assert "set auth, or bind listen_host to 127.0.0.1" in str(caught.value)
    assert caught.value.setting == "auth"


@pytest.mark.parametrize("host", [ANY_V4, "::", "192.168.1.10"])
def test_client_tls_off_on_a_non_loopback_listener_is_refused(tmp_path: Path, host: str) -> None:
    node = _single(tmp_path, listen_host=host, auth=_identities())
    with pytest.raises(PostureError, match="is not loopback but has no client TLS") as caught:
        validate_posture(node)
    assert "set client_tls" in str(caught.value)
    assert caught.value.setting == "client_tls"


@pytest.mark.parametrize("route_security", ["route TLS and secret", "none on loopback"])
def test_client_tls_off_on_a_cluster_is_refused_even_on_loopback(
    cluster: list[NodeConfig], route_security: str
) -> None:
    for node in cluster:
        if route_security == "none on loopback":
            node = _with_cluster(node, secret_file=None, tls=None)
        with pytest.raises(PostureError, match="clustered but has no client TLS") as caught:
            validate_posture(replace(node, client_tls=None))
        assert "set client_tls (server certificate and key)" in str(caught.value)
        assert caught.value.setting == "client_tls"


def test_client_tls_off_on_a_network_cluster_is_told_to_set_it_not_to_bind_loopback(
    cluster: list[NodeConfig],
) -> None:
    node = replace(_expose(cluster[0], "listen"), listen_host=ANY_V4, client_tls=None)
    with pytest.raises(PostureError, match="clustered but has no client TLS") as caught:
        validate_posture(node)
    assert "bind listen_host to 127.0.0.1" not in str(caught.value)


def test_a_loopback_cluster_with_neither_auth_nor_client_tls_reports_both(
    cluster: list[NodeConfig],
) -> None:
    with pytest.raises(PostureError) as caught:
        render_node_config(replace(cluster[0], auth=None, client_tls=None), QUIET)
    assert "auth is off on a clustered node" in str(caught.value)
    assert "clustered but has no client TLS" in str(caught.value)


@pytest.mark.parametrize("auth", ["on", "off"])
def test_a_single_loopback_node_may_still_serve_clients_without_tls(
    tmp_path: Path, auth: str
) -> None:
    node = _single(tmp_path, auth=_identities() if auth == "on" else None)
    assert node.client_tls is None
    validate_posture(node)


def test_every_posture_problem_is_reported_at_once(cluster: list[NodeConfig]) -> None:
    node = replace(
        _with_cluster(_expose(cluster[0], "listen"), secret_file=None, tls=None),
        listen_host=ANY_V4,
        client_tls=None,
        auth=None,
    )
    with pytest.raises(PostureError) as caught:
        validate_posture(node)
    message = str(caught.value)
    for expected in ("no route secret", "no route TLS", "auth is off", "no client TLS"):
        assert expected in message
    assert caught.value.setting == "cluster.secret_file"


def test_posture_is_checked_before_rendering(cluster: list[NodeConfig]) -> None:
    with pytest.raises(PostureError):
        render_node_config(replace(cluster[0], auth=None), QUIET)


def _expose(node: NodeConfig, where: str) -> NodeConfig:
    """Move one address of ``node``'s cluster off loopback."""
    assert node.cluster is not None
    if where == "listen":
        return _with_cluster(node, listen_host="10.0.0.1")
    if where == "advertise":
        return _with_cluster(node, advertise="10.0.0.1:6221")
    return _with_cluster(node, routes=(*node.cluster.routes, "10.0.0.2:6222"))


# -- allowed clusters ---------------------------------------------------------------------


def test_loopback_cluster_with_route_tls_and_secret_is_allowed(cluster: list[NodeConfig]) -> None:
    for node in cluster:
        validate_posture(node)


def test_loopback_cluster_may_omit_route_tls_and_secret(
    cluster: list[NodeConfig], server_accepts: Callable[[str], None]
) -> None:
    node = _with_cluster(cluster[0], secret_file=None, tls=None)
    validate_posture(node)
    conf = _parse(render_node_config(node, QUIET))
    assert "tls" not in conf["cluster"]
    server_accepts(render_node_config(node, QUIET))


def test_network_cluster_with_route_tls_secret_and_client_tls_is_allowed(
    tmp_path: Path, pki: _Pki, secret_file: Path, server_accepts: Callable[[str], None]
) -> None:
    nodes = _cluster_nodes(tmp_path, pki, secret_file, host="10.0.0.5")
    node = replace(nodes[0], listen_host=ANY_V4)
    node = _with_cluster(node, listen_host=ANY_V4)
    text = render_node_config(node, QUIET)
    conf = _parse(text)
    assert conf["listen"] == "0.0.0.0:4221"
    assert conf["cluster"]["advertise"] == "10.0.0.5:6221"
    server_accepts(text)


def test_route_hosts_may_be_dns_names(
    tmp_path: Path, pki: _Pki, secret_file: Path, server_accepts: Callable[[str], None]
) -> None:
    node = _cluster_nodes(tmp_path, pki, secret_file, host="nats-1.unibus_net")[0]
    text = render_node_config(node, QUIET)
    assert (
        _parse(text)["cluster"]["routes"][0]
        == f"nats-route://{ROUTE_USER}:{SECRET}@nats-1.unibus_net:6221"
    )
    server_accepts(text)


# -- injection and malformed values -------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        '/tmp/x"\nauthorization { }\n#',
        "/tmp/x\nno_auth_user: x",
        "/tmp/x\\",
        "/tmp/x\r",
        "/tmp/x\x00",
    ],
)
@pytest.mark.parametrize("field", ["store_dir", "log_file", "pid_file", "client_cert"])
def test_quote_backslash_or_control_character_in_a_path_is_refused(
    tmp_path: Path, bad: str, field: str
) -> None:
    path = Path(bad)
    if field == "client_cert":
        node = _single(tmp_path, client_tls=ClientTLS(path, Path("/k.pem")))
    else:
        node = _single(tmp_path, **{field: path})
    with pytest.raises(ConfigError, match="quote, a backslash or a control character"):
        render_node_config(node, QUIET)


def test_quote_in_a_route_tls_path_is_refused(cluster: list[NodeConfig], pki: _Pki) -> None:
    node = _with_cluster(cluster[0], tls=replace(pki.route, ca_file=Path('/ca"\nx')))
    with pytest.raises(ConfigError, match=r"cluster\.tls\.ca_file contains a quote"):
        render_node_config(node, QUIET)


@pytest.mark.parametrize(
    "name", ['n1"', "n1\nlisten: 0.0.0.0:4222", "n 1", "n1#", "", "n1.a", "x" * 65]
)
def test_malformed_server_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=r"server_name must be 1-64 characters"):
        render_node_config(_single(tmp_path, server_name=name), QUIET)


@pytest.mark.parametrize("name", ['c"', "c\n", "c d"])
def test_malformed_cluster_name_is_refused(cluster: list[NodeConfig], name: str) -> None:
    with pytest.raises(ConfigError, match=r"cluster.name must be 1-64 characters"):
        render_node_config(_with_cluster(cluster[0], name=name), QUIET)


@pytest.mark.parametrize(
    "route",
    [
        '127.0.0.1:6222"',
        "127.0.0.1:6222\nno_auth_user: x",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:+80",
        "::1:6222",
        "[::1]6222",
        "[nothost]:6222",
        "user:pw@127.0.0.1:6222",
        "nats-route://127.0.0.1:6222",
        ":6222",
    ],
)
def test_malformed_route_address_is_refused(cluster: list[NodeConfig], route: str) -> None:
    node = _with_cluster(cluster[0], routes=(route,))
    with pytest.raises(ConfigError, match=r"cluster.routes"):
        render_node_config(node, QUIET)


def test_ipv6_route_address_is_accepted(cluster: list[NodeConfig]) -> None:
    node = _with_cluster(cluster[0], routes=("[::1]:6222",), advertise="[::1]:6221")
    conf = _parse(render_node_config(node, QUIET))
    assert conf["cluster"]["routes"] == [f"nats-route://{ROUTE_USER}:{SECRET}@[::1]:6222"]
    assert conf["cluster"]["advertise"] == "[::1]:6221"


def test_malformed_advertise_is_refused(cluster: list[NodeConfig]) -> None:
    with pytest.raises(ConfigError, match=r"cluster.advertise entries must be host:port"):
        validate_posture(_with_cluster(cluster[0], advertise="127.0.0.1"))


def test_empty_route_list_is_refused(cluster: list[NodeConfig]) -> None:
    with pytest.raises(ConfigError, match=r"cluster.routes is empty"):
        render_node_config(_with_cluster(cluster[0], routes=()), QUIET)


@pytest.mark.parametrize("host", ["", "a b", 'a"', "a\nb", "-", "a..b", "http://x"])
def test_malformed_listen_host_is_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match="listen_host must be a host name or an IP address"):
        validate_posture(_single(tmp_path, listen_host=host))


@pytest.mark.parametrize("port", [0, -1, 65536, True])
@pytest.mark.parametrize("field", ["listen_port", "monitor_port"])
def test_port_out_of_range_is_refused(tmp_path: Path, port: int, field: str) -> None:
    node = _single(tmp_path, **{field: port})
    with pytest.raises(ConfigError, match=r"port must be an integer in 1\.\.65535"):
        render_node_config(node, NatsToggles(monitor=True))


def test_relative_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="store_dir must be an absolute path"):
        render_node_config(_single(tmp_path, store_dir=Path("js")), QUIET)


@pytest.mark.parametrize("size", ["", "0", "10X", "10 G", "10G\nx", "-1", "1.5G", "10g"])
def test_malformed_store_size_is_refused(tmp_path: Path, size: str) -> None:
    with pytest.raises(ConfigError, match="max_file_store must be a positive size"):
        render_node_config(_single(tmp_path, max_file_store=size), QUIET)


@pytest.mark.parametrize("size", ["1024", "512K", "10GB", "1T"])
def test_store_sizes_with_nats_suffixes_are_accepted(
    tmp_path: Path, size: str, server_accepts: Callable[[str], None]
) -> None:
    server_accepts(render_node_config(_single(tmp_path, max_memory_store=size), QUIET))


@pytest.mark.parametrize("timeout", [0, 0.01, 61, float("nan"), float("inf")])
def test_auth_timeout_out_of_range_is_refused(cluster: list[NodeConfig], timeout: float) -> None:
    with pytest.raises(ConfigError, match="auth_timeout must be between"):
        render_node_config(replace(cluster[0], auth_timeout=timeout), QUIET)


def test_auth_timeout_is_omitted_when_unset(cluster: list[NodeConfig]) -> None:
    conf = _parse(render_node_config(replace(cluster[0], auth_timeout=None), QUIET))
    assert "timeout" not in conf["authorization"]


# -- identities ---------------------------------------------------------------------------


def _broken_checksum(key: str) -> str:
    return key[:-1] + ("A" if key[-1] != "A" else "B")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("issuer", lambda: _public_nkey("U"), "auth.issuer is not a public account nkey"),
        ("xkey", lambda: _public_nkey("A"), r"auth.xkey is not a public curve \(xkey\) nkey"),
        ("callout_user", lambda: _public_nkey("X"), "auth.callout_user is not a public user"),
        ("internal_user", lambda: "U" + "A" * 55, "auth.internal_user is not a public user"),
        ("system_user", lambda: _public_nkey("U")[:-2], "auth.system_user is not a public user"),
        (
            "system_user",
            lambda: _broken_checksum(_public_nkey("U")),
            "auth.system_user is not a public user",
        ),
        ("issuer", lambda: 'A"' + "A" * 54, "auth.issuer is not a public account"),
        ("issuer", lambda: "SAAGNMGYLG2B4R7UHSBOYMNR5V7JPR6E3YLFBXBRO4TA7UOSLQV2GW6ITE", "seed"),
    ],
)
def test_malformed_identity_key_is_refused_without_echoing_it(
    cluster: list[NodeConfig], field: str, value: Callable[[], str], message: str
) -> None:
    assert cluster[0].auth is not None
    key = value()
    node = replace(cluster[0], auth=replace(cluster[0].auth, **{field: key}))
    with pytest.raises(ConfigError, match=message) as caught:
        render_node_config(node, QUIET)
    assert key not in str(caught.value)


def test_the_same_key_for_two_static_identities_is_refused(cluster: list[NodeConfig]) -> None:
    auth = cluster[0].auth
    assert auth is not None
    node = replace(cluster[0], auth=replace(auth, system_user=auth.internal_user))
    with pytest.raises(ConfigError, match="must be three different keys"):
        render_node_config(node, QUIET)


# -- writing ------------------------------------------------------------------------------


@pytest.fixture
def restrictive_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("restrictive_umask")
def test_written_config_is_owner_only_and_its_new_parent_too(tmp_path: Path) -> None:
    path = tmp_path / "run" / "n1" / "nats-server.conf"
    write_node_config(path, "server_name: n1\n")
    assert path.read_text() == "server_name: n1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


@pytest.mark.usefixtures("restrictive_umask")
def test_rewriting_replaces_a_world_readable_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "nats-server.conf"
    path.write_text("old\n")
    path.chmod(0o644)
    write_node_config(path, "new\n")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["nats-server.conf"]


def test_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "conf-dir"
    target.mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(ConfigError, match="cannot be written"):
        write_node_config(target, "x\n")
    assert [p.name for p in tmp_path.iterdir()] == ["conf-dir"]
    assert list(target.iterdir()) == []

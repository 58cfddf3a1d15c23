"""Render one nats-server configuration per node, after checking its security posture.

nats config substitutes ``$VAR`` only as a whole unquoted value, an undefined variable is
a parse error and values keep their types, so toggles, optional blocks and route URLs
with credentials cannot live in one static file (SPEC §3). Instead the template
``templates/nats-server.conf`` holds the fixed skeleton, and Python fills its
``{{ name }}`` placeholders: a placeholder alone on its line takes a whole block (or
nothing), an inline one takes a single already-quoted value.

Every value is validated before it is written: names and sizes against a strict
pattern, hosts and ports parsed, and strings that could break out of a quoted nats
string (a quote, a backslash, a control character) are refused rather than escaped.
The route secret is read from its file here, so it never appears on a command line.

>>> node = NodeConfig(
...     server_name="dev",
...     listen_host="127.0.0.1",
...     listen_port=4222,
...     store_dir=Path("/var/lib/unibus/js"),
...     client_tls=None,
...     auth=None,
...     cluster=None,
... )
>>> "sync_interval: always" in render_node_config(node, NatsToggles())
True
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from unibus.core.connect import is_loopback_host
from unibus.core.errors import ConfigError, NkeyError, PostureError
from unibus.core.files import PrivateFileError, read_private, write_private
from unibus.core.naming import (
    BUS_ACCOUNT,
    CALLOUT_ACCOUNT,
    CALLOUT_SUBJECT,
    MEMBER_ACCOUNT,
    MEMBER_SERVICES,
    SYSTEM_ACCOUNT,
)
from unibus.core.nkeys import Prefix, decode_public
from unibus.core.settings import parse_bool

__all__ = [
    "DEBUG_ENV",
    "MONITOR_ENV",
    "ROUTE_USER",
    "AuthIdentities",
    "ClientTLS",
    "ClusterConfig",
    "NatsToggles",
    "NodeConfig",
    "RouteTLS",
    "render_node_config",
    "validate_posture",
    "write_node_config",
]

ROUTE_USER: Final = "unibus-route"
"""The user every route presents to its peer (password = the route secret)."""
MONITOR_ENV: Final = "UNIBUS_NATS_MONITOR"
DEBUG_ENV: Final = "UNIBUS_NATS_DEBUG"

_MONITOR_HOST: Final = "127.0.0.1"
_ROUTE_TLS_TIMEOUT: Final = 3
"""Seconds for the route TLS handshake (the default 2 s is tight for a loaded peer)."""
_AUTH_TIMEOUT_RANGE: Final = (0.1, 60.0)

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LABEL: Final = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME_RE: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")
_SIZE_RE: Final = re.compile(r"[1-9][0-9]{0,15}(?:[KMGT]B?)?")
_SECRET_RE: Final = re.compile(r"[A-Za-z0-9._~-]{16,}")
_ROUTE_KEY_FORMAT: Final = "one line of at least 16 characters from [A-Za-z0-9._~-]"
_PLACEHOLDER_RE: Final = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")

# nkey public-key prefix bytes (nkeys/strkey.go): the first base32 character names the kind.
_NKEY_PREFIX: Final = {"A": Prefix.ACCOUNT, "U": Prefix.USER, "X": Prefix.CURVE}
_NKEY_KIND: Final = {"A": "account", "U": "user", "X": "curve (xkey)"}
_NKEY_LENGTH: Final = 56


@dataclass(frozen=True)
class RouteTLS:
    """Mutual TLS on the route port. All three files or none (the posture check refuses less).

    ``ca_file`` is the separate cluster CA, so a client certificate can never be
    presented on the route port.
    """

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None


@dataclass(frozen=True)
class ClientTLS:
    """The server certificate clients see. Clients authenticate with nkeys, not certificates."""

    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class AuthIdentities:
    """Public keys only, never seeds.

    ``callout_user``, ``internal_user`` and ``system_user`` are the static identities
    listed in ``auth_callout.auth_users``; everyone else is authenticated by the callout.
    """

    issuer: str
    """``A…`` account public key: ``auth_callout.issuer``."""
    xkey: str
    """``X…`` curve public key of the callout service: ``auth_callout.xkey``."""
    callout_user: str
    """``U…`` nkey user in account AUTH (the callout service)."""
    internal_user: str
    """``U…`` nkey user in account UNIBUS (controlplane, migrate, CLI admin), full rights."""
    system_user: str
    """``U…`` nkey user in account SYS (KICK, VARZ, health)."""
    other_users: tuple[tuple[str, str], ...] = ()
    """``(role, U…)`` of the other generations of the three above while they are rotated
    (``unibus identities``): accepted beside the current ones, in the same account."""


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    listen_host: str
    listen_port: int
    advertise: str
    """``host:port``: this node's explicit route address (``cluster.advertise``)."""
    routes: tuple[str, ...]
    """``host:port`` of every node's route listener (this node's own entry is allowed)."""
    secret_file: Path | None
    """File holding the route secret (one line); read at render time."""
    tls: RouteTLS | None


@dataclass(frozen=True)
class NatsToggles:
    """Operator switches read from the environment; ``debug`` implies ``monitor``."""

    monitor: bool = False
    debug: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> NatsToggles:
        """Read ``UNIBUS_NATS_MONITOR`` and ``UNIBUS_NATS_DEBUG``.

        Accepts 1/0, true/false, yes/no, on/off and the empty string (case-insensitive).

        Raises:
            ConfigError: naming the variable, on any other value.
        """
        return cls(
            monitor=parse_bool(MONITOR_ENV, environ.get(MONITOR_ENV, "")),
            debug=parse_bool(DEBUG_ENV, environ.get(DEBUG_ENV, "")),
        )


@dataclass(frozen=True)
class NodeConfig:
    """Everything that differs between nodes. Paths must be absolute.

    ``auth=None`` turns auth off and ``client_tls=None`` client TLS, which the posture
    check allows only for a single node (no ``cluster``) whose client listener is
    loopback; ``auth_timeout`` is then ignored.
    """

    server_name: str
    listen_host: str
    listen_port: int
    store_dir: Path
    client_tls: ClientTLS | None
    auth: AuthIdentities | None
    cluster: ClusterConfig | None
    monitor_port: int = 8222
    monitor_host: str | None = None
    """Serve monitoring always, on this host (a private network a scraper reaches), over
    HTTPS with the client TLS certificate unless loopback. ``None``: only with the
    ``monitor``/``debug`` toggles, on loopback."""
    log_file: Path | None = None
    pid_file: Path | None = None
    auth_timeout: float | None = None
    """``authorization.timeout`` in seconds (the callout's budget); None = server default."""
    max_file_store: str = "10G"
    max_memory_store: str = "256M"


# -- posture ------------------------------------------------------------------------------


def validate_posture(node: NodeConfig) -> None:
    """Refuse a node that would run less securely than SPEC §3 allows.

    Every problem found is reported at once, each with what to change.

    Raises:
        PostureError: partial route TLS; a non-loopback cluster without a route secret or
            without complete route TLS; auth off or client TLS off anywhere but a single
            node (no cluster block) whose client listener is loopback.
        ConfigError: a host or ``host:port`` that cannot be parsed.
    """
    problems: list[tuple[str, str]] = []
    client_host = _check_host(node.listen_host, "listen_host")
    client_loopback = is_loopback_host(client_host)

    cluster = node.cluster
    if cluster is not None:
        hosts = [
            _check_host(cluster.listen_host, "cluster.listen_host"),
            _split_hostport(cluster.advertise, "cluster.advertise")[0],
            *(_split_hostport(route, "cluster.routes")[0] for route in cluster.routes),
        ]
        exposed = next((host for host in hosts if not is_loopback_host(host)), None)
        missing = _missing_route_tls(cluster.tls)
        if 0 < len(missing) < 3:
            problems.append(
                (
                    "cluster.tls",
                    f"route TLS is partial ({', '.join(missing)} not set): set cert_file, "
                    "key_file and ca_file together, or none of them on a loopback cluster",
                )
            )
        if exposed is not None:
            if cluster.secret_file is None:
                problems.append(
                    (
                        "cluster.secret_file",
                        f"the cluster uses non-loopback address {exposed} but has no route "
                        f"secret: set secret_file to a file holding {_ROUTE_KEY_FORMAT}",
                    )
                )
            if len(missing) == 3:
                problems.append(
                    (
                        "cluster.tls",
                        f"the cluster uses non-loopback address {exposed} but has no route "
                        "TLS: set cert_file, key_file and ca_file (the separate cluster CA)",
                    )
                )

    if node.auth is None:
        if cluster is not None:
            problems.append(
                (
                    "auth",
                    "auth is off on a clustered node: every node of a cluster enforces auth "
                    "through the callout, so set auth (the AuthIdentities public keys)",
                )
            )
        elif not client_loopback:
            problems.append(
                (
                    "auth",
                    f"auth is off but the client listener {client_host} is not loopback: "
                    "set auth, or bind listen_host to 127.0.0.1 for the dev mode",
                )
            )

    # SPEC §3 allows plain clients only for the single-node dev stack. A loopback cluster
    # is what `unibus up` runs and deployments are rehearsed on, so it keeps a deployment's
    # posture: what works against it works against TLS, and nothing passes there in clear.
    if node.client_tls is None and cluster is not None:
        problems.append(
            (
                "client_tls",
                "the node is clustered but has no client TLS: every node of a cluster serves "
                "clients over TLS, loopback or not, so set client_tls (server certificate and "
                "key); plain clients are allowed only on a single node without a cluster",
            )
        )
    elif node.client_tls is None and not client_loopback:
        problems.append(
            (
                "client_tls",
                f"the client listener {client_host} is not loopback but has no client TLS: "
                "set client_tls (server certificate and key), or bind listen_host to 127.0.0.1",
            )
        )

    if node.monitor_host is not None:
        monitor_host = _check_host(node.monitor_host, "monitor_host")
        if not is_loopback_host(monitor_host) and node.client_tls is None:
            problems.append(
                (
                    "monitor_host",
                    f"the monitoring endpoint {monitor_host} is not loopback, so it is served "
                    "over HTTPS with the client certificate, and there is none: set "
                    "client_tls, or bind monitor_host to 127.0.0.1",
                )
            )

    if problems:
        details = "; ".join(f"{setting}: {message}" for setting, message in problems)
        raise PostureError(
            f"refusing the nats-server posture of node {node.server_name!r}: {details}",
            setting=problems[0][0],
        )


def _missing_route_tls(tls: RouteTLS | None) -> list[str]:
    if tls is None:
        return ["cert_file", "key_file", "ca_file"]
    fields = {"cert_file": tls.cert_file, "key_file": tls.key_file, "ca_file": tls.ca_file}
    return [name for name, value in fields.items() if value is None]


# -- rendering ----------------------------------------------------------------------------


def render_node_config(node: NodeConfig, toggles: NatsToggles) -> str:
    """Validate ``node`` and return its nats-server configuration text.

    Raises:
        PostureError: see ``validate_posture``.
        ConfigError: a value that is malformed or could break out of a quoted string, or
            an unreadable or malformed route secret file (named, never quoted).
    """
    validate_posture(node)
    values = {
        "server_name": _quote(_check_name(node.server_name, "server_name"), "server_name"),
        "listen": _quote(_hostport(node.listen_host, node.listen_port, "listen"), "listen"),
        "pid_file": _optional_line("pid_file", node.pid_file),
        "debug": "true" if toggles.debug else "false",
        "log_file": _optional_line("log_file", node.log_file),
        "monitoring": _monitoring(node, toggles),
        "client_tls": _client_tls_block(node.client_tls),
        "store_dir": _quote_path(node.store_dir, "store_dir"),
        "max_file_store": _check_size(node.max_file_store, "max_file_store"),
        "max_memory_store": _check_size(node.max_memory_store, "max_memory_store"),
        "cluster": _cluster_block(node.cluster),
        "accounts": _auth_blocks(node.auth, node.auth_timeout),
    }
    return _fill(_template(), values)


def _optional_line(key: str, path: Path | None) -> str:
    return "" if path is None else f"{key}: {_quote_path(path, key)}"


def _monitoring(node: NodeConfig, toggles: NatsToggles) -> str:
    if node.monitor_host is not None:
        host = node.monitor_host
    elif toggles.monitor or toggles.debug:
        host = _MONITOR_HOST
    else:
        return ""
    # Off loopback the endpoint is HTTPS with the client listener's certificate (the posture
    # check requires one): it lists connections and streams, never in clear on a network.
    scheme = "http" if is_loopback_host(host) else "https"
    return f"{scheme}: {_quote(_hostport(host, node.monitor_port, 'monitor_port'), scheme)}"


def _client_tls_block(tls: ClientTLS | None) -> str:
    if tls is None:
        return ""
    # No verify: clients prove who they are with nkeys (and the callout), not certificates.
    return "\n".join(
        [
            "tls {",
            f"  cert_file: {_quote_path(tls.cert_file, 'client_tls.cert_file')}",
            f"  key_file: {_quote_path(tls.key_file, 'client_tls.key_file')}",
            "  # TLS before INFO: a client that waits for INFO to learn whether to upgrade can",
            "  # be told not to by a relay, and would send its CONNECT (signature) in clear",
            "  handshake_first: true",
            "}",
        ]
    )


def _cluster_block(cluster: ClusterConfig | None) -> str:
    if cluster is None:
        return ""
    secret = None if cluster.secret_file is None else _read_route_secret(cluster.secret_file)
    credentials = "" if secret is None else f"{ROUTE_USER}:{secret}@"
    routes = [
        _quote(f"nats-route://{credentials}{_normalize_hostport(r, 'cluster.routes')}", "routes")
        for r in cluster.routes
    ]
    if not routes:
        raise ConfigError(
            "cluster.routes is empty: list the route address of every node", setting="routes"
        )
    name = _check_name(cluster.name, "cluster.name")
    listen = _hostport(cluster.listen_host, cluster.listen_port, "cluster.listen")
    advertise = _normalize_hostport(cluster.advertise, "cluster.advertise")
    lines = [
        "cluster {",
        f"  name: {_quote(name, 'cluster.name')}",
        f"  listen: {_quote(listen, 'cluster.listen')}",
        "  # the only route address this node gossips to its peers",
        f"  advertise: {_quote(advertise, 'cluster.advertise')}",
        "  # clients are never told the cluster's (private, Docker) addresses",
        "  no_advertise: true",
        "  # one route per peer: the default pool churned and broke RAFT on small clusters",
        "  pool_size: -1",
        "  # Auth requests never cross a route: a server picks a member behind a route as",
        "  # readily as a local one, and a request sent to a node that just died or hangs is",
        "  # lost until the callout timeout refuses the client. Every callout instance is a",
        "  # member on every node instead (unibus.authcallout.links).",
        "  permissions {",
        f"    import: {{ deny: [{_quote(CALLOUT_SUBJECT, 'callout subject')}] }}",
        f"    export: {{ deny: [{_quote(CALLOUT_SUBJECT, 'callout subject')}] }}",
        "  }",
    ]
    if secret is not None:
        lines += [
            "  authorization {",
            f"    user: {_quote(ROUTE_USER, 'route user')}",
            f"    password: {_quote(secret, 'route secret')}",
            "  }",
        ]
    tls = cluster.tls
    if tls is not None and tls.cert_file and tls.key_file and tls.ca_file:
        lines += [
            "  # mutual TLS, signed by the separate cluster CA",
            "  tls {",
            f"    cert_file: {_quote_path(tls.cert_file, 'cluster.tls.cert_file')}",
            f"    key_file: {_quote_path(tls.key_file, 'cluster.tls.key_file')}",
            f"    ca_file: {_quote_path(tls.ca_file, 'cluster.tls.ca_file')}",
            "    verify: true",
            f"    timeout: {_ROUTE_TLS_TIMEOUT}",
            "  }",
        ]
    lines += ["  routes: [", *(f"    {route}" for route in routes), "  ]", "}"]
    return "\n".join(lines)


def _auth_blocks(auth: AuthIdentities | None, timeout: float | None) -> str:
    if auth is None:
        return ""
    issuer = _check_nkey(auth.issuer, "A", "auth.issuer")
    xkey = _check_nkey(auth.xkey, "X", "auth.xkey")
    callout = _check_nkey(auth.callout_user, "U", "auth.callout_user")
    internal = _check_nkey(auth.internal_user, "U", "auth.internal_user")
    system = _check_nkey(auth.system_user, "U", "auth.system_user")
    others: dict[str, list[str]] = {"callout": [], "internal": [], "system": []}
    for role, key in auth.other_users:
        if role not in others:
            raise ConfigError(f"auth.other_users: unknown role {role!r}", setting="auth")
        others[role].append(_check_nkey(key, "U", f"auth.other_users {role}"))
    every = [callout, internal, system, *(k for keys in others.values() for k in keys)]
    if len(set(every)) != len(every):
        raise ConfigError(
            "auth.callout_user, auth.internal_user and auth.system_user must be three "
            "different keys, and so must their other generations: an nkey user lives in "
            "exactly one account",
            setting="auth",
        )

    def users(role: str, current: str, setting: str) -> str:
        keys = [current, *others[role]]
        return ", ".join(f"{{ nkey: {_quote(key, setting)} }}" for key in keys)

    lines = [
        "accounts {",
        f"  {CALLOUT_ACCOUNT} {{",
        "    # the callout service; an nkey user also makes the server send every client",
        "    # the nonce that nkey clients sign",
        f"    users: [ {users('callout', callout, 'auth.callout_user')} ]",
        "  }",
        f"  {BUS_ACCOUNT} {{",
        "    jetstream: enabled",
        "    # the internal service identity: no permissions block means full rights",
        f"    users: [ {users('internal', internal, 'auth.internal_user')} ]",
        *_member_exports(),
        "  }",
        f"  {MEMBER_ACCOUNT} {{",
        "    # every callout-admitted user; no JetStream asset lives here, so no reply",
        "    # subject a member names can reach one (naming.MEMBER_SERVICES)",
        *_member_imports(),
        "  }",
        f"  {SYSTEM_ACCOUNT} {{",
        f"    users: [ {users('system', system, 'auth.system_user')} ]",
        "  }",
        "}",
        f"system_account: {SYSTEM_ACCOUNT}",
        "",
        "authorization {",
    ]
    if timeout is not None:
        lines.append(f"  timeout: {_check_seconds(timeout, 'auth_timeout')}")
    lines += [
        "  auth_callout {",
        f"    issuer: {_quote(issuer, 'auth.issuer')}",
        f"    account: {CALLOUT_ACCOUNT}",
        "    # Only these static identities bypass the callout. Every other connection,",
        "    # a config user that is not listed here included, is sent to it.",
        "    auth_users: [",
        f"      {_quote(callout, 'auth_users')}  # the callout service ({CALLOUT_ACCOUNT})",
        f"      {_quote(internal, 'auth_users')}  # the internal service identity ({BUS_ACCOUNT})",
        f"      {_quote(system, 'auth_users')}  # the system identity ({SYSTEM_ACCOUNT})",
        *(
            f"      {_quote(key, 'auth_users')}  # the {role} identity's other generation"
            for role, key in auth.other_users
        ),
        "    ]",
        f"    xkey: {_quote(xkey, 'auth.xkey')}",
        "  }",
        "}",
    ]
    return "\n".join(lines)


# A pull request's answer (a batch, then a status) may come as late as its expiry; the
# response route back into the member account must outlive the longest the SDK asks for.
_PULL_RESPONSE_THRESHOLD = '"2m"'


def _member_exports() -> list[str]:
    lines = ["    exports: ["]
    for service in MEMBER_SERVICES:
        answers = "stream" if service.streamed else "singleton"
        threshold = f", response_threshold: {_PULL_RESPONSE_THRESHOLD}" if service.streamed else ""
        lines.append(
            f"      {{ service: {_quote(service.subject, 'export')}, accounts: [{MEMBER_ACCOUNT}],"
            f" response_type: {answers}{threshold} }}"
        )
    return [*lines, "    ]"]


def _member_imports() -> list[str]:
    # share only where the JetStream API answers: it then serves the bus account, as the
    # export's owner, not the member account. A shared room message would carry the
    # member's connection details into the stream, as a header.
    lines = ["    imports: ["]
    for service in MEMBER_SERVICES:
        share = ", share: true" if service.jetstream_api else ""
        lines.append(
            f"      {{ service: {{ account: {BUS_ACCOUNT},"
            f" subject: {_quote(service.subject, 'import')} }}{share} }}"
        )
    return [*lines, "    ]"]


# -- the template -------------------------------------------------------------------------


@functools.cache
def _template() -> str:
    return (resources.files("unibus.stack") / "templates" / "nats-server.conf").read_text(
        encoding="utf-8"
    )


def _fill(template: str, values: Mapping[str, str]) -> str:
    """Fill ``{{ name }}`` placeholders in one pass (values are never re-scanned).

    A placeholder alone on its line takes a block, indented like the placeholder, and
    the line disappears when the block is empty; an inline one takes a single line.
    Unknown and unused names are errors, so template and renderer cannot drift apart.
    """
    used: set[str] = set()

    def value_of(name: str) -> str:
        if name not in values:
            raise ConfigError(f"nats-server template has an unknown placeholder {name!r}")
        used.add(name)
        return values[name]

    def inline(match: re.Match[str]) -> str:
        value = value_of(match.group(1))
        if "\n" in value:
            raise ConfigError(f"placeholder {match.group(1)!r} must be alone on its line")
        return value

    out: list[str] = []
    for line in template.splitlines():
        block = _PLACEHOLDER_RE.fullmatch(line.strip())
        if block is None:
            out.append(_PLACEHOLDER_RE.sub(inline, line))
            continue
        indent = line[: len(line) - len(line.lstrip())]
        out.extend(indent + part if part else part for part in value_of(block[1]).splitlines())
    if unused := set(values) - used:
        raise ConfigError(f"nats-server template lacks placeholders {sorted(unused)}")
    # An empty block leaves blank lines on both sides: keep one.
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(out))
    return text.strip("\n") + "\n"


# -- values -------------------------------------------------------------------------------


def _quote(value: str, setting: str) -> str:
    """A double-quoted nats string; refuse what could end it rather than escaping it."""
    if not value:
        raise ConfigError(f"{setting} is empty", setting=setting)
    if any(c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ConfigError(
            f"{setting} contains a quote, a backslash or a control character (such as a "
            "newline); these could rewrite the nats-server config, so choose a value without",
            setting=setting,
        )
    return f'"{value}"'


def _quote_path(path: Path, setting: str) -> str:
    # The server resolves relative paths against its own working directory, which the
    # renderer does not know.
    if not path.is_absolute():
        raise ConfigError(f"{setting} must be an absolute path", setting=setting)
    return _quote(str(path), setting)


def _check_name(value: str, setting: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ConfigError(f"{setting} must be 1-64 characters from [A-Za-z0-9_-]", setting=setting)
    return value


def _check_size(value: str, setting: str) -> str:
    if not _SIZE_RE.fullmatch(value):
        raise ConfigError(
            f"{setting} must be a positive size such as 256M or 10G (suffix K, M, G or T, "
            "optionally followed by B)",
            setting=setting,
        )
    return value


def _check_seconds(value: float, setting: str) -> str:
    low, high = _AUTH_TIMEOUT_RANGE
    if isinstance(value, bool) or not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{setting} must be between {low} and {high} seconds", setting=setting)
    # Always a float literal: nats keeps the type it parses.
    return repr(float(value))


def _check_port(port: int, setting: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{setting} port must be an integer in 1..65535", setting=setting)
    return port


def _check_host(host: str, setting: str) -> str:
    """Return ``host`` as it appears inside ``host:port`` (an IPv6 address bracketed)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME_RE.fullmatch(host) or len(host) > 253:
            raise ConfigError(
                f"{setting} must be a host name or an IP address (a wildcard bind is "
                "0.0.0.0 or ::, never empty)",
                setting=setting,
            ) from None
        return host
    return f"[{address.compressed}]" if address.version == 6 else address.compressed


def _hostport(host: str, port: int, setting: str) -> str:
    return f"{_check_host(host, setting)}:{_check_port(port, setting)}"


def _split_hostport(value: str, setting: str) -> tuple[str, int]:
    """Parse ``host:port`` or ``[v6]:port``; the host comes back in ``_check_host`` form."""
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            sep = ""
    else:
        host, sep, port_text = value.rpartition(":")
        if ":" in host:
            sep = ""
    if not sep or not _PORT_RE.fullmatch(port_text):
        raise ConfigError(
            f"{setting} entries must be host:port (an IPv6 address as [addr]:port)",
            setting=setting,
        )
    return _check_host(host, setting), _check_port(int(port_text), setting)


def _normalize_hostport(value: str, setting: str) -> str:
    host, port = _split_hostport(value, setting)
    return f"{host}:{port}"


def _check_nkey(value: str, kind: str, setting: str) -> str:
    """Check an nkey public key's prefix and checksum; the key is never echoed."""
    expected = f"a public {_NKEY_KIND[kind]} nkey ({kind}…, {_NKEY_LENGTH} characters)"
    if value.startswith("S"):
        raise ConfigError(
            f"{setting} looks like a seed; give {expected}, never a seed", setting=setting
        )
    try:
        decode_public(value, _NKEY_PREFIX[kind])
    except NkeyError:
        raise ConfigError(f"{setting} is not {expected}", setting=setting) from None
    return value


def _read_route_secret(path: Path) -> str:
    """Read the route secret; errors name the file and never quote its contents."""
    setting = "cluster.secret_file"
    try:
        # Private like every secret: a route secret others can read is no secret.
        raw = read_private(path, max_size=4096)
    except PrivateFileError as exc:
        raise ConfigError(f"route secret file {path} {exc.problem}", setting=setting) from None
    secret = raw.decode("ascii") if raw.isascii() else ""
    secret = secret.rstrip("\r\n")
    if not _SECRET_RE.fullmatch(secret):
        raise ConfigError(
            f"the route secret file {path} must hold {_ROUTE_KEY_FORMAT} (it goes into route URLs)",
            setting=setting,
        )
    return secret


# -- writing ------------------------------------------------------------------------------


def write_node_config(path: Path, text: str) -> None:
    """Write a rendered config atomically, readable by its owner only (it holds the secret).

    The file is 0600 from creation (a temporary file in the same directory, then
    ``os.replace``); missing parent directories are created 0700.

    Raises:
        ConfigError: the file or a missing parent directory cannot be written.
    """
    try:
        write_private(path, text.encode("utf-8"), overwrite=True)
    except PrivateFileError as exc:
        raise ConfigError(f"nats-server config {exc}") from None

"""Prometheus for a unibus cluster: the scrape config, the alert rules and the dashboard.

:func:`render_monitoring` turns the cluster's metrics endpoints into the files of one
directory, mounted as ``/etc/prometheus`` in ``unibus/prometheus:local`` (see
:func:`prometheus_args` for the command line)::

    prometheus.yml           scrape config: per node the jobs nats (the node's exporter),
                             authcallout and controlplane, plus Prometheus itself
    rules/unibus.rules.yml   the alert rules (package data, the same for every cluster)
    consoles/unibus.html     the dashboard, at /consoles/unibus.html (package data)

Every unibus target is scraped over HTTPS, verified against the client CA with the node's
own server certificate name (the services serve their metrics with the node's server
certificate); ``instance`` is relabelled to the node's name, so series, alerts and the
dashboard name nodes, not addresses. Prometheus' ``tls_config`` is per scrape job, and a
job holds one ``server_name``, so each node has a job of its own per role (``nats@n1``)
whose ``job`` label is relabelled to the role (``nats``).

Two layouts call it: compose (every endpoint a container on the compose network,
:meth:`NodeTargets.in_compose`) and the per-host deployment (one Prometheus scraping the
three hosts' private addresses, :meth:`NodeTargets.on_host`). Plain HTTP
(``tls=None``) is accepted only for loopback targets, a development render: the
services refuse to serve metrics off loopback without TLS, and so does this.

>>> spec = MonitoringSpec(
...     nodes=[NodeTargets.in_compose(name) for name in ("n1", "n2", "n3")],
...     tls=ScrapeTLS(ca_file="certs/client-ca.pem"),
... )
>>> sorted(render_monitoring(spec))
['consoles/unibus.html', 'prometheus.yml', 'rules/unibus.rules.yml']
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Final

from unibus.core.connect import is_loopback_host
from unibus.core.errors import ConfigError, PostureError

__all__ = [
    "AUTHCALLOUT_METRICS_PORT",
    "CONFIG_FILE",
    "CONSOLE_FILE",
    "CONTROLPLANE_METRICS_PORT",
    "JOBS",
    "NATS_EXPORTER_PORT",
    "PROMETHEUS_PORT",
    "RULES_FILE",
    "MonitoringSpec",
    "NodeTargets",
    "ScrapeTLS",
    "prometheus_args",
    "render_monitoring",
    "write_monitoring",
]

NATS_EXPORTER_PORT: Final = 7777
AUTHCALLOUT_METRICS_PORT: Final = 9471
CONTROLPLANE_METRICS_PORT: Final = 9470
PROMETHEUS_PORT: Final = 9090
JOBS: Final = ("nats", "authcallout", "controlplane")
"""The ``job`` label of each role's series, in the order the config lists them."""

CONFIG_FILE: Final = "prometheus.yml"
RULES_FILE: Final = "rules/unibus.rules.yml"
CONSOLE_FILE: Final = "consoles/unibus.html"
_STATIC_FILES: Final = (RULES_FILE, CONSOLE_FILE)

_IMAGE_CONSOLE_LIBRARIES: Final = "/usr/share/prometheus/console_libraries"
"""prom.lib and menu.lib as the image ships them (the dashboard uses prom.lib's
``prom_console_head``, whose asset paths differ between the official and Debian builds)."""

_SCRAPE_TIMEOUT: Final = 10
"""Seconds a scrape may take (at most the interval, which Prometheus requires)."""

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LABEL: Final = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME_RE: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PLACEHOLDER_RE: Final = re.compile(r"\{\{ ([a-z_]+) \}\}")
_UNSAFE_RE: Final = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class NodeTargets:
    """One node's three metrics endpoints, as Prometheus dials them (``host:port``).

    Attributes:
        node: the node's name (``n1``); the ``instance`` label of all three.
        nats: the node's nats exporter.
        authcallout: the node's auth callout metrics listener.
        controlplane: the node's control plane metrics listener.
        server_name: the name the node's server certificate is verified against; the
            node's name by default (every server certificate carries it as a SAN).
    """

    node: str
    nats: str
    authcallout: str
    controlplane: str
    server_name: str | None = None

    @classmethod
    def in_compose(
        cls,
        node: str,
        *,
        nats_port: int = NATS_EXPORTER_PORT,
        authcallout_port: int = AUTHCALLOUT_METRICS_PORT,
        controlplane_port: int = CONTROLPLANE_METRICS_PORT,
    ) -> NodeTargets:
        """The compose network's names: ``natsexporter-n1:7777``, ``authcallout-n1:9471``,
        ``controlplane-n1:9470``."""
        return cls(
            node=node,
            nats=f"natsexporter-{node}:{nats_port}",
            authcallout=f"authcallout-{node}:{authcallout_port}",
            controlplane=f"controlplane-{node}:{controlplane_port}",
        )

    @classmethod
    def on_host(
        cls,
        node: str,
        host: str,
        *,
        nats_port: int = NATS_EXPORTER_PORT,
        authcallout_port: int = AUTHCALLOUT_METRICS_PORT,
        controlplane_port: int = CONTROLPLANE_METRICS_PORT,
        server_name: str | None = None,
    ) -> NodeTargets:
        """All three on one host's (private) address, as the per-host deployment runs them."""
        address = f"[{host}]" if ":" in host else host
        return cls(
            node=node,
            nats=f"{address}:{nats_port}",
            authcallout=f"{address}:{authcallout_port}",
            controlplane=f"{address}:{controlplane_port}",
            server_name=server_name,
        )

    def target(self, job: str) -> str:
        """This node's endpoint for one of :data:`JOBS`."""
        if job == "nats":
            return self.nats
        if job == "authcallout":
            return self.authcallout
        if job == "controlplane":
            return self.controlplane
        raise ValueError(f"unknown job {job!r}, expected one of {JOBS}")


@dataclass(frozen=True)
class ScrapeTLS:
    """How Prometheus verifies the unibus endpoints.

    Attributes:
        ca_file: the client CA certificate as Prometheus reads it; a relative path is
            resolved from the directory of ``prometheus.yml`` (``certs/client-ca.pem``
            beside it keeps the rendered directory self-contained).
    """

    ca_file: str


@dataclass(frozen=True)
class MonitoringSpec:
    """What to scrape and how.

    Attributes:
        nodes: every node's endpoints (at least one; names unique).
        tls: the CA to verify the endpoints with; ``None`` scrapes plain HTTP, accepted
            only when every target is on loopback.
        prometheus_target: where Prometheus scrapes itself (job ``prometheus``).
        scrape_interval: seconds between scrapes.
        evaluation_interval: seconds between rule evaluations.
        cluster: the ``cluster`` external label (which cluster an alert comes from).
        alertmanagers: ``host:port`` of Alertmanagers to send alerts to (none: alerts show
            on Prometheus' own alerts page only).
    """

    nodes: Sequence[NodeTargets]
    tls: ScrapeTLS | None
    prometheus_target: str = f"localhost:{PROMETHEUS_PORT}"
    scrape_interval: int = 15
    evaluation_interval: int = 15
    cluster: str = "unibus"
    alertmanagers: Sequence[str] = field(default_factory=tuple)


def render_monitoring(spec: MonitoringSpec) -> dict[str, str]:
    """Render every file of the monitoring directory.

    Args:
        spec: the targets and scrape settings.

    Returns:
        The files' contents by path relative to the directory that holds
        ``prometheus.yml`` (:data:`CONFIG_FILE`, :data:`RULES_FILE`, :data:`CONSOLE_FILE`).

    Raises:
        ConfigError: a node name, target, server name, path or interval is unusable.
        PostureError: plain HTTP for a target off loopback.
    """
    _validate(spec)
    values = {
        "scrape_interval": f"{spec.scrape_interval}s",
        "scrape_timeout": f"{min(spec.scrape_interval, _SCRAPE_TIMEOUT)}s",
        "evaluation_interval": f"{spec.evaluation_interval}s",
        "cluster": _quote(spec.cluster),
        "alerting": _alerting(spec.alertmanagers),
        "rule_files": _quote(str(Path(RULES_FILE).parent / "*.yml")),
        "prometheus_target": _quote(spec.prometheus_target),
        "unibus_jobs": "\n".join(_job(spec, node, job) for job in JOBS for node in spec.nodes),
    }
    files = {CONFIG_FILE: _fill(_template(CONFIG_FILE), values)}
    for name in _STATIC_FILES:
        files[name] = _template(name)
    return files


def write_monitoring(directory: Path, spec: MonitoringSpec) -> tuple[Path, ...]:
    """Render the monitoring files into ``directory`` (created; files replaced).

    Files are world-readable: Prometheus runs as another user (nobody) and nothing here
    is secret (the CA named by ``spec.tls`` is the caller's to place).

    Returns:
        The paths written.
    """
    written = []
    for name, text in render_monitoring(spec).items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o755)
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)
        written.append(path)
    return tuple(written)


def prometheus_args(
    *,
    config_dir: str = "/etc/prometheus",
    data_dir: str = "/prometheus",
    listen: str = f"0.0.0.0:{PROMETHEUS_PORT}",
    retention: str = "15d",
    console_libraries: str = _IMAGE_CONSOLE_LIBRARIES,
) -> list[str]:
    """The command line (after the ``prometheus`` entrypoint) for a rendered directory.

    Args:
        config_dir: where the rendered directory is mounted (read-only is enough).
        data_dir: the TSDB, writable by the image's user (65534).
        listen: the web and API address; it has no authentication, so publish it on
            loopback or a private network only.
        retention: how long samples are kept.
        console_libraries: the image's own ``prom.lib``; the dashboard relies on it.
    """
    return [
        f"--config.file={config_dir}/{CONFIG_FILE}",
        f"--storage.tsdb.path={data_dir}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address={listen}",
        f"--web.console.templates={config_dir}/{Path(CONSOLE_FILE).parent}",
        f"--web.console.libraries={console_libraries}",
    ]


# -- rendering ----------------------------------------------------------------------------


def _job(spec: MonitoringSpec, node: NodeTargets, job: str) -> str:
    lines = [
        f"  - job_name: {_quote(f'{job}@{node.node}')}",
        f"    scheme: {'https' if spec.tls is not None else 'http'}",
    ]
    if spec.tls is not None:
        lines += [
            "    tls_config:",
            f"      ca_file: {_quote(spec.tls.ca_file)}",
            f"      server_name: {_quote(node.server_name or node.node)}",
        ]
    lines += [
        "    static_configs:",
        f"      - targets: [{_quote(node.target(job))}]",
        "    relabel_configs:",
        "      - target_label: job",
        f"        replacement: {_quote(job)}",
        "      - target_label: instance",
        f"        replacement: {_quote(node.node)}",
    ]
    return "\n".join(lines)


def _alerting(alertmanagers: Sequence[str]) -> str:
    if not alertmanagers:
        return "# alerting: no Alertmanager; firing alerts show on /alerts and the dashboard"
    targets = ", ".join(_quote(target) for target in alertmanagers)
    return "\n".join(
        [
            "alerting:",
            "  alertmanagers:",
            "    - static_configs:",
            f"        - targets: [{targets}]",
        ]
    )


def _quote(value: str) -> str:
    """A YAML double-quoted scalar (JSON's escaping is valid YAML); values are validated
    before, so nothing needs escaping in practice."""
    return json.dumps(value)


def _template(name: str) -> str:
    return (resources.files("unibus.stack") / "templates" / "monitoring" / name).read_text(
        encoding="utf-8"
    )


def _fill(template: str, values: Mapping[str, str]) -> str:
    """Replace every ``{{ name }}``; unknown and unused names are errors."""
    used: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ConfigError(f"prometheus.yml template has an unknown placeholder {name!r}")
        used.add(name)
        return values[name]

    text = _PLACEHOLDER_RE.sub(replace, template)
    unused = set(values) - used
    if unused:
        raise ConfigError(f"prometheus.yml template lacks placeholders {sorted(unused)}")
    return text


# -- validation ---------------------------------------------------------------------------


def _validate(spec: MonitoringSpec) -> None:
    if not spec.nodes:
        raise ConfigError("monitoring needs at least one node to scrape")
    names = [node.node for node in spec.nodes]
    if len(set(names)) != len(names):
        raise ConfigError(f"node names must be unique, got {names}")
    for node in spec.nodes:
        if not _NAME_RE.fullmatch(node.node):
            raise ConfigError(f"node name {node.node!r} must match {_NAME_RE.pattern}")
        if node.server_name is not None:
            _check_host(node.server_name, what=f"server name of {node.node}")
        for job in JOBS:
            host = _check_target(node.target(job), what=f"{job} target of {node.node}")
            if spec.tls is None and not is_loopback_host(host):
                raise PostureError(
                    f"{job} target of {node.node} ({node.target(job)}) is off loopback: "
                    "scrape it over HTTPS (give the client CA in ScrapeTLS)"
                )
    _check_target(spec.prometheus_target, what="prometheus target")
    for target in spec.alertmanagers:
        _check_target(target, what="alertmanager")
    if spec.tls is not None and (not spec.tls.ca_file or _UNSAFE_RE.search(spec.tls.ca_file)):
        raise ConfigError(f"CA file path {spec.tls.ca_file!r} is empty or has control characters")
    for name, seconds in (
        ("scrape interval", spec.scrape_interval),
        ("evaluation interval", spec.evaluation_interval),
    ):
        if not 1 <= seconds <= 3600:
            raise ConfigError(f"{name} must be 1..3600 seconds, got {seconds}")
    if not _NAME_RE.fullmatch(spec.cluster):
        raise ConfigError(f"cluster label {spec.cluster!r} must match {_NAME_RE.pattern}")


def _check_target(target: str, *, what: str) -> str:
    """``host:port`` (``[v6]:port``); returns the host."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{what} {target!r} must be HOST:PORT with a port in 1..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{what} {target!r}: {host!r} is not an IPv6 address") from None
        return host
    _check_host(host, what=what)
    return host


def _check_host(host: str, *, what: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME_RE.fullmatch(host) or len(host) > 253:
            raise ConfigError(f"{what} {host!r} is neither a host name nor an address") from None

"""The control plane's settings: read once from the environment at start, failing fast."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from unibus.controlplane.quota import DEFAULT_BLOB_BUDGET
from unibus.core import envnames, limits
from unibus.core.connect import is_loopback_host
from unibus.core.errors import ConfigError, NkeyError, PostureError
from unibus.core.limits import DEFAULT_MAX_ROOMS, read_max_rooms
from unibus.core.metricsserver import MetricsTLS, read_metrics_listener
from unibus.core.nkeys import canonical_user_key
from unibus.core.settings import EnvReader

__all__ = ["DEFAULT_MAX_BLOB_BYTES", "DEFAULT_PORT", "Settings"]

DEFAULT_PORT = 8470
DEFAULT_MAX_BLOB_BYTES = limits.DEFAULT_MAX_BLOB_BYTES


def _read_skew(env: EnvReader) -> float:
    """``UNIBUS_API_SKEW``: refused above what the nonces bucket's TTL can cover.

    The TTL is the ``max_age`` of the one ``UNIBUS_nonces`` bucket, fixed when the cluster
    is provisioned and shared by every API node, so a node cannot lengthen it to suit its
    own skew; refusing the skew at start is the only check that holds on every node.
    """
    skew = env.number(envnames.API_SKEW, default=60.0, minimum=1.0)
    if skew > limits.MAX_API_SKEW:
        raise ConfigError(
            f"{envnames.API_SKEW}={skew:g} is above the maximum {limits.MAX_API_SKEW:g}: a "
            f"request nonce is remembered {limits.NONCE_TTL:g} s, which must cover twice the "
            f"skew plus {limits.NONCE_CLOCK_DRIFT:g} s of clock drift, or a request could be "
            f"replayed once its nonce expired; set {envnames.API_SKEW} to at most "
            f"{limits.MAX_API_SKEW:g} and keep the nodes' clocks in sync (NTP)",
            setting=envnames.API_SKEW,
        )
    return skew


@dataclass(frozen=True)
class Settings:
    nats_urls: tuple[str, ...]
    ca_file: Path | None
    internal_seed: Path
    system_seed: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9470
    metrics_tls: MetricsTLS | None = None
    """None: plain HTTP, which the settings allow on loopback only."""
    node: str = ""
    cluster_size: int = 1
    skew: float = 60.0
    max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES
    max_rooms: int = DEFAULT_MAX_ROOMS
    """Rooms per user (``unibus.core.limits``, shared with the callout)."""
    blob_budget: int = DEFAULT_BLOB_BUDGET
    """Blob bytes one user may upload through this node per hour (``quota``)."""
    op_timeout: float = 2.0
    quorum_max_age: float = 0.5
    bootstrap_admin: str | None = None
    log_json: bool = True

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        env = EnvReader(environ)
        urls = env.items(envnames.NATS_URLS)
        if not urls:
            raise ConfigError("UNIBUS_NATS_URLS is required", setting=envnames.NATS_URLS)
        host, port = env.host_port(envnames.API_ADDR, default=f"127.0.0.1:{DEFAULT_PORT}")
        metrics = read_metrics_listener(
            env,
            addr=envnames.API_METRICS_ADDR,
            cert=envnames.API_METRICS_TLS_CERT,
            key=envnames.API_METRICS_TLS_KEY,
            default="127.0.0.1:9470",
        )
        admin = env.optional_str(envnames.BOOTSTRAP_ADMIN)
        if admin is not None:
            try:
                admin = canonical_user_key(admin)
            except NkeyError:
                raise ConfigError(
                    "UNIBUS_BOOTSTRAP_ADMIN must be a user public key (U… or 64 hex)",
                    setting=envnames.BOOTSTRAP_ADMIN,
                ) from None
        settings = cls(
            nats_urls=urls,
            ca_file=env.optional_path(envnames.CA_FILE),
            internal_seed=env.path(envnames.INTERNAL_SEED_FILE),
            system_seed=env.path(envnames.SYSTEM_SEED_FILE),
            host=host,
            port=port,
            tls_cert=env.optional_path(envnames.API_TLS_CERT),
            tls_key=env.optional_path(envnames.API_TLS_KEY),
            metrics_host=metrics.host,
            metrics_port=metrics.port,
            metrics_tls=metrics.tls,
            node=env.string(envnames.NODE_NAME, default=""),
            cluster_size=env.integer(envnames.CLUSTER_SIZE, default=len(urls), minimum=1),
            skew=_read_skew(env),
            max_blob_bytes=env.integer(
                envnames.MAX_BLOB_BYTES, default=DEFAULT_MAX_BLOB_BYTES, minimum=1
            ),
            max_rooms=read_max_rooms(env),
            blob_budget=env.integer(
                envnames.BLOB_BUDGET_BYTES, default=DEFAULT_BLOB_BUDGET, minimum=1
            ),
            op_timeout=env.number(envnames.OP_TIMEOUT, default=2.0, minimum=0.1, maximum=60.0),
            quorum_max_age=env.number(
                envnames.API_QUORUM_MAX_AGE, default=0.5, minimum=0.0, maximum=5.0
            ),
            bootstrap_admin=admin,
            log_json=env.boolean(envnames.LOG_JSON, default=True),
        )
        settings.check_posture()
        return settings

    def check_posture(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                "set both UNIBUS_API_TLS_CERT and UNIBUS_API_TLS_KEY, or neither",
                setting=envnames.API_TLS_CERT,
            )
        if self.tls_cert is None and not (is_loopback_host(self.host) and self.cluster_size == 1):
            raise PostureError(
                "plain HTTP is allowed only for a single-node stack on loopback: set "
                "UNIBUS_API_TLS_CERT/UNIBUS_API_TLS_KEY (the node's data-plane certificate)",
                setting=envnames.API_TLS_CERT,
            )

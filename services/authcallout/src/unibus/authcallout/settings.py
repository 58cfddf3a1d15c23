"""The callout's settings: read once from the environment at start, failing fast."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from unibus.core import envnames, limits
from unibus.core.errors import ConfigError
from unibus.core.limits import DEFAULT_MAX_ROOMS, read_max_rooms
from unibus.core.metricsserver import MetricsTLS, read_metrics_listener
from unibus.core.settings import EnvReader

DEFAULT_JWT_TTL = limits.DEFAULT_JWT_TTL
DEFAULT_METRICS_ADDR = "127.0.0.1:9471"


@dataclass(frozen=True)
class Settings:
    nats_urls: tuple[str, ...]
    """The whole cluster; the first URL is this instance's own node (tried first)."""
    ca_file: Path | None
    callout_seed: Path
    """Identity the service connects with (nkey user of the callout account)."""
    issuer_seed: Path
    """Account key whose signature the servers require on user JWTs (root-equivalent)."""
    xkey_seed: Path
    internal_seed: Path
    """Identity for the KV view (bus account)."""
    system_seed: Path
    """System-account identity for CONNZ and KICK."""
    jwt_ttl: float = DEFAULT_JWT_TTL
    max_rooms: int = DEFAULT_MAX_ROOMS
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9471
    metrics_tls: MetricsTLS | None = None
    """None: plain HTTP, which the settings allow on loopback only."""
    max_staleness: float = 2.0
    heartbeat: float = 0.5
    stale_grace: float = 1.0
    """How long a request waits for a stale view to be re-proven before it is denied."""
    catch_up: float = 0.5
    """How long a request waits at least for the view to apply what the streams held when
    it arrived (a read of their tails, then the watches) before it is denied. It may also
    use what is left of ``stale_grace``: the whole decision waits at most the sum."""
    concurrency: int = 256
    log_json: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        env = EnvReader(environ)
        metrics = read_metrics_listener(
            env,
            addr=envnames.AUTHCALLOUT_METRICS_ADDR,
            cert=envnames.AUTHCALLOUT_METRICS_TLS_CERT,
            key=envnames.AUTHCALLOUT_METRICS_TLS_KEY,
            default=DEFAULT_METRICS_ADDR,
        )
        urls = env.items(envnames.NATS_URLS)
        if not urls:
            raise ConfigError(
                "UNIBUS_NATS_URLS is required: the cluster's URLs, this node's first",
                setting=envnames.NATS_URLS,
            )
        settings = cls(
            nats_urls=urls,
            ca_file=env.optional_path(envnames.CA_FILE),
            callout_seed=env.path(envnames.CALLOUT_SEED_FILE),
            issuer_seed=env.path(envnames.ISSUER_SEED_FILE),
            xkey_seed=env.path(envnames.XKEY_SEED_FILE),
            internal_seed=env.path(envnames.INTERNAL_SEED_FILE),
            system_seed=env.path(envnames.SYSTEM_SEED_FILE),
            jwt_ttl=env.number(
                envnames.JWT_TTL, default=DEFAULT_JWT_TTL, minimum=1.0, maximum=86_400.0
            ),
            max_rooms=read_max_rooms(env),
            metrics_host=metrics.host,
            metrics_port=metrics.port,
            metrics_tls=metrics.tls,
            max_staleness=env.number(
                envnames.VIEW_MAX_STALENESS, default=2.0, minimum=0.5, maximum=30.0
            ),
            stale_grace=env.number(
                envnames.AUTHCALLOUT_STALE_GRACE, default=1.0, minimum=0.0, maximum=1.5
            ),
            catch_up=env.number(
                envnames.AUTHCALLOUT_CATCH_UP, default=0.5, minimum=0.05, maximum=1.5
            ),
            concurrency=env.integer(envnames.AUTHCALLOUT_CONCURRENCY, default=256, minimum=1),
            log_json=env.boolean(envnames.LOG_JSON, default=True),
        )
        settings.heartbeat_check()
        return settings

    def heartbeat_check(self) -> None:
        if self.heartbeat * 2 > self.max_staleness:
            raise ConfigError(
                "UNIBUS_VIEW_MAX_STALENESS must be at least twice the view heartbeat "
                f"({self.heartbeat}s)",
                setting=envnames.VIEW_MAX_STALENESS,
            )

"""The names of every environment variable a unibus service reads.

The services' settings read them, and the deployment tooling (the local launcher, compose
and per-host rendering) writes them: both sides name them from here, so renaming one
cannot leave a writer setting a variable nobody reads.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "API_ADDR",
    "API_METRICS_ADDR",
    "API_QUORUM_MAX_AGE",
    "API_SKEW",
    "API_TLS_CERT",
    "API_TLS_KEY",
    "AUTHCALLOUT_CATCH_UP",
    "AUTHCALLOUT_CONCURRENCY",
    "AUTHCALLOUT_METRICS_ADDR",
    "AUTHCALLOUT_STALE_GRACE",
    "BLOB_BUDGET_BYTES",
    "BOOTSTRAP_ADMIN",
    "CALLOUT_SEED_FILE",
    "CA_FILE",
    "CLUSTER_SIZE",
    "HISTORY_DAYS",
    "INTERNAL_SEED_FILE",
    "ISSUER_SEED_FILE",
    "JWT_TTL",
    "LOG_JSON",
    "MAX_BLOB_BYTES",
    "MAX_ROOMS",
    "NATS_URLS",
    "NODE_NAME",
    "OP_TIMEOUT",
    "PREFIX",
    "SYSTEM_SEED_FILE",
    "VIEW_MAX_STALENESS",
    "XKEY_SEED_FILE",
]

PREFIX: Final = "UNIBUS_"

# -- both services ----------------------------------------------------------------------------
NATS_URLS: Final = "UNIBUS_NATS_URLS"
CA_FILE: Final = "UNIBUS_CA_FILE"
INTERNAL_SEED_FILE: Final = "UNIBUS_INTERNAL_SEED_FILE"
SYSTEM_SEED_FILE: Final = "UNIBUS_SYSTEM_SEED_FILE"
NODE_NAME: Final = "UNIBUS_NODE_NAME"
MAX_ROOMS: Final = "UNIBUS_MAX_ROOMS"
HISTORY_DAYS: Final = "UNIBUS_HISTORY_DAYS"
VIEW_MAX_STALENESS: Final = "UNIBUS_VIEW_MAX_STALENESS"
OP_TIMEOUT: Final = "UNIBUS_OP_TIMEOUT"
LOG_JSON: Final = "UNIBUS_LOG_JSON"

# -- the auth callout -------------------------------------------------------------------------
CALLOUT_SEED_FILE: Final = "UNIBUS_CALLOUT_SEED_FILE"
ISSUER_SEED_FILE: Final = "UNIBUS_ISSUER_SEED_FILE"
XKEY_SEED_FILE: Final = "UNIBUS_XKEY_SEED_FILE"
JWT_TTL: Final = "UNIBUS_JWT_TTL"
AUTHCALLOUT_METRICS_ADDR: Final = "UNIBUS_AUTHCALLOUT_METRICS_ADDR"
AUTHCALLOUT_STALE_GRACE: Final = "UNIBUS_AUTHCALLOUT_STALE_GRACE"
AUTHCALLOUT_CATCH_UP: Final = "UNIBUS_AUTHCALLOUT_CATCH_UP"
AUTHCALLOUT_CONCURRENCY: Final = "UNIBUS_AUTHCALLOUT_CONCURRENCY"

# -- the control plane ------------------------------------------------------------------------
API_ADDR: Final = "UNIBUS_API_ADDR"
API_METRICS_ADDR: Final = "UNIBUS_API_METRICS_ADDR"
API_TLS_CERT: Final = "UNIBUS_API_TLS_CERT"
API_TLS_KEY: Final = "UNIBUS_API_TLS_KEY"
API_SKEW: Final = "UNIBUS_API_SKEW"
API_QUORUM_MAX_AGE: Final = "UNIBUS_API_QUORUM_MAX_AGE"
CLUSTER_SIZE: Final = "UNIBUS_CLUSTER_SIZE"
BOOTSTRAP_ADMIN: Final = "UNIBUS_BOOTSTRAP_ADMIN"
MAX_BLOB_BYTES: Final = "UNIBUS_MAX_BLOB_BYTES"
BLOB_BUDGET_BYTES: Final = "UNIBUS_BLOB_BUDGET_BYTES"

"""Reading one JSON document from a nats-server monitoring endpoint, bounded.

Plain ``http.client`` on purpose: no proxy taken from the environment, no redirect
followed, the CA pinned for HTTPS, a size cap, and a timeout on connecting and on every
read. The collector bounds the whole request besides (it stops waiting at the deadline).
"""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from unibus.core.errors import UnibusError

__all__ = ["MAX_BYTES", "MonitorClient", "MonitorError"]

MAX_BYTES: Final = 32 * 1024 * 1024
"""Larger than any answer a unibus node gives (JSZ with every stream is tens of kB)."""


class MonitorError(UnibusError):
    """The endpoint answered, but not with what a monitoring endpoint answers."""


class MonitorClient:
    """GETs monitoring URLs and decodes their JSON; raises on anything else."""

    def __init__(self, ca_file: Path | None, timeout: float) -> None:
        self._context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self._timeout = timeout

    def fetch(self, url: str) -> Any:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            if self._context is None:
                raise MonitorError(f"{url}: HTTPS needs the CA (settings require it)")
            conn = http.client.HTTPSConnection(
                host, port, timeout=self._timeout, context=self._context
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self._timeout)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("GET", target, headers={"Accept": "application/json"})
            response = conn.getresponse()
            if response.status != 200:
                raise MonitorError(f"{url}: HTTP {response.status} {response.reason}")
            body = response.read(MAX_BYTES + 1)
        finally:
            conn.close()
        if len(body) > MAX_BYTES:
            raise MonitorError(f"{url}: answer larger than {MAX_BYTES} bytes")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise MonitorError(f"{url}: not JSON ({exc})") from None

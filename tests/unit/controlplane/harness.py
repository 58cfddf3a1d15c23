"""The control-plane app in-process, over a SQLite ``Store``, called with signed requests.

No sockets and no NATS: requests go through httpx's ``ASGITransport`` straight into the
app ``build_app`` returns, and the store is the legacy ``SQLiteStore``, which the contract
suite (tests/integration/test_store_contract.py) holds to the replicated store's
behaviour, nonces included. The NATS connections of the ``Context`` are stand-ins that
fail loudly: a test that reaches NATS belongs in tests/integration.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec

from unibus.client.changes import genesis
from unibus.controlplane.metrics import ApiMetrics
from unibus.controlplane.settings import Settings
from unibus.core import envnames, naming
from unibus.core.models import Role, UserRecord
from unibus.core.nkeys import KeyPair, Prefix
from unibus.core.signing import body_digest, sign_request
from unibus.core.store import Store


class NoNats:
    """Stands in for a NATS connection; any use of it fails the test that made it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unit tests have no NATS (used .{name}); test it in integration")


def settings_from_env(tmp_path: Path, env: Mapping[str, str] | None = None) -> Settings:
    """Settings read the way the service reads them, with throwaway identity files."""
    return Settings.from_env(
        {
            **identity_files(tmp_path, envnames.INTERNAL_SEED_FILE, envnames.SYSTEM_SEED_FILE),
            envnames.NATS_URLS: "nats://127.0.0.1:4222",
            **(env or {}),
        }
    )


def identity_files(tmp_path: Path, *names: str) -> dict[str, str]:
    """Each ``*_SEED_FILE`` setting pointing to a file that exists; nothing reads it here."""
    found = {}
    for name in names:
        path = tmp_path / f"{name.lower()}.seed"
        path.write_text("unused\n")
        found[name] = str(path)
    return found


@dataclass
class Api:
    """One app, its store and metrics, and an administrator already on the allowlist."""

    http: httpx.AsyncClient
    store: Store
    metrics: ApiMetrics
    admin: KeyPair

    async def user(self, handle: str, role: Role = Role.MEMBER) -> KeyPair:
        """A new active user, written straight to the store."""
        pair = KeyPair.generate(Prefix.USER)
        await self.store.add_user(UserRecord.new(pair.public_key, handle, role))
        return pair

    async def call(
        self,
        who: KeyPair,
        method: str,
        path: str,
        body: bytes | msgspec.Struct | Mapping[str, Any] | None = None,
        *,
        now: float | None = None,
        nonce: str | None = None,
    ) -> httpx.Response:
        """``method path`` with ``body`` (JSON unless bytes), signed by ``who``."""
        content = _encode(body)
        headers = signed_headers(who, method, path, content, now=now, nonce=nonce)
        return await self.send(method, path, content, headers)

    async def send(
        self, method: str, path: str, content: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        """A request exactly as given: unsigned, or with headers signed elsewhere."""
        return await self.http.request(method, path, content=content, headers=dict(headers or {}))

    def replays(self) -> float:
        return self.metrics.registry.get_sample_value("unibus_api_replay_rejections_total") or 0.0


def signed_headers(
    who: KeyPair,
    method: str,
    path: str,
    content: bytes = b"",
    *,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The five signature headers of a request, as the SDK makes them."""
    raw_path, _, query = path.partition("?")
    return sign_request(who, method, raw_path, query, body_digest(content), now=now, nonce=nonce)


def _encode(body: bytes | msgspec.Struct | Mapping[str, Any] | None) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    return msgspec.json.encode(body)


ApiFactory = Callable[..., Awaitable[Api]]
"""``make_api``: keywords ``env`` (``UNIBUS_*`` settings), ``wrap`` (the store) and
``raise_app_exceptions``."""


def error_of(response: httpx.Response) -> str:
    """The error code of an API error, after checking it has the one error shape."""
    payload = response.json()
    assert set(payload) == {"error", "message"}, response.text
    return str(payload["error"])


def sealed_for(*members: str) -> dict[str, bytes]:
    """Opaque stand-ins for sealed room keys: the API never opens them."""
    return {member: f"sealed-for-{member[:8]}".encode() for member in members}


async def new_room(api: Api, owner: KeyPair, *members: str) -> str:
    """A room created through the API, owned by ``owner``; its id."""
    room_id = naming.new_room_id()
    everyone = {owner.public_key, *members}
    body = genesis(owner, room_id, members=members, sealed_by_member=sealed_for(*everyone))
    response = await api.call(owner, "POST", "/v1/rooms", body)
    assert response.status_code == 201, response.text
    return room_id

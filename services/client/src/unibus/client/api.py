"""The signed control-plane client, failing over across every node's API URL.

Each attempt is signed afresh (a new nonce: the server accepts a nonce once). Only
failures that prove the request was not processed — no connection, or 503 — move on to
the next URL, and, when every node failed so, to another round after a pause (bounded:
an election of the store takes seconds); anything else is the answer.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
import msgspec

from unibus.client.errors import ApiError, ApiUnavailableError
from unibus.core.apimodels import (
    BlobView,
    ErrorView,
    NewRoom,
    NewUser,
    RoomChange,
    RoomId,
    RoomView,
    SealedKeyView,
    UserView,
)
from unibus.core.models import Role
from unibus.core.nkeys import KeyPair
from unibus.core.signing import HEADER_CONTENT_SHA256, body_digest, sign_request

T = TypeVar("T")
_encoder = msgspec.json.Encoder()
_UPLOAD_PIECE: Final = 256 * 1024
_RETRY_FIRST: Final = 0.25
_RETRY_CAP: Final = 2.0
DEFAULT_RETRY_BUDGET: Final = 15.0
"""How long a call keeps trying while no node can take it (an election takes 5-7 s)."""


class ApiClient:
    def __init__(
        self,
        urls: Sequence[str],
        identity: KeyPair,
        *,
        ca_file: Path | None = None,
        timeout: float = 30.0,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``transport`` replaces the network (``httpx.MockTransport`` in tests); TLS
        settings then do not apply."""
        if not urls:
            raise ValueError("no API URL given")
        self._urls = list(urls)
        self._retry_budget = retry_budget
        self._identity = identity
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            verify = ssl.create_default_context(cafile=str(ca_file))
        self._http = httpx.AsyncClient(verify=verify, timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def signed(
        self,
        method: str,
        url: str,
        *,
        content: bytes | AsyncIterator[bytes] = b"",
        digest: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Request:
        """Build a signed request for one URL (exposed for tests that tamper with it).

        A streamed ``content`` needs its ``digest``: the signature covers the body's hash.
        """
        if digest is None and not isinstance(content, bytes):
            raise ValueError("a streamed body needs its digest up front")
        request = self._http.build_request(method, url, content=content, headers=headers)
        path, _, query = request.url.raw_path.decode("ascii").partition("?")
        body_sha256 = digest or body_digest(content if isinstance(content, bytes) else b"")
        request.headers.update(sign_request(self._identity, method, path, query, body_sha256))
        return request

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content: bytes | None = None,
        expect: type[T],
    ) -> T:
        data = content if content is not None else (b"" if body is None else _encoder.encode(body))
        response = await self._send(method, path, data)
        if expect is bytes:
            return response.content  # type: ignore[return-value]
        return msgspec.json.decode(response.content, type=expect)

    async def _send(
        self,
        method: str,
        path: str,
        data: bytes | Callable[[], AsyncIterator[bytes]],
        *,
        digest: str | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send to the first node that takes it; a streamed body is made anew per attempt.

        With ``stream``, a successful response's body is left unread (the caller reads and
        closes it); error bodies are always read.

        When no node takes it (unreachable, or 503: a store election, no quorum yet), the
        round over every node is repeated with backoff for up to ``retry_budget`` seconds:
        a 503 proves the request was not processed, so sending it again is safe.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_budget
        pause = _RETRY_FIRST
        while True:
            unavailable: httpx.Response | None = None
            last: Exception | None = None
            for base in self._urls:
                content = data if isinstance(data, bytes) else data()
                request = self.signed(
                    method, base.rstrip("/") + path, content=content, digest=digest, headers=headers
                )
                try:
                    response = await self._http.send(request, stream=stream)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    last = exc
                    continue
                if stream and response.status_code >= 400:
                    try:
                        await response.aread()
                    finally:
                        await response.aclose()
                if response.status_code == 503:
                    unavailable = response
                    continue
                _raise_for(response)
                return response
            if loop.time() + pause > deadline:
                if unavailable is not None:
                    _raise_for(unavailable)
                raise ApiUnavailableError(f"no API node answered ({type(last).__name__})")
            await asyncio.sleep(pause)
            pause = min(_RETRY_CAP, pause * 2)

    # -- users ------------------------------------------------------------------------------------
    async def add_user(self, key: str, handle: str, role: Role = Role.MEMBER) -> UserView:
        body = NewUser(key=key, handle=handle, role=role)
        return await self.call("POST", "/v1/users", body=body, expect=UserView)

    async def list_users(self) -> list[UserView]:
        return await self.call("GET", "/v1/users", expect=list[UserView])

    async def get_user(self, key: str) -> UserView:
        return await self.call("GET", f"/v1/users/{key}", expect=UserView)

    async def revoke_user(self, key: str) -> UserView:
        return await self.call("POST", f"/v1/users/{key}/revoke", expect=UserView)

    async def reinstate_user(self, key: str) -> UserView:
        """Active again with the role it had; admitted at its next connect (admins only)."""
        return await self.call("POST", f"/v1/users/{key}/reinstate", expect=UserView)

    async def promote_user(self, key: str) -> UserView:
        """Make ``key`` an admin; its live connections reconnect as one (admins only)."""
        return await self.call("POST", f"/v1/users/{key}/promote", expect=UserView)

    async def demote_user(self, key: str) -> UserView:
        """Make ``key`` a member. ``ApiError.code == "last_admin"`` (409): it is the last
        active admin, and the bus must keep one (promote another first)."""
        return await self.call("POST", f"/v1/users/{key}/demote", expect=UserView)

    # -- rooms ------------------------------------------------------------------------------------
    async def new_room_id(self) -> str:
        return (await self.call("POST", "/v1/room-ids", expect=RoomId)).room_id

    async def create_room(self, body: NewRoom) -> RoomView:
        return await self.call("POST", "/v1/rooms", body=body, expect=RoomView)

    async def my_rooms(self) -> list[str]:
        return await self.call("GET", "/v1/rooms", expect=list[str])

    async def get_room(self, room_id: str) -> RoomView:
        return await self.call("GET", f"/v1/rooms/{room_id}", expect=RoomView)

    async def add_members(self, room_id: str, change: RoomChange) -> RoomView:
        return await self.call("POST", f"/v1/rooms/{room_id}/members", body=change, expect=RoomView)

    async def remove_member(self, room_id: str, member: str, change: RoomChange) -> RoomView:
        path = f"/v1/rooms/{room_id}/members/{member}/remove"
        return await self.call("POST", path, body=change, expect=RoomView)

    async def rekey(self, room_id: str, change: RoomChange) -> RoomView:
        return await self.call("POST", f"/v1/rooms/{room_id}/rekey", body=change, expect=RoomView)

    async def leave_room(self, room_id: str, change: RoomChange) -> RoomView:
        return await self.call("POST", f"/v1/rooms/{room_id}/leave", body=change, expect=RoomView)

    async def adopt_room(self, room_id: str, body: NewRoom) -> RoomView:
        return await self.call("POST", f"/v1/rooms/{room_id}/adopt", body=body, expect=RoomView)

    async def sealed_keys(self, room_id: str) -> list[SealedKeyView]:
        return await self.call("GET", f"/v1/rooms/{room_id}/keys", expect=list[SealedKeyView])

    # -- blobs ------------------------------------------------------------------------------------
    async def upload_blob(self, room_id: str, data: bytes) -> BlobView:
        return await self.call("POST", f"/v1/rooms/{room_id}/blobs", content=data, expect=BlobView)

    async def upload_blob_file(
        self,
        room_id: str,
        path: Path,
        *,
        sha256: str,
        progress: Callable[[int, int], None] | None = None,
    ) -> BlobView:
        """Stream a file as a blob's body, never holding it in memory; ``sha256`` is its hash."""
        size = (await asyncio.to_thread(path.stat)).st_size

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            with path.open("rb") as file:
                while piece := await asyncio.to_thread(file.read, _UPLOAD_PIECE):
                    sent += len(piece)
                    yield piece
                    if progress is not None:
                        progress(sent, size)

        response = await self._send(
            "POST",
            f"/v1/rooms/{room_id}/blobs",
            body,
            digest=sha256,
            headers={"content-length": str(size)},
        )
        return msgspec.json.decode(response.content, type=BlobView)

    async def download_blob(self, room_id: str, blob_id: str) -> bytes:
        return await self.call("GET", f"/v1/rooms/{room_id}/blobs/{blob_id}", expect=bytes)

    async def stream_blob(self, room_id: str, blob_id: str) -> AsyncIterator[bytes]:
        """Download without holding the blob in memory."""
        response = await self._send("GET", f"/v1/rooms/{room_id}/blobs/{blob_id}", b"", stream=True)
        try:
            async for chunk in response.aiter_bytes():
                yield chunk
        finally:
            await response.aclose()


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = msgspec.json.decode(response.content, type=ErrorView)
    except msgspec.DecodeError:
        raise ApiError(response.status_code, "unknown", response.text[:200]) from None
    raise ApiError(response.status_code, error.error, error.message)


__all__ = [
    "DEFAULT_RETRY_BUDGET",
    "HEADER_CONTENT_SHA256",
    "ApiClient",
    "ApiError",
    "ApiUnavailableError",
]

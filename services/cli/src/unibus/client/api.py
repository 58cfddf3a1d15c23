"""The signed control-plane client, failing over across every node's API URL.

Each attempt is signed afresh (a new nonce: the server accepts a nonce once). Only
failures that prove the request was not processed — no connection, or 503 — move on to
the next URL; anything else is the answer.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec

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
from unibus.core.errors import UnibusError
from unibus.core.models import Role
from unibus.core.nkeys import KeyPair
from unibus.core.signing import HEADER_CONTENT_SHA256, body_digest, sign_request

T = TypeVar("T")
_encoder = msgspec.json.Encoder()


class ApiError(UnibusError):
    """The API answered with an error (``status``, stable ``code``), or no node answered."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({status} {code})")
        self.status = status
        self.code = code
        self.message = message


class ApiClient:
    def __init__(
        self,
        urls: Sequence[str],
        identity: KeyPair,
        *,
        ca_file: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not urls:
            raise ValueError("no API URL given")
        self._urls = list(urls)
        self._identity = identity
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            verify = ssl.create_default_context(cafile=str(ca_file))
        self._http = httpx.AsyncClient(verify=verify, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def signed(
        self, method: str, url: str, *, content: bytes = b"", digest: str | None = None
    ) -> httpx.Request:
        """Build a signed request for one URL (exposed for tests that tamper with it)."""
        request = self._http.build_request(method, url, content=content)
        path, _, query = request.url.raw_path.decode("ascii").partition("?")
        headers = sign_request(self._identity, method, path, query, digest or body_digest(content))
        request.headers.update(headers)
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

    async def _send(self, method: str, path: str, data: bytes) -> httpx.Response:
        last: Exception | None = None
        for base in self._urls:
            request = self.signed(method, base.rstrip("/") + path, content=data)
            try:
                response = await self._http.send(request)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = exc
                continue
            if response.status_code == 503 and base != self._urls[-1]:
                continue
            _raise_for(response)
            return response
        raise ApiError(0, "unreachable", f"no API node answered ({type(last).__name__})")

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

    async def sealed_keys(self, room_id: str) -> list[SealedKeyView]:
        return await self.call("GET", f"/v1/rooms/{room_id}/keys", expect=list[SealedKeyView])

    # -- blobs ------------------------------------------------------------------------------------
    async def upload_blob(self, room_id: str, data: bytes) -> BlobView:
        return await self.call("POST", f"/v1/rooms/{room_id}/blobs", content=data, expect=BlobView)

    async def download_blob(self, room_id: str, blob_id: str) -> bytes:
        return await self.call("GET", f"/v1/rooms/{room_id}/blobs/{blob_id}", expect=bytes)

    async def stream_blob(self, room_id: str, blob_id: str) -> AsyncIterator[bytes]:
        """Download without holding the blob in memory."""
        for base in self._urls:
            request = self.signed("GET", f"{base.rstrip('/')}/v1/rooms/{room_id}/blobs/{blob_id}")
            try:
                response = await self._http.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                continue
            try:
                if response.status_code >= 400:
                    await response.aread()
                    _raise_for(response)
                async for chunk in response.aiter_bytes():
                    yield chunk
                return
            finally:
                await response.aclose()
        raise ApiError(0, "unreachable", "no API node answered")


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = msgspec.json.decode(response.content, type=ErrorView)
    except msgspec.DecodeError:
        raise ApiError(response.status_code, "unknown", response.text[:200]) from None
    raise ApiError(response.status_code, error.error, error.message)


__all__ = ["HEADER_CONTENT_SHA256", "ApiClient", "ApiError"]

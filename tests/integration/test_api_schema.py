"""Schemathesis over the control plane's own ``/openapi.json``, every request signed.

The schema is loaded from a running 3-node stack's API. Every request below is signed by
the stack's admin (an active user with access to every route), so it gets past
authentication and reaches the handler, and for every response two properties must
hold: it is not a 5xx, and it conforms to the document (status code, content type, body
schema). Three batches of requests:

1. a walk through every signed operation with valid data (users, a room and its chain,
   sealed keys, a blob), each expected to succeed: this is what checks the success
   bodies against their schemas;
2. schemathesis's deterministic *coverage* cases of every operation (boundary and
   invalid values of each parameter and body, missing bodies, unexpected methods;
   schemathesis leaves out the document's own route, ``/openapi.json``);
3. Hypothesis *fuzzing* of every operation, 30 examples of valid and 30 of invalid data,
   once with generated path parameters and once with them pinned to the real room, blob
   and user of step 1 (so generated bodies reach the room and blob logic).

The signature covers what goes on the wire: it is computed in a ``requests`` auth hook,
on the prepared request (method, raw path and query, final body bytes) after
schemathesis serialised the case. A response refusing the signature or the caller would
mean the test exercised nothing past authentication, so that fails the test too.

The driver uses schemathesis's Python API rather than its pytest plugin: the plugin's
fixture-loaded schemas (``schemathesis.pytest.from_fixture``) do not run on pytest 9.2
(they set ``Item._nodeid``, which pytest 9.2 removed).
"""

from __future__ import annotations

import json
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import msgspec
import pytest
import pytest_asyncio
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.harness import StackFactory, eventually
from unibus.client.changes import genesis, successor
from unibus.core.apimodels import NewUser, RoomView
from unibus.core.nkeys import KeyPair, Prefix, read_seed_file
from unibus.core.signing import body_digest, sign_request

Case = schemathesis.Case[Any]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
FUZZ_EXAMPLES = 30
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
UNSIGNED = ("/healthz", "/openapi.json")
# 401 codes that mean a request never got past authentication: the test's own fault.
_AUTH_FAILURES = ("signature_", "caller_", "replay")


class SignedBy(requests.auth.AuthBase):
    """Sign the prepared request exactly as it will be sent (after serialisation)."""

    def __init__(self, identity: KeyPair) -> None:
        self.identity = identity

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body
        if body is None:
            data = b""
        elif isinstance(body, str):
            # http.client would send a str body as Latin-1: send (and sign) UTF-8 bytes.
            data = body.encode("utf-8")
            request.body = data
        elif isinstance(body, bytes):
            data = body
        else:
            raise TypeError(f"cannot sign a streamed body ({type(body).__name__})")
        assert request.method is not None
        path, _, query = request.path_url.partition("?")
        request.headers.update(
            sign_request(self.identity, request.method, path, query, body_digest(data))
        )
        # requests sets Content-Length from the body after the auth hook.
        return request


@dataclass
class SignedApi:
    url: str
    ca_file: str
    admin: KeyPair
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)
    not_generated: list[str] = field(default_factory=list)

    def send(self, case: Case) -> schemathesis.Response:
        """One signed request for ``case``, checked; raises on a failed check."""
        response = case.call(
            base_url=self.url, auth=SignedBy(self.admin), verify=self.ca_file, timeout=30
        )
        label = f"{case.method.upper()} {case.operation.path}"
        self.statuses[(label, response.status_code)] += 1
        if response.status_code == 401:
            code = _error_code(response.content)
            assert not code.startswith(_AUTH_FAILURES), (
                f"{label}: refused by authentication ({code}), so the test signs wrongly: "
                f"{case.method.upper()} {response.request.url}"
            )
        case.validate_response(response, checks=CHECKS)
        return response

    def record(self, what: str, run: Callable[[], None]) -> None:
        """Run one batch of cases; keep its failure and go on with the next batch."""
        try:
            run()
        except Unsatisfiable:
            self.not_generated.append(what)  # e.g. invalid data for a route without inputs
        except (Exception, FailureGroup) as exc:  # noqa: BLE001 - try all, report all
            self.failures[what] = f"{type(exc).__name__}: {exc}"


def _error_code(content: bytes) -> str:
    try:
        decoded = json.loads(content)
    except ValueError:
        return ""
    return str(decoded.get("error", "")) if isinstance(decoded, dict) else ""


@pytest_asyncio.fixture
async def signed_api(stacks: StackFactory) -> AsyncIterator[SignedApi]:
    stack = await stacks.start(nodes=3, services=True)
    url = stack.api_url(stack.spec.node_names[0])
    ca_file = str(stack.layout.certs.client_ca_cert)
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=ca_file)) as http:
        # wait_services_ready waits for the callout only: wait for this API too.
        await eventually(
            lambda: http.get(f"{url}/healthz"),
            until=lambda response: response.status_code == 200,
            what=f"{url}/healthz answers 200",
        )
    yield SignedApi(url, ca_file, read_seed_file(stack.layout.identity("admin")))


# -- 1. valid data through every signed operation ---------------------------------------------
@dataclass(frozen=True)
class Known:
    room_id: str
    blob_id: str
    member: str


def _builtins(value: Any) -> Any:
    return json.loads(msgspec.json.encode(value))


def _sealed(*members: str) -> dict[str, bytes]:
    return {m: f"sealed-for-{m[:8]}".encode() for m in members}


def _walk_valid(api: SignedApi, schema: Any) -> Known:
    def call(
        method: str, path: str, status: int, *, body: Any = None, media: str | None = None, **p: str
    ) -> Any:
        operation = schema[path][method]
        if body is None:
            case = operation.Case(path_parameters=p)
        else:
            case = operation.Case(path_parameters=p, body=body, media_type=media)
        response = api.send(case)
        assert response.status_code == status, (method, path, response.status_code, response.text)
        return response

    def room(response: Any) -> RoomView:
        return msgspec.json.decode(response.content, type=RoomView)

    admin = api.admin
    ada, bob, eve = (KeyPair.generate(Prefix.USER) for _ in range(3))
    for who, handle in ((ada, "ada"), (bob, "bob"), (eve, "eve")):
        new = NewUser(key=who.public_key, handle=handle)
        call("POST", "/v1/users", 201, body=_builtins(new), media="application/json")
    call("GET", "/v1/users", 200)
    call("GET", "/v1/health", 200)
    call("GET", "/v1/users/{key}", 200, key=ada.public_key)
    for verb, who in (("revoke", eve), ("reinstate", eve), ("promote", bob), ("demote", bob)):
        path = f"/v1/users/{{key}}/{verb}"
        call("POST", path, 200, key=who.public_key, body={}, media="application/json")

    room_id = call("POST", "/v1/room-ids", 201, body={}, media="application/json").json()["room_id"]
    everyone = (admin.public_key, ada.public_key)
    first = genesis(admin, room_id, members=[ada.public_key], sealed_by_member=_sealed(*everyone))
    created = room(call("POST", "/v1/rooms", 201, body=_builtins(first), media="application/json"))
    call("GET", "/v1/rooms", 200)
    call("GET", "/v1/rooms/{room_id}", 200, room_id=room_id)

    _, add = successor(
        created.chain[-1],
        admin,
        members={*created.members, bob.public_key},
        new_epoch=False,
        sealed_by_member=_sealed(bob.public_key),
    )
    grown = room(
        call(
            "POST",
            "/v1/rooms/{room_id}/members",
            200,
            room_id=room_id,
            body=_builtins(add),
            media="application/json",
        )
    )
    _, removal = successor(
        grown.chain[-1],
        admin,
        members=set(everyone),
        new_epoch=True,
        sealed_by_member=_sealed(*everyone),
    )
    shrunk = room(
        call(
            "POST",
            "/v1/rooms/{room_id}/members/{key}/remove",
            200,
            room_id=room_id,
            key=bob.public_key,
            body=_builtins(removal),
            media="application/json",
        )
    )
    _, rekey = successor(
        shrunk.chain[-1],
        admin,
        members=set(everyone),
        new_epoch=True,
        sealed_by_member=_sealed(*everyone),
    )
    call(
        "POST",
        "/v1/rooms/{room_id}/rekey",
        200,
        room_id=room_id,
        body=_builtins(rekey),
        media="application/json",
    )
    call("GET", "/v1/rooms/{room_id}/keys", 200, room_id=room_id)

    blob = call(
        "POST",
        "/v1/rooms/{room_id}/blobs",
        201,
        room_id=room_id,
        body=b"opaque encrypted bytes",
        media="application/octet-stream",
    ).json()
    data = call(
        "GET",
        "/v1/rooms/{room_id}/blobs/{blob_id}",
        200,
        room_id=room_id,
        blob_id=blob["blob_id"],
    ).content
    assert data == b"opaque encrypted bytes"
    return Known(room_id=room_id, blob_id=blob["blob_id"], member=ada.public_key)


# -- 2. coverage cases, 3. fuzzing ------------------------------------------------------------
def _coverage(api: SignedApi, schema: Any, operation: Any) -> None:
    config = schema.config.generation_for(operation=operation, phase="coverage")
    found: list[str] = []
    for case in schema.iter_coverage_cases(
        operation, generation_modes=list(MODES), generation_config=config
    ):
        try:
            api.send(case)
        except (Exception, FailureGroup) as exc:  # noqa: BLE001 - report every distinct one
            text = f"{type(exc).__name__}: {exc}"
            if text not in found:
                found.append(text)
    if found:
        raise AssertionError("\n\n".join(found))


def _fuzz(
    api: SignedApi,
    operation: Any,
    mode: schemathesis.GenerationMode,
    path_parameters: dict[str, str] | None,
) -> None:
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    def run(case: Case) -> None:
        api.send(case)

    run()


def test_signed_requests_get_no_5xx_and_only_documented_responses(signed_api: SignedApi) -> None:
    api = signed_api
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json", verify=api.ca_file)
    operations: list[Any] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            pytest.fail(f"the served document has an invalid operation: {result.err()}")
        operations.append(result.ok())
    signed = [op for op in operations if op.path not in UNSIGNED]
    assert len(signed) == 20, [op.label for op in operations]

    known = _walk_valid(api, schema)
    real = {"room_id": known.room_id, "blob_id": known.blob_id, "key": known.member}
    for op in operations:
        api.record(f"{op.label} coverage", partial(_coverage, api, schema, op))
        names = {p.name for p in op.path_parameters}
        pinned = [None, {n: real[n] for n in names}] if names else [None]
        for mode in MODES:
            for fixed in pinned:
                what = f"{op.label} fuzz {mode.value}" + (" (real ids)" if fixed else "")
                api.record(what, partial(_fuzz, api, op, mode, fixed))

    report = "\n".join(
        f"  {label}: {status} x{count}" for (label, status), count in sorted(api.statuses.items())
    )
    print(f"\nresponses by operation:\n{report}\nnothing to generate: {api.not_generated}")
    assert not api.failures, "\n\n".join(
        f"== {what}\n{text}" for what, text in api.failures.items()
    )
    # Only the unsigned routes have no input at all (the signed ones have the signature).
    assert set(api.not_generated) <= {f"GET {p} fuzz negative" for p in UNSIGNED}, report
